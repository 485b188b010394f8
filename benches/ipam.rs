//! Allocation latency against the number of existing leases: netbox's store (allocate + release
//! for one owner, in process) with 0, 1,000, 5,000 and 20,000 leases in the network, and, when
//! `/usr/lib/cni/host-local` is installed (Debian: containernetworking-plugins), host-local's
//! ADD + DEL on a data directory holding the same number of lease files. Sample rounds are
//! interleaved across lease counts and tools so that all see the same machine load, and each
//! round starts at another lease count so that no count always follows host-local's heaviest
//! call. Prints medians and the ratio 20k/0 (netbox's target: at most 1.2).
//!
//! `cargo bench --bench ipam [-- SAMPLES] [--no-host-local]` (default 40 samples). The stores
//! live in a temporary directory under $TMPDIR, so its file system is the one measured (fsync
//! costs differ between file systems).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netbox::model::ipam::IpamConfig;
use netbox::model::owner::Owner;
use netbox::provision::leases::Store;
use serde_json::json;

const COUNTS: [usize; 4] = [0, 1_000, 5_000, 20_000];
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
/// netbox operations per sample round and lease count.
const NETBOX_REPEAT: usize = 5;

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let skip_host_local = std::env::args().any(|a| a == "--no-host-local");
    let host_local = !skip_host_local && Path::new(HOST_LOCAL).exists();
    if !host_local && !skip_host_local {
        eprintln!("{HOST_LOCAL} not found: timing netbox only (apt-get install containernetworking-plugins)");
    }

    // netbox: one network per lease count, each a /16, seeded through the store itself.
    let nb_data = tmp.path().join("netbox");
    let nb_config = IpamConfig::from_json(&json!({"subnet": "10.100.0.0/16"})).expect("config");
    let seed_start = Instant::now();
    let stores: Vec<Store> = COUNTS
        .iter()
        .map(|&count| {
            let store = Store::open(&nb_data, &format!("n{count}")).expect("open store");
            for i in 0..count {
                store
                    .allocate(&nb_config, &cni(&format!("seed-{i}")), &[])
                    .expect("seed lease");
            }
            assert_eq!(store.leases().expect("leases").len(), count);
            store
        })
        .collect();
    eprintln!(
        "seeded netbox with {} leases in {:.1} s",
        COUNTS.iter().sum::<usize>(),
        seed_start.elapsed().as_secs_f64()
    );

    // host-local: the same counts as lease files, plus the cursor it would have written.
    let hl_data = tmp.path().join("host-local");
    if host_local {
        for &count in &COUNTS {
            seed_host_local(&hl_data.join(format!("h{count}")), count);
        }
    }

    let owner = cni("bench");
    let mut nb: Vec<Vec<Duration>> =
        vec![Vec::with_capacity(samples * NETBOX_REPEAT); COUNTS.len()];
    let mut hl_add: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); COUNTS.len()];
    let mut hl_del: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); COUNTS.len()];
    let mut hl_version = Vec::with_capacity(samples);
    // Round 0 warms caches and is not counted.
    for round in 0..=samples {
        for k in 0..COUNTS.len() {
            let i = (k + round) % COUNTS.len();
            let count = COUNTS[i];
            // netbox's operation is short: several per round steady its median.
            for _ in 0..NETBOX_REPEAT {
                let start = Instant::now();
                let got = stores[i]
                    .allocate(&nb_config, &owner, &[])
                    .expect("allocate");
                assert_eq!(stores[i].release(&owner).expect("release"), got.len());
                if round > 0 {
                    nb[i].push(start.elapsed());
                }
            }
            if host_local {
                let (add, del) = host_local_add_del(&hl_data, count, round);
                if round > 0 {
                    hl_add[i].push(add);
                    hl_del[i].push(del);
                }
            }
        }
        if host_local {
            let start = Instant::now();
            cni_call(&hl_data, "VERSION", 0, "x");
            if round > 0 {
                hl_version.push(start.elapsed());
            }
        }
    }

    println!(
        "ipam allocation latency, interleaved rounds: {} netbox / {samples} host-local samples per point, median (p90)",
        samples * NETBOX_REPEAT
    );
    print!("{:>8} | {:>22}", "leases", "netbox alloc+release");
    if host_local {
        print!(
            " | {:>18} | {:>18} | {:>18}",
            "host-local ADD", "host-local DEL", "host-local ADD+DEL"
        );
    }
    println!();
    for (i, count) in COUNTS.iter().enumerate() {
        print!("{count:>8} | {:>22}", cell(&mut nb[i]));
        if host_local {
            let mut both: Vec<Duration> = hl_add[i]
                .iter()
                .zip(&hl_del[i])
                .map(|(a, d)| *a + *d)
                .collect();
            print!(
                " | {:>18} | {:>18} | {:>18}",
                cell(&mut hl_add[i]),
                cell(&mut hl_del[i]),
                cell(&mut both)
            );
        }
        println!();
    }
    let last = COUNTS.len() - 1;
    let ratio = |v: &mut [Vec<Duration>]| {
        median(&mut v[last]).as_secs_f64() / median(&mut v[0]).as_secs_f64()
    };
    println!(
        "netbox     ratio 20k/0: {:.2} (target <= 1.2)",
        ratio(&mut nb)
    );
    if host_local {
        println!(
            "host-local ratio 20k/0: ADD {:.2}, DEL {:.2}",
            ratio(&mut hl_add),
            ratio(&mut hl_del)
        );
        println!(
            "host-local VERSION (its process start, the floor of each call): {}",
            cell(&mut hl_version)
        );
        println!(
            "note: netbox is timed in process and fsyncs its records; host-local runs as a \
             process per call and does not fsync"
        );
    }
}

