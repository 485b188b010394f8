//! Start-up cost of a sandbox: `netbox run -- true` (bridge network, address, routes, DNS, its
//! own PID namespace with an init, capabilities cut to the container default, no_new_privs, the
//! seccomp filter, masked /proc, full teardown) against `bwrap --unshare-net --unshare-pid
//! --dev-bind / / --proc /proc true` (namespaces and a /proc, no veth at all) and `unshare -n
//! true` (an empty namespace, the floor), interleaved in one run so that all see the same
//! machine load. Prints medians and the ratios (targets: <= 1.0 against bwrap, <= 2.5 against
//! unshare).
//!
//! Runs as root inside a private network + mount namespace, so the bridge and leases it makes
//! never reach the real host. `cargo bench --bench startup [-- N]`; NETBOX_BENCH_ARGS adds
//! options to `netbox run` (e.g. "--pid host --seccomp unconfined" to see what the protections
//! cost).

mod common;

use std::time::Duration;

use common::{median, ms, p90, private_host, require_root, samples, time_command as time};

fn main() {
    let n = samples(50);
    if !require_root("startup") {
        return;
    }
    private_host();
    // NETBOX_BENCH_BIN compares another build (an older commit, a static link).
    let netbox =
        std::env::var("NETBOX_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox").into());
    let extra = std::env::var("NETBOX_BENCH_ARGS").unwrap_or_default();
    let mut netbox_cmd = vec![netbox.as_str(), "run"];
    netbox_cmd.extend(extra.split_whitespace());
    netbox_cmd.extend(["--", "true"]);
    let bwrap_cmd = [
        "bwrap",
        "--unshare-net",
        "--unshare-pid",
        "--dev-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "true",
    ];
    let unshare_cmd = ["unshare", "-n", "true"];
    let gap = Duration::from_millis(
        std::env::var("NETBOX_BENCH_GAP_MS")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
    );
    // Warm up: the first run creates the bridge, later runs reuse it as in real use.
    let commands: [(&str, &[&str]); 3] = [
        ("netbox run -- true", &netbox_cmd),
        ("bwrap (net, pid, /proc)", &bwrap_cmd),
        ("unshare -n true", &unshare_cmd),
    ];
    for (_, cmd) in &commands {
        time(cmd);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); commands.len()];
    for _ in 0..n {
        for ((_, cmd), samples) in commands.iter().zip(&mut times) {
            samples.push(time(cmd));
            std::thread::sleep(gap);
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!("startup, {n} runs each, interleaved");
    if !extra.is_empty() {
        println!("netbox run options: {extra}");
    }
    println!("{:<28} {:>10} {:>10}", "command", "median", "p90");
    for (((name, _), samples), med) in commands.iter().zip(&times).zip(&medians) {
        println!(
            "{:<28} {:>8.2}ms {:>8.2}ms",
            name,
            ms(*med),
            ms(p90(samples))
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ratio netbox/bwrap: {:.2} (target <= 1.0)",
        ratio(medians[0], medians[1])
    );
    println!(
        "ratio netbox/unshare: {:.2} (target <= 2.5)",
        ratio(medians[0], medians[2])
    );
}
