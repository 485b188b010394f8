//! A 50-node star (one switch, 50 nodes, every pair checked with one TCP connect to a
//! listener: 1225 connects): netbox's lab (build + check + teardown) against the same topology
//! built and removed by a shell script of `ip -batch` commands, interleaved in one run.
//!
//! Fairness: both sides use the same listeners (one accept loop per node, bound inside it) and
//! the same checker (netbox::lab::check, one thread per source node), run by this program; only
//! building and removing the topology differ. The shell side is what one would write by hand:
//! one `ip -batch` for the namespaces, one `ip -n FABRIC -batch` for the bridge and the veths
//! (peers born in their namespaces), one `ip -n NODE -batch` per node for its address, links
//! and neighbours, one `ip -batch` of `netns del` to remove it. A row for the end-to-end CLI (`netbox lab test`, with its
//! holder process and private host) is printed as well.
//!
//! 50 nodes that all talk need 2450 neighbour entries, more than the kernel's learned-entry
//! limit for the whole host (gc_thresh3 = 1024): the switch is `static_arp` (fixed MACs,
//! permanent neighbour entries), and the shell script does the same with `neigh replace`.
//!
//! A second reference row is the script with its own checks, as one writes them in shell: an
//! `nsenter --net=... busybox nc` per pair (three rounds: they take seconds).
//!
//! Runs as root inside a private network + mount namespace. `cargo bench --bench lab [-- N]`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, ms, private_host, require_root, samples};
use netbox::lab::topology::{CheckPlan, Expect, Probe};
use netbox::lab::{check, topology, BuildOptions, Lab, Topology};
use netbox::sys::netns::NetNs;

const NODES: usize = 50;
const PORT: u16 = 80;

fn star_toml(name: &str) -> String {
    let mut t =
        format!("name = \"{name}\"\n[[switch]]\nname = \"sw\"\nsubnet = \"10.250.0.0/24\"\nstatic_arp = true\n");
    for i in 1..=NODES {
        t.push_str(&format!(
            "[[node]]\nname = \"n{i}\"\nlisten = [\"tcp:{PORT}\"]\n"
        ));
    }
    for i in 1..=NODES {
        t.push_str(&format!("[[link]]\na = \"n{i}\"\nb = \"sw\"\n"));
    }
    for i in 1..=NODES {
        for j in i + 1..=NODES {
            t.push_str(&format!(
                "[[check]]\nfrom = \"n{i}\"\nto = \"n{j}\"\ntcp = {PORT}\n"
            ));
        }
    }
    t
}

fn addr(i: usize) -> IpAddr {
    IpAddr::from([10, 250, 0, i as u8])
}

/// The fixed MAC netbox gives a port on a static-ARP switch (topology::static_mac).
fn mac(i: usize) -> String {
    format!("02:6c:0a:fa:00:{i:02x}")
}

fn ip_batch(args: &[&str], script: &str) {
    let mut child = Command::new("ip")
        .args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write batch");
    assert!(child.wait().expect("ip").success(), "ip -batch failed");
}

/// The same checks as the lab file, for the shell-built star.
fn pair_checks() -> Vec<CheckPlan> {
    let mut v = vec![];
    for i in 1..=NODES {
        for j in i + 1..=NODES {
            v.push(CheckPlan::new(
                &format!("n{i}"),
                &format!("n{j}"),
                addr(j),
                Probe::Tcp(PORT),
                Expect::Reach,
            ));
        }
    }
    v
}

/// Listeners like the lab's: bound in each node, an accept loop each, stopped by shutdown.
fn start_listeners(nodes: &BTreeMap<String, NetNs>) -> Vec<(i32, std::thread::JoinHandle<()>)> {
    nodes
        .values()
        .map(|ns| {
            let l = ns
                .run_in(|| TcpListener::bind(("0.0.0.0", PORT)))
                .expect("enter")
                .expect("bind");
            let fd = l.as_raw_fd();
            (
                fd,
                std::thread::spawn(move || {
                    for c in l.incoming() {
                        if c.is_err() {
                            break;
                        }
                    }
                }),
            )
        })
        .collect()
}

