//! `netbox run` end to end: the built binary in a private host, checked with `ip -j` and with
//! what the command itself sees.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{
    eventually, example, ip_json, link_names, netbox, netbox_bin, private_host, sh,
};

/// Environment variable that turns `run::role_helper` into a small network program run as CMD
/// inside sandboxes (no netcat on a fresh machine).
const ROLE: &str = "NETBOX_TEST_ROLE";

/// `netbox run ARGS -- CMD...`, without stdin, CMD as the test's own user.
fn run_command(args: &[&str], cmd: &[&str]) -> Command {
    let mut command = netbox();
    command
        .arg("run")
        .args(args)
        .arg("--")
        .args(cmd)
        .env_remove("SUDO_UID")
        .stdin(Stdio::null());
    command
}

/// `netbox run ARGS -- CMD...` with its output captured.
fn run(args: &[&str], cmd: &[&str]) -> Output {
    run_command(args, cmd).output().expect("start netbox")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "netbox failed ({}):\n{}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Host-side veths made by netbox.
fn host_veths() -> Vec<String> {
    link_names()
        .into_iter()
        .filter(|n| n.starts_with("nbx"))
        .collect()
}

/// A `netbox run` in the background whose CMD prints a line once it is ready.
fn start(args: &[&str], cmd: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = run_command(args, cmd)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start netbox");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

fn wait_line(out: &mut BufReader<std::process::ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("read CMD output");
        assert!(n > 0, "CMD ended before printing {want:?}");
        // libtest may print "test name ... " on the same line as a helper's output.
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// The test binary itself as a CMD playing `role` inside a sandbox.
fn role_cmd(role: &str) -> Vec<String> {
    vec![
        "env".into(),
        format!("{ROLE}={role}"),
        std::env::current_exe()
            .expect("test binary")
            .display()
            .to_string(),
        "run::role_helper".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Not a test on its own: when NETBOX_TEST_ROLE is set, plays a network role inside a sandbox.
/// `echo:PORT` answers one line per connection, forever; `ask:ADDR:PORT` sends a line and
/// prints the answer.
#[test]
fn role_helper() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if let Some(port) = role.strip_prefix("echo:") {
        let listener =
            TcpListener::bind(("0.0.0.0", port.parse::<u16>().expect("port"))).expect("listen");
        println!("listening");
        for conn in listener.incoming() {
            let mut conn = conn.expect("accept");
            let mut line = String::new();
            BufReader::new(conn.try_clone().expect("clone"))
                .read_line(&mut line)
                .expect("read");
            conn.write_all(format!("echo {line}").as_bytes())
                .expect("write");
        }
    } else if let Some(target) = role.strip_prefix("ask:") {
        println!("answer: {}", ask(target));
    }
}

fn ask(target: &str) -> String {
    let mut conn = TcpStream::connect(target).unwrap_or_else(|e| panic!("connect {target}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"hello\n").expect("send");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("receive");
    answer.trim().to_string()
}

#[test]
fn sandbox_gets_address_route_dns_and_hostname() {
    if !private_host("run::sandbox_gets_address_route_dns_and_hostname") {
        return;
    }
    let host_resolv = std::fs::read("/etc/resolv.conf").expect("host resolv.conf");
    let out = run(
        &["--hostname", "box1", "--dns", "192.0.2.53"],
        &[
            "sh",
            "-c",
            "ip -j addr show eth0; echo ---; ip -j route; echo ---; cat /etc/resolv.conf; \
             echo ---; cat /etc/hosts; echo ---; cat /proc/sys/kernel/hostname",
        ],
    );
    assert_ok(&out);
    let text = stdout(&out);
    let parts: Vec<&str> = text.split("---\n").collect();
    assert_eq!(parts.len(), 5, "{text}");
    let addr: serde_json::Value = serde_json::from_str(parts[0]).expect("addr json");
    let inet: Vec<&serde_json::Value> = addr[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1, "{text}");
    let ip = inet[0]["local"].as_str().expect("local");
    assert!(ip.starts_with("10.117.0.") && ip != "10.117.0.1", "{ip}");
    assert_eq!(inet[0]["prefixlen"], 24);
    assert_eq!(addr[0]["operstate"], "UP", "{text}");
    let routes: serde_json::Value = serde_json::from_str(parts[1]).expect("route json");
    assert!(
        routes
            .as_array()
            .expect("routes")
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.117.0.1" && r["dev"] == "eth0"),
        "{routes}"
    );
    assert!(parts[2].contains("nameserver 192.0.2.53\n"), "{}", parts[2]);
    assert!(parts[3].contains(&format!("{ip}\tbox1\n")), "{}", parts[3]);
    assert_eq!(parts[4].trim(), "box1");
    // The host's own files and name are untouched.
    assert_eq!(
        std::fs::read("/etc/resolv.conf").expect("read"),
        host_resolv
    );
    assert_ne!(sh("cat /proc/sys/kernel/hostname").trim(), "box1");
    // The bridge carries the gateway; the veth is gone with the sandbox.
    let bridge = ip_json("addr show netbox0");
    assert!(bridge[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .any(|a| a["local"] == "10.117.0.1" && a["prefixlen"] == 24));
    eventually("the veth to go", || host_veths().is_empty());
}

#[test]
fn sandboxes_reach_each_other_and_the_gateway_over_tcp() {
    if !private_host("run::sandboxes_reach_each_other_and_the_gateway_over_tcp") {
        return;
    }
    let server_cmd = role_cmd("echo:7000");
    let server_args: Vec<&str> = server_cmd.iter().map(String::as_str).collect();
    let (mut server, mut server_out) = start(&["--ip", "10.117.0.10"], &server_args);
    wait_line(&mut server_out, "listening");
    // The host reaches the sandbox through the bridge.
    assert_eq!(ask("10.117.0.10:7000"), "echo hello");
    // A second sandbox reaches the first, and the gateway (a listener on the host side).
    let gateway = TcpListener::bind("10.117.0.1:7001").expect("listen on the gateway");
    let gateway_thread = std::thread::spawn(move || {
        let (mut conn, peer) = gateway.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(conn.try_clone().expect("clone"))
            .read_line(&mut line)
            .expect("read");
        conn.write_all(b"gateway\n").expect("write");
        peer.ip().to_string()
    });
    let client_cmd = format!(
        "{} && {}",
        shell_join(&role_cmd("ask:10.117.0.10:7000")),
        shell_join(&role_cmd("ask:10.117.0.1:7001"))
    );
    let out = run(&["--ip", "10.117.0.11"], &["sh", "-c", &client_cmd]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("answer: echo hello"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("answer: gateway"), "{}", stdout(&out));
    assert_eq!(gateway_thread.join().expect("gateway"), "10.117.0.11");
    server.kill().expect("stop the server");
    let status = server.wait().expect("wait");
    assert_eq!(status.code(), None);
    eventually("both veths to go", || host_veths().is_empty());
}

fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn exit_status_and_signals_pass_through() {
    if !private_host("run::exit_status_and_signals_pass_through") {
        return;
    }
    assert_eq!(run(&[], &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run(&[], &["true"]).status.code(), Some(0));
    assert_eq!(
        run(&[], &["sh", "-c", "kill -KILL $$"]).status.code(),
        Some(137)
    );
    let missing = run(&[], &["/no/such/command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("/no/such/command"));
    // netbox's own failures: 125 and one line.
    let bad = run(&["--ip", "192.0.2.7"], &["true"]);
    assert_eq!(bad.status.code(), Some(125));
    assert_eq!(stderr(&bad).trim().lines().count(), 1, "{}", stderr(&bad));
    assert!(stderr(&bad).starts_with("netbox: "), "{}", stderr(&bad));
    // Forwarded signals reach CMD, which decides what to do with them.
    for (signal, expect) in [
        (nix::sys::signal::Signal::SIGTERM, 42),
        (nix::sys::signal::Signal::SIGUSR1, 43),
        (nix::sys::signal::Signal::SIGINT, 44),
    ] {
        let (mut child, mut out) = start(
            &[],
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; trap 'exit 43' USR1; trap 'exit 44' INT; echo ready; \
                 while :; do sleep 0.02; done",
            ],
        );
        wait_line(&mut out, "ready");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal netbox");
        assert_eq!(child.wait().expect("wait").code(), Some(expect), "{signal}");
    }
    // A signal CMD does not handle kills it; netbox reports 128+N.
    let (mut child, mut out) = start(&[], &["sh", "-c", "echo ready; exec sleep 30"]);
    wait_line(&mut out, "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("signal");
    assert_eq!(child.wait().expect("wait").code(), Some(129));
}

/// Kills a running `netbox run` with SIGKILL and waits until its CMD and veth are gone.
fn sigkill_and_see_cmd_die(netbox: &mut Child) {
    let cmd = sh(&format!("cat /proc/{}/task/*/children", netbox.id()));
    assert!(!cmd.trim().is_empty(), "netbox has no CMD child");
    netbox.kill().expect("SIGKILL netbox");
    netbox.wait().expect("reap");
    eventually("CMD to die", || {
        cmd.split_whitespace()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    eventually("the veth to go", || host_veths().is_empty());
}

#[test]
fn sigkill_of_netbox_leaves_nothing_behind() {
    if !private_host("run::sigkill_of_netbox_leaves_nothing_behind") {
        return;
    }
    let (mut child, mut out) = start(&[], &["sh", "-c", "echo ready; exec sleep 300"]);
    wait_line(&mut out, "ready");
    assert_eq!(host_veths().len(), 1);
    // CMD dies with netbox, the namespace with CMD, the veth with the namespace.
    sigkill_and_see_cmd_die(&mut child);
    assert!(std::fs::read_dir("/run/netns")
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    // The lease outlived netbox but names a dead owner: the next run reclaims it.
    let store =
        netbox::provision::leases::Store::open(&netbox::model::ipam::default_data_dir(), "netbox")
            .expect("store");
    assert_eq!(store.leases().expect("leases").len(), 1);
    assert_ok(&run(&[], &["true"]));
    assert!(store.leases().expect("leases").is_empty());
}

#[test]
fn failed_runs_leave_the_host_unchanged() {
    if !private_host("run::failed_runs_leave_the_host_unchanged") {
        return;
    }
    let (mut holder, mut out) = start(
        &["--ip", "10.117.0.50"],
        &["sh", "-c", "echo ready; exec sleep 300"],
    );
    wait_line(&mut out, "ready");
    let before = link_names();
    let store =
        netbox::provision::leases::Store::open(&netbox::model::ipam::default_data_dir(), "netbox")
            .expect("store");
    // The address is taken by the first sandbox.
    let taken = run(&["--ip", "10.117.0.50"], &["true"]);
    assert_eq!(taken.status.code(), Some(125));
    assert!(stderr(&taken).contains("10.117.0.50"), "{}", stderr(&taken));
    // The interface name is taken inside the sandbox (lo exists in every namespace): the veth
    // cannot be made and the lease is given back.
    let name_taken = run(&["--ifname", "lo"], &["true"]);
    assert_eq!(name_taken.status.code(), Some(125));
    assert!(
        stderr(&name_taken).contains("\"lo\""),
        "{}",
        stderr(&name_taken)
    );
    let too_long = run(&["--ifname", "a-name-too-long-for-linux"], &["true"]);
    assert_eq!(too_long.status.code(), Some(125));
    eventually("rolled-back veths to go", || link_names() == before);
    assert_eq!(store.leases().expect("leases").len(), 1);
    holder.kill().expect("stop");
    holder.wait().expect("reap");
}

#[test]
fn bridge_name_held_by_another_kind_of_link_is_refused() {
    if !private_host("run::bridge_name_held_by_another_kind_of_link_is_refused") {
        return;
    }
    sh("ip link add netbox0 type veth peer name other0");
    let before = link_names();
    let out = run(&[], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("netbox0"), "{}", stderr(&out));
    assert_eq!(link_names(), before);
    let store =
        netbox::provision::leases::Store::open(&netbox::model::ipam::default_data_dir(), "netbox")
            .expect("store");
    assert!(store.leases().expect("leases").is_empty());
}

#[test]
fn builtin_subnet_overlapping_a_host_route_is_refused() {
    if !private_host("run::builtin_subnet_overlapping_a_host_route_is_refused") {
        return;
    }
    sh(
        "ip link add ovl0 type veth peer name ovl1 && ip link set ovl0 up && ip link set ovl1 up \
        && ip route add 10.117.0.0/16 dev ovl0",
    );
    let out = run(&[], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let msg = stderr(&out);
    assert!(
        msg.contains("10.117.0.0/16") && msg.contains("--subnet"),
        "{msg}"
    );
    assert!(!link_names().iter().any(|n| n == "netbox0"), "{msg}");
    let other = run(
        &["--subnet", "10.118.0.0/24"],
        &["ip", "-j", "addr", "show", "eth0"],
    );
    assert_ok(&other);
    assert!(stdout(&other).contains("\"10.118.0."), "{}", stdout(&other));
}

#[test]
fn concurrent_runs_never_share_an_address() {
    if !private_host("run::concurrent_runs_never_share_an_address") {
        return;
    }
    let children: Vec<Child> = (0..12)
        .map(|_| {
            netbox()
                .args(["run", "--", "ip", "-4", "-j", "addr", "show", "eth0"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start")
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
        let ip = v[0]["addr_info"][0]["local"]
            .as_str()
            .expect("ip")
            .to_string();
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    eventually("the veths to go", || host_veths().is_empty());
}

#[test]
fn command_cannot_reconfigure_its_network_unless_allowed() {
    if !private_host("run::command_cannot_reconfigure_its_network_unless_allowed") {
        return;
    }
    let denied = run(&[], &["ip", "addr", "add", "10.117.0.99/24", "dev", "eth0"]);
    assert_ne!(denied.status.code(), Some(0));
    assert!(
        stderr(&denied).contains("Operation not permitted"),
        "{}",
        stderr(&denied)
    );
    let caps = run(&[], &["grep", "^CapBnd", "/proc/self/status"]);
    let mask = u64::from_str_radix(stdout(&caps).split_whitespace().nth(1).expect("mask"), 16)
        .expect("hex");
    assert_eq!(mask & (1 << 12), 0, "CAP_NET_ADMIN in the bounding set");
    assert_eq!(mask & (1 << 21), 0, "CAP_SYS_ADMIN in the bounding set");
    let allowed = run(
        &["--cap-add", "NET_ADMIN"],
        &["ip", "addr", "add", "10.117.0.99/24", "dev", "eth0"],
    );
    assert_ok(&allowed);
}

#[test]
fn net_none_gives_loopback_only() {
    if !private_host("run::net_none_gives_loopback_only") {
        return;
    }
    let out = run(&["--net", "none"], &["ip", "-j", "link"]);
    assert_ok(&out);
    let links: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let links = links.as_array().expect("links");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["ifname"], "lo");
    assert!(links[0]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "UP"));
}

/// A copy of the netbox binary that an unprivileged user may run (the build tree may not be
/// readable by them).
fn netbox_for_everyone(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.join("netbox");
    std::fs::copy(netbox_bin(), &copy).expect("copy netbox");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

#[test]
fn unprivileged_users_get_net_none_and_bridges_never_reach_the_host() {
    if !private_host("run::unprivileged_users_get_net_none_and_bridges_never_reach_the_host") {
        return;
    }
    if !crate::harness::is_root() {
        // Already unprivileged (rootless private host): run as ourselves.
        let out = run(&["--net", "none"], &["ip", "-j", "link"]);
        assert_ok(&out);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = netbox_for_everyone(dir.path());
    let as_nobody = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .uid(65534)
            .gid(65534)
            .env_remove("SUDO_UID")
            .env_remove("XDG_RUNTIME_DIR")
            .env("NETBOX_USER_NET_LINGER", "0")
            .current_dir("/")
            .output()
            .expect("run as nobody")
    };
    let out = as_nobody(&[
        "run",
        "--net",
        "none",
        "--",
        "sh",
        "-c",
        "id -u; ip -j link",
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    let (uid, links) = text.split_once('\n').expect("two parts");
    assert_eq!(uid, "65534");
    let links: serde_json::Value = serde_json::from_str(links).expect("json");
    assert_eq!(links.as_array().expect("links").len(), 1, "{links}");
    // A bridge run without privileges goes to the user's own network host (tests/rootless*.rs);
    // this private host has no route for its uplink: one error line, nothing on the host.
    let refused = as_nobody(&["run", "--", "true"]);
    let msg = stderr(&refused);
    if !refused.status.success() {
        assert_eq!(refused.status.code(), Some(125), "{msg}");
        assert_eq!(msg.trim().lines().count(), 1, "{msg}");
        assert!(msg.starts_with("netbox: "), "{msg}");
    }
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!link_names().iter().any(|n| n == "netbox0"));
    let _ = std::fs::remove_dir_all("/tmp/netbox-65534");
}

#[test]
fn interactive_shell_works_on_a_terminal() {
    if !private_host("run::interactive_shell_works_on_a_terminal") {
        return;
    }
    // `script` gives netbox a pseudo-terminal, as a user's shell would.
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} run -- bash -i", netbox_bin().display()),
            "/dev/null",
        ])
        .env_remove("SUDO_UID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script (util-linux)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo answer=$((6*7)); tty; exit 5\n")
        .expect("type");
    let out = child.wait_with_output().expect("wait");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(5), "{text}{}", stderr(&out));
    assert!(text.contains("answer=42"), "{text}");
    assert!(
        text.contains("/dev/pts/"),
        "CMD's stdin is not the terminal: {text}"
    );
    assert!(!text.contains("no job control"), "{text}");
}

/// A CNI configuration directory holding one conflist, for NETBOX_CNI_CONF_DIR.
fn conf_dir(conflist: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = conflist["name"].as_str().expect("conflist name");
    std::fs::write(
        dir.path().join(format!("{name}.conflist")),
        conflist.to_string(),
    )
    .expect("write conflist");
    dir
}

#[test]
fn network_names_a_cni_conflist() {
    if !private_host("run::network_names_a_cni_conflist") {
        return;
    }
    let dir = conf_dir(serde_json::json!({
            "cniVersion": "1.0.0", "name": "web",
            "plugins": [{"type": "bridge", "bridge": "br-web", "isGateway": true,
                         "isDefaultGateway": true, "mtu": 1400,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.0.0/24",
                                  "rangeStart": "10.42.0.100", "rangeEnd": "10.42.0.120"}]],
                                  "routes": [{"dst": "192.0.2.0/24"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}]
    }));
    let out = run_command(
        &["--network", "web"],
        &["sh", "-c", "ip -j addr show eth0; echo ---; ip -j route"],
    )
    .env("NETBOX_CNI_CONF_DIR", dir.path())
    .output()
    .expect("netbox");
    assert_ok(&out);
    let text = stdout(&out);
    let (addr, routes) = text.split_once("---\n").expect("two parts");
    let addr: serde_json::Value = serde_json::from_str(addr).expect("addr json");
    assert_eq!(addr[0]["mtu"], 1400, "{addr}");
    let ip = addr[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str())
        .expect("an IPv4 address")
        .to_string();
    let last: u8 = ip
        .rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("octet");
    assert!(
        ip.starts_with("10.42.0.") && (100..=120).contains(&last),
        "{ip}"
    );
    let routes: serde_json::Value = serde_json::from_str(routes).expect("route json");
    let routes = routes.as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.42.0.1"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "192.0.2.0/24" && r["gateway"] == "10.42.0.1"),
        "{routes:?}"
    );
    assert!(link_names().iter().any(|n| n == "br-web"));
    let unknown = run_command(&["--network", "nope"], &["true"])
        .env("NETBOX_CNI_CONF_DIR", dir.path())
        .output()
        .expect("netbox");
    assert_eq!(unknown.status.code(), Some(125));
    assert!(
        stderr(&unknown).contains("\"nope\""),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn loopback_stub_resolver_is_replaced_by_its_upstream_servers() {
    if !private_host("run::loopback_stub_resolver_is_replaced_by_its_upstream_servers") {
        return;
    }
    // Make this private host look like a systemd-resolved machine (mounts stay private).
    let dir = tempfile::tempdir().expect("tempdir");
    let stub = dir.path().join("stub-resolv.conf");
    std::fs::write(
        &stub,
        "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
    )
    .expect("write stub");
    sh(&format!(
        "mount --bind {} /etc/resolv.conf && mount -t tmpfs tmpfs /run && \
         mkdir -p /run/systemd/resolve && \
         printf 'nameserver 192.0.2.1\\nnameserver 2001:db8::1\\n' > /run/systemd/resolve/resolv.conf",
        stub.display()
    ));
    let out = run(&["--net", "none"], &["cat", "/etc/resolv.conf"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("nameserver 192.0.2.1\n"), "{text}");
    assert!(text.contains("nameserver 2001:db8::1\n"), "{text}");
    assert!(!text.contains("127.0.0.53"), "{text}");
    assert!(text.contains("search lan"), "{text}");
    // Without an upstream list, netbox warns and says how to fix it.
    sh("rm /run/systemd/resolve/resolv.conf");
    let out = run(&["--net", "none"], &["cat", "/etc/resolv.conf"]);
    assert_ok(&out);
    assert!(!stdout(&out).contains("127.0.0.53"), "{}", stdout(&out));
    assert!(stderr(&out).contains("--dns"), "{}", stderr(&out));
}

#[test]
fn attach_failing_inside_the_sandbox_rolls_back_veth_and_lease() {
    if !private_host("run::attach_failing_inside_the_sandbox_rolls_back_veth_and_lease") {
        return;
    }
    // The route's gateway is on no connected network: the kernel refuses it after the veth,
    // the address and the link state were already set.
    let dir = conf_dir(serde_json::json!({
            "cniVersion": "1.0.0", "name": "badroute",
            "plugins": [{"type": "bridge", "bridge": "br-bad", "isGateway": true,
                         "ipam": {"type": "host-local", "subnet": "10.43.0.0/24",
                                  "routes": [{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]}}]
    }));
    let out = run_command(&["--network", "badroute"], &["true"])
        .env("NETBOX_CNI_CONF_DIR", dir.path())
        .output()
        .expect("netbox");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("192.0.2.0/24"), "{}", stderr(&out));
    eventually("the veth to be rolled back", || host_veths().is_empty());
    let store = netbox::provision::leases::Store::open(
        &netbox::model::ipam::default_data_dir(),
        "badroute",
    )
    .expect("store");
    assert!(store.leases().expect("leases").is_empty());
}

#[test]
fn command_run_as_another_user_still_dies_with_netbox() {
    if !private_host("run::command_run_as_another_user_still_dies_with_netbox") {
        return;
    }
    if !crate::harness::is_root() {
        crate::harness::skip(
            "run::command_run_as_another_user_still_dies_with_netbox",
            "switching users needs root",
        );
        return;
    }
    let (mut child, mut out) = start(
        &["--user", "65534:65534"],
        &["sh", "-c", "id -u; echo ready; exec sleep 300"],
    );
    let mut uid = String::new();
    out.read_line(&mut uid).expect("uid");
    assert_eq!(uid.trim(), "65534");
    wait_line(&mut out, "ready");
    // Changing credentials clears PDEATHSIG; netbox arms it again after the switch.
    sigkill_and_see_cmd_die(&mut child);
}

#[test]
fn sandbox_example_runs_its_command_on_the_builtin_network() {
    if !private_host("run::sandbox_example_runs_its_command_on_the_builtin_network") {
        return;
    }
    let bin = example("sandbox");
    let out = Command::new(&bin)
        .args([
            "sh",
            "-c",
            "ip -j addr show eth0; cat /proc/sys/kernel/hostname",
        ])
        .output()
        .expect("run the example");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"10.117.0."), "{text}");
    assert!(text.trim_end().ends_with("example"), "{text}");
    let code = Command::new(&bin)
        .args(["sh", "-c", "exit 7"])
        .status()
        .expect("run the example");
    assert_eq!(code.code(), Some(7));
}
