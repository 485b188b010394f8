//! netbox-cni against the reference plugins (Debian's containernetworking-plugins: bridge +
//! host-local), side by side in one run: the same configuration apart from the plugin and IPAM
//! type, a fresh named namespace per cycle, cycles interleaved so both see the same load.
//! Prints medians and p90 of ADD, CHECK, DEL and VERSION, and the ratios against the targets
//! (ADD ≤ 0.25×, DEL ≤ 0.5×, VERSION ≤ 0.25×), for the default build and, when it has been
//! built, the static musl build of the README.
//!
//! Then a burst, as a node sees when many pods start at once: 100 ADDs with 20 in flight, each
//! into its own namespace, per plugin in turn (three rounds, the order rotating); p50 and p99 of
//! one ADD, and the p99 ratio against the target (≤ 0.25×); with the CPU time one ADD took
//! (user + system of the plugin processes) and the wall time of a burst, which tell a plugin
//! that waits from one that works.
//!
//! Runs as root inside a private network + mount namespace: bridges, namespaces and leases never
//! reach the real host. `cargo bench --bench cni [-- N]` (N cycles, default 50; 0 runs the burst
//! alone). NETBOX_BENCH_DATA puts the IPAM stores elsewhere than /var/lib/netbox (a tmpfs, to
//! take the disk out of the comparison).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ms, private_host, require_root, samples};

const REFERENCE_DIR: &str = "/usr/lib/cni";

struct Plugin {
    label: &'static str,
    binary: String,
    config: String,
    times: [Vec<Duration>; 4],
}

const OPS: [&str; 4] = ["ADD", "CHECK", "DEL", "VERSION"];

fn main() {
    let n = samples(50);
    if !require_root("cni") {
        return;
    }
    if !Path::new(REFERENCE_DIR).join("bridge").exists() {
        eprintln!(
            "cni bench: {REFERENCE_DIR}/bridge missing (apt-get install containernetworking-plugins); skipped"
        );
        return;
    }
    private_host();
    let data = std::env::var("NETBOX_BENCH_DATA").unwrap_or_else(|_| "/var/lib/netbox".into());
    let config = |plugin: &str, ipam: &str, bridge: &str, subnet: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bench","type":"{plugin}","bridge":"{bridge}",
"isGateway":true,"isDefaultGateway":true,"ipMasq":false,
"ipam":{{"type":"{ipam}","subnet":"{subnet}","dataDir":"{data}/bench-{bridge}"}}}}"#
        )
    };
    let mut plugins = vec![
        Plugin {
            label: "reference bridge+host-local",
            binary: format!("{REFERENCE_DIR}/bridge"),
            config: config("bridge", "host-local", "refbench0", "10.120.0.0/16"),
            times: Default::default(),
        },
        Plugin {
            label: "netbox-cni",
            // NETBOX_BENCH_CNI_BIN compares another build.
            binary: std::env::var("NETBOX_BENCH_CNI_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox-cni").to_string()),
            config: config("netbox-cni", "netbox", "nbbench0", "10.121.0.0/16"),
            times: Default::default(),
        },
    ];
    // The static musl build of the README, when it has been built: compared in the same run.
    let musl = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/netbox-cni");
    if musl.exists() {
        plugins.push(Plugin {
            label: "netbox-cni (musl)",
            binary: musl.display().to_string(),
            config: config("netbox-cni", "netbox", "nbbench1", "10.122.0.0/16"),
            times: Default::default(),
        });
    } else {
        eprintln!(
            "cni bench: no static musl build at {} (see README); comparing the default build only",
            musl.display()
        );
    }
    // Warm up: the first ADD creates the bridge, later ones reuse it as in real use.
    // Each plugin has its own bridge, store and container ids: the two netbox builds would
    // otherwise share host veth names, and one build's ADD could meet the veth the other's
    // DEL is still deleting in the background.
    for (k, p) in plugins.iter_mut().enumerate() {
        cycle(p, &format!("p{k}warmup"), false);
    }
    // The order rotates: a cycle runs while the kernel still tears down the namespaces of the
    // cycles before it, and no plugin should always follow the same one.
    let count = plugins.len();
    for i in 0..n {
        for k in 0..count {
            let which = (i + k) % count;
            cycle(&mut plugins[which], &format!("p{which}c{i}"), true);
        }
    }
    let (reference, builds) = plugins.split_at_mut(1);
    let reference = &mut reference[0];
    // `-- 0` runs the burst alone.
    if n > 0 {
        print_cycles(n, reference, builds);
    }
    // The burst, all plugins in turn, the order rotating each round.
    let mut bursts: Vec<Burst> = (0..count).map(|_| Burst::default()).collect();
    for round in 0..BURST_ROUNDS {
        for k in 0..count {
            let which = (round + k) % count;
            let which_plugin = if which == 0 {
                &*reference
            } else {
                &builds[which - 1]
            };
            settle();
            bursts[which].add(burst(which_plugin, &format!("p{which}r{round}")));
        }
    }
    println!(
        "Burst: {BURST} ADDs with {IN_FLIGHT} in flight, {BURST_ROUNDS} rounds, time of one ADD \
         (p50/p90/p99/max), CPU of one ADD (user+sys of the plugin processes), wall time of a burst"
    );
    let r_p99 = bursts[0].report(reference.label);
    for (b, burst) in builds.iter().zip(bursts.iter_mut().skip(1)) {
        let p99 = burst.report(b.label);
        println!(
            "{:<28} p99 ratio {:.3}  (target <= 0.25)",
            "",
            p99.as_secs_f64() / r_p99.as_secs_f64()
        );
    }
}

/// What the bursts of one plugin measured.
#[derive(Default)]
struct Burst {
    times: Vec<Duration>,
    cpu: Duration,
    wall: Duration,
    rounds: u32,
}