fn stop_listeners(l: Vec<(i32, std::thread::JoinHandle<()>)>) {
    for (fd, t) in l {
        // SAFETY: wakes the accept loop that still owns the socket.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        let _ = t.join();
    }
}

/// The checks as a shell script would make them: one `nsenter` + `busybox nc` per pair.
fn shell_checks() -> Duration {
    let mut script = String::from("fail=0\n");
    for i in 1..=NODES {
        for j in i + 1..=NODES {
            script.push_str(&format!(
                "nsenter --net=/run/netns/s{i} busybox nc -w 2 {} {PORT} </dev/null >/dev/null || fail=1\n",
                addr(j)
            ));
        }
    }
    script.push_str("exit $fail\n");
    let t = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("sh");
    assert!(status.success(), "shell checks failed");
    t.elapsed()
}

/// One shell-built round: (build, check, teardown), and with `shell_checked` also the checks
/// made the shell way (timed apart).
fn shell_round(
    plan: &topology::Plan,
    checks: &[CheckPlan],
    shell_checked: Option<&mut Vec<Duration>>,
) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    // As netbox does: the switch lives in its own namespace, so the kernel's lazy removal of
    // the last round's ports never clashes with this round's names.
    let mut names = String::from("netns add sfabric\n");
    for i in 1..=NODES {
        names.push_str(&format!("netns add s{i}\n"));
    }
    ip_batch(&[], &names);
    let mut fabric = String::from("link set lo up\nlink add sw type bridge\nlink set sw up\n");
    for i in 1..=NODES {
        fabric.push_str(&format!(
            "link add sw.{i} master sw up type veth peer name eth0 netns s{i}\n"
        ));
    }
    ip_batch(&["-n", "sfabric"], &fabric);
    for i in 1..=NODES {
        let mut batch = format!(
            "link set lo up\nlink set eth0 address {}\naddr add {}/24 dev eth0\nlink set eth0 up\n",
            mac(i),
            addr(i)
        );
        for j in (1..=NODES).filter(|j| *j != i) {
            batch.push_str(&format!(
                "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                addr(j),
                mac(j)
            ));
        }
        ip_batch(&["-n", &format!("s{i}")], &batch);
    }
    let nodes: BTreeMap<String, NetNs> = (1..=NODES)
        .map(|i| {
            (
                format!("n{i}"),
                NetNs::open(std::path::Path::new(&format!("/run/netns/s{i}"))).expect("open"),
            )
        })
        .collect();
    let listeners = start_listeners(&nodes);
    let built = t0.elapsed();
    let t1 = Instant::now();
    let node = |n: &str| {
        nodes
            .get(n)
            .ok_or_else(|| netbox::lab::LabError::Invalid(n.into()))
    };
    let env = check::Env {
        plan,
        node: &node,
        hosts: None,
    };
    let results = check::run_checks(&env, checks).expect("checks");
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).take(5).collect();
    assert!(failed.is_empty(), "shell star: checks failed: {failed:?}");
    let checked = t1.elapsed();
    if let Some(times) = shell_checked {
        times.push(shell_checks());
    }
    let t2 = Instant::now();
    stop_listeners(listeners);
    drop(nodes);
    let mut del = String::new();
    for i in 1..=NODES {
        del.push_str(&format!("netns del s{i}\n"));
    }
    del.push_str("netns del sfabric\n");
    ip_batch(&[], &del);
    (built, checked, t2.elapsed())
}

