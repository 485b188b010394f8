//! The firewall, side by side in one run, cycles interleaved, medians:
//! 1. netbox-cni with ipMasq + 4 published ports against the reference chain a runtime runs for
//!    the same thing (Debian's containernetworking-plugins: bridge with ipMasq + host-local,
//!    then portmap with the portMappings capability). ADD of the reference is bridge ADD +
//!    portmap ADD (with the bridge's result as prevResult), DEL is portmap DEL + bridge DEL.
//! 2. Scale: the same netbox-cni ADD and DEL in three network namespaces holding 0, 300 and
//!    1,000 other firewalled attachments (goal: <= 1.2x at 0), and a firewalled ADD against a
//!    plain one (goal: <= 1.5x).
//! 3. `netbox run --masquerade -- true` against `netbox run -- true` (goal: <= 1.5x).
//! 4. Per packet: TCP throughput (iperf3) and connections per second between two sandboxes,
//!    with 1,000 other firewalled attachments and with none (goal: >= 0.9x).
//!
//! Runs as root inside a private network + mount namespace (its own nftables ruleset).
//! `sudo cargo bench --bench firewall [-- N]` (N cycles, default 20).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, ms, private_host, require_root, samples, time_command};
use netbox::firewall::{FirewallSpec, PortMapping, Protocol};
use netbox::sys::netns::NetNs;
use serde_json::{json, Value};

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn main() {
    let n = samples(20);
    if !require_root("firewall") {
        return;
    }
    private_host();
    let netbox_bin = std::env::var("NETBOX_BENCH_CNI_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox-cni").to_string());
    let ports = json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}
    ]});
    if ["bridge", "portmap", "host-local"]
        .iter()
        .all(|p| Path::new(REFERENCE_DIR).join(p).exists())
    {
        against_reference(n, &netbox_bin, &ports);
    } else {
        eprintln!(
            "firewall bench: reference plugins missing in {REFERENCE_DIR}; section 1 skipped"
        );
    }
    at_scale(n, &netbox_bin, &ports);
    run_masquerade(n);
    per_packet(&netbox_bin);
}

fn netbox_conf(name: &str, bridge: &str, subnet: &str, firewall: bool, ports: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": name, "type": "netbox-cni", "bridge": bridge,
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "netbox", "subnet": subnet}
    });
    if firewall {
        c["ipMasq"] = json!(true);
        c["runtimeConfig"] = ports.clone();
    }
    c
}

fn against_reference(n: usize, netbox_bin: &str, ports: &Value) {
    let bridge = json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": "refbench0",
        "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "subnet": "10.120.0.0/16",
                 "dataDir": "/var/lib/netbox/bench-host-local"}
    });
    let portmap = json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "portmap",
        "capabilities": {"portMappings": true}, "runtimeConfig": ports
    });
    let netbox = netbox_conf("nbbench", "nbbench0", "10.121.0.0/16", true, ports);
    let bridge_bin = format!("{REFERENCE_DIR}/bridge");
    let portmap_bin = format!("{REFERENCE_DIR}/portmap");
    let mut times: [Vec<Duration>; 4] = Default::default();
    for i in 0..=n {
        let record = i > 0; // the first cycle of each creates its bridge and base tables
        let id = format!("r{i}");
        let path = netns(&id);
        let start = Instant::now();
        let result = call(&bridge_bin, "ADD", &id, &path, &bridge);
        let mut chained = portmap.clone();
        chained["prevResult"] = result;
        call(&portmap_bin, "ADD", &id, &path, &chained);
        let add = start.elapsed();
        let start = Instant::now();
        call(&portmap_bin, "DEL", &id, &path, &chained);
        call(&bridge_bin, "DEL", &id, &path, &bridge);
        let del = start.elapsed();
        netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
        let id = format!("n{i}");
        let path = netns(&id);
        let start = Instant::now();
        call(netbox_bin, "ADD", &id, &path, &netbox);
        let nb_add = start.elapsed();
        let start = Instant::now();
        call(netbox_bin, "DEL", &id, &path, &netbox);
        let nb_del = start.elapsed();
        netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
        if record {
            times[0].push(add);
            times[1].push(del);
            times[2].push(nb_add);
            times[3].push(nb_del);
        }
    }
    println!("1. CNI with ipMasq + 4 port mappings, {n} cycles each, interleaved");
    println!(
        "{:<5} {:>28} {:>12} {:>8}",
        "op", "reference bridge+portmap", "netbox-cni", "ratio"
    );
    for (op, r, nb) in [("ADD", 0, 2), ("DEL", 1, 3)] {
        let (r_med, nb_med) = (median(&mut times[r]), median(&mut times[nb]));
        println!(
            "{op:<5} {:>25.2} ms {:>9.2} ms {:>8.3}",
            ms(r_med),
            ms(nb_med),
            nb_med.as_secs_f64() / r_med.as_secs_f64()
        );
    }
}

