//! Labs that change while they run (Rust API and CLI), seeds, names, richer checks: each change
//! is proven by traffic that stops and resumes, or by a loss rate counted over many packets.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use netbox::lab::topology::{CheckPlan, Expect, Probe};
use netbox::lab::{BuildOptions, ImpairChange, Lab, Topology};

use crate::harness::{self, netbox};

const STAR: &str = r#"
    name = "rt"
    seed = 7
    [[switch]]
    name = "sw"
    subnet = "10.70.0.0/24"
    [[node]]
    name = "a"
    [[node]]
    name = "b"
    listen = ["tcp:80"]
    start = ["exec busybox nc -ll -p 9000 -e true"]
    [[node]]
    name = "c"
    listen = ["tcp:80"]
    [[link]]
    a = "a"
    b = "sw"
    [[link]]
    a = "b"
    b = "sw"
    [[link]]
    a = "c"
    b = "sw"
    [[link]]
    a = "a"
    b = "c"
    subnet = "10.71.0.0/30"
"#;

/// Whether a TCP connection from `from` to `to`:`port` succeeds, tried for 2 s (a neighbour
/// entry left incomplete by an earlier failure is probed again once a second).
fn reaches(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    connect(lab, from, to, port, Expect::Reach, 2000)
}

/// Whether TCP connections from `from` to `to`:`port` fail for half a second.
fn blocked(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    connect(lab, from, to, port, Expect::Unreachable, 500)
}

fn connect(lab: &Lab, from: &str, to: &str, port: u16, expect: Expect, ms: u64) -> bool {
    let addr = lab.address(from, to).expect("address");
    let mut check = CheckPlan::new(from, to, addr, Probe::Tcp(port), expect);
    check.within = Some(Duration::from_millis(ms));
    let r = lab.run_checks(&[check]).expect("check");
    r[0].passed
}

/// Datagrams of `count` sent from `from` to `to` that arrive.
fn udp_delivered(lab: &Lab, from: &str, to: &str, count: usize) -> usize {
    let dst = lab.address(from, to).expect("address");
    let bind = |node: &str, port: u16| {
        lab.node(node)
            .expect("node")
            .run_in(move || UdpSocket::bind(("0.0.0.0", port)))
            .expect("enter")
            .expect("bind")
    };
    let sink = bind(to, 5555);
    sink.set_nonblocking(true).expect("nonblocking");
    let src = bind(from, 0);
    let mut got = 0;
    let mut buf = [0u8; 64];
    let mut drain = |got: &mut usize| {
        while sink.recv(&mut buf).is_ok() {
            *got += 1;
        }
    };
    for _ in 0..count {
        src.send_to(b"x", SocketAddr::new(dst, 5555)).expect("send");
        // Drained as it goes: the receive queue never overflows, so every datagram that does
        // not arrive was dropped on the link.
        drain(&mut got);
    }
    std::thread::sleep(Duration::from_millis(100));
    drain(&mut got);
    got
}