impl Burst {
    fn add(&mut self, (times, cpu, wall): (Vec<Duration>, Duration, Duration)) {
        self.times.extend(times);
        self.cpu += cpu;
        self.wall += wall;
        self.rounds += 1;
    }

    /// Prints one line; the p99.
    fn report(&mut self, label: &str) -> Duration {
        let [p50, p90, p99] = [50, 90, 99].map(|p| percentile(&mut self.times, p));
        let max = self.times.last().copied().unwrap_or_default();
        let adds = self.times.len().max(1) as u32;
        println!(
            "{label:<28} {:>7.2} / {:>7.2} / {:>7.2} / {:>7.2} ms  cpu {:>5.2} ms  burst {:>7.1} ms",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            ms(self.cpu / adds),
            ms(self.wall / self.rounds.max(1))
        );
        p99
    }
}

/// The table of single operations: medians and p90, and the ratio of medians.
fn print_cycles(n: usize, reference: &mut Plugin, builds: &mut [Plugin]) {
    println!("CNI plugins, {n} cycles each (fresh netns per cycle), interleaved");
    print!("{:<8} {:>22}", "op", "reference med/p90");
    for b in builds.iter() {
        print!(" {:>24} {:>6}", format!("{} med/p90", b.label), "ratio");
    }
    println!();
    for (i, op) in OPS.iter().enumerate() {
        let (r_med, r_p90) = stats(&mut reference.times[i]);
        print!("{op:<8} {:>9.2} / {:>7.2} ms", ms(r_med), ms(r_p90));
        for b in builds.iter_mut() {
            let (n_med, n_p90) = stats(&mut b.times[i]);
            print!(
                " {:>11.2} / {:>7.2} ms {:>6.3}",
                ms(n_med),
                ms(n_p90),
                n_med.as_secs_f64() / r_med.as_secs_f64()
            );
        }
        let target = match *op {
            "ADD" | "VERSION" => "  (target <= 0.25)",
            "DEL" => "  (target <= 0.50)",
            _ => "",
        };
        println!("{target}");
    }
}

/// ADDs in one burst, and how many run at once.
const BURST: usize = 100;
const IN_FLIGHT: usize = 20;
const BURST_ROUNDS: usize = 3;

/// 100 ADDs, 20 at a time, into fresh namespaces; then every DEL (not timed). The time of each
/// ADD, the CPU time the ADDs took, and the wall time of the burst.
fn burst(p: &Plugin, tag: &str) -> (Vec<Duration>, Duration, Duration) {
    let ids: Vec<String> = (0..BURST).map(|i| format!("{tag}b{i}")).collect();
    for id in &ids {
        netbox::sys::netns::create_named(&format!("bench-{id}")).expect("netns");
    }
    let run_all = |command: &'static str| -> Vec<Duration> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let times = std::sync::Mutex::new(Vec::with_capacity(BURST));
        std::thread::scope(|scope| {
            for _ in 0..IN_FLIGHT {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else {
                        break;
                    };
                    let netns = format!("/run/netns/bench-{id}");
                    let (t, _) = call(p, command, id, &netns, &p.config);
                    times.lock().expect("times").push(t);
                });
            }
        });
        times.into_inner().expect("times")
    };
    let (cpu_before, started) = (children_cpu(), Instant::now());
    let adds = run_all("ADD");
    let (cpu, wall) = (children_cpu().saturating_sub(cpu_before), started.elapsed());
    run_all("DEL");
    for id in &ids {
        netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
    }
    (adds, cpu, wall)
}

/// Waits until the kernel has destroyed the namespaces of the bursts before (at most 10 s).
/// It does that asynchronously (cleanup_net, under the rtnl lock every plugin needs), so a burst
/// started at once would pay for its predecessor's teardown: the plugin that runs second would
/// lose. The count of live namespaces is read from the slab cache; settled means no fewer for
/// 300 ms.
fn settle() {
    let live = || -> Option<u64> {
        let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("net_namespace "))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (live(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
        let now = live();
        if now.is_none() {
            // No slab statistics: a fixed pause instead.
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        if now < last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// user + system time of the waited-for children so far.
fn children_cpu() -> Duration {
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => tv(u.user_time()) + tv(u.system_time()),
        Err(_) => Duration::ZERO,
    }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[((v.len() * p) / 100).min(v.len() - 1)]
}

/// One attachment's life: ADD, CHECK (with the ADD result as prevResult), DEL; then VERSION.
fn cycle(p: &mut Plugin, id: &str, record: bool) {
    let ns = format!("bench-{id}");
    netbox::sys::netns::create_named(&ns).expect("netns");
    let netns = format!("/run/netns/{ns}");
    let (t_add, result) = call(p, "ADD", id, &netns, &p.config);
    let mut check_conf: serde_json::Value = serde_json::from_str(&p.config).expect("config");
    check_conf["prevResult"] = serde_json::from_slice(&result).expect("ADD result");
    let (t_check, _) = call(p, "CHECK", id, &netns, &check_conf.to_string());
    let (t_del, _) = call(p, "DEL", id, &netns, &p.config);
    let (t_version, _) = call(p, "VERSION", id, &netns, r#"{"cniVersion":"1.0.0"}"#);
    netbox::sys::netns::delete_named(&ns).expect("delete netns");
    if record {
        for (i, t) in [t_add, t_check, t_del, t_version].into_iter().enumerate() {
            p.times[i].push(t);
        }
    }
}

fn call(p: &Plugin, command: &str, id: &str, netns: &str, stdin: &str) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut child = Command::new(&p.binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start plugin");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait plugin");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} {command} failed: {}",
        p.label,
        String::from_utf8_lossy(&out.stdout)
    );
    (took, out.stdout)
}

fn stats(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}