fn netbox_round(topo: &Topology) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    let lab = Lab::build(topo, &BuildOptions::default()).expect("lab up");
    let built = t0.elapsed();
    let t1 = Instant::now();
    let results = lab.check().expect("checks");
    assert_eq!(results.len(), NODES * (NODES - 1) / 2);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).take(5).collect();
    assert!(failed.is_empty(), "netbox star: checks failed: {failed:?}");
    let checked = t1.elapsed();
    let t2 = Instant::now();
    drop(lab);
    (built, checked, t2.elapsed())
}

fn cli_round(file: &std::path::Path) -> Duration {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_netbox"))
        .args(["lab", "test"])
        .arg(file)
        .output()
        .expect("netbox lab test");
    assert!(out.status.success(), "{out:?}");
    t0.elapsed()
}

fn main() {
    let n = samples(10);
    if !require_root("lab") {
        return;
    }
    private_host();
    let text = star_toml("star");
    let topo = Topology::from_toml(&text).expect("star topology");
    let plan = topology::resolve(&topo).expect("resolves");
    let checks = pair_checks();
    let dir = std::env::temp_dir().join(format!("netbox-lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("star.toml");
    std::fs::write(&file, &text).expect("write star");
    // Warm up both.
    netbox_round(&topo);
    shell_round(&plan, &checks, None);
    let (mut nb, mut sh, mut cli) = (vec![], vec![], vec![]);
    // A script checks with a process per pair: seconds a round, so only a few rounds.
    let mut sh_checks = vec![];
    let (mut nb_parts, mut sh_parts) = (vec![], vec![]);
    for _ in 0..n {
        let r = netbox_round(&topo);
        nb.push(r.0 + r.1 + r.2);
        nb_parts.push(r);
        let shell_checked = (sh_checks.len() < 3).then_some(&mut sh_checks);
        let r = shell_round(&plan, &checks, shell_checked);
        sh.push(r.0 + r.1 + r.2);
        sh_parts.push(r);
        cli.push(cli_round(&file));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let part = |v: &[(Duration, Duration, Duration)], k: usize| {
        let mut x: Vec<Duration> = v
            .iter()
            .map(|p| match k {
                0 => p.0,
                1 => p.1,
                _ => p.2,
            })
            .collect();
        median(&mut x)
    };
    println!(
        "lab: {NODES}-node star, {} TCP checks, {n} rounds each, interleaved (medians)",
        checks.len()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "build", "check", "down", "total"
    );
    let (nb_med, sh_med) = (median(&mut nb), median(&mut sh));
    for (label, parts, total) in [
        ("ip -batch script (+ same checker)", &sh_parts, sh_med),
        ("netbox Lab (library)", &nb_parts, nb_med),
    ] {
        println!(
            "{label:<34} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms",
            ms(part(parts, 0)),
            ms(part(parts, 1)),
            ms(part(parts, 2)),
            ms(total)
        );
    }
    println!(
        "{:<34} {:>39.1}ms",
        "netbox lab test (CLI, end to end)",
        ms(median(&mut cli))
    );
    let script_total = part(&sh_parts, 0) + median(&mut sh_checks) + part(&sh_parts, 2);
    println!(
        "{:<34} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms",
        "ip -batch script, shell checks",
        ms(part(&sh_parts, 0)),
        ms(median(&mut sh_checks)),
        ms(part(&sh_parts, 2)),
        ms(script_total)
    );
    println!(
        "  (shell checks: nsenter + busybox nc per pair, {} rounds)",
        sh_checks.len()
    );
    println!(
        "ratio netbox/script with shell checks (total): {:.3}",
        nb_med.as_secs_f64() / script_total.as_secs_f64()
    );
    println!(
        "ratio netbox/ip-batch (total): {:.2} (target <= 0.3); build+down only: {:.2}",
        nb_med.as_secs_f64() / sh_med.as_secs_f64(),
        (part(&nb_parts, 0) + part(&nb_parts, 2)).as_secs_f64()
            / (part(&sh_parts, 0) + part(&sh_parts, 2)).as_secs_f64()
    );
}
