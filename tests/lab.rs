//! Labs: every example lab file runs and passes its checks; the pieces (rate limits, capture,
//! graph, host mode, Rust API, refusals, crash safety) are checked against the kernel's view.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use netbox::lab::{BuildOptions, Lab, Topology};

use crate::harness::{self, eventually, ip_json, netbox};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/labs")
        .join(name)
}

fn lab(args: &[&str]) -> Output {
    netbox()
        .arg("lab")
        .args(args)
        .output()
        .expect("run netbox lab")
}

fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    // `lab test --json` prints the up summary, then the checks.
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `netbox lab test FILE --json` passes every check of the file; returns how many ran.
fn example_passes(file: &str) -> u64 {
    let path = example(file);
    let out = lab(&["test", path.to_str().expect("utf-8"), "--json"]);
    let report = json_of(&out);
    assert!(out.status.success(), "{file}: {report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    let passed = report["passed"].as_u64().expect("passed count");
    assert!(passed > 0);
    // Down left nothing: no state file, no holder.
    assert!(std::fs::read_dir("/run/netbox/labs")
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    passed
}

fn no_namespaces_left() -> bool {
    std::fs::read_dir("/run/netns")
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[test]
fn two_hosts_example_passes() {
    if !harness::private_host("lab::two_hosts_example_passes") {
        return;
    }
    assert_eq!(example_passes("two_hosts.toml"), 4);
    assert!(no_namespaces_left());
}

#[test]
fn router_example_passes() {
    if !harness::private_host("lab::router_example_passes") {
        return;
    }
    assert_eq!(example_passes("router.toml"), 4);
}

#[test]
fn vxlan_example_passes() {
    if !harness::private_host("lab::vxlan_example_passes") {
        return;
    }
    assert_eq!(example_passes("vxlan.toml"), 3);
}

#[test]
fn tun_example_passes() {
    if !harness::private_host("lab::tun_example_passes") {
        return;
    }
    assert_eq!(example_passes("tun_responder.toml"), 2);
    // The same lab without the responder: the kernel answers tun0's own address, nobody
    // answers behind it, so the second ping was the responder's work.
    let text = std::fs::read_to_string(example("tun_responder.toml"))
        .expect("lab file")
        .replace(", echo = true", "");
    let topo = Topology::from_toml(&text).expect("parses");
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    let results = lab.check().expect("checks");
    assert!(results[0].passed, "{results:?}");
    assert!(!results[1].passed, "{results:?}");
}

#[test]
fn rate_limit_example_passes() {
    if !harness::private_host("lab::rate_limit_example_passes") {
        return;
    }
    assert_eq!(example_passes("rate_limit.toml"), 1);
}

#[test]
fn host_mode_builds_named_namespaces_the_kernel_shows_and_down_removes_them() {
    if !harness::private_host(
        "lab::host_mode_builds_named_namespaces_the_kernel_shows_and_down_removes_them",
    ) {
        return;
    }
    if !harness::is_root() {
        harness::skip("lab host mode", "needs root");
        return;
    }
    let file = example("router.toml");
    let file = file.to_str().expect("utf-8");
    let out = lab(&["up", "--host", file]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("router*") && table.contains("10.2.0.1/24"),
        "{table}"
    );
    // The kernel's view: the client's address and default route, the router's forwarding.
    let addrs = ip_json("-n router-client addr show dev eth0");
    let text = addrs.to_string();
    assert!(text.contains("\"10.1.0.2\""), "{text}");
    let routes = ip_json("-n router-client route show default").to_string();
    assert!(routes.contains("10.1.0.1"), "{routes}");
    let fwd = harness::sh("ip netns exec router-router cat /proc/sys/net/ipv4/ip_forward");
    assert_eq!(fwd.trim(), "1");
    let ports = ip_json("-n router--fabric link show master left").to_string();
    assert!(
        ports.contains("left.0") && ports.contains("left.1"),
        "{ports}"
    );
    // exec runs in the node and passes the exit status through.
    let out = lab(&[
        "exec",
        file,
        "server",
        "--",
        "sh",
        "-c",
        "ip -br addr show eth0; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.2.0.2/24"));
    let out = lab(&["check", file]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 passed, 0 failed"));
    // A second up is refused while the first is up.
    let out = lab(&["up", "--host", file]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already up"));
    let out = lab(&["down", file]);
    assert!(out.status.success(), "{out:?}");
    eventually("namespaces removed", no_namespaces_left);
}

#[test]
fn private_lab_is_entered_by_exec_and_vanishes_when_its_holder_is_killed() {
    if !harness::private_host(
        "lab::private_lab_is_entered_by_exec_and_vanishes_when_its_holder_is_killed",
    ) {
        return;
    }
    let file = example("two_hosts.toml");
    let file = file.to_str().expect("utf-8");
    let out = lab(&["up", file, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let pid = json_of(&out)["pid"].as_i64().expect("holder pid") as i32;
    // Nothing on this host: the nodes live in the holder's private host.
    assert!(no_namespaces_left());
    assert!(!harness::link_names().iter().any(|l| l == "sw0"));
    let out = lab(&["exec", file, "h2", "--", "ip", "-j", "addr", "show", "eth0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.10.0.2"));
    // A crash of the holder takes the whole lab with it; the stale state is cleared.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill holder");
    eventually("the holder to die", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    let out = lab(&["check", file]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not up"), "{err}");
    // And it comes up again.
    let out = lab(&["test", file]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn rate_limited_link_carries_its_rate_within_15_percent() {
    if !harness::private_host("lab::rate_limited_link_carries_its_rate_within_15_percent") {
        return;
    }
    let topo = Topology::from_file(&example("rate_limit.toml")).expect("lab file");
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    // The kernel shows a tbf at 20 Mbit/s on both ends.
    for node in ["sender", "receiver"] {
        let q = ip_json(&format!("-n rate-limit-{node} link show eth0"));
        assert!(!q.as_array().expect("links").is_empty());
        let tc = harness::sh(&format!("tc -n rate-limit-{node} -j qdisc show dev eth0"));
        let tc: serde_json::Value = serde_json::from_str(&tc).expect("tc json");
        assert_eq!(tc[0]["kind"], "tbf", "{tc}");
        assert_eq!(tc[0]["options"]["rate"], 2_500_000, "{tc}");
    }
    let listener = lab
        .listen("receiver", "0.0.0.0:5201".parse().expect("addr"))
        .expect("listen");
    let to: SocketAddr = SocketAddr::new(lab.address("sender", "receiver").expect("addr"), 5201);
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut marks = vec![];
        let mut total = 0usize;
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    marks.push((Instant::now(), total));
                }
            }
        }
        marks
    });
    let mut conn = lab.connect("sender", to).expect("connect");
    let chunk = vec![0x5au8; 1 << 16];
    let end = Instant::now() + Duration::from_millis(1400);
    while Instant::now() < end {
        conn.write_all(&chunk).expect("send");
    }
    drop(conn);
    let marks = reader.join().expect("reader");
    // Skip the first 300 ms (slow start, the bucket's initial burst).
    let t0 = marks[0].0 + Duration::from_millis(300);
    let first = marks
        .iter()
        .find(|(t, _)| *t >= t0)
        .expect("data after 300 ms");
    let last = marks.last().expect("data");
    let secs = last.0.duration_since(first.0).as_secs_f64();
    assert!(secs > 0.8, "measured only {secs} s");
    let bits = (last.1 - first.1) as f64 * 8.0 / secs;
    // tbf counts Ethernet frames; TCP payload is about 95% of it (1448 of 1514 bytes).
    let expected = 20e6 * 1448.0 / 1514.0;
    eprintln!(
        "measured {:.2} Mbit/s of payload (expected {:.2})",
        bits / 1e6,
        expected / 1e6
    );
    assert!(
        (bits - expected).abs() / expected <= 0.15,
        "measured {bits} bit/s, expected {expected} ± 15%"
    );
    drop(lab);
    assert!(no_namespaces_left());
}

#[test]
fn rust_api_execs_spawns_connects_and_tears_down_on_drop() {
    if !harness::private_host("lab::rust_api_execs_spawns_connects_and_tears_down_on_drop") {
        return;
    }
    let topo = Topology::from_toml(
        r#"
        name = "api"
        [[switch]]
        name = "sw"
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        listen = ["tcp:7000"]
        [[link]]
        a = "a"
        b = "sw"
        [[link]]
        a = "b"
        b = "sw"
        [[check]]
        from = "a"
        to = "b"
        tcp = 7000
        "#,
    )
    .expect("parses");
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    let b = lab.address("a", "b").expect("b's address");
    // Addresses came from the default pool.
    assert!(b.to_string().starts_with("10.213."), "{b}");
    let out = lab
        .exec("a", "ip", &["-j", "addr", "show", "eth0"])
        .expect("exec");
    assert!(out.status.success());
    let a = lab.address("b", "a").expect("a's address");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&a.to_string()));
    let child = lab.spawn("b", "true", &[]).expect("spawn");
    assert!(child.wait_with_output().expect("wait").status.success());
    lab.connect("a", SocketAddr::new(b, 7000)).expect("connect");
    let results = lab.check().expect("checks");
    assert!(results.iter().all(|r| r.passed), "{results:?}");
    assert_eq!(harness::sh("ls /run/netns").lines().count(), 3);
    drop(lab);
    assert!(no_namespaces_left());
}

#[test]
fn capture_writes_a_pcap_per_link_with_the_checks_packets() {
    if !harness::private_host("lab::capture_writes_a_pcap_per_link_with_the_checks_packets") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = example("two_hosts.toml");
    let out = lab(&[
        "test",
        file.to_str().expect("utf-8"),
        "--capture",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("capture dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    assert_eq!(names, ["01-h1_eth0-sw0.pcap", "02-h2_eth0-sw0.pcap"]);
    let bytes = std::fs::read(dir.path().join(&names[0])).expect("pcap");
    let packets = netbox::sys::capture::read_pcap(&bytes).expect("valid pcap");
    // h1's link saw its SYN to h2:80 and the ICMP echo request h2 sent to it.
    let is_ipv4 = |f: &[u8]| f.len() > 34 && f[12..14] == [0x08, 0x00];
    let syn_to_80 = packets.iter().any(|(_, f)| {
        is_ipv4(f) && f[23] == 6 && f[36..38] == 80u16.to_be_bytes() && f[47] & 0x02 != 0
    });
    let echo_request = packets
        .iter()
        .any(|(_, f)| is_ipv4(f) && f[23] == 1 && f[34] == 8);
    assert!(syn_to_80, "no SYN to port 80 in {} packets", packets.len());
    assert!(
        echo_request,
        "no ICMP echo request in {} packets",
        packets.len()
    );
}

#[test]
fn graph_prints_dot_with_names_addresses_and_limits() {
    if !harness::private_host("lab::graph_prints_dot_with_names_addresses_and_limits") {
        return;
    }
    let out = lab(&["graph", example("router.toml").to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.starts_with("graph \"router\" {"), "{dot}");
    for needle in [
        "\"client\"",
        "10.1.0.2/24",
        "\"switch:left\"",
        "(router)",
        " -- ",
    ] {
        assert!(dot.contains(needle), "{needle} missing in {dot}");
    }
    let out = lab(&["graph", example("rate_limit.toml").to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rate 20mbit"));
}

#[test]
fn bad_files_and_missing_netem_are_refused_and_leave_nothing() {
    if !harness::private_host("lab::bad_files_and_missing_netem_are_refused_and_leave_nothing") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let unknown = write(
        "bad.toml",
        "[[node]]\nname = \"a\"\n[[link]]\na = \"a\"\nb = \"nowhere\"\n",
    );
    let out = lab(&["up", "--host", unknown.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown node or switch \"nowhere\""), "{err}");
    let delay = write(
        "delay.toml",
        "[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n[[link]]\na = \"a\"\nb = \"b\"\ndelay = \"10ms\"\n",
    );
    let out = lab(&["up", "--host", delay.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Kernels with sch_netem build it; this one (see ANCHORS) lacks it and must say so.
    if out.status.success() {
        assert!(out.status.success(), "{err}");
        assert!(lab(&["down", delay.to_str().expect("utf-8")])
            .status
            .success());
    } else {
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("netem"), "{err}");
    }
    eventually("namespaces removed", no_namespaces_left);
    assert!(std::fs::read_dir("/run/netbox/labs")
        .map(|d| d
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().ends_with(".json")))
        .unwrap_or(true));
}

#[test]
fn run_capture_writes_the_sandbox_packets() {
    if !harness::private_host("lab::run_capture_writes_the_sandbox_packets") {
        return;
    }
    if !harness::is_root() {
        harness::skip(
            "lab::run_capture_writes_the_sandbox_packets",
            "bridge networking needs root",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let pcap = dir.path().join("run.pcap");
    // A TCP SYN to the gateway (this private host's bridge), answered by a reset.
    let out = netbox()
        .args(["run", "--capture"])
        .arg(&pcap)
        .args(["--", "bash", "-c", "echo > /dev/tcp/10.117.0.1/1"])
        .output()
        .expect("netbox run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let packets =
        netbox::sys::capture::read_pcap(&std::fs::read(&pcap).expect("pcap")).expect("valid pcap");
    let syn = packets.iter().any(|(_, f)| {
        f.len() > 47
            && f[12..14] == [0x08, 0x00]
            && f[23] == 6
            && f[36..38] == [0, 1]
            && f[47] & 0x02 != 0
    });
    let rst = packets.iter().any(|(_, f)| {
        f.len() > 47
            && f[12..14] == [0x08, 0x00]
            && f[23] == 6
            && f[34..36] == [0, 1]
            && f[47] & 0x04 != 0
    });
    assert!(syn && rst, "no SYN/RST pair in {} packets", packets.len());
    let out = netbox()
        .args(["run", "--net", "none", "--capture"])
        .arg(&pcap)
        .args(["--", "true"])
        .output()
        .expect("netbox run");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture needs bridge"));
}

#[test]
fn start_commands_run_in_their_node_and_stop_with_the_lab() {
    if !harness::private_host("lab::start_commands_run_in_their_node_and_stop_with_the_lab") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let topo = Topology::from_toml(&format!(
        r#"
        name = "starts"
        [[node]]
        name = "a"
        start = ["ip -br link > {d}/links; echo $$ > {d}/pid; exec sleep 60"]
        [[node]]
        name = "b"
        [[link]]
        a = "a:left"
        b = "b:right"
        "#
    ))
    .expect("parses");
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    let pid_file = dir.path().join("pid");
    eventually("the start command to run", || pid_file.exists());
    eventually("the link list", || {
        std::fs::read_to_string(dir.path().join("links")).is_ok_and(|l| l.contains("left@"))
    });
    let pid = std::fs::read_to_string(&pid_file).expect("pid");
    let pid = pid.trim();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(lab);
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    eventually("the start command to stop", gone);
    // Another lab's namespaces are never removed by a lab that failed to build.
    harness::sh("ip netns add taken-a");
    let clash = Topology::from_toml("name = \"taken\"\n[[node]]\nname = \"a\"\n").expect("parses");
    let err = Lab::build(&clash, &BuildOptions::default())
        .err()
        .expect("name clash refused");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(harness::exists("/run/netns/taken-a"));
    assert!(!harness::exists("/run/netns/taken--fabric"));
}

#[test]
fn fifty_node_star_with_static_arp_passes_all_pairs() {
    if !harness::private_host("lab::fifty_node_star_with_static_arp_passes_all_pairs") {
        return;
    }
    let mut t = String::from(
        "name = \"star\"\n[[switch]]\nname = \"sw\"\nsubnet = \"10.250.0.0/24\"\nstatic_arp = true\n",
    );
    for i in 1..=50 {
        t.push_str(&format!("[[node]]\nname = \"n{i}\"\nlisten = [\"tcp:80\"]\n[[link]]\na = \"n{i}\"\nb = \"sw\"\n"));
    }
    for i in 1..=50 {
        for j in i + 1..=50 {
            t.push_str(&format!(
                "[[check]]\nfrom = \"n{i}\"\nto = \"n{j}\"\ntcp = 80\n"
            ));
        }
    }
    let topo = Topology::from_toml(&t).expect("parses");
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    // Fixed MACs and permanent entries, as the kernel shows them.
    let neigh = ip_json("-n star-n1 neigh show dev eth0");
    let entries = neigh.as_array().expect("neighbours");
    assert_eq!(entries.len(), 49);
    assert!(
        entries.iter().any(|e| e["dst"] == "10.250.0.50"
            && e["lladdr"] == "02:6c:0a:fa:00:32"
            && e["state"].to_string().contains("PERMANENT")),
        "{neigh}"
    );
    let results = lab.check().expect("checks");
    assert_eq!(results.len(), 1225);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "{failed:?}");
}
