//! Pod-to-pod TCP throughput across two simulated nodes, side by side in one run, rounds
//! interleaved (the order rotates), medians, ratios:
//!
//! - host-gw: netbox (netbox-cni ADD with the pod CIDR through ipRanges on each node, then
//!   `netbox node routes`) against the same path built by hand with `ip` (bridge, veth,
//!   address, default route in the pod, a route to the peer's pod CIDR via the peer node);
//! - host-gw with `ipMasq` and `noMasqueradeTo` (what a cluster runs: every packet passes the
//!   masquerade rule's set look-ups) against the same hand-built path;
//! - VXLAN: netbox (`netbox node routes --vxlan`) against a VXLAN device, FDB and neighbour
//!   entries and an onlink route built by hand with `ip` and `bridge`.
//!
//! Each pair of nodes is two network namespaces joined by a veth (the underlay); each pod is a
//! namespace on its node's bridge. iperf3 runs in the pods. Runs as root in a private network
//! and mount namespace: `sudo cargo bench --bench multinode [-- ROUNDS]` (default 5 rounds
//! of 2 s per path).

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{private_host, require_root, samples};
use serde_json::{json, Value};

/// One simulated pair of nodes with a pod on each; the client pod sends to the server pod.
struct Path {
    label: &'static str,
    client: String,
    server: String,
    server_ip: String,
}

