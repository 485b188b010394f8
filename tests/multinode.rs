//! A simulated cluster: lab nodes each running netbox-cni ADDs (the node's pod CIDR through
//! `runtimeConfig.ipRanges`) and `netbox node routes` from one node file. Pods reach pods on
//! every node without masquerade (the receiver reports the address it saw), `ipMasq` still
//! applies elsewhere; the node command is idempotent, removes what a node's line made when the
//! line goes, and a bad file or a foreign route changes nothing.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use netbox::lab::topology::Topology;
use netbox::lab::{BuildOptions, Lab};
use netbox::sys::netns::{self, NetNs};

use crate::cni::env_of;
use crate::harness::{self, cni_bin, netbox_bin, private_host, run_with_stdin};

/// A node of the simulated cluster: its lab name, address and pod CIDR.
struct ClusterNode {
    name: &'static str,
    address: &'static str,
    pod_cidr: &'static str,
}

/// Pods per node.
const PODS: usize = 3;

fn pod_ns(node: &str, i: usize) -> String {
    format!("{node}-pod{i}")
}

/// The conflist a node's runtime hands netbox-cni, with the runtime's ipRanges.
fn pod_conf(node: &ClusterNode, no_masq: &[&str], mtu: u32) -> String {
    json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "netbox-cni",
        "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "mtu": mtu, "noMasqueradeTo": no_masq,
        "ipam": {"type": "netbox", "dataDir": format!("/var/lib/netbox/ipam-{}", node.name)},
        "runtimeConfig": {"ipRanges": [[{"subnet": node.pod_cidr}]]}
    })
    .to_string()
}

/// Runs netbox-cni inside `node` with `env` and `stdin`; returns (exit ok, parsed stdout).
fn cni_in(lab: &Lab, node: &str, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut cmd = lab.command(node, cni_bin()).expect("command in node");
    answer(cmd.env_clear().envs(env.iter().copied()), stdin)
}

/// The plugin's exit status and its answer.
fn answer(cmd: &mut Command, stdin: &str) -> (bool, Value) {
    let out = run_with_stdin(cmd, stdin.as_bytes());
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (out.status.success(), json)
}

/// Adds PODS pods on every node; returns each pod's (namespace, address).
fn add_pods(lab: &Lab, nodes: &[ClusterNode], no_masq: &[&str], mtu: u32) -> Vec<(String, IpAddr)> {
    let mut pods = Vec::new();
    for node in nodes {
        let conf = pod_conf(node, no_masq, mtu);
        for i in 0..PODS {
            let ns = pod_ns(node.name, i);
            netns::create_named(&ns).expect("pod netns");
            let path = format!("/run/netns/{ns}");
            let (ok, result) = cni_in(lab, node.name, &env_of("ADD", &ns, &path), &conf);
            assert!(ok, "ADD {ns} on {}: {result}", node.name);
            let ip: IpAddr = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("an address in {result}"));
            let cidr: ipnetwork::IpNetwork = node.pod_cidr.parse().expect("cidr");
            assert!(cidr.contains(ip), "{ip} from {}'s range {cidr}", node.name);
            pods.push((ns, ip));
        }
    }
    pods
}

/// A server in `ns` that answers every connection with the peer address it saw.
fn peer_reporter(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
}

fn listen_in_ns(ns: &str, addr: SocketAddr) {
    let handle = NetNs::open(Path::new(&format!("/run/netns/{ns}"))).expect("open netns");
    let listener = handle
        .run_in(move || TcpListener::bind(addr))
        .expect("enter")
        .expect("listen");
    peer_reporter(listener);
}

/// Connects from `ns` to `to` and returns the address the server saw.
fn seen_by(ns: &str, to: SocketAddr) -> std::io::Result<IpAddr> {
    let handle = NetNs::open(Path::new(&format!("/run/netns/{ns}"))).expect("open netns");
    handle
        .run_in(move || -> std::io::Result<IpAddr> {
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            answer
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad answer {answer:?}")))
        })
        .expect("enter")
}

const PORT: u16 = 7100;

