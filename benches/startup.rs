//! Start-up cost of a sandbox: `netbox run -- true` (bridge network, address, routes, DNS,
//! full teardown) against `unshare -n true` (an empty namespace, the floor), interleaved in one
//! run so that both see the same machine load. Prints medians and their ratio (target ≤ 2.0).
//!
//! Runs as root inside a private network + mount namespace, so the bridge and leases it makes
//! never reach the real host. `cargo bench --bench startup [-- N]`.

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
    let netbox = netbox.as_str();
    let netbox_cmd = [netbox, "run", "--", "true"];
    let unshare_cmd = ["unshare", "-n", "true"];
    // Warm up: the first run creates the bridge, later runs reuse it as in real use.
    time(&netbox_cmd);
    time(&unshare_cmd);
    let mut nb = Vec::with_capacity(n);
    let mut un = Vec::with_capacity(n);
    let gap = Duration::from_millis(
        std::env::var("NETBOX_BENCH_GAP_MS")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
    );
    for _ in 0..n {
        nb.push(time(&netbox_cmd));
        std::thread::sleep(gap);
        un.push(time(&unshare_cmd));
        std::thread::sleep(gap);
    }
    let (nb_med, un_med) = (median(&mut nb), median(&mut un));
    println!("startup, {n} runs each, interleaved");
    println!("{:<28} {:>10} {:>10}", "command", "median", "p90");
    println!(
        "{:<28} {:>8.2}ms {:>8.2}ms",
        "unshare -n true",
        ms(un_med),
        ms(p90(&un))
    );
    println!(
        "{:<28} {:>8.2}ms {:>8.2}ms",
        "netbox run -- true",
        ms(nb_med),
        ms(p90(&nb))
    );
    println!(
        "ratio netbox/unshare: {:.2} (target <= 2.0)",
        nb_med.as_secs_f64() / un_med.as_secs_f64()
    );
}