/// A network namespace ("level") holding `count` firewalled attachments (their firewall state
/// only: masquerade, 4 ports, anti-spoofing, as netbox-cni makes it), with the bridge they
/// name.
fn level(name: &str, count: u32) -> NetNs {
    let ns = netbox::sys::netns::create_named(name).expect("level netns");
    ns.run_in(move || {
        let up = Command::new("ip")
            .args(["link", "add", "nbfill0", "type", "bridge"])
            .status()
            .expect("ip");
        assert!(up.success());
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        for i in 0..count {
            let owner = netbox::model::owner::Owner::Cni {
                container_id: format!("{:064x}", u64::from(i) + 1),
                ifname: "eth0".into(),
            };
            let mut spec = FirewallSpec::new(owner, "nbfill0", &format!("fill{i}"));
            let ip = std::net::Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 2) as u8);
            spec.addresses = vec![ipnetwork::IpNetwork::new(ip.into(), 16).expect("cidr")];
            spec.mac = Some([2, 0, 0, 0, (i >> 8) as u8, i as u8]);
            spec.masquerade = true;
            spec.spoof_check = true;
            spec.ports = (0..4)
                .map(|k| PortMapping {
                    host_ip: None,
                    host_port: 20000 + (4 * i + k) as u16,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                })
                .collect();
            netbox::firewall::apply(&spec).expect("fill");
        }
    })
    .expect("enter level");
    ns
}

fn at_scale(n: usize, netbox_bin: &str, ports: &Value) {
    let levels: Vec<(u32, NetNs)> = [0, 300, 1000]
        .into_iter()
        .map(|count| (count, level(&format!("level{count}"), count)))
        .collect();
    let fw = netbox_conf("scale", "nbscale0", "10.122.0.0/16", true, ports);
    let plain = netbox_conf("plain", "nbplain0", "10.123.0.0/16", false, ports);
    // [level][add, del], then plain add/del in the empty level.
    let mut times: Vec<[Vec<Duration>; 2]> = vec![Default::default(); 4];
    // Each cycle: the firewalled ADD/DEL at every level and the plain one, in an order rotated
    // by one each cycle (the kernel still tears down the previous DEL's veth while the next
    // operation runs: no slot may always come right after the same one).
    let mut slots: Vec<(usize, &NetNs, u32, &Value)> = levels
        .iter()
        .enumerate()
        .map(|(li, (count, ns))| (li, ns, *count, &fw))
        .collect();
    slots.push((3, &levels[0].1, 0, &plain));
    for i in 0..=n {
        slots.rotate_left(1);
        for &(slot, ns, count, conf) in &slots {
            {
                let id = format!("s{count}-{slot}-{i}");
                let path = netns(&id);
                let (add, del) = ns
                    .run_in(|| {
                        let start = Instant::now();
                        call(netbox_bin, "ADD", &id, &path, conf);
                        let add = start.elapsed();
                        let start = Instant::now();
                        call(netbox_bin, "DEL", &id, &path, conf);
                        (add, start.elapsed())
                    })
                    .expect("enter level");
                netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
                if i > 0 {
                    times[slot][0].push(add);
                    times[slot][1].push(del);
                }
            }
        }
    }
    println!();
    println!("2. netbox-cni ADD/DEL with ipMasq + 4 ports among other firewalled attachments, {n} cycles, interleaved");
    let base = [median(&mut times[0][0]), median(&mut times[0][1])];
    for (li, (count, _)) in levels.iter().enumerate() {
        let (add, del) = (median(&mut times[li][0]), median(&mut times[li][1]));
        println!(
            "{count:>5} others: ADD {:>6.2} ms ({:.2}x)   DEL {:>6.2} ms ({:.2}x)   (goal <= 1.2x)",
            ms(add),
            add.as_secs_f64() / base[0].as_secs_f64(),
            ms(del),
            del.as_secs_f64() / base[1].as_secs_f64()
        );
    }
    let (padd, pdel) = (median(&mut times[3][0]), median(&mut times[3][1]));
    println!(
        "plain ADD {:.2} ms, DEL {:.2} ms: firewalled ADD {:.2}x plain (goal <= 1.5x), DEL {:.2}x",
        ms(padd),
        ms(pdel),
        base[0].as_secs_f64() / padd.as_secs_f64(),
        base[1].as_secs_f64() / pdel.as_secs_f64()
    );
}

fn run_masquerade(n: usize) {
    let netbox =
        std::env::var("NETBOX_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox").into());
    let plain = [netbox.as_str(), "run", "--", "true"];
    let masq = [netbox.as_str(), "run", "--masquerade", "--", "true"];
    // Warm-up: the bridge, and the shared tables.
    time_command(&plain);
    time_command(&masq);
    let (mut p, mut m) = (Vec::new(), Vec::new());
    for _ in 0..n.max(20) {
        p.push(time_command(&plain));
        m.push(time_command(&masq));
    }
    let (p, m) = (median(&mut p), median(&mut m));
    println!();
    println!(
        "3. netbox run -- true {:.2} ms, --masquerade {:.2} ms: {:.2}x (goal <= 1.5x)",
        ms(p),
        ms(m),
        m.as_secs_f64() / p.as_secs_f64()
    );
}

