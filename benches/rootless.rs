//! Rootless `netbox run` (issue 17), side by side in one run, as an unprivileged uid inside a
//! private host with the world namespace of tests/world.rs (nothing leaves the machine):
//!
//! - TCP throughput (iperf3) from a sandbox to a server in the world, through netbox's per-user
//!   network (its TCP uplink, NETBOX_USER_NET_MTU=M) against slirp4netns driven directly
//!   (`unshare -rn` + `slirp4netns --configure --mtu M`), at MTU 1500 and 65520, the four
//!   configurations rotating each round. Goal: >= 1.0x slirp4netns at both.
//! - `netbox run -- true`: rootful against rootless with the user's network already up
//!   (goal <= 1.5x), and the first rootless run, holder and uplink start included (goal
//!   <= 50 ms), also with a CMD that reaches the world; interleaved.
//!
//! `cargo bench --bench rootless [-- N]` (N timing rounds, default 30; throughput rounds are
//! N/10, at least 1, of NETBOX_BENCH_IPERF_SECS seconds each, default 3; NETBOX_BENCH_VERBOSE
//! prints every sample with its retransmits). Needs root (it
//! builds the world and switches uids), pasta, slirp4netns and iperf3.

mod common;
#[path = "../tests/world.rs"]
mod world;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, ms, p90, private_host, require_root, samples};
use world::{runnable_by_all, wait_until, User, World, HTTP_PORT, WORLD};

const IPERF_PORT: &str = "5201";
const MTUS: [u32; 2] = [1500, 65520];

fn main() {
    let n = samples(30);
    if !require_root("rootless") {
        return;
    }
    for (program, package) in [
        ("pasta", "passt"),
        ("slirp4netns", "slirp4netns"),
        ("iperf3", "iperf3"),
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            eprintln!("rootless bench: {program} missing (apt-get install {package}); skipped");
            return;
        }
    }
    private_host();
    let mut world = World::new();
    world.spawn(&["iperf3", "-s", "-p", IPERF_PORT]);
    // The probe's empty connection makes iperf3 print "unable to receive parameters from
    // client" once; that line is expected.
    wait_until("iperf3 in the world", Duration::from_secs(10), || {
        std::net::TcpStream::connect((WORLD, 5201)).is_ok()
    });
    let programs = tempfile::tempdir().expect("tempdir");
    let netbox = runnable_by_all(
        std::path::Path::new(env!("CARGO_BIN_EXE_netbox")),
        programs.path(),
    );
    let secs: u32 = std::env::var("NETBOX_BENCH_IPERF_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    throughput(&netbox, (n / 10).max(1), secs);
    startup(&netbox, n);
}

/// iperf3 rounds: netbox and slirp4netns at each MTU, rotating; prints medians and ratios.
fn throughput(netbox: &std::path::Path, rounds: usize, secs: u32) {
    // Each configuration its own uid, no linger: every netbox sample starts its own uplink
    // with its MTU (iperf3 times only the transfer).
    let configs: Vec<(&str, u32)> = MTUS
        .iter()
        .flat_map(|&m| [("netbox", m), ("slirp4netns", m)])
        .collect();
    let mut users: Vec<User> = (0..configs.len())
        .map(|k| User::new(64100 + k as u32, netbox))
        .collect();
    for (user, (_, mtu)) in users.iter_mut().zip(&configs) {
        user.set_env("NETBOX_USER_NET_MTU", &mtu.to_string());
    }
    let mut gbits: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let which = (round + k) % configs.len();
            let (kind, mtu) = configs[which];
            let user = &users[which];
            let report = if kind == "netbox" {
                iperf_netbox(user, secs)
            } else {
                iperf_slirp(user, mtu, secs)
            };
            let g = bits_per_second(&report) / 1e9;
            if std::env::var_os("NETBOX_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "  {kind} mtu {mtu}: {g:.2} Gbit/s, {} retransmits",
                    retransmits(&report)
                );
            }
            gbits[which].push(g);
            user.wait_none_left("after an iperf3 sample");
        }
    }
    println!(
        "TCP throughput sandbox -> world (iperf3 -t {secs}, {rounds} rounds, interleaved), \
         median Gbit/s"
    );
    println!(
        "{:>6} {:>10} {:>12} {:>7}",
        "MTU", "netbox", "slirp4netns", "ratio"
    );
    for (i, mtu) in MTUS.iter().enumerate() {
        let nb = median_f(&mut gbits[2 * i]);
        let sl = median_f(&mut gbits[2 * i + 1]);
        println!(
            "{mtu:>6} {nb:>10.2} {sl:>12.2} {:>7.2}  (goal >= 1.0)",
            nb / sl
        );
    }
}