#[test]
fn rust_api_changes_stop_and_resume_traffic_and_reset_restores_the_file() {
    if !harness::private_host(
        "lab_runtime::rust_api_changes_stop_and_resume_traffic_and_reset_restores_the_file",
    ) {
        return;
    }
    let lab = Lab::build(
        &Topology::from_toml(STAR).expect("parses"),
        &BuildOptions::default(),
    )
    .expect("lab up");
    assert!(reaches(&lab, "a", "b", 80));

    lab.link_down("b", "sw").expect("link down");
    assert!(blocked(&lab, "a", "b", 80));
    assert!(reaches(&lab, "a", "c", 80), "other links carry on");
    let links = lab.links();
    let b = links
        .iter()
        .find(|l| l.link == "b:eth0 - sw")
        .expect("b's link");
    assert!(!b.up && b.cut.as_deref() == Some("down"), "{links:?}");
    // The kernel's view: b's end is administratively down.
    let out = lab
        .exec("b", "ip", &["-j", "link", "show", "eth0"])
        .expect("ip");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"UP\""));
    lab.link_up("sw", "b").expect("link up");
    assert!(reaches(&lab, "a", "b", 80));

    lab.isolate("c").expect("isolate");
    assert!(blocked(&lab, "a", "c", 80));
    assert!(blocked(&lab, "b", "c", 80));
    assert!(reaches(&lab, "a", "b", 80));
    lab.restore("c").expect("restore");
    assert!(reaches(&lab, "b", "c", 80));

    // a alone; b and c together: the switch drops frames between the groups, the direct
    // a - c link is cut.
    lab.partition(&[&["a"], &["b", "c"]]).expect("partition");
    assert!(blocked(&lab, "a", "b", 80));
    assert!(blocked(&lab, "a", "c", 80));
    assert!(reaches(&lab, "b", "c", 80));
    lab.heal().expect("heal");
    assert!(reaches(&lab, "a", "b", 80));
    assert!(reaches(&lab, "a", "c", 80));

    // Loss without netem: 30% of datagrams, counted over 2000.
    lab.impair(
        "b",
        "sw",
        ImpairChange {
            loss_percent: Some(Some(30.0)),
            ..ImpairChange::default()
        },
    )
    .expect("loss");
    let got = udp_delivered(&lab, "a", "b", 2000);
    assert!(
        (1250..=1550).contains(&got),
        "{got} of 2000 arrived at 30% loss"
    );
    lab.impair(
        "b",
        "sw",
        ImpairChange {
            loss_percent: Some(None),
            ..ImpairChange::default()
        },
    )
    .expect("no loss");
    assert_eq!(udp_delivered(&lab, "a", "b", 300), 300);

    // A rate set at run time, measured by netbox's own throughput check.
    lab.impair(
        "a",
        "c",
        ImpairChange {
            rate_bytes: Some(Some(1_000_000)),
            ..ImpairChange::default()
        },
    )
    .expect("rate");
    // c on the direct (rate-limited) link.
    let addr: std::net::IpAddr = "10.71.0.2".parse().expect("ip");
    let through = |min: u64| {
        CheckPlan::new(
            "a",
            "c",
            addr,
            Probe::Throughput {
                min_bytes: min,
                duration: Duration::from_millis(700),
            },
            Expect::Reach,
        )
    };
    let r = lab
        .run_checks(&[through(500_000), through(2_000_000)])
        .expect("throughput");
    assert!(r[0].passed && !r[1].passed, "{r:?}");
    assert_eq!(lab.links()[3].rate.as_deref(), Some("8mbit"));

    // Delay needs netem: where it is missing the refusal says so and changes nothing.
    match lab.impair(
        "a",
        "c",
        ImpairChange {
            rate_bytes: Some(None),
            delay: Some(Some(Duration::from_millis(20))),
            ..ImpairChange::default()
        },
    ) {
        Ok(()) => {
            // Delayed both ways: no echo comes back within 30 ms.
            let rtt = CheckPlan::new(
                "a",
                "c",
                addr,
                Probe::Rtt {
                    max: Duration::from_millis(30),
                },
                Expect::Reach,
            );
            let r = lab.run_checks(&[rtt]).expect("rtt");
            assert!(!r[0].passed, "{r:?}");
        }
        Err(e) => {
            assert!(e.to_string().contains("netem"), "{e}");
            // Refused: the rate stayed.
            assert_eq!(lab.links()[3].rate.as_deref(), Some("8mbit"));
            assert!(!lab.run_checks(&[through(2_000_000)]).expect("throughput")[0].passed);
        }
    }

    // Start commands stop and start; reset brings back the file (and the commands).
    let service = |lab: &Lab| {
        lab.exec("a", "sh", &["-c", "busybox nc -w 1 b 9000 </dev/null"])
            .expect("nc")
            .status
            .success()
    };
    harness::eventually("b's service", || service(&lab));
    lab.stop_node("b").expect("stop");
    assert!(!service(&lab));
    lab.start_node("b").expect("start");
    harness::eventually("b's service again", || service(&lab));
    lab.stop_node("b").expect("stop");
    lab.link_down("a", "sw").expect("down");
    lab.reset().expect("reset");
    assert!(lab.links().iter().all(|l| l.up && l.loss.is_none()));
    assert_eq!(lab.links()[3].rate, None);
    assert!(reaches(&lab, "a", "b", 80));
    harness::eventually("b's service after reset", || service(&lab));
    // Names resolve in every node (the lab's hosts file).
    let out = lab.exec("c", "getent", &["hosts", "a"]).expect("getent");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("10.70.0.1 "));
}