fn cni(id: &str) -> Owner {
    Owner::Cni {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

/// `count` lease files as host-local writes them (`<ip>` holding `id\r\nifname`) and its cursor
/// (`last_reserved_ip.0`), as if it had handed them out itself.
fn seed_host_local(net_dir: &Path, count: usize) {
    std::fs::create_dir_all(net_dir).expect("host-local dir");
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 2));
    let mut last = None;
    for i in 0..count {
        let ip = Ipv4Addr::from(base + u32::try_from(i).expect("small"));
        std::fs::write(net_dir.join(ip.to_string()), format!("seed-{i}\r\neth0"))
            .expect("lease file");
        last = Some(ip);
    }
    if let Some(last) = last {
        std::fs::write(net_dir.join("last_reserved_ip.0"), last.to_string()).expect("cursor file");
    }
}

/// One host-local ADD then DEL for a fresh container id; returns both durations.
fn host_local_add_del(data: &Path, count: usize, round: usize) -> (Duration, Duration) {
    let id = format!("bench-{round}");
    let start = Instant::now();
    let out = cni_call(data, "ADD", count, &id);
    let add = start.elapsed();
    let result: serde_json::Value = serde_json::from_slice(&out).expect("host-local result");
    let addr = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(
        addr.parse::<ipnetwork::IpNetwork>()
            .map(|n| matches!(n.ip(), IpAddr::V4(_)))
            .unwrap_or(false),
        "host-local ADD gave no address: {result}"
    );
    let start = Instant::now();
    cni_call(data, "DEL", count, &id);
    (add, start.elapsed())
}

fn cni_call(data: &Path, command: &str, count: usize, id: &str) -> Vec<u8> {
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": format!("h{count}"),
        "type": "bridge",
        "ipam": {"type": "host-local", "subnet": "10.200.0.0/16", "dataDir": data},
    });
    let mut child = Command::new(HOST_LOCAL)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run host-local");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("config to host-local");
    let out = child.wait_with_output().expect("host-local");
    assert!(
        out.status.success(),
        "host-local {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn cell(v: &mut [Duration]) -> String {
    let m = median(v);
    let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)];
    format!("{} ({})", fmt(m), fmt(p90))
}

fn fmt(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} us", ms * 1e3)
    } else {
        format!("{ms:.2} ms")
    }
}
