//! What the benchmarks share: a private "host" to run in, and timing helpers. Benchmarks only
//! compare figures taken side by side in one run (medians, ratios): the machines are shared.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netbox::sys::private_host::PrivateHost;

/// The sample count: the first numeric argument, else `default`.
pub fn samples(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// False (after saying so) when not root: benchmarks that build bridges need it.
pub fn require_root(bench: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("{bench} bench: needs root (it builds bridges); skipped");
    }
    root
}

/// Moves this process into fresh network + mount namespaces with private netbox state (and
/// /run/netns), so a benchmark's bridges, namespaces and leases never reach the real host.
/// Call it first, while the process has one thread.
pub fn private_host() {
    let dirs = [
        "/run/netbox",
        "/run/netns",
        "/var/lib/netbox",
        "/var/lib/cni",
    ];
    for dir in dirs {
        std::fs::create_dir_all(dir).expect("mount point");
    }
    if let Err(refused) = PrivateHost::new(false, &dirs).enter() {
        panic!("{refused}");
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(up.success(), "bringing lo up");
}

/// Runs a command to completion (stdin closed) and returns how long it took; panics if it fails.
pub fn time_command(cmd: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd.join(" ")));
    let took = start.elapsed();
    assert!(status.success(), "{} failed: {status}", cmd.join(" "));
    took
}

/// Median; sorts the samples.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 90th percentile of sorted samples.
pub fn p90(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
