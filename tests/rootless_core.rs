//! Rootless `netbox run` (issue 17), the implementation's own checks: an unprivileged uid in
//! a private host with a "world" namespace behind a veth (the private host's default route
//! points into it, so pasta has a routable interface and no packet leaves the machine).
//! The black-box suite is tests/rootless.rs; these cover the basic path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{eventually, is_root, netbox_bin, private_host, sh, skip};

/// A private host's world and an unprivileged user with their own HOME and XDG_RUNTIME_DIR.
struct World {
    dir: tempfile::TempDir,
    bin: PathBuf,
    uid: u32,
}

impl World {
    /// Inside the test's private host, as root.
    fn new(uid: u32) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = root.join("netbox");
        std::fs::copy(netbox_bin(), &bin).expect("copy netbox");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let r = root.display();
        sh(&format!(
            "set -e
             ip netns add world
             ip link add wh type veth peer name wv
             ip link set wv netns world
             ip addr add 10.213.0.1/24 dev wh; ip link set wh up
             ip -n world addr add 10.213.0.2/24 dev wv
             ip -n world link set wv up; ip -n world link set lo up
             ip route add default via 10.213.0.2
             sysctl -qw net.ipv4.ping_group_range='0 2147483647'
             # Distributions ship /dev/net/tun 0666; some machines (this CI's) 0600.
             mkdir {r}/dev; mount -t tmpfs tmpfs {r}/dev
             mknod -m 666 {r}/dev/tun c 10 200; mount --bind {r}/dev/tun /dev/net/tun
             mkdir {r}/www; echo hello-world > {r}/www/index.html
             ip netns exec world busybox httpd -p 10.213.0.2:80 -h {r}/www
             for d in home xdg; do mkdir -m 700 {r}/$d; chown {uid}:{uid} {r}/$d; done"
        ));
        World { dir, bin, uid }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("xdg/netbox")
    }

    /// `netbox ARGS` as the user.
    fn netbox(&self, args: &[&str]) -> Command {
        let root = self.dir.path();
        // Absolute: the command's own PATH (which a test may empty) would be searched.
        let mut cmd = Command::new(sh("command -v setpriv").trim());
        cmd.args([
            "--reuid",
            &self.uid.to_string(),
            "--regid",
            &self.uid.to_string(),
            "--clear-groups",
        ])
        .arg(&self.bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join("home"))
        .env("XDG_RUNTIME_DIR", root.join("xdg"))
        .env("NETBOX_USER_NET_LINGER", "0")
        .current_dir(root)
        .stdin(Stdio::null());
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.netbox(args).output().expect("run netbox as the user")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.netbox(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netbox as the user")
    }

    /// The holder's record, once it is there.
    fn record(&self) -> serde_json::Value {
        let path = self.state().join("user-network.json");
        eventually("the user network record", || path.exists());
        serde_json::from_slice(&std::fs::read(&path).expect("read record")).expect("record json")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", "ip netns pids world | xargs -r kill -9"])
            .status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn pid_of(record: &serde_json::Value, key: &str) -> u64 {
    record[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {record}"))
}

/// Runs the test as root in its private host, or says why it cannot.
fn rooted(test: &str) -> bool {
    if !private_host(test) {
        return false;
    }
    if !is_root() {
        skip(
            test,
            "needs root to build the world and switch to an unprivileged uid",
        );
        return false;
    }
    true
}

#[test]
fn an_unprivileged_run_gets_an_address_and_reaches_the_world() {
    let test = "rootless_core::an_unprivileged_run_gets_an_address_and_reaches_the_world";
    if !rooted(test) {
        return;
    }
    let world = World::new(64101);
    let out = world.output(&[
        "run",
        "--",
        "sh",
        "-c",
        "id -u; ip -4 -o addr show eth0; ip route show default; wget -qO- http://10.213.0.2/",
    ]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.starts_with("64101\n"),
        "CMD keeps the user's uid: {seen}"
    );
    assert!(seen.contains("inet 10.117.0."), "{seen}");
    assert!(seen.contains("default via 10.117.0.1"), "{seen}");
    assert!(seen.contains("hello-world"), "{seen}");
    // Linger 0: the holder and pasta go with the last run, the record with them.
    eventually("the holder to go", || {
        !world.state().join("user-network.json").exists()
    });
    // Nothing of the user's is left in the private host's namespaces.
    assert!(!sh("ip -o link").contains("netbox0"));
    assert!(!sh("nft list tables").contains("netbox"));
}

#[test]
fn published_ports_reach_cmd_and_kill_9_of_the_uplink_and_the_holder_recover() {
    let test =
        "rootless_core::published_ports_reach_cmd_and_kill_9_of_the_uplink_and_the_holder_recover";
    if !rooted(test) {
        return;
    }
    let world = World::new(64102);
    let mut server = world.spawn(&[
        "run",
        "-p",
        "18080:80",
        "--",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        &world.dir.path().join("www").display().to_string(),
    ]);
    for host in ["127.0.0.1", "10.213.0.1"] {
        eventually(&format!("the published port on {host}"), || {
            Command::new("busybox")
                .args(["wget", "-qO-", &format!("http://{host}:18080/")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("hello-world"))
                .unwrap_or(false)
        });
    }
    // pasta killed: the holder starts it again and the next run reaches the world.
    let record = world.record();
    let pasta = pid_of(&record, "uplink_pid");
    sh(&format!("kill -9 {pasta}"));
    eventually("a new uplink", || {
        let r = world.record();
        let p = r["uplink_pid"].as_u64().unwrap_or(0);
        p != 0 && p != pasta
    });
    let out = world.output(&["run", "--", "wget", "-qO-", "http://10.213.0.2/"]);
    assert!(text(&out).contains("hello-world"), "{}", text(&out));
    // The holder killed: pasta and the keeper go with it; the next run starts a new one.
    let holder = pid_of(&record, "holder_pid");
    let keeper = pid_of(&record, "keeper_pid");
    let pasta = pid_of(&world.record(), "uplink_pid");
    sh(&format!("kill -9 {holder}"));
    eventually("pasta and the keeper to die with the holder", || {
        !alive(pasta) && !alive(keeper)
    });
    let _ = server.kill();
    let _ = server.wait();
    let out = world.output(&["run", "--", "wget", "-qO-", "http://10.213.0.2/"]);
    assert!(text(&out).contains("hello-world"), "{}", text(&out));
    eventually("the new holder to go", || {
        !world.state().join("user-network.json").exists()
    });
}

#[test]
fn rootless_errors_are_one_line_with_the_fix() {
    let test = "rootless_core::rootless_errors_are_one_line_with_the_fix";
    if !rooted(test) {
        return;
    }
    let world = World::new(64103);
    let low = world.output(&["run", "-p", "80:80", "--", "true"]);
    assert_eq!(low.status.code(), Some(125));
    let msg = text(&low);
    assert!(
        msg.contains("net.ipv4.ip_unprivileged_port_start = 1024") && msg.lines().count() == 1,
        "{msg}"
    );
    let mut no_pasta = world.netbox(&["run", "--", "true"]);
    no_pasta.env("PATH", "/nonexistent");
    let out = no_pasta.output().expect("run");
    assert_eq!(out.status.code(), Some(125));
    let msg = text(&out);
    assert_eq!(
        msg.trim(),
        "netbox: rootless networking needs pasta: apt-get install passt"
    );
    // Nothing was started.
    assert!(!world.state().join("user-network.json").exists());
    assert!(!Path::new(&world.state().join("host")).join("run").exists());
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn one_users_sandboxes_share_a_network_that_another_user_cannot_see() {
    let test = "rootless_core::one_users_sandboxes_share_a_network_that_another_user_cannot_see";
    if !rooted(test) {
        return;
    }
    let world = World::new(64104);
    let added = world.output(&["ns", "add", "web"]);
    assert!(added.status.success(), "{}", text(&added));
    let web_ip = String::from_utf8_lossy(&added.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("ns add prints the address")
        .to_string();
    // The named sandbox keeps the network host up (linger 0 otherwise).
    std::thread::sleep(Duration::from_millis(200));
    let mut server = world.spawn(&[
        "exec", "web", "--", "busybox", "nc", "-l", "-p", "7000", "-e", "echo", "from-web",
    ]);
    let mut reached = String::new();
    eventually("a second sandbox reaching the first by address", || {
        let out = world.output(&["run", "--", "busybox", "nc", &web_ip, "7000"]);
        reached = text(&out);
        reached.contains("from-web")
    });
    let _ = server.kill();
    let _ = server.wait();
    let ls = text(&world.output(&["ls"]));
    assert!(ls.contains("web"), "{ls}");
    // Another user: sees nothing, enters nothing.
    let other = World {
        dir: tempfile::tempdir().expect("tempdir"),
        bin: world.bin.clone(),
        uid: 64105,
    };
    sh(&format!(
        "chmod 755 {0}; for d in home xdg; do mkdir -m 700 {0}/$d; chown 64105:64105 {0}/$d; done",
        other.dir.path().display()
    ));
    let ls = other.output(&["ls"]);
    assert!(ls.status.success(), "{}", text(&ls));
    assert!(!text(&ls).contains("web"), "{}", text(&ls));
    let exec = other.output(&["exec", "web", "--", "true"]);
    assert_eq!(exec.status.code(), Some(125), "{}", text(&exec));
    let keeper = pid_of(&world.record(), "keeper_pid");
    let nsenter = Command::new(sh("command -v setpriv").trim())
        .args([
            "--reuid",
            "64105",
            "--regid",
            "64105",
            "--clear-groups",
            "nsenter",
            "-t",
        ])
        .arg(keeper.to_string())
        .args(["-U", "-n", "true"])
        .output()
        .expect("nsenter");
    assert!(
        !nsenter.status.success(),
        "another user entered: {}",
        text(&nsenter)
    );
    let del = world.output(&["ns", "del", "web"]);
    assert!(del.status.success(), "{}", text(&del));
    eventually("the holder to go once the named sandbox is gone", || {
        !world.state().join("user-network.json").exists()
    });
}