fn iperf_args(secs: u32) -> Vec<String> {
    [
        "iperf3",
        "-c",
        WORLD,
        "-p",
        IPERF_PORT,
        "-J",
        "-t",
        &secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// iperf3's JSON report from a rootless netbox sandbox.
fn iperf_netbox(user: &User, secs: u32) -> String {
    let mut args = vec!["run".to_string(), "--".into()];
    args.extend(iperf_args(secs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = user.netbox(&args).output().expect("netbox run iperf3");
    assert!(
        out.status.success(),
        "netbox run iperf3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// iperf3's JSON report from `unshare -rn` with slirp4netns attached, both as the user.
fn iperf_slirp(user: &User, mtu: u32, secs: u32) -> String {
    let script = format!("echo $$; read go; exec {}", iperf_args(secs).join(" "));
    let mut ns = user
        .command("unshare", &["-rn", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare -rn");
    let mut out = BufReader::new(ns.stdout.take().expect("stdout"));
    let mut pid = String::new();
    out.read_line(&mut pid).expect("the namespace's pid");
    let pid = pid.trim().to_string();
    let mut slirp = user
        .command(
            "slirp4netns",
            &["--configure", "--mtu", &mtu.to_string(), &pid, "tap0"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slirp4netns");
    wait_until(
        "slirp4netns to configure tap0",
        Duration::from_secs(10),
        || {
            Command::new("nsenter")
                .args(["-t", &pid, "-n", "ip", "-4", "-o", "addr", "show", "tap0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("inet "))
        },
    );
    world::feed(&mut ns, b"go\n");
    let mut report = String::new();
    out.read_to_string(&mut report).expect("iperf3 report");
    let status = ns.wait().expect("wait");
    let _ = slirp.kill();
    let _ = slirp.wait();
    assert!(status.success(), "iperf3 through slirp4netns: {report}");
    report
}

fn bits_per_second(report: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(report).unwrap_or_else(|e| panic!("iperf3 JSON ({e}): {report}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no sum_received in {report}"))
}

fn retransmits(report: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(report)
        .ok()
        .and_then(|v| v["end"]["sum_sent"]["retransmits"].as_u64())
        .unwrap_or(0)
}

fn median_f(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `cmd` to success and returns how long it took.
fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("start");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// `netbox run -- true` rootful, rootless with the network up, and the first rootless run.
fn startup(netbox: &std::path::Path, n: usize) {
    // Both go through setpriv, so that exec is in both figures.
    let rootful = || {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=0", "--regid=0", "--clear-groups", "--"])
            .arg(netbox)
            .args(["run", "--", "true"])
            .env_remove("SUDO_UID")
            .stdin(Stdio::null());
        cmd
    };
    let mut warm = User::new(64200, netbox);
    warm.set_env("NETBOX_USER_NET_LINGER", "600");
    let cold = User::new(64201, netbox);
    let wget = format!("http://{WORLD}:{HTTP_PORT}/hello");
    let reach = [
        "run",
        "--",
        "busybox",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        &wget,
    ];
    // Warm-up: the rootful bridge, the warm user's network host.
    time(&mut rootful());
    time(&mut warm.netbox(&["run", "--", "true"]));
    let mut times: [Vec<Duration>; 4] = Default::default();
    for i in 0..n {
        for k in 0..4 {
            match (i + k) % 4 {
                0 => times[0].push(time(&mut rootful())),
                1 => times[1].push(time(&mut warm.netbox(&["run", "--", "true"]))),
                which => {
                    cold.wait_none_left("before a first run");
                    let args: &[&str] = if which == 2 {
                        &["run", "--", "true"]
                    } else {
                        &reach
                    };
                    times[which].push(time(&mut cold.netbox(args)));
                }
            }
        }
    }
    let labels = [
        "rootful run -- true",
        "rootless run -- true (network up)",
        "first rootless run -- true",
        "first rootless run, wget to the world",
    ];
    println!("netbox run, {n} rounds interleaved: median / p90");
    let mut medians = [Duration::ZERO; 4];
    for (k, label) in labels.iter().enumerate() {
        medians[k] = median(&mut times[k]);
        println!(
            "{label:<40} {:>8.2} / {:>8.2} ms",
            ms(medians[k]),
            ms(p90(&times[k]))
        );
    }
    println!(
        "rootless (network up) / rootful: {:.2}  (goal <= 1.5)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
    println!(
        "first rootless run: {:.1} ms  (goal <= 50 ms)",
        ms(medians[2])
    );
}
