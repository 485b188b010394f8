//! Start-up cost of a sandbox: `netbox run -- true` (bridge network, address, routes, DNS,
//! full teardown) against `unshare -n true` (an empty namespace, the floor), interleaved in one
//! run so that both see the same machine load. Prints medians and their ratio (target ≤ 2.0).
//!
//! Runs as root inside a private network + mount namespace, so the bridge and leases it makes
//! never reach the real host. `cargo bench --bench startup [-- N]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("startup bench: needs root (it builds bridges); skipped");
        return;
    }
    private_host();
    let netbox = env!("CARGO_BIN_EXE_netbox");
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

fn time(cmd: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd.join(" ")));
    let took = start.elapsed();
    assert!(status.success(), "{} failed: {status}", cmd.join(" "));
    took
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Moves this process into fresh network + mount namespaces with private netbox state.
fn private_host() {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).expect("unshare net+mount");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    for dir in ["/run/netbox", "/var/lib/netbox"] {
        std::fs::create_dir_all(dir).expect("mount point");
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("private tmpfs");
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(up.success());
}
