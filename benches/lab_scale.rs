//! How labs scale: stars of 100 and 1,000 nodes on one switch (with and without `static_arp`)
//! and 10,000 nodes on ten switches of 1,000 (a Linux bridge takes at most 1,023 ports), built
//! with the Rust `Lab` API and torn down, in nodes per second. Each configuration runs in a
//! fresh child process (so its peak memory, VmHWM, is its own), interleaved, medians printed
//! with the ratios the issue asks for:
//! - per-node time of a 1,000-node star / per-node time of a 100-node star (target <= 1.3);
//! - 1,000-node star with static_arp / without (target <= 1.5), and its peak memory (<= 100 MB);
//!   every node has a check to the first, so static_arp installs 2 * 999 entries (the pairs the
//!   file makes talk); a row with `static_arp = "all"` (every pair: 999,000 entries) shows what
//!   the full mesh costs.
//!
//! Runs as root inside a private network + mount namespace.
//! `cargo bench --bench lab_scale [-- ROUNDS] [--no-10k]`

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{median, private_host, require_root, samples};
use netbox::lab::{BuildOptions, Lab, Topology};

/// `nodes` nodes on `switches` switches (a /16 each), every node with one link; on one switch
/// every node has a check to the first (a service many clients use), which is what a
/// `static_arp` switch installs entries for.
fn star(nodes: usize, switches: usize, static_arp: &str) -> String {
    let mut t = format!("name = \"s{nodes}\"\n");
    for s in 0..switches {
        t.push_str(&format!(
            "[[switch]]\nname = \"sw{s}\"\nsubnet = \"10.{}.0.0/16\"\nstatic_arp = {static_arp}\n",
            100 + s
        ));
    }
    for i in 0..nodes {
        t.push_str(&format!("[[node]]\nname = \"n{i}\"\n"));
    }
    for i in 0..nodes {
        t.push_str(&format!(
            "[[link]]\na = \"n{i}\"\nb = \"sw{}\"\n",
            i % switches
        ));
    }
    t
}

/// One build + teardown in this process: (build, teardown, peak memory in KiB).
fn one(nodes: usize, switches: usize, static_arp: &str) -> (Duration, Duration, u64) {
    private_host();
    let topo = Topology::from_toml(&star(nodes, switches, static_arp)).expect("parses");
    let t0 = Instant::now();
    let lab = Lab::build(&topo, &BuildOptions::default()).expect("lab up");
    let built = t0.elapsed();
    let t1 = Instant::now();
    drop(lab);
    let down = t1.elapsed();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (built, down, hwm)
}

/// Runs one configuration in a child process.
fn child(nodes: usize, switches: usize, static_arp: &str) -> Option<(Duration, Duration, u64)> {
    let exe = std::env::current_exe().expect("bench binary");
    let out = Command::new(exe)
        .args([
            "--one",
            &nodes.to_string(),
            &switches.to_string(),
            static_arp,
        ])
        .output()
        .expect("child");
    if !out.status.success() {
        eprintln!(
            "{nodes} nodes (static_arp {static_arp}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((
        Duration::from_secs_f64(*v.first()?),
        Duration::from_secs_f64(*v.get(1)?),
        *v.get(2)? as u64,
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let n: usize = args[i + 1].parse().expect("nodes");
        let s: usize = args[i + 2].parse().expect("switches");
        let (b, d, hwm) = one(n, s, &args[i + 3]);
        println!("{} {} {hwm}", b.as_secs_f64(), d.as_secs_f64());
        return;
    }
    if !require_root("lab_scale") {
        return;
    }
    let rounds = samples(3);
    let with_10k = !args.iter().any(|a| a == "--no-10k");
    let configs: Vec<(&str, usize, usize, &str)> = [
        ("100-node star", 100, 1, "false"),
        ("1000-node star", 1000, 1, "false"),
        ("1000-node star, static_arp", 1000, 1, "true"),
        ("1000-node star, static_arp all", 1000, 1, "\"all\""),
        ("10000 nodes, 10 switches", 10_000, 10, "false"),
    ]
    .into_iter()
    .filter(|c| with_10k || c.1 < 10_000)
    .collect();
    let mut results: Vec<Vec<(Duration, Duration, u64)>> = vec![vec![]; configs.len()];
    for round in 0..rounds {
        for (i, (name, n, s, arp)) in configs.iter().enumerate() {
            if let Some(r) = child(*n, *s, arp) {
                eprintln!(
                    "round {round}: {name}: build {:.2} s, teardown {:.2} s, peak {} MB",
                    r.0.as_secs_f64(),
                    r.1.as_secs_f64(),
                    r.2 / 1024
                );
                results[i].push(r);
            }
        }
    }
    println!("configuration                  build (median)  nodes/s  teardown  peak memory");
    let mut per_node = vec![];
    for ((name, n, _, _), r) in configs.iter().zip(&results) {
        if r.is_empty() {
            println!("{name:<30} failed");
            per_node.push(None);
            continue;
        }
        let mut builds: Vec<Duration> = r.iter().map(|x| x.0).collect();
        let mut downs: Vec<Duration> = r.iter().map(|x| x.1).collect();
        let b = median(&mut builds);
        let d = median(&mut downs);
        let peak = r.iter().map(|x| x.2).max().unwrap_or(0);
        println!(
            "{name:<30} {:>10.2} s  {:>7.0}  {:>6.2} s  {:>6} MB",
            b.as_secs_f64(),
            *n as f64 / b.as_secs_f64(),
            d.as_secs_f64(),
            peak / 1024
        );
        per_node.push(Some(b.as_secs_f64() / *n as f64));
    }
    if let (Some(Some(small)), Some(Some(big))) = (per_node.first(), per_node.get(1)) {
        println!(
            "per-node time, 1000 / 100 nodes: {:.2} (target <= 1.3)",
            big / small
        );
    }
    if let (Some(Some(plain)), Some(Some(arp))) = (per_node.get(1), per_node.get(2)) {
        println!(
            "1000 nodes, static_arp / without: {:.2} (target <= 1.5)",
            arp / plain
        );
    }
}