#[test]
fn refused_changes_change_nothing() {
    if !harness::private_host("lab_runtime::refused_changes_change_nothing") {
        return;
    }
    let lab = Lab::build(
        &Topology::from_toml(STAR).expect("parses"),
        &BuildOptions::default(),
    )
    .expect("lab up");
    let before = lab.links();
    for err in [
        lab.link_down("a", "nobody").expect_err("unknown end"),
        lab.isolate("nobody").expect_err("unknown node"),
        lab.partition(&[&["a"], &["a", "b"]]).expect_err("a twice"),
        lab.impair(
            "a",
            "c",
            ImpairChange {
                rate_bytes: Some(Some(1000)),
                delay: Some(Some(Duration::from_millis(5))),
                ..ImpairChange::default()
            },
        )
        .expect_err("rate with delay"),
    ] {
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(lab.links(), before);
    assert!(reaches(&lab, "a", "b", 80));
}

fn lab_cli(args: &[&str]) -> Output {
    netbox()
        .arg("lab")
        .args(args)
        .output()
        .expect("run netbox lab")
}

fn star_file(dir: &Path) -> PathBuf {
    let path = dir.join("rt.toml");
    std::fs::write(&path, STAR).expect("write");
    path
}

#[test]
fn cli_changes_a_running_lab_and_shows_every_link() {
    if !harness::private_host("lab_runtime::cli_changes_a_running_lab_and_shows_every_link") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = star_file(dir.path());
    let file = file.to_str().expect("utf-8");
    let ok = |args: &[&str]| {
        let out = lab_cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["up", file]);
    // From a by name: the hosts file works in `lab exec` too.
    let connects = |to: &str| {
        lab_cli(&[
            "exec", file, "a", "--", "busybox", "nc", "-w", "1", to, "80",
        ])
        .status
        .success()
    };
    assert!(connects("b"));
    ok(&["link-down", file, "b", "sw"]);
    assert!(!connects("b"));
    assert!(connects("c"));
    let links: serde_json::Value =
        serde_json::from_str(&ok(&["links", file, "--json"])).expect("json");
    let b = &links["links"][1];
    assert_eq!(b["link"], "b:eth0 - sw");
    assert_eq!(b["up"], false);
    assert_eq!(b["cut"], "down");
    ok(&["link-up", file, "b", "sw"]);
    assert!(connects("b"));
    ok(&["isolate", file, "b"]);
    assert!(!connects("b"));
    ok(&["restore", file, "b"]);
    assert!(connects("b"));
    ok(&["partition", file, "a", "b,c"]);
    assert!(!connects("b") && !connects("c"));
    ok(&["heal", file]);
    assert!(connects("b") && connects("c"));
    let table = ok(&["impair", file, "a", "sw", "--loss", "100%"]);
    assert!(table.contains("loss 100%"), "{table}");
    assert!(!connects("b"));
    // Delay without netem: refused with the reason, nothing changed.
    let out = lab_cli(&["impair", file, "a", "c", "--delay", "10ms"]);
    if !out.status.success() {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("netem"),
            "{out:?}"
        );
    }
    let out = lab_cli(&[
        "impair",
        file,
        "a",
        "c",
        "--rate",
        "99999999999999999999999gbit",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a rate"),
        "{out:?}"
    );
    ok(&["stop-node", file, "b"]);
    ok(&["reset", file]);
    assert!(connects("b"));
    let text = ok(&["links", file]);
    assert!(
        !text.contains("loss") && text.lines().count() == 5,
        "{text}"
    );
    ok(&["down", file]);
    // The lab is gone: changes are refused.
    let out = lab_cli(&["link-down", file, "b", "sw"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not up"),
        "{out:?}"
    );
}

#[test]
fn failover_timeline_example_passes_step_by_step() {
    if !harness::private_host("lab_runtime::failover_timeline_example_passes_step_by_step") {
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/labs/failover.toml");
    let out = lab_cli(&["test", file.to_str().expect("utf-8"), "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).expect("json");
    assert!(out.status.success(), "{last:#}");
    assert_eq!(last["steps_failed"], 0, "{last:#}");
    assert_eq!(last["steps"].as_array().map(Vec::len), Some(8));
    // A failing step fails the whole: the same file with a wrong expectation.
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("failover.toml");
    let text = std::fs::read_to_string(&file).expect("read").replacen(
        "expect = \"unreachable\"\nwithin = \"500ms\"",
        "within = \"500ms\"",
        1,
    );
    std::fs::write(&bad, text).expect("write");
    let out = lab_cli(&["test", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL  step link down server:eth0 - lan"),
        "{report}"
    );
    assert!(
        report.contains("timeline: 7 steps passed, 1 failed"),
        "{report}"
    );
}

/// MACs and addresses of every node interface, as the kernel shows them.
fn identities(lab: &Lab) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for n in ["a", "b", "c"] {
        let v: serde_json::Value = serde_json::from_slice(
            &lab.exec(n, "ip", &["-j", "addr", "show"])
                .expect("ip")
                .stdout,
        )
        .expect("json");
        for l in v.as_array().into_iter().flatten() {
            if l["ifname"] == "lo" {
                continue;
            }
            let addr = l["addr_info"][0]["local"]
                .as_str()
                .unwrap_or("")
                .to_string();
            out.push((
                format!("{n}:{}", l["ifname"].as_str().unwrap_or("")),
                l["address"].as_str().unwrap_or("").to_string(),
                addr,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_seeded_lab_built_twice_has_the_same_addresses_and_macs() {
    if !harness::private_host(
        "lab_runtime::a_seeded_lab_built_twice_has_the_same_addresses_and_macs",
    ) {
        return;
    }
    let build = |text: &str| {
        let lab = Lab::build(
            &Topology::from_toml(text).expect("parses"),
            &BuildOptions::default(),
        )
        .expect("lab up");
        let ids = identities(&lab);
        drop(lab);
        harness::eventually("namespaces gone", || {
            std::fs::read_dir("/run/netns")
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        });
        ids
    };
    let first = build(STAR);
    assert_eq!(first.len(), 5, "{first:?}");
    assert_eq!(first, build(STAR));
    let other = build(&STAR.replace("seed = 7", "seed = 8"));
    let macs =
        |ids: &[(String, String, String)]| ids.iter().map(|i| i.1.clone()).collect::<Vec<_>>();
    let addrs =
        |ids: &[(String, String, String)]| ids.iter().map(|i| i.2.clone()).collect::<Vec<_>>();
    assert_ne!(macs(&first), macs(&other));
    assert_eq!(addrs(&first), addrs(&other));
}

#[test]
fn checks_retry_within_their_time_and_exec_checks_judge_status_and_output() {
    if !harness::private_host(
        "lab_runtime::checks_retry_within_their_time_and_exec_checks_judge_status_and_output",
    ) {
        return;
    }
    // b's service starts 2 s late: a check with `within` tries until it answers.
    let text = STAR.replace(
        "start = [\"exec busybox nc -ll -p 9000 -e true\"]",
        "start = [\"sleep 2; exec busybox nc -ll -p 9000 -e true\"]",
    ) + r#"
    [[check]]
    from = "a"
    to = "b"
    tcp = 9000
    within = "6s"
    [[check]]
    from = "a"
    exec = "cat /etc/hostname /etc/hosts"
    output = '(?m)^10\.70\.0\.3\s+c\s'
    [[check]]
    from = "a"
    exec = "echo hello"
    output = "^goodbye"
    [[check]]
    from = "a"
    exec = "exit 3"
    [[check]]
    from = "a"
    exec = "exit 3"
    expect = "unreachable"
    [[check]]
    from = "a"
    to = "b"
    tcp = 9001
    retries = 2
    "#;
    let lab = Lab::build(
        &Topology::from_toml(&text).expect("parses"),
        &BuildOptions::default(),
    )
    .expect("lab up");
    let r = lab.check().expect("checks");
    assert!(r[0].passed && r[0].attempts > 1, "{:?}", r[0]);
    assert!(r[1].passed, "{:?}", r[1]);
    assert!(
        !r[2].passed && r[2].detail.contains("does not match"),
        "{:?}",
        r[2]
    );
    assert!(
        !r[3].passed && r[3].detail.contains("exit status: 3"),
        "{:?}",
        r[3]
    );
    assert!(r[4].passed, "{:?}", r[4]);
    assert!(!r[5].passed && r[5].attempts == 3, "{:?}", r[5]);
}

#[test]
fn the_lab_record_is_listed_by_ls_and_a_dead_host_holder_is_cleaned_by_gc() {
    if !harness::private_host(
        "lab_runtime::the_lab_record_is_listed_by_ls_and_a_dead_host_holder_is_cleaned_by_gc",
    ) {
        return;
    }
    if !harness::is_root() {
        harness::skip("lab host mode", "needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = star_file(dir.path());
    let file = file.to_str().expect("utf-8");
    let out = lab_cli(&["up", "--host", file, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pid = up["pid"].as_i64().expect("pid") as i32;
    let labs = |state: &str| {
        let ls = netbox().args(["ls", "--json"]).output().expect("ls");
        let v: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("ls json");
        v["sandboxes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "lab" && e["name"] == "rt" && e["state"] == state)
            .count()
    };
    assert_eq!(labs("live"), 1);
    // The record was written whole: it parses, and no temporary file is beside it.
    let names: Vec<String> = std::fs::read_dir("/run/netbox/labs")
        .expect("labs")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
    // The holder dies without cleaning up: its namespaces stay until gc.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    harness::eventually("the holder gone", || {
        netbox::model::owner::process_start_time(pid as u32).is_none()
    });
    assert!(Path::new("/run/netns/rt-a").exists());
    assert_eq!(labs("stale"), 1);
    let gc = netbox().args(["gc"]).output().expect("gc");
    assert!(gc.status.success(), "{gc:?}");
    assert!(!Path::new("/run/netns/rt-a").exists());
    assert!(!Path::new("/run/netbox/labs/rt.json").exists());
    assert_eq!(labs("stale") + labs("live"), 0);
}

#[test]
fn labs_too_large_for_the_kernel_or_the_descriptor_limit_are_refused_before_anything_is_built() {
    if !harness::private_host(
        "lab_runtime::labs_too_large_for_the_kernel_or_the_descriptor_limit_are_refused_before_anything_is_built",
    ) {
        return;
    }
    let nothing_built = || {
        std::fs::read_dir("/run/netns")
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    };
    // A bridge takes at most 1023 ports.
    let mut big = String::from("[[switch]]\nname = \"sw\"\nsubnet = \"10.80.0.0/16\"\n");
    for i in 0..1024 {
        big.push_str(&format!(
            "[[node]]\nname = \"n{i}\"\n[[link]]\na = \"n{i}\"\nb = \"sw\"\n"
        ));
    }
    let err = Lab::build(
        &Topology::from_toml(&big).expect("parses"),
        &BuildOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("1023 ports"), "{err}");
    assert!(nothing_built());
    // More nodes than this process may hold descriptors for, and no right to raise the hard
    // limit: refused with the limit.
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        caps::drop(None, set, caps::Capability::CAP_SYS_RESOURCE).expect("drop CAP_SYS_RESOURCE");
    }
    let limit = 300;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
        .expect("lower the limit");
    let mut many = String::new();
    for i in 0..200 {
        many.push_str(&format!("[[node]]\nname = \"n{i}\"\n"));
    }
    let err = Lab::build(
        &Topology::from_toml(&many).expect("parses"),
        &BuildOptions::default(),
    )
    .err()
    .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("open descriptors") && text.contains("at most 300"),
        "{text}"
    );
    assert!(nothing_built());
}

/// Permanent neighbour entries in `node`, per `ip -j neigh`.
fn permanent_neighbours(lab: &Lab, node: &str) -> usize {
    let out = lab
        .exec(node, "ip", &["-j", "neigh", "show", "nud", "permanent"])
        .expect("ip");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v.as_array().map(Vec::len).unwrap_or(0))
        .unwrap_or(0)
}

#[test]
fn static_arp_installs_the_pairs_the_file_makes_talk_or_every_pair() {
    if !harness::private_host(
        "lab_runtime::static_arp_installs_the_pairs_the_file_makes_talk_or_every_pair",
    ) {
        return;
    }
    let text = r#"
        [[switch]]
        name = "sw"
        subnet = "10.90.0.0/24"
        static_arp = true
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        listen = ["tcp:80"]
        [[node]]
        name = "c"
        [[node]]
        name = "d"
        [[link]]
        a = "a"
        b = "sw"
        [[link]]
        a = "b"
        b = "sw"
        [[link]]
        a = "c"
        b = "sw"
        [[link]]
        a = "d"
        b = "sw"
        [[check]]
        from = "a"
        to = "b"
        tcp = 80
    "#;
    let lab = Lab::build(
        &Topology::from_toml(text).expect("parses"),
        &BuildOptions::default(),
    )
    .expect("lab up");
    // a talks to b (and b answers a); c and d are left to ARP.
    let counts: Vec<usize> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| permanent_neighbours(&lab, n))
        .collect();
    assert_eq!(counts, [1, 1, 0, 0]);
    assert!(lab.check().expect("checks")[0].passed);
    drop(lab);
    harness::eventually("namespaces gone", || {
        std::fs::read_dir("/run/netns")
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    let lab = Lab::build(
        &Topology::from_toml(&text.replace("static_arp = true", "static_arp = \"all\""))
            .expect("parses"),
        &BuildOptions::default(),
    )
    .expect("lab up");
    for n in ["a", "b", "c", "d"] {
        assert_eq!(permanent_neighbours(&lab, n), 3, "{n}");
    }
}