fn main() {
    let rounds = samples(5);
    if !require_root("multinode") {
        return;
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("multinode bench: iperf3 missing (apt-get install iperf3); skipped");
        return;
    }
    private_host();
    let cni = std::env::var("NETBOX_BENCH_CNI_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox-cni").to_string());
    let netbox = env!("CARGO_BIN_EXE_netbox");
    let paths = [
        by_hand("hand host-gw", 1, false),
        with_netbox(&cni, netbox, "netbox host-gw", 2, false, false),
        by_hand("hand host-gw (2)", 3, false),
        with_netbox(
            &cni,
            netbox,
            "netbox host-gw ipMasq+noMasqueradeTo",
            4,
            false,
            true,
        ),
        by_hand("hand vxlan", 5, true),
        with_netbox(&cni, netbox, "netbox vxlan", 6, true, false),
    ];
    let servers: Vec<Child> = paths.iter().map(start_server).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut gbps: Vec<Vec<f64>> = vec![vec![]; paths.len()];
    for round in 0..rounds {
        // Rotating the order spreads whatever else the machine does over every path.
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            if let Some(g) = throughput(&paths[i]) {
                gbps[i].push(g);
            }
        }
    }
    let med: Vec<f64> = gbps
        .iter_mut()
        .map(|v| {
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        })
        .collect();
    println!(
        "Pod-to-pod TCP throughput across two simulated nodes (iperf3 -t 2, median of {rounds})"
    );
    for (p, g) in paths.iter().zip(&med) {
        println!("  {:<40} {g:6.2} Gbit/s", p.label);
    }
    let ratio = |a: usize, b: usize| med[a] / med[b].max(f64::EPSILON);
    for (what, a, b) in [
        ("netbox / hand, host-gw", 1, 0),
        ("netbox ipMasq+noMasqueradeTo / hand (2), host-gw", 3, 2),
        (
            "netbox ipMasq+noMasqueradeTo / netbox, host-gw (the firewall's cost)",
            3,
            1,
        ),
        ("netbox / hand, vxlan", 5, 4),
        ("hand / hand (2), identical paths (the noise floor)", 0, 2),
    ] {
        println!("{what}: {:.2}x", ratio(a, b));
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

fn sh(script: &str) {
    let out = Command::new("bash")
        .args(["-ec", script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two node namespaces `{p}n1`, `{p}n2` joined by a veth on 192.168.{70+id}.0/24, and a pod
/// namespace for each.
fn nodes(p: &str, id: u8) {
    sh(&format!(
        "for n in n1 n2; do ip netns add {p}$n; ip netns add {p}pod-$n; \
         ip -n {p}$n link set lo up; ip -n {p}pod-$n link set lo up; done
         ip link add u0 netns {p}n1 type veth peer name u0 netns {p}n2
         ip -n {p}n1 addr add 192.168.{u}.1/24 dev u0; ip -n {p}n2 addr add 192.168.{u}.2/24 dev u0
         ip -n {p}n1 link set u0 up; ip -n {p}n2 link set u0 up",
        u = 70 + u32::from(id)
    ));
}

/// The path built by hand with `ip`: pod CIDRs 10.{id}.{1,2}.0/24.
fn by_hand(label: &'static str, id: u8, vxlan: bool) -> Path {
    let p = format!("h{id}");
    nodes(&p, id);
    let u = 70 + u32::from(id);
    let mtu = if vxlan { 1450 } else { 1500 };
    for (n, peer) in [(1, 2), (2, 1)] {
        sh(&format!(
            "ip netns exec {p}n{n} sysctl -qw net.ipv4.ip_forward=1
             ip -n {p}n{n} link add cni0 type bridge; ip -n {p}n{n} link set cni0 mtu {mtu}
             ip -n {p}n{n} addr add 10.{id}.{n}.1/24 dev cni0; ip -n {p}n{n} link set cni0 up
             ip link add veth0 mtu {mtu} netns {p}n{n} type veth peer name eth0 mtu {mtu} netns {p}pod-n{n}
             ip -n {p}n{n} link set veth0 master cni0 up
             ip -n {p}pod-n{n} addr add 10.{id}.{n}.2/24 dev eth0; ip -n {p}pod-n{n} link set eth0 up
             ip -n {p}pod-n{n} route add default via 10.{id}.{n}.1"
        ));
        if vxlan {
            sh(&format!(
                "ip -n {p}n{n} link add vx0 address 0e:6e:c0:a8:{u:02x}:{n:02x} type vxlan id 1 \
                   local 192.168.{u}.{n} dev u0 dstport 4789 nolearning
                 ip -n {p}n{n} addr add 10.{id}.{n}.0/32 dev vx0; ip -n {p}n{n} link set vx0 up
                 ip netns exec {p}n{n} bridge fdb append 0e:6e:c0:a8:{u:02x}:{peer:02x} dev vx0 \
                   dst 192.168.{u}.{peer}
                 ip -n {p}n{n} neigh add 10.{id}.{peer}.0 lladdr 0e:6e:c0:a8:{u:02x}:{peer:02x} \
                   dev vx0 nud permanent
                 ip -n {p}n{n} route add 10.{id}.{peer}.0/24 via 10.{id}.{peer}.0 dev vx0 onlink"
            ));
        } else {
            sh(&format!(
                "ip -n {p}n{n} route add 10.{id}.{peer}.0/24 via 192.168.{u}.{peer}"
            ));
        }
    }
    Path {
        label,
        client: format!("{p}pod-n1"),
        server: format!("{p}pod-n2"),
        server_ip: format!("10.{id}.2.2"),
    }
}

/// The same path from netbox-cni ADDs (the pod CIDR through ipRanges) and `netbox node routes`.
fn with_netbox(
    cni: &str,
    netbox: &str,
    label: &'static str,
    id: u8,
    vxlan: bool,
    masq: bool,
) -> Path {
    let p = format!("b{id}");
    nodes(&p, id);
    let u = 70 + u32::from(id);
    let file = format!("/run/netbox/nodes-{p}");
    std::fs::create_dir_all("/run/netbox").expect("/run/netbox");
    std::fs::write(
        &file,
        format!("192.168.{u}.1 10.{id}.1.0/24\n192.168.{u}.2 10.{id}.2.0/24\n"),
    )
    .expect("node file");
    let mut server_ip = String::new();
    for n in 1..=2 {
        let conf = json!({
            "cniVersion": "1.0.0", "name": format!("pods-{p}"), "type": "netbox-cni",
            "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
            "ipMasq": masq, "noMasqueradeTo": if masq { json!([format!("10.{id}.0.0/16"), format!("192.168.{u}.0/24")]) } else { json!([]) },
            "mtu": if vxlan { 1450 } else { 1500 },
            "ipam": {"type": "netbox", "dataDir": format!("/var/lib/netbox/ipam-{p}n{n}")},
            "runtimeConfig": {"ipRanges": [[{"subnet": format!("10.{id}.{n}.0/24")}]]}
        });
        let result = add(cni, &format!("{p}n{n}"), &format!("{p}pod-n{n}"), &conf);
        if n == 2 {
            server_ip = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .expect("an address")
                .to_string();
        }
        // Forwarding as a node has it (netbox-cni turns it on only with ipMasq).
        sh(&format!(
            "ip netns exec {p}n{n} sysctl -qw net.ipv4.ip_forward=1"
        ));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &format!("{p}n{n}"),
            netbox,
            "node",
            "routes",
            &file,
        ]);
        if vxlan {
            cmd.arg("--vxlan");
        }
        let out = cmd.output().expect("netbox node routes");
        assert!(
            out.status.success(),
            "netbox node routes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Path {
        label,
        client: format!("{p}pod-n1"),
        server: format!("{p}pod-n2"),
        server_ip,
    }
}

fn add(cni: &str, node: &str, pod: &str, conf: &Value) -> Value {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, cni])
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", format!("/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netbox-cni");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("wait netbox-cni");
    assert!(
        out.status.success(),
        "ADD {pod}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn start_server(p: &Path) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.server,
            "iperf3",
            "-s",
            "-B",
            &p.server_ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s")
}

/// One 2-second iperf3 run, in Gbit/s.
fn throughput(p: &Path) -> Option<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.client,
            "iperf3",
            "-c",
            &p.server_ip,
            "-t",
            "2",
            "-J",
        ])
        .output()
        .expect("iperf3 -c");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    if bps.is_none() {
        eprintln!(
            "{}: iperf3 failed: {}",
            p.label,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bps.map(|b| b / 1e9)
}
