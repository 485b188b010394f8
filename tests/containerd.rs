//! containerd as a second real runtime: `ctr run --cni` goes through go-cni, the library
//! Kubernetes' CRI plugin uses. Each test starts its own containerd (private root, state,
//! socket and configuration) inside its private host, and gives `ctr`, which reads only
//! /etc/cni/net.d and /opt/cni/bin, private copies of those (tmpfs mounts in the private host's
//! mount namespace). Containers run a rootfs built here from busybox-static: no image, no
//! registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{cni_bin, eventually, files_under, link_names, private_host, sh, skip};

const SUBNET_PREFIX: &str = "10.91.0.";

/// A containerd of the test's own.
struct Containerd {
    dir: PathBuf,
    daemon: Child,
}

impl Containerd {
    /// Prepares the private host (CNI directories, cgroups, rootfs) and starts containerd with
    /// a netbox-cni network at `version` (`extra` keys added to the plugin's configuration).
    fn start(version: &str, extra: Value) -> Containerd {
        let dir = PathBuf::from("/var/lib/netbox/containerd");
        let d = dir.display();
        // /etc/cni and /opt exist on the host (containernetworking-plugins, Debian's base).
        sh("mount -t tmpfs tmpfs /etc/cni && mkdir -p /etc/cni/net.d");
        sh("mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin");
        // containerd 1.6 keeps shim sockets, fifos and runc's state under /run/containerd
        // whatever its configuration says: a fresh /run (nothing in the private host's /run is
        // in use yet) keeps even that directory off the real host.
        sh("mount -t tmpfs tmpfs /run && mkdir -p /run/netns /run/netbox /run/containerd");
        sh(&format!(
            "cp {} /opt/cni/bin/netbox-cni",
            cni_bin().display()
        ));
        crate::harness::private_cgroups();
        sh(&format!(
            "mkdir -p {d}/rootfs/bin {d}/rootfs/proc {d}/rootfs/sys {d}/rootfs/dev \
             {d}/rootfs/etc {d}/rootfs/tmp {d}/rootfs/www && cp /bin/busybox {d}/rootfs/bin/ && \
             echo hello-from-a > {d}/rootfs/www/index.html"
        ));
        write_conflist(version, extra);
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n"
            ),
        )
        .expect("config.toml");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let ctr = Containerd { dir, daemon };
        eventually("containerd's socket", || {
            ctr.dir.join("containerd.sock").exists()
        });
        ctr
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr run --rm --cni` of the busybox rootfs as container `id`, running `script` in sh.
    fn run(&self, id: &str, script: &str) -> Output {
        let rootfs = self.dir.join("rootfs").display().to_string();
        self.ctr(&[
            "run",
            "--rm",
            "--cni",
            "--rootfs",
            &rootfs,
            id,
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ])
    }

    /// [`Containerd::run`] that must succeed; its stdout.
    fn run_ok(&self, id: &str, script: &str) -> String {
        let out = self.run(id, script);
        assert!(
            out.status.success(),
            "ctr run {id} failed: {}{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Containerd {
    /// Removes a container whose start failed half-way (ctr leaves its task behind).
    fn remove(&self, id: &str) {
        self.ctr(&["task", "delete", "--force", id]);
        self.ctr(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims leave the test's process group (they start their own session): every task
        // goes before containerd, and its shim with it.
        let tasks = self.ctr(&["task", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            self.remove(id);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn write_conflist(version: &str, extra: Value) {
    let mut plugin = json!({
        "type": "netbox-cni", "bridge": "nbctr0", "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "netbox", "subnet": "10.91.0.0/24"}
    });
    if let (Some(p), Some(extra)) = (plugin.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    let list = json!({"cniVersion": version, "name": "nbctr", "plugins": [plugin]});
    std::fs::write("/etc/cni/net.d/10-nbctr.conflist", list.to_string()).expect("conflist");
}

/// False (after saying so) when containerd is not installed.
fn have_containerd(test: &str) -> bool {
    let found = ["containerd", "ctr", "runc"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        skip(
            test,
            "containerd, ctr or runc is not installed (apt-get install containerd)",
        );
    }
    found
}

/// The IPv4 address `ip -4 -o addr show eth0` printed.
fn address_in(output: &str) -> String {
    output
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {output:?}"))
        .to_string()
}

fn leases() -> Vec<String> {
    files_under(Path::new("/var/lib/netbox/ipam"))
        .into_iter()
        .filter(|f| f.contains("/leases/"))
        .collect()
}

fn records() -> Vec<String> {
    files_under(Path::new("/run/netbox/cni"))
        .into_iter()
        .collect()
}

fn host_veths() -> Vec<String> {
    link_names()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect()
}

/// Nothing of any attachment is left: veths, leases, records, rules.
fn nothing_left() {
    eventually("the veths to go", || host_veths().is_empty());
    assert!(leases().is_empty(), "{:?}", leases());
    assert!(records().is_empty(), "{:?}", records());
    let tables = crate::firewall::netbox_state();
    assert!(tables.is_empty(), "{tables:?}");
}

#[test]
fn containerd_gives_address_and_default_route_at_each_cni_version() {
    const TEST: &str = "containerd::containerd_gives_address_and_default_route_at_each_cni_version";
    if !private_host(TEST) || !have_containerd(TEST) {
        return;
    }
    let ctr = Containerd::start("0.4.0", json!({}));
    for (i, version) in ["0.4.0", "1.0.0"].iter().enumerate() {
        write_conflist(version, json!({}));
        let out = ctr.run_ok(&format!("v{i}"), "ip -4 -o addr show eth0; ip route");
        assert!(
            address_in(&out).starts_with(SUBNET_PREFIX),
            "{version}: {out}"
        );
        assert!(
            out.contains(&format!("default via {SUBNET_PREFIX}1")),
            "{version}: {out}"
        );
        nothing_left();
    }
    // containerd 1.6's go-cni (libcni 1.1) reads results up to 1.0.0 only: with a 1.1.0
    // conflist netbox-cni answers in 1.1.0 as the spec asks, and ctr refuses the answer. It
    // never calls DEL after that: `netbox gc` reclaims what the attachment held once its
    // namespace is gone.
    write_conflist("1.1.0", json!({}));
    let out = ctr.run("v2", "ip -4 -o addr show eth0");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("unsupported CNI result version \"1.1.0\""),
        "{said}"
    );
    ctr.remove("v2");
    let gc = Command::new(crate::harness::netbox_bin())
        .arg("gc")
        .output()
        .expect("netbox gc");
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    nothing_left();
}

#[test]
fn containerd_containers_talk_and_twenty_start_at_once_with_distinct_addresses() {
    const TEST: &str =
        "containerd::containerd_containers_talk_and_twenty_start_at_once_with_distinct_addresses";
    if !private_host(TEST) || !have_containerd(TEST) {
        return;
    }
    let ctr = Containerd::start("1.0.0", json!({}));
    std::thread::scope(|scope| {
        let server =
            scope.spawn(|| ctr.run("a", "/bin/busybox httpd -f -p 8080 -h /www & sleep 3"));
        // The server's address, from its record, once its ADD is done.
        let mut address = String::new();
        eventually("container a's attachment", || {
            let record = std::fs::read_to_string("/run/netbox/cni/default-a+eth0.json")
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r).ok());
            match record {
                Some(r) if r["phase"] == "ready" => {
                    address = r["addresses"][0]
                        .as_str()
                        .and_then(|a| a.split('/').next())
                        .unwrap_or_default()
                        .to_string();
                    true
                }
                _ => false,
            }
        });
        let got = ctr.run_ok(
            "b",
            &format!(
                "for i in 1 2 3 4 5 6 7 8 9 10; do \
                 wget -q -O - http://{address}:8080/ && exit 0; sleep 0.2; done; exit 1"
            ),
        );
        assert!(got.contains("hello-from-a"), "{got}");
        let served = server.join().expect("server");
        assert!(served.status.success(), "{served:?}");
    });
    nothing_left();
    // 20 at once: every one gets its own address.
    let outputs: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let ctr = &ctr;
                scope.spawn(move || ctr.run_ok(&format!("c{i}"), "ip -4 -o addr show eth0"))
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("run")).collect()
    });
    let mut addresses: Vec<String> = outputs.iter().map(|o| address_in(o)).collect();
    assert!(addresses.iter().all(|a| a.starts_with(SUBNET_PREFIX)));
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 20, "{outputs:?}");
    nothing_left();
}

#[test]
fn containerd_start_stop_cycles_leave_nothing_and_masquerade_rules_go_with_the_container() {
    const TEST: &str = "containerd::containerd_start_stop_cycles_leave_nothing_and_masquerade_rules_go_with_the_container";
    if !private_host(TEST) || !have_containerd(TEST) {
        return;
    }
    let ctr = Containerd::start("1.0.0", json!({"ipMasq": true}));
    std::thread::scope(|scope| {
        let running = scope.spawn(|| ctr.run("m", "sleep 2"));
        eventually("the container's masquerade rules", || {
            !crate::firewall::netbox_state().is_empty()
        });
        let rules = sh("nft list ruleset");
        assert!(rules.contains("masquerade"), "{rules}");
        let done = running.join().expect("run");
        assert!(done.status.success(), "{done:?}");
    });
    nothing_left();
    for i in 0..20 {
        ctr.run_ok(&format!("cycle{i}"), "true");
    }
    nothing_left();
    // No veth lingers in a namespace either: the containers' namespaces are gone.
    std::thread::sleep(Duration::from_millis(50));
    assert!(host_veths().is_empty(), "{:?}", host_veths());
}