/// Every pod reaches every other pod and sees its real address.
fn assert_all_pairs_see_pod_addresses(pods: &[(String, IpAddr)]) {
    for (from_ns, from_ip) in pods {
        for (to_ns, to_ip) in pods.iter().filter(|(ns, _)| ns != from_ns) {
            let seen = seen_by(from_ns, SocketAddr::new(*to_ip, PORT))
                .unwrap_or_else(|e| panic!("{from_ns} -> {to_ns} ({to_ip}): {e}"));
            assert_eq!(seen, *from_ip, "{from_ns} -> {to_ns}: masqueraded");
        }
    }
}

fn node_routes(lab: &Lab, node: &str, file: &Path, extra: &[&str]) -> Output {
    let mut cmd = lab.command(node, netbox_bin()).expect("command");
    cmd.args(["node", "routes"]).arg(file).args(extra);
    cmd.output().expect("run netbox node routes")
}

fn node_routes_ok(lab: &Lab, node: &str, file: &Path, extra: &[&str]) -> String {
    let out = node_routes(lab, node, file, extra);
    assert!(
        out.status.success(),
        "netbox node routes on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_in(lab: &Lab, node: &str, cmd: &str) -> String {
    let out = lab.exec(node, "sh", &["-c", cmd]).expect("shell in node");
    assert!(
        out.status.success(),
        "{cmd} in {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Routes, links, VXLAN details, permanent FDB and neighbour entries of a node, as iproute2 shows them.
fn state_of(lab: &Lab, node: &str) -> String {
    sh_in(
        lab,
        node,
        // Details of VXLAN devices only: a bridge's details hold running timers; learned
        // FDB entries come and go with traffic, link-local routes with IPv6 DAD.
        "ip route show table all | grep -v fe80::; ip link show; ip -d link show type vxlan; \
         bridge fdb show | grep permanent; ip neigh show nud permanent",
    )
}

fn write_nodes(path: &Path, nodes: &[&ClusterNode]) {
    let text: String = nodes
        .iter()
        .map(|n| format!("{} {}  # {}\n", n.address, n.pod_cidr, n.name))
        .collect();
    std::fs::write(path, format!("# node address, pod CIDR\n{text}")).expect("write node file");
}

/// A lab of `nodes` (name, address) on one switch, 192.168.60.0/24.
fn switch_lab(name: &str, nodes: &[(&str, &str)]) -> Lab {
    let mut toml =
        format!("name = \"{name}\"\n[[switch]]\nname = \"sw\"\nsubnet = \"192.168.60.0/24\"\n");
    for (node, address) in nodes {
        toml.push_str(&format!(
            "[[node]]\nname = \"{node}\"\n\
             [[link]]\na = \"{node}\"\nb = \"sw\"\na_ip = \"{address}/24\"\n"
        ));
    }
    cluster_lab(&toml)
}

fn cluster_lab(toml: &str) -> Lab {
    let topo = Topology::from_toml(toml).expect("topology");
    Lab::build(&topo, &BuildOptions::default()).expect("lab up")
}

const FLAT: [ClusterNode; 3] = [
    ClusterNode {
        name: "n1",
        address: "192.168.60.1",
        pod_cidr: "10.244.1.0/24",
    },
    ClusterNode {
        name: "n2",
        address: "192.168.60.2",
        pod_cidr: "10.244.2.0/24",
    },
    ClusterNode {
        name: "n3",
        address: "192.168.60.3",
        pod_cidr: "10.244.3.0/24",
    },
];

fn work_dir() -> PathBuf {
    let dir = PathBuf::from("/run/netbox/multinode-test");
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

#[test]
fn three_nodes_on_one_switch_route_pods_host_gw_without_masquerade() {
    if !private_host("multinode::three_nodes_on_one_switch_route_pods_host_gw_without_masquerade") {
        return;
    }
    let lab = switch_lab(
        "mn",
        &[
            ("n1", "192.168.60.1"),
            ("n2", "192.168.60.2"),
            ("n3", "192.168.60.3"),
            ("ext", "192.168.60.100"),
        ],
    );
    // Pod CIDRs and the nodes (not ext) keep their addresses.
    let no_masq = ["10.244.0.0/16", "192.168.60.0/28"];
    let pods = add_pods(&lab, &FLAT, &no_masq, 1500);
    for (ns, ip) in &pods {
        listen_in_ns(ns, SocketAddr::new(*ip, PORT));
    }
    let file = work_dir().join("nodes");
    write_nodes(&file, &FLAT.iter().collect::<Vec<_>>());
    // Dry run first: it says what it would do and does nothing.
    let before = state_of(&lab, "n1");
    let plan = node_routes_ok(&lab, "n1", &file, &["--dry-run"]);
    assert!(
        plan.contains("+ route 10.244.2.0/24 via 192.168.60.2 dev eth0 (host-gw)"),
        "{plan}"
    );
    assert_eq!(state_of(&lab, "n1"), before, "--dry-run changed the node");
    for node in &FLAT {
        let out = node_routes_ok(&lab, node.name, &file, &[]);
        // The node's own line is skipped: two routes, through the shared subnet.
        assert_eq!(
            out.lines().filter(|l| l.starts_with("+ route")).count(),
            2,
            "{out}"
        );
        assert!(
            !out.contains(node.pod_cidr),
            "{}: own CIDR routed: {out}",
            node.name
        );
        assert!(!out.contains("vxlan"), "{out}");
    }
    let routes = sh_in(&lab, "n1", "ip route show proto 78");
    assert!(
        routes.contains("10.244.2.0/24 via 192.168.60.2 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.3.0/24 via 192.168.60.3 dev eth0"),
        "{routes}"
    );
    assert_all_pairs_see_pod_addresses(&pods);

    // ipMasq still applies outside the exceptions: ext sees n1's address; a node (inside the
    // exceptions) sees the pod's.
    let ext_ns = "mn-ext";
    listen_in_ns(ext_ns, "192.168.60.100:7200".parse().expect("addr"));
    listen_in_ns("mn-n2", "192.168.60.2:7200".parse().expect("addr"));
    let (pod, pod_ip) = &pods[0];
    let seen = seen_by(pod, "192.168.60.100:7200".parse().expect("addr")).expect("to ext");
    assert_eq!(
        seen,
        "192.168.60.1".parse::<IpAddr>().expect("ip"),
        "not masqueraded"
    );
    let seen = seen_by(pod, "192.168.60.2:7200".parse().expect("addr")).expect("to n2");
    assert_eq!(seen, *pod_ip, "masqueraded to a node");

    // CHECK agrees with what ADD made (the runtime passes its ranges again).
    let conf = pod_conf(&FLAT[0], &no_masq, 1500);
    let path = format!("/run/netns/{pod}");
    let (ok, answer) = cni_in(
        &lab,
        "n1",
        &env_of("CHECK", pod, &path),
        &with_prev(&conf, pod_ip),
    );
    assert!(ok, "CHECK: {answer}");

    // Twice changes nothing: no change printed, the same routes, links and entries.
    let before = state_of(&lab, "n1");
    assert_eq!(node_routes_ok(&lab, "n1", &file, &[]), "");
    assert_eq!(state_of(&lab, "n1"), before);

    // A bad file (a CIDR with host bits, an unknown address) is refused, nothing changes.
    let bad = work_dir().join("bad");
    for text in [
        "192.168.60.2 10.244.2.5/24\n",
        "192.168.60.2 10.244.2.0/24\nnode3 10.244.3.0/24\n",
        "192.168.60.2 10.244.0.0/16\n192.168.60.3 10.244.3.0/24\n",
    ] {
        std::fs::write(&bad, text).expect("write");
        let out = node_routes(&lab, "n1", &bad, &[]);
        assert_eq!(out.status.code(), Some(125), "{text:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("node file"), "{err}");
        assert_eq!(state_of(&lab, "n1"), before, "{text:?} changed the node");
    }

    // n3 leaves the file: n1 loses its route and no longer reaches n3's pods.
    write_nodes(&file, &[&FLAT[0], &FLAT[1]]);
    let out = node_routes_ok(&lab, "n1", &file, &[]);
    assert!(out.contains("- route 10.244.3.0/24"), "{out}");
    let routes = sh_in(&lab, "n1", "ip route show proto 78");
    assert!(!routes.contains("10.244.3.0"), "{routes}");
    assert!(routes.contains("10.244.2.0/24"), "{routes}");
    let n3_pod = pods
        .iter()
        .find(|(ns, _)| ns.starts_with("n3"))
        .expect("n3 pod");
    assert!(seen_by(pod, SocketAddr::new(n3_pod.1, PORT)).is_err());

    // A route netbox did not make to a pod CIDR is never replaced: refused, nothing changes.
    sh_in(&lab, "n1", "ip route add 10.244.3.0/24 via 192.168.60.3");
    let before = state_of(&lab, "n1");
    write_nodes(&file, &FLAT.iter().collect::<Vec<_>>());
    let out = node_routes(&lab, "n1", &file, &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("netbox did not make"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&lab, "n1"), before);
    sh_in(&lab, "n1", "ip route del 10.244.3.0/24 via 192.168.60.3");

    // --watch applies the file again when it changes.
    write_nodes(&file, &[&FLAT[0], &FLAT[1]]);
    let mut watcher = lab.command("n1", netbox_bin()).expect("command");
    let mut watcher = watcher
        .args([
            "node",
            "routes",
            "--watch",
            "--interval",
            "0.1",
            "--resync",
            "0.5",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start --watch");
    write_nodes(&file, &FLAT.iter().collect::<Vec<_>>());
    harness::eventually("--watch adds n3's route", || {
        sh_in(&lab, "n1", "ip route show proto 78").contains("10.244.3.0/24")
    });
    // A route removed behind its back comes back at the next resync.
    sh_in(&lab, "n1", "ip route del 10.244.3.0/24");
    harness::eventually("--watch restores n3's route", || {
        sh_in(&lab, "n1", "ip route show proto 78").contains("10.244.3.0/24")
    });
    // A bad version is reported and changes nothing; the watcher goes on.
    let before = sh_in(&lab, "n1", "ip route show proto 78");
    std::fs::write(&file, "192.168.60.2 10.244.2.5/24\n").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sh_in(&lab, "n1", "ip route show proto 78"), before);
    assert!(
        watcher.try_wait().expect("try_wait").is_none(),
        "--watch ended"
    );
    write_nodes(&file, &[&FLAT[0]]);
    harness::eventually("--watch removes n2's and n3's routes", || {
        sh_in(&lab, "n1", "ip route show proto 78").is_empty()
    });
    let _ = watcher.kill();
    let _ = watcher.wait();

    // A device of another kind under the VXLAN device's name is not netbox's: refused.
    sh_in(&lab, "n2", "ip link add nbx-vxlan type bridge");
    let before = state_of(&lab, "n2");
    write_nodes(&file, &FLAT.iter().collect::<Vec<_>>());
    let out = node_routes(&lab, "n2", &file, &["--vxlan"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not netbox's VXLAN device"), "{err}");
    assert_eq!(state_of(&lab, "n2"), before);
}

fn with_prev(conf: &str, ip: &IpAddr) -> String {
    let mut v: Value = serde_json::from_str(conf).expect("conf");
    v["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "x"}],
        "ips": [{"address": format!("{ip}/24"), "interface": 0}],
    });
    v.to_string()
}

const ROUTED: [ClusterNode; 3] = [
    ClusterNode {
        name: "n1",
        address: "192.168.61.10",
        pod_cidr: "10.244.1.0/24",
    },
    ClusterNode {
        name: "n2",
        address: "192.168.62.10",
        pod_cidr: "10.244.2.0/24",
    },
    ClusterNode {
        name: "n3",
        address: "192.168.62.11",
        pod_cidr: "10.244.3.0/24",
    },
];

#[test]
fn nodes_on_two_subnets_behind_a_router_reach_each_other_through_vxlan() {
    if !private_host(
        "multinode::nodes_on_two_subnets_behind_a_router_reach_each_other_through_vxlan",
    ) {
        return;
    }
    let lab = cluster_lab(
        r#"
        name = "mv"
        [[switch]]
        name = "left"
        subnet = "192.168.61.0/24"
        [[switch]]
        name = "right"
        subnet = "192.168.62.0/24"
        [[node]]
        name = "router"
        router = true
        [[node]]
        name = "n1"
        routes = ["default via router"]
        [[node]]
        name = "n2"
        routes = ["default via router"]
        [[node]]
        name = "n3"
        routes = ["default via router"]
        [[node]]
        name = "ext"
        routes = ["default via router"]
        [[link]]
        a = "router"
        b = "left"
        a_ip = "192.168.61.1/24"
        [[link]]
        a = "router"
        b = "right"
        a_ip = "192.168.62.1/24"
        [[link]]
        a = "n1"
        b = "left"
        a_ip = "192.168.61.10/24"
        [[link]]
        a = "n2"
        b = "right"
        a_ip = "192.168.62.10/24"
        [[link]]
        a = "n3"
        b = "right"
        a_ip = "192.168.62.11/24"
        [[link]]
        a = "ext"
        b = "right"
        a_ip = "192.168.62.100/24"
        "#,
    );
    let no_masq = ["10.244.0.0/16", "192.168.61.0/28", "192.168.62.0/28"];
    // The VXLAN device takes 50 bytes of the underlay's 1500: pods get 1450, as with flannel.
    let pods = add_pods(&lab, &ROUTED, &no_masq, 1450);
    for (ns, ip) in &pods {
        listen_in_ns(ns, SocketAddr::new(*ip, PORT));
    }
    let file = work_dir().join("nodes");
    write_nodes(&file, &ROUTED.iter().collect::<Vec<_>>());
    for node in &ROUTED {
        node_routes_ok(&lab, node.name, &file, &[]);
    }
    // n1 is alone on its subnet: both peers through VXLAN. n2 and n3 share one: host-gw
    // between them, VXLAN to n1.
    let n1 = sh_in(&lab, "n1", "ip route show proto 78");
    assert!(
        n1.contains("10.244.2.0/24 via 10.244.2.0 dev nbx-vxlan onlink"),
        "{n1}"
    );
    assert!(
        n1.contains("10.244.3.0/24 via 10.244.3.0 dev nbx-vxlan onlink"),
        "{n1}"
    );
    let n2 = sh_in(&lab, "n2", "ip route show proto 78");
    assert!(
        n2.contains("10.244.3.0/24 via 192.168.62.11 dev eth0"),
        "{n2}"
    );
    assert!(
        n2.contains("10.244.1.0/24 via 10.244.1.0 dev nbx-vxlan onlink"),
        "{n2}"
    );
    let fdb = sh_in(&lab, "n1", "bridge fdb show dev nbx-vxlan");
    assert!(fdb.contains("dst 192.168.62.10"), "{fdb}");
    assert!(fdb.contains("dst 192.168.62.11"), "{fdb}");
    assert_all_pairs_see_pod_addresses(&pods);

    // ipMasq beyond the exceptions: ext (behind the router) sees n1's address.
    listen_in_ns("mv-ext", "192.168.62.100:7200".parse().expect("addr"));
    let seen = seen_by(&pods[0].0, "192.168.62.100:7200".parse().expect("addr")).expect("ext");
    assert_eq!(seen, "192.168.61.10".parse::<IpAddr>().expect("ip"));

    // Twice changes nothing.
    let before = state_of(&lab, "n1");
    assert_eq!(node_routes_ok(&lab, "n1", &file, &[]), "");
    assert_eq!(state_of(&lab, "n1"), before);

    // n3 leaves: its route, FDB and neighbour entries go; n2's stay.
    write_nodes(&file, &[&ROUTED[0], &ROUTED[1]]);
    node_routes_ok(&lab, "n1", &file, &[]);
    let routes = sh_in(&lab, "n1", "ip route show proto 78");
    assert!(!routes.contains("10.244.3.0"), "{routes}");
    let fdb = sh_in(&lab, "n1", "bridge fdb show dev nbx-vxlan");
    assert!(!fdb.contains("192.168.62.11"), "{fdb}");
    assert!(fdb.contains("192.168.62.10"), "{fdb}");
    let neigh = sh_in(&lab, "n1", "ip neigh show dev nbx-vxlan");
    assert!(!neigh.contains("10.244.3.0"), "{neigh}");

    // --vxlan on n2: its host-gw route to n3 moves onto the VXLAN device, and back without.
    write_nodes(&file, &ROUTED.iter().collect::<Vec<_>>());
    node_routes_ok(&lab, "n2", &file, &["--vxlan"]);
    let n2 = sh_in(&lab, "n2", "ip route show proto 78");
    assert!(
        n2.contains("10.244.3.0/24 via 10.244.3.0 dev nbx-vxlan onlink"),
        "{n2}"
    );
    let n2_pod = &pods[PODS];
    let n3_pod = &pods[2 * PODS];
    assert_eq!(
        seen_by(&n2_pod.0, SocketAddr::new(n3_pod.1, PORT)).expect("n2 -> n3"),
        n2_pod.1
    );
    node_routes_ok(&lab, "n2", &file, &[]);
    let n2 = sh_in(&lab, "n2", "ip route show proto 78");
    assert!(
        n2.contains("10.244.3.0/24 via 192.168.62.11 dev eth0"),
        "{n2}"
    );

    // Another VNI: the device is made again (its entries and routes with it); back to the
    // default, the pods reach each other again.
    let out = node_routes_ok(&lab, "n1", &file, &["--vni", "7"]);
    assert!(out.contains("- device nbx-vxlan"), "{out}");
    assert!(sh_in(&lab, "n1", "ip -d link show nbx-vxlan").contains("vxlan id 7 "));
    let routes = sh_in(&lab, "n1", "ip route show proto 78");
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev nbx-vxlan onlink"),
        "{routes}"
    );
    assert!(sh_in(&lab, "n1", "bridge fdb show dev nbx-vxlan").contains("dst 192.168.62.10"));
    assert!(seen_by(&pods[0].0, SocketAddr::new(n2_pod.1, PORT)).is_err());
    node_routes_ok(&lab, "n1", &file, &[]);
    assert!(sh_in(&lab, "n1", "ip -d link show nbx-vxlan").contains("vxlan id 1 "));
    assert_eq!(
        seen_by(&pods[0].0, SocketAddr::new(n2_pod.1, PORT)).expect("n1 -> n2"),
        pods[0].1
    );
    assert_eq!(node_routes_ok(&lab, "n1", &file, &[]), "");

    // Without this node's own line, peers could not reach it through VXLAN: refused.
    let before = state_of(&lab, "n1");
    write_nodes(&file, &[&ROUTED[1], &ROUTED[2]]);
    let out = node_routes(&lab, "n1", &file, &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this node (none of its IPv4 addresses) is not in it"),
        "{err}"
    );
    assert_eq!(state_of(&lab, "n1"), before);

    // An empty file: every route and the device go.
    std::fs::write(&file, "").expect("write");
    node_routes_ok(&lab, "n1", &file, &[]);
    assert_eq!(sh_in(&lab, "n1", "ip route show proto 78"), "");
    assert!(!sh_in(&lab, "n1", "ip link show").contains("nbx-vxlan"));
}

#[test]
fn ip_ranges_from_the_runtime_are_served_checked_and_released_without_them() {
    if !private_host(
        "multinode::ip_ranges_from_the_runtime_are_served_checked_and_released_without_them",
    ) {
        return;
    }
    let conf = |runtime: Value, ipam: Value| {
        json!({"cniVersion": "1.0.0", "name": "k8s", "type": "netbox-cni", "bridge": "cni0",
               "isGateway": true, "ipam": ipam, "runtimeConfig": runtime})
        .to_string()
    };
    let run = |command: &str, id: &str, ns: &str, stdin: &str| -> (bool, Value) {
        let path = format!("/run/netns/{ns}");
        answer(
            Command::new(cni_bin())
                .env_clear()
                .envs(env_of(command, id, &path)),
            stdin,
        )
    };
    netns::create_named("pod").expect("netns");
    let ranges = json!({"ipRanges": [[{"subnet": "10.250.3.0/24", "rangeStart": "10.250.3.10",
                                       "rangeEnd": "10.250.3.20", "gateway": "10.250.3.1"}]]});
    let ipam = json!({"type": "netbox"});
    let (ok, result) = run("ADD", "c1", "pod", &conf(ranges.clone(), ipam.clone()));
    assert!(ok, "{result}");
    assert_eq!(result["ips"][0]["address"], "10.250.3.10/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.250.3.1");
    let bridge = harness::sh("ip -o addr show cni0");
    assert!(bridge.contains("10.250.3.1/24"), "{bridge}");
    // The runtime's ranges come before the file's (as host-local orders them).
    let both = json!({"type": "netbox", "ranges": [[{"subnet": "10.251.0.0/24"}]]});
    netns::create_named("pod2").expect("netns");
    let (ok, result) = run("ADD", "c2", "pod2", &conf(ranges.clone(), both.clone()));
    assert!(ok, "{result}");
    assert_eq!(result["ips"][0]["address"], "10.250.3.11/24", "{result}");
    assert_eq!(result["ips"].as_array().map(Vec::len), Some(2), "{result}");

    // Bad ranges: shape errors do not decode (6), bad subnets cannot be served (7); nothing
    // is made.
    netns::create_named("pod3").expect("netns");
    let links = harness::link_names();
    for (runtime, code) in [
        (json!({"ipRanges": "10.0.0.0/24"}), 6),
        (json!({"ipRanges": [{"subnet": "10.0.0.0/24"}]}), 6),
        (json!({"ipRanges": [[{"subnet": "10.0.0.0/33"}]]}), 7),
        (
            json!({"ipRanges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}),
            7,
        ),
        (json!({"ipRanges": [[{"subnet": "10.251.0.0/16"}]]}), 7),
        (json!({"ipRanges": [[]]}), 7),
    ] {
        let ipam = if code == 7 && runtime.to_string().contains("10.251") {
            &both
        } else {
            &ipam
        };
        let (ok, err) = run("ADD", "c3", "pod3", &conf(runtime.clone(), ipam.clone()));
        assert!(!ok, "{runtime} accepted");
        assert_eq!(err["code"], code, "{runtime}: {err}");
        assert_eq!(harness::link_names(), links, "{runtime} left links");
    }
    // No ranges anywhere: ADD is refused with the hint.
    let (ok, err) = run("ADD", "c3", "pod3", &conf(Value::Null, ipam.clone()));
    assert!(!ok);
    assert!(
        err["msg"].as_str().unwrap_or("").contains("ipRanges"),
        "{err}"
    );

    // STATUS without them has no pool to judge: the plugin is ready.
    let status = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "netbox-cni",
                        "bridge": "cni0", "ipam": {"type": "netbox"}})
    .to_string();
    let (ok, err) = answer(
        Command::new(cni_bin())
            .env_clear()
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", "/usr/lib/cni"),
        &status,
    );
    assert!(ok, "STATUS: {err}");

    // DEL without the runtime's ranges (a cleanup process that never knew them) releases the
    // lease.
    let (ok, err) = run("DEL", "c1", "pod", &conf(Value::Null, ipam.clone()));
    assert!(ok, "DEL: {err}");
    let leases = harness::sh("ls -R /var/lib/netbox/ipam/k8s");
    assert!(!leases.contains("10.250.3.10"), "{leases}");
    assert!(leases.contains("10.250.3.11"), "{leases}");
    // GC (which gets no runtimeConfig) releases what the runtime no longer lists, whichever
    // ranges it came from.
    let gc = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "netbox-cni",
                    "bridge": "cni0", "ipam": {"type": "netbox"},
                    "cni.dev/valid-attachments": []})
    .to_string();
    let (ok, err) = answer(
        Command::new(cni_bin())
            .env_clear()
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", "/usr/lib/cni"),
        &gc,
    );
    assert!(ok, "GC: {err}");
    let leases = harness::sh("ls -R /var/lib/netbox/ipam/k8s");
    assert!(!leases.contains("10.250.3.11"), "{leases}");
    assert!(!leases.contains("10.251.0."), "{leases}");
}

#[test]
fn dual_stack_nodes_route_both_families_host_gw_from_one_line_per_family() {
    if !private_host(
        "multinode::dual_stack_nodes_route_both_families_host_gw_from_one_line_per_family",
    ) {
        return;
    }
    let lab = switch_lab("md", &[("n1", "192.168.60.1"), ("n2", "192.168.60.2")]);
    let mut pods: Vec<(String, IpAddr, IpAddr)> = Vec::new();
    for n in 1..=2 {
        let node = format!("n{n}");
        sh_in(
            &lab,
            &node,
            &format!("ip -6 addr add fd00:60::{n}/64 dev eth0 nodad"),
        );
        // The runtime's two range sets: one address of each family per pod.
        let conf = json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "netbox-cni",
            "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
            "noMasqueradeTo": ["10.244.0.0/16", "fd00:10:244::/56", "192.168.60.0/24", "fd00:60::/64"],
            "ipam": {"type": "netbox", "dataDir": format!("/var/lib/netbox/ipam-{node}")},
            "runtimeConfig": {"ipRanges": [[{"subnet": format!("10.244.{n}.0/24")}],
                                           [{"subnet": format!("fd00:10:244:{n}::/64")}]]}
        })
        .to_string();
        let ns = format!("{node}-pod");
        netns::create_named(&ns).expect("pod netns");
        let path = format!("/run/netns/{ns}");
        let (ok, result) = cni_in(&lab, &node, &env_of("ADD", &ns, &path), &conf);
        assert!(ok, "ADD on {node}: {result}");
        let ip = |i: usize| -> IpAddr {
            result["ips"][i]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("address {i} in {result}"))
        };
        let (v4, v6) = (ip(0), ip(1));
        assert!(v4.is_ipv4() && v6.is_ipv6(), "{result}");
        listen_in_ns(&ns, SocketAddr::new(v4, PORT));
        listen_in_ns(&ns, SocketAddr::new(v6, PORT));
        pods.push((ns, v4, v6));
    }
    let file = work_dir().join("nodes");
    std::fs::write(
        &file,
        "192.168.60.1 10.244.1.0/24\nfd00:60::1 fd00:10:244:1::/64\n\
         192.168.60.2 10.244.2.0/24\nfd00:60::2 fd00:10:244:2::/64\n",
    )
    .expect("node file");
    for n in ["n1", "n2"] {
        let out = node_routes_ok(&lab, n, &file, &[]);
        assert_eq!(out.lines().count(), 2, "{n}: {out}");
    }
    let v6 = sh_in(&lab, "n1", "ip -6 route show proto 78");
    assert!(
        v6.contains("fd00:10:244:2::/64 via fd00:60::2 dev eth0"),
        "{v6}"
    );
    assert_eq!(
        node_routes_ok(&lab, "n1", &file, &[]),
        "",
        "twice, IPv6 included"
    );
    // Both ways, both families, the receiver sees the pod's own address.
    for (from, to) in [(0, 1), (1, 0)] {
        let (ns, v4, v6) = &pods[from];
        let (_, to4, to6) = &pods[to];
        harness::eventually("IPv6 neighbours resolve", || {
            seen_by(ns, SocketAddr::new(*to6, PORT)).is_ok()
        });
        assert_eq!(seen_by(ns, SocketAddr::new(*to4, PORT)).expect("v4"), *v4);
        assert_eq!(seen_by(ns, SocketAddr::new(*to6, PORT)).expect("v6"), *v6);
    }
    // A pod CIDR of the other family than its node's address cannot be routed host-gw.
    std::fs::write(&file, "192.168.60.2 fd00:10:244:2::/64\n").expect("write");
    let before = state_of(&lab, "n1");
    let out = node_routes(&lab, "n1", &file, &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one line per family"));
    assert_eq!(state_of(&lab, "n1"), before);
}

#[test]
fn tables_of_an_older_netbox_are_upgraded_in_place_keeping_their_elements() {
    if !private_host(
        "multinode::tables_of_an_older_netbox_are_upgraded_in_place_keeping_their_elements",
    ) {
        return;
    }
    use netbox::firewall::layout::skeleton;
    use netbox::sys::nfnetlink::Family;
    // The inet table as the previous version made it: no nomasq sets, nor their look-ups.
    let old: String = skeleton(Family::Inet)
        .lines()
        .filter(|l| !l.contains("set nomasq"))
        .map(|l| {
            l.replace(" ip saddr . ip daddr != @nomasq4", "")
                .replace(" ip6 saddr . ip6 daddr != @nomasq6", "")
                + "\n"
        })
        .collect();
    for text in [old.as_str(), skeleton(Family::Bridge)] {
        let out = run_with_stdin(Command::new("nft").args(["-f", "-"]), text.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another attachment's state from before the upgrade.
    harness::sh("nft add element inet netbox masq4 '{ 10.77.0.9 comment \"cni/old+eth0\" }'");
    netns::create_named("pod").expect("netns");
    let conf = json!({"cniVersion": "1.0.0", "name": "up", "type": "netbox-cni",
        "bridge": "nbup0", "isGateway": true, "ipMasq": true,
        "noMasqueradeTo": ["10.244.0.0/16"],
        "ipam": {"type": "netbox", "subnet": "10.78.0.0/24"}})
    .to_string();
    let (ok, result) = answer(
        Command::new(cni_bin())
            .env_clear()
            .envs(env_of("ADD", "c1", "/run/netns/pod")),
        &conf,
    );
    assert!(ok, "ADD over old tables: {result}");
    let table = harness::sh("nft list table inet netbox");
    assert!(table.contains("10.78.0.2 . 10.244.0.0/16"), "{table}");
    assert!(
        table.contains("10.77.0.9"),
        "the old element is gone: {table}"
    );
    let postrouting = harness::sh("nft list chain inet netbox postrouting");
    assert_eq!(
        postrouting.matches("masquerade").count(),
        4,
        "{postrouting}"
    );
    assert!(postrouting.contains("@nomasq4") && postrouting.contains("@nomasq6"));
}