/// Two sandboxes (CNI, firewalled) in `ns`: their names and the server's address.
fn pair(ns: &NetNs, netbox_bin: &str, tag: &str) -> (String, String, String) {
    let conf = json!({
        "cniVersion": "1.0.0", "name": format!("pp{tag}"), "type": "netbox-cni",
        "bridge": format!("nbpp{tag}"), "isGateway": true, "ipMasq": true, "macspoofchk": true,
        "ipam": {"type": "netbox", "subnet": "10.124.0.0/24"}
    });
    let (a, b) = (format!("pa{tag}"), format!("pb{tag}"));
    let (pa, pb) = (netns(&a), netns(&b));
    let ip = ns
        .run_in(|| {
            let r = call(netbox_bin, "ADD", &a, &pa, &conf);
            call(netbox_bin, "ADD", &b, &pb, &conf);
            r["ips"][0]["address"]
                .as_str()
                .and_then(|s| s.split('/').next())
                .unwrap_or_default()
                .to_string()
        })
        .expect("enter");
    (format!("bench-{a}"), format!("bench-{b}"), ip)
}

fn per_packet(netbox_bin: &str) {
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("firewall bench: iperf3 missing; section 4 skipped");
        return;
    }
    let quiet = NetNs::open(Path::new("/run/netns/level0")).expect("level0");
    let busy = NetNs::open(Path::new("/run/netns/level1000")).expect("level1000");
    let pairs = [pair(&quiet, netbox_bin, "q"), pair(&busy, netbox_bin, "b")];
    let mut servers = Vec::new();
    for (server, _, ip) in &pairs {
        servers.push(
            Command::new("ip")
                .args(["netns", "exec", server, "iperf3", "-s", "-B", ip])
                .stdout(Stdio::null())
                .spawn()
                .expect("iperf3 -s"),
        );
        let ns = NetNs::open(Path::new(&format!("/run/netns/{server}"))).expect("server ns");
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let listener = ns
            .run_in(move || std::net::TcpListener::bind((ip, 7000)))
            .expect("enter")
            .expect("listen");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut gbps: [Vec<f64>; 2] = Default::default();
    let mut conns: [Vec<f64>; 2] = Default::default();
    for _round in 0..5 {
        for (k, (_, client, ip)) in pairs.iter().enumerate() {
            let out = Command::new("ip")
                .args(["netns", "exec", client, "iperf3", "-c", ip, "-t", "2", "-J"])
                .output()
                .expect("iperf3 -c");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                gbps[k].push(bps / 1e9);
            }
            let ns = NetNs::open(Path::new(&format!("/run/netns/{client}"))).expect("client");
            let target: std::net::SocketAddr = format!("{ip}:7000").parse().expect("addr");
            let rate = ns
                .run_in(move || {
                    let start = Instant::now();
                    let mut count = 0u32;
                    while start.elapsed() < Duration::from_secs(1) {
                        if let Ok(conn) = std::net::TcpStream::connect(target) {
                            // Closed with a reset: no TIME_WAIT piling up over the rounds.
                            let _ = nix::sys::socket::setsockopt(
                                &conn,
                                nix::sys::socket::sockopt::Linger,
                                &libc::linger {
                                    l_onoff: 1,
                                    l_linger: 0,
                                },
                            );
                            count += 1;
                        }
                    }
                    f64::from(count) / start.elapsed().as_secs_f64()
                })
                .expect("enter");
            conns[k].push(rate);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (q, b) = (med(&mut gbps[0]), med(&mut gbps[1]));
    let (qc, bc) = (med(&mut conns[0]), med(&mut conns[1]));
    println!();
    println!("4. Between two firewalled sandboxes, with 1,000 other firewalled attachments / none");
    println!(
        "TCP throughput {b:.2} / {q:.2} Gbit/s: {:.2}x (goal >= 0.9x)",
        b / q.max(f64::EPSILON)
    );
    println!(
        "connections/s {bc:.0} / {qc:.0}: {:.2}x (goal >= 0.9x)",
        bc / qc.max(f64::EPSILON)
    );
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}

fn netns(id: &str) -> String {
    let name = format!("bench-{id}");
    netbox::sys::netns::create_named(&name).expect("netns");
    format!("/run/netns/{name}")
}

fn call(binary: &str, command: &str, id: &str, netns: &str, config: &Value) -> Value {
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        // portmap runs iptables: it needs a PATH.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plugin");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(config.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("wait plugin");
    assert!(
        out.status.success(),
        "{binary} {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}
