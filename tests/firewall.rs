//! The firewall end to end, in private hosts: netbox-cni and `netbox run` with masquerade,
//! published ports, anti-spoofing and isolation, checked with real TCP/UDP between namespaces
//! the test made, and with `nft -j list ruleset` for exact restoration.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{cni_bin, eventually, netbox, private_host, sh};
use netbox::sys::netns::{self, NetNs};

/// The owners with firewall state: the record chains (`owner-KEY`) of the shared `inet netbox`
/// table, one per attachment.
pub fn netbox_owners() -> Vec<String> {
    netbox_items()
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("owner-"))
        .map(String::from)
        .collect()
}

/// Everything any owner has in netbox's tables: records and set elements (`set NAME: N`).
pub fn netbox_state() -> Vec<String> {
    let mut out = netbox_owners();
    for item in netbox_items() {
        for kind in ["set", "map"] {
            if let Some(set) = item.get(kind) {
                let n = set
                    .get("elem")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if n > 0 {
                    out.push(format!("{kind} {}: {n}", set["name"]));
                }
            }
        }
    }
    out
}

fn netbox_items() -> Vec<Value> {
    let out: Value = serde_json::from_str(&sh("nft -j list ruleset")).expect("nft -j");
    out["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| is_netbox(i))
        .cloned()
        .collect()
}

/// True for netbox's shared tables and what they hold.
fn is_netbox(item: &Value) -> bool {
    item.as_object()
        .and_then(|o| o.iter().next())
        .is_some_and(|(kind, v)| match kind.as_str() {
            "table" => v["name"] == "netbox",
            _ => v["table"] == "netbox",
        })
}

/// The whole ruleset as `nft -j -s` shows it (no counter values), without the version banner.
fn ruleset() -> Value {
    let mut out: Value = serde_json::from_str(&sh("nft -j -s list ruleset")).expect("nft -j");
    if let Some(items) = out["nftables"].as_array_mut() {
        items.retain(|i| i.get("metainfo").is_none());
    }
    out
}

/// The ruleset without netbox's shared tables (which stay, empty, until `netbox gc`).
fn foreign_ruleset() -> Value {
    let mut out = ruleset();
    if let Some(items) = out["nftables"].as_array_mut() {
        items.retain(|i| !is_netbox(i));
    }
    out
}

/// No owner has any state left, and other programs' rules are as they were.
fn restored(before: &Value) -> bool {
    netbox_state().is_empty() && foreign_ruleset() == *before
}

/// Someone else's tables and chains, which netbox must never touch.
fn foreign_rules() {
    sh("nft -f - <<'EOF'
table inet other {
    chain forwarding {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
table ip nat {
    chain POSTROUTING {
        type nat hook postrouting priority 100; policy accept;
    }
}
EOF");
}

/// One plugin invocation with a cleared environment: (success, stdout, stderr).
fn cni(command: &str, id: &str, netns: Option<&str>, config: &Value) -> (bool, Value, String) {
    let mut cmd = Command::new(cni_bin());
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", format!("/run/netns/{ns}"));
    }
    let mut child = cmd.spawn().expect("start netbox-cni");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(config.to_string().as_bytes())
        .expect("write config");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn conf(name: &str, bridge: &str, subnet: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0", "name": name, "type": "netbox-cni", "bridge": bridge,
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "netbox", "subnet": subnet}
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// ADD in a fresh namespace `id`; the container's address.
fn add(id: &str, config: &Value) -> (IpAddr, Value) {
    netns::create_named(id).expect("netns");
    let (ok, result, stderr) = cni("ADD", id, Some(id), config);
    assert!(ok, "ADD {id} failed: {result} {stderr}");
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address");
    (ip, result)
}

/// `config` publishing host port `port` (to container port 80) instead.
fn with_port(config: &Value, port: u16) -> Value {
    let mut c = config.clone();
    c["runtimeConfig"] = json!({"portMappings": [{"hostPort": port, "containerPort": 80}]});
    c
}

fn del(id: &str, config: &Value) {
    let (ok, out, stderr) = cni("DEL", id, None, config);
    assert!(ok, "DEL {id} failed: {out} {stderr}");
}

/// A namespace `name` wired to the host by a veth: host side `host_ip`/24, inside `ns_ip`/24.
fn outside_namespace(name: &str, host_ip: &str, ns_ip: &str) {
    netns::create_named(name).expect("netns");
    sh(&format!(
        "ip link add h-{name} type veth peer name eth0 netns {name} && \
         ip addr add {host_ip}/24 dev h-{name} && ip link set h-{name} up && \
         ip -n {name} addr add {ns_ip}/24 dev eth0 && ip -n {name} link set eth0 up && \
         ip -n {name} link set lo up && ip -n {name} route add default via {host_ip}"
    ));
}

fn ns(name: &str) -> NetNs {
    NetNs::open(Path::new(&format!("/run/netns/{name}"))).expect("open netns")
}

/// A TCP server in namespace `name` (None: the private host) answering each connection with
/// the source address it saw.
fn serve_tcp(name: Option<&str>, ip: IpAddr, port: u16) {
    let bind = move || TcpListener::bind((ip, port));
    let listener = match name {
        Some(n) => ns(n).run_in(bind).expect("enter"),
        None => bind(),
    }
    .expect("listen");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn.peer_addr().map(|p| p.ip().to_string());
            let _ = conn.write_all(peer.unwrap_or_default().as_bytes());
        }
    });
}

/// A UDP server in namespace `name` answering each datagram with the sender's address.
fn serve_udp(name: &str, port: u16) {
    let socket = ns(name)
        .run_in(move || UdpSocket::bind(("0.0.0.0", port)))
        .expect("enter")
        .expect("bind");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
}

/// Connects from namespace `name` (None: the private host), optionally from `source`, to
/// `target`; what the server saw as source, or None when no connection could be made.
fn ask_tcp(name: Option<&str>, source: Option<IpAddr>, target: SocketAddr) -> Option<String> {
    let go = move || -> Option<String> {
        let mut conn = match source {
            None => TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?,
            Some(src) => connect_from(src, target)?,
        };
        conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    match name {
        Some(n) => ns(n).run_in(go).expect("enter"),
        None => go(),
    }
}

/// A TCP connection bound to `source` (std cannot bind before connecting).
fn connect_from(source: IpAddr, target: SocketAddr) -> Option<TcpStream> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if source.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::empty(), None).ok()?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    )
    .ok()?;
    // A blocking connect to a dropped SYN takes the kernel's SYN retries: cap it.
    let raw = fd.into_raw_fd();
    let tv = nix::sys::time::TimeVal::new(2, 0);
    let stream = unsafe { TcpStream::from_raw_fd(raw) };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SendTimeout, &tv);
    connect(raw, &SockaddrStorage::from(target)).ok()?;
    Some(stream)
}

fn ask_udp(name: Option<&str>, target: SocketAddr) -> Option<String> {
    let go = move || -> Option<String> {
        let socket = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.send_to(b"hi", target).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match name {
        Some(n) => ns(n).run_in(go).expect("enter"),
        None => go(),
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn read_sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .expect("sysctl")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// netbox-cni

#[test]
fn cni_published_ports_reach_the_container_from_outside_the_host_and_neighbours() {
    if !private_host(
        "firewall::cni_published_ports_reach_the_container_from_outside_the_host_and_neighbours",
    ) {
        return;
    }
    assert_eq!(read_sysctl("/proc/sys/net/ipv4/ip_forward"), "0");
    let config = conf(
        "web",
        "nbf0",
        "10.91.0.0/24",
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 9090, "containerPort": 80, "hostIP": "192.168.77.1"}
        ]}}),
    );
    netns::create_named("server").expect("netns");
    let (ok, result, stderr) = cni("ADD", "server", Some("server"), &config);
    assert!(ok, "{result} {stderr}");
    // Forwarding was off, so turning it on is said (on stderr: stdout is the result).
    assert!(stderr.contains("net.ipv4.ip_forward"), "{stderr}");
    assert_eq!(read_sysctl("/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(
        read_sysctl("/proc/sys/net/ipv4/conf/nbf0/route_localnet"),
        "1"
    );
    serve_tcp(Some("server"), "0.0.0.0".parse().expect("ip"), 80);
    serve_udp("server", 53);
    outside_namespace("client", "192.168.77.1", "192.168.77.2");
    // From another machine (a namespace behind the host): the client's own address arrives.
    assert_eq!(
        ask_tcp(Some("client"), None, addr("192.168.77.1", 8080)).as_deref(),
        Some("192.168.77.2")
    );
    assert!(ask_tcp(Some("client"), None, addr("192.168.77.1", 9090)).is_some());
    assert_eq!(
        ask_udp(Some("client"), addr("192.168.77.1", 5353)).as_deref(),
        Some("192.168.77.2")
    );
    // From the host itself, on localhost (route_localnet + masquerade) and on its addresses.
    assert!(ask_tcp(None, None, addr("127.0.0.1", 8080)).is_some());
    assert!(ask_tcp(None, None, addr("10.91.0.1", 8080)).is_some());
    assert!(ask_udp(None, addr("127.0.0.1", 5353)).is_some());
    // From a neighbour on the same bridge through the gateway (hairpin): the reply must come
    // back through the host, so the container sees the gateway as source.
    let neighbour = conf("web", "nbf0", "10.91.0.0/24", json!({}));
    add("neighbour", &neighbour);
    assert_eq!(
        ask_tcp(Some("neighbour"), None, addr("10.91.0.1", 8080)).as_deref(),
        Some("10.91.0.1")
    );
    // A port that is not published is not forwarded.
    assert!(ask_tcp(Some("client"), None, addr("192.168.77.1", 8081)).is_none());
    // CHECK sees the rules; without them it reports a mismatch.
    let mut check = config.clone();
    check["prevResult"] = result.clone();
    assert!(cni("CHECK", "server", Some("server"), &check).0);
    sh("nft delete element inet netbox dnat4any '{ tcp . 8080 }'");
    let (ok, out, _) = cni("CHECK", "server", Some("server"), &check);
    assert!(!ok);
    assert_eq!(out["code"], 100, "{out}");
    del("server", &config);
    del("neighbour", &neighbour);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn cni_masquerade_gives_upstream_the_host_address() {
    if !private_host("firewall::cni_masquerade_gives_upstream_the_host_address") {
        return;
    }
    outside_namespace("upstream", "192.168.78.1", "192.168.78.2");
    // The upstream namespace knows no route back to the containers' subnet.
    sh("ip -n upstream route del default");
    serve_tcp(Some("upstream"), "192.168.78.2".parse().expect("ip"), 9000);
    let masq = conf("out", "nbf0", "10.91.0.0/24", json!({"ipMasq": true}));
    add("masq", &masq);
    assert_eq!(
        ask_tcp(Some("masq"), None, addr("192.168.78.2", 9000)).as_deref(),
        Some("192.168.78.1")
    );
    // Without ipMasq the same trip has no way back.
    let plain = conf("plain", "nbf1", "10.92.0.0/24", json!({}));
    add("plain", &plain);
    assert!(ask_tcp(Some("plain"), None, addr("192.168.78.2", 9000)).is_none());
    del("masq", &masq);
    del("plain", &plain);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
    // With the rules gone, the masqueraded container's traffic would not be rewritten either.
}

#[test]
fn spoofed_source_addresses_and_macs_are_dropped() {
    if !private_host("firewall::spoofed_source_addresses_and_macs_are_dropped") {
        return;
    }
    let config = conf("safe", "nbf0", "10.91.0.0/24", json!({"macspoofchk": true}));
    let (ip, _) = add("c1", &config);
    serve_tcp(None, "10.91.0.1".parse().expect("ip"), 7000);
    let gateway = addr("10.91.0.1", 7000);
    assert_eq!(
        ask_tcp(Some("c1"), Some(ip), gateway).as_deref(),
        Some(ip.to_string().as_str())
    );
    // Another address of the subnet, added inside by someone with NET_ADMIN there.
    sh("ip -n c1 addr add 10.91.0.200/24 dev eth0");
    assert!(ask_tcp(
        Some("c1"),
        Some("10.91.0.200".parse().expect("ip")),
        gateway
    )
    .is_none());
    // A neighbour's MAC: even the own address no longer passes.
    sh("ip -n c1 link set eth0 address 02:00:00:00:00:77");
    assert!(ask_tcp(Some("c1"), Some(ip), gateway).is_none());
    del("c1", &config);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn isolation_options_cut_what_they_say() {
    if !private_host("firewall::isolation_options_cut_what_they_say") {
        return;
    }
    // Routing between the two networks is on, so only the rules can stop it.
    sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    serve_tcp(None, "0.0.0.0".parse().expect("ip"), 7000);
    let any: IpAddr = "0.0.0.0".parse().expect("ip");
    // Within a network: isolated neighbours reach the gateway only.
    let isolated = conf("iso", "nbf0", "10.91.0.0/24", json!({"isolate": true}));
    let (a, _) = add("a", &isolated);
    let (b, _) = add("b", &isolated);
    serve_tcp(Some("b"), any, 80);
    serve_tcp(Some("a"), any, 80);
    assert!(ask_tcp(Some("a"), None, SocketAddr::new(b, 80)).is_none());
    assert!(ask_tcp(Some("a"), None, addr("10.91.0.1", 7000)).is_some());
    // Another network: without isolateNetworks its containers reach a's network, with it not.
    let open = conf("open", "nbf1", "10.92.0.0/24", json!({}));
    let (c, _) = add("c", &open);
    serve_tcp(Some("c"), any, 80);
    assert!(ask_tcp(Some("c"), None, SocketAddr::new(a, 80)).is_some());
    let guarded = conf(
        "guarded",
        "nbf2",
        "10.93.0.0/24",
        json!({"isolateNetworks": true}),
    );
    let (d, _) = add("d", &guarded);
    serve_tcp(Some("d"), any, 80);
    assert!(ask_tcp(Some("c"), None, SocketAddr::new(d, 80)).is_none());
    // ... while d itself still reaches out, and its replies come back.
    assert!(ask_tcp(Some("d"), None, SocketAddr::new(c, 80)).is_some());
    // blockHost: none of the host's addresses answers.
    let blocked = conf(
        "blocked",
        "nbf3",
        "10.94.0.0/24",
        json!({"blockHost": true}),
    );
    add("e", &blocked);
    assert!(ask_tcp(Some("e"), None, addr("10.94.0.1", 7000)).is_none());
    assert!(ask_tcp(Some("e"), None, addr("10.91.0.1", 7000)).is_none());
    // ... but the host can still open connections to it.
    let (e_ip, _) = (
        "10.94.0.2".parse::<IpAddr>().expect("ip"),
        serve_tcp(Some("e"), any, 80),
    );
    assert!(ask_tcp(None, None, SocketAddr::new(e_ip, 80)).is_some());
    for (id, config) in [
        ("a", &isolated),
        ("b", &isolated),
        ("c", &open),
        ("d", &guarded),
        ("e", &blocked),
    ] {
        del(id, config);
    }
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn cni_del_twice_and_gc_restore_the_ruleset_exactly() {
    if !private_host("firewall::cni_del_twice_and_gc_restore_the_ruleset_exactly") {
        return;
    }
    foreign_rules();
    let before = ruleset();
    let config = conf(
        "all",
        "nbf0",
        "10.91.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true, "isolate": true, "isolateNetworks": true,
               "blockHost": true,
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
    );
    // Each its own host port: a port is published once.
    add("one", &config);
    add("two", &with_port(&config, 8081));
    add("three", &with_port(&config, 8082));
    assert_eq!(netbox_owners().len(), 3, "{:?}", netbox_owners());
    // DEL twice, once without the namespace.
    del("one", &config);
    netns::delete_named("one").expect("delete netns");
    del("one", &config);
    // A crash: "two" loses its namespace (and so its veth) without any DEL.
    netns::delete_named("two").expect("delete netns");
    // GC keeps "three" only; the rules of another network's attachment stay.
    let other = conf("other", "nbf1", "10.92.0.0/24", json!({"ipMasq": true}));
    add("four", &other);
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "three", "ifname": "eth0"}]);
    let (ok, out, stderr) = cni("GC", "", None, &gc);
    assert!(ok, "{out} {stderr}");
    let left = netbox_owners();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|t| t.contains("three")) && left.iter().any(|t| t.contains("four")));
    del("three", &with_port(&config, 8082));
    del("four", &other);
    assert!(restored(&before), "{:?}", netbox_state());
    // GC takes the then unused shared tables too: the ruleset is exactly as before.
    let (ok, out, stderr) = cni("GC", "", None, &gc);
    assert!(ok, "{out} {stderr}");
    assert!(netbox().arg("gc").status().expect("gc").success());
    assert_eq!(ruleset(), before);
}

// ---------------------------------------------------------------------------------------------
// netbox run

/// `netbox run ARGS -- sh -c SCRIPT` with busybox.
fn run_sh(args: &[&str], script: &str) -> Command {
    let mut cmd = netbox();
    cmd.arg("run")
        .args(args)
        .args(["--", "busybox", "sh", "-c", script])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn run_publishes_ports_and_removes_its_rules_when_cmd_ends() {
    if !private_host("firewall::run_publishes_ports_and_removes_its_rules_when_cmd_ends") {
        return;
    }
    foreign_rules();
    let before = ruleset();
    outside_namespace("client", "192.168.77.1", "192.168.77.2");
    let mut child = run_sh(
        &["-p", "8080:7000", "-p", "127.0.0.1:8081:7000"],
        "echo ready; busybox nc -l -p 7000 -e busybox sh -c 'echo served'",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start netbox");
    let mut out = child.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).expect("ready");
    assert!(!netbox_owners().is_empty());
    // busybox nc serves one connection: from the client namespace through the host.
    let mut served = None;
    eventually("the published port answers", || {
        served = ask_tcp(Some("client"), None, addr("192.168.77.1", 8080));
        served.is_some()
    });
    assert_eq!(served.as_deref().map(str::trim), Some("served"));
    let status = child.wait_with_output().expect("wait");
    assert!(status.status.success(), "{status:?}");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("ip_forward"), "{stderr}");
    assert!(restored(&before), "{:?}", netbox_state());
}

#[test]
fn run_masquerades_when_asked_and_not_by_default() {
    if !private_host("firewall::run_masquerades_when_asked_and_not_by_default") {
        return;
    }
    outside_namespace("upstream", "192.168.78.1", "192.168.78.2");
    sh("ip -n upstream route del default");
    serve_tcp(Some("upstream"), "192.168.78.2".parse().expect("ip"), 9000);
    let ask = "busybox nc 192.168.78.2 9000 </dev/null";
    let out = run_sh(&["--masquerade"], ask).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.168.78.1");
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
    // Without it, no rule is made and the trip has no way back.
    sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    let out = run_sh(&[], &format!("busybox timeout 3 {ask}"))
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

/// Starts `netbox run ARGS -- sh -c SCRIPT` and returns once SCRIPT printed `ready`.
fn start_ready(args: &[&str], script: &str) -> std::process::Child {
    let mut child = run_sh(args, script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start netbox");
    let mut ready = [0u8; 6];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut ready)
        .expect("ready");
    child
}

/// Starts `netbox run ARGS` and SIGKILLs netbox once CMD runs: its rules stay behind.
fn kill_run_once_ready(args: &[&str]) {
    let mut child = start_ready(args, "echo ready; sleep 60");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    child.wait().expect("wait");
}

#[test]
fn rules_of_a_killed_run_are_reclaimed_by_the_next_run() {
    if !private_host("firewall::rules_of_a_killed_run_are_reclaimed_by_the_next_run") {
        return;
    }
    foreign_rules();
    let before = ruleset();
    kill_run_once_ready(&["-p", "8080:80", "--isolate"]);
    assert_eq!(netbox_owners().len(), 1, "{:?}", netbox_owners());
    let owners = netbox::firewall::owners().expect("owners");
    assert_eq!(owners.len(), 1);
    assert!(!owners[0].is_alive());
    // The next run removes them, even one that makes no rule.
    let out = run_sh(&[], "true").output().expect("run");
    assert!(out.status.success());
    assert!(restored(&before), "{:?}", netbox_state());
}

#[test]
fn cni_add_over_rules_left_by_a_crash_replaces_them() {
    if !private_host("firewall::cni_add_over_rules_left_by_a_crash_replaces_them") {
        return;
    }
    let config = conf(
        "again",
        "nbf0",
        "10.91.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true,
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
    );
    add("x", &config);
    // The runtime lost the container: namespace gone, no DEL; then the same id comes back.
    netns::delete_named("x").expect("delete netns");
    let (_, result) = add("x", &config);
    assert_eq!(netbox_owners().len(), 1, "{:?}", netbox_owners());
    // Not doubled: CHECK counts the rules.
    let mut check = config.clone();
    check["prevResult"] = result;
    let (ok, out, stderr) = cni("CHECK", "x", Some("x"), &check);
    assert!(ok, "{out} {stderr}");
    del("x", &config);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn cni_ipv6_ports_and_masquerade_work_too() {
    if !private_host("firewall::cni_ipv6_ports_and_masquerade_work_too") {
        return;
    }
    let config = conf(
        "dual",
        "nbf0",
        "10.91.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true,
               "ipam": {"type": "netbox", "ranges": [[{"subnet": "10.91.0.0/24"}],
                                                     [{"subnet": "fd00:91::/64"}]]},
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
    );
    let (_, result) = add("server", &config);
    let (ok, _, stderr) = cni("CHECK", "server", Some("server"), &{
        let mut c = config.clone();
        c["prevResult"] = result;
        c
    });
    assert!(ok, "{stderr}");
    assert_eq!(read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"), "1");
    serve_tcp(Some("server"), "::".parse().expect("ip"), 80);
    netns::create_named("client").expect("netns");
    sh(
        "ip link add h-client type veth peer name eth0 netns client && \
        ip addr add fd00:77::1/64 dev h-client nodad && ip link set h-client up && \
        ip -n client addr add fd00:77::2/64 dev eth0 nodad && ip -n client link set eth0 up && \
        ip -n client route add default via fd00:77::1",
    );
    // Published on the host's IPv6 address, reached from another machine (once the links'
    // IPv6 link-local addresses are usable).
    let mut seen = None;
    eventually("the IPv6 published port answers", || {
        seen = ask_tcp(Some("client"), None, addr("fd00:77::1", 8080));
        seen.is_some()
    });
    assert_eq!(seen.as_deref(), Some("fd00:77::2"));
    // Masquerade: the client namespace has no route back to fd00:91::/64 other than the host,
    // so drop that route and see the host's address arrive.
    sh("ip -n client route del default via fd00:77::1");
    serve_tcp(Some("client"), "fd00:77::2".parse().expect("ip"), 9000);
    assert_eq!(
        ask_tcp(Some("server"), None, addr("fd00:77::2", 9000)).as_deref(),
        Some("fd00:77::1")
    );
    del("server", &config);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn netbox_gc_removes_rules_of_gone_owners_and_ls_lists_them() {
    if !private_host("firewall::netbox_gc_removes_rules_of_gone_owners_and_ls_lists_them") {
        return;
    }
    foreign_rules();
    let before = ruleset();
    // A run killed while CMD runs: its rules stay (no later run makes rules here).
    kill_run_once_ready(&["-p", "8080:80"]);
    // A CNI attachment whose namespace the runtime lost without a DEL, and a live one.
    let config = conf(
        "gcnet",
        "nbg0",
        "10.92.0.0/24",
        json!({"ipMasq": true,
               "runtimeConfig": {"portMappings": [{"hostPort": 9090, "containerPort": 90}]}}),
    );
    add("lost", &config);
    add("alive", &with_port(&config, 9091));
    netns::delete_named("lost").expect("delete netns");
    // One record per owner: the run, the lost attachment and the live one.
    assert_eq!(netbox_owners().len(), 3, "{:?}", netbox_owners());

    let ls: Value = serde_json::from_slice(
        &netbox()
            .args(["ls", "--json"])
            .output()
            .expect("netbox ls")
            .stdout,
    )
    .expect("ls --json");
    let stale: Vec<&str> = ls["stale_rules"]
        .as_array()
        .expect("stale_rules")
        .iter()
        .filter_map(|r| r["owner"].as_str())
        .collect();
    assert_eq!(stale.len(), 2, "{ls}");
    assert!(stale.iter().any(|o| o.starts_with("proc/")), "{ls}");
    assert!(stale.iter().any(|o| o.starts_with("cni/lost")), "{ls}");

    let dry = netbox().args(["gc", "--dry-run"]).output().expect("gc");
    assert!(dry.status.success());
    assert_eq!(netbox_owners().len(), 3, "a dry run removes nothing");
    let out = netbox().args(["gc"]).output().expect("gc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the live attachment's state remains.
    let left = netbox_owners();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("alive"), "{left:?}");
    del("alive", &config);
    assert!(restored(&before), "{:?}", netbox_state());
    assert!(netbox().arg("gc").status().expect("gc").success());
    assert_eq!(ruleset(), before, "gc removes the unused shared tables");
}

/// UDP datagrams arriving at `socket` within a short wait (their payloads).
fn received(socket: &UdpSocket) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    out
}

/// A sandbox given NET_ADMIN (and NET_RAW, which busybox's `ip link set address` needs) forges
/// its MAC or its address after it learnt the gateway's MAC, and sends datagrams to the host's
/// own bridge address: frames delivered to the host must be held to the port's MAC as much as
/// forwarded ones (the bridge port is locked to the sandbox's MAC).
#[test]
fn run_sandbox_with_net_admin_cannot_forge_its_mac_or_address_to_the_host() {
    if !private_host(
        "firewall::run_sandbox_with_net_admin_cannot_forge_its_mac_or_address_to_the_host",
    ) {
        return;
    }
    let host = UdpSocket::bind("0.0.0.0:7100").expect("bind");
    let send = |args: &[&str], forge: &str| {
        let script = format!(
            "{forge} for i in 1 2 3; do bash -c 'echo sent > /dev/udp/10.117.0.1/7100'; \
             busybox sleep 0.1; done"
        );
        let mut all = vec!["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"];
        all.extend_from_slice(args);
        let out = run_sh(&all, &script).output().expect("run");
        assert!(out.status.success(), "{out:?}");
        received(&host)
    };
    // The gateway's MAC is learnt first (with the true addresses), as a sandbox would have it.
    let learn = "busybox ping -c1 -W1 10.117.0.1 >/dev/null;";
    for args in [&["--isolate"][..], &["--masquerade"][..]] {
        assert!(
            send(args, learn).iter().any(|m| m == "sent"),
            "{args:?}: the plain path works (nothing forged yet)"
        );
        let forged_mac = send(
            args,
            &format!("{learn} busybox ip link set eth0 address 02:11:22:33:44:55;"),
        );
        assert!(
            forged_mac.is_empty(),
            "{args:?}: a forged MAC reached the host: {forged_mac:?}"
        );
        let forged_ip = send(
            args,
            &format!(
                "{learn} busybox ip addr add 10.117.0.99/24 dev eth0; \
                 busybox ip route replace 10.117.0.0/24 dev eth0 src 10.117.0.99;"
            ),
        );
        assert!(
            forged_ip.is_empty(),
            "{args:?}: a forged source address reached the host: {forged_ip:?}"
        );
    }
}

/// netbox-cni's `macspoofchk`: a container that forges its MAC (someone with NET_ADMIN in its
/// namespace) reaches neither the host's bridge address nor a neighbour on the bridge, even
/// with the gateway's and the neighbour's MACs already learnt.
#[test]
fn cni_macspoofchk_holds_for_host_bound_and_forwarded_frames() {
    if !private_host("firewall::cni_macspoofchk_holds_for_host_bound_and_forwarded_frames") {
        return;
    }
    let config = conf("lock", "nbf7", "10.97.0.0/24", json!({"macspoofchk": true}));
    let (ip1, _) = add("c1", &config);
    let (ip2, _) = add("c2", &config);
    let host = UdpSocket::bind("10.97.0.1:7101").expect("bind on the gateway");
    let peer = NetNs::open(Path::new("/run/netns/c2"))
        .expect("c2")
        .run_in(move || UdpSocket::bind(SocketAddr::new(ip2, 7102)))
        .expect("enter c2")
        .expect("bind in c2");
    // The MACs of the gateway and the neighbour are learnt with the true addresses, then the
    // MAC is forged in the same breath, as an attacker inside would do it.
    let send = |forge: &str| {
        sh(&format!(
            "ip netns exec c1 bash -c 'ping -c1 -W1 10.97.0.1 >/dev/null; ping -c1 -W1 {ip2} >/dev/null; {forge} \
             for i in 1 2 3; do echo sent > /dev/udp/10.97.0.1/7101; echo sent > /dev/udp/{ip2}/7102; sleep 0.1; done'"
        ));
        (received(&host), received(&peer))
    };
    let (to_host, to_peer) = send("");
    assert!(
        !to_host.is_empty() && !to_peer.is_empty(),
        "the plain path works from {ip1}"
    );
    // Seen by iproute2: the bridge ports learn nothing and are locked, and the bridge knows
    // c1's true MAC as a static entry on its port.
    let mac = sh("ip netns exec c1 cat /sys/class/net/eth0/address");
    let ports: Value =
        serde_json::from_str(&sh("bridge -j -d link show master nbf7")).expect("json");
    let ports = ports.as_array().expect("ports");
    assert_eq!(ports.len(), 2, "{ports:?}");
    for port in ports {
        assert_eq!(port["locked"], json!(true), "{port}");
        assert_eq!(port["learning"], json!(false), "{port}");
    }
    let fdb = sh("bridge fdb show br nbf7");
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(mac.trim()) && l.contains(" static")),
        "no static entry for {mac}: {fdb}"
    );
    let (to_host, to_peer) = send("ip link set eth0 address 02:00:00:00:00:77;");
    assert!(
        to_host.is_empty(),
        "a forged MAC reached the host: {to_host:?}"
    );
    assert!(
        to_peer.is_empty(),
        "a forged MAC reached the neighbour: {to_peer:?}"
    );
    del("c1", &config);
    del("c2", &config);
}

// ---------------------------------------------------------------------------------------------
// Shared tables at scale, conflicts, crashes

/// Every element's owner (its comment) has a record, and every record names elements that are
/// there: what a crash at any point must leave.
fn assert_consistent() {
    let items = netbox_items();
    let records: Vec<String> = netbox_owners();
    for item in &items {
        for kind in ["set", "map"] {
            let Some(set) = item.get(kind) else { continue };
            for e in set
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let comment = comment_in(e).unwrap_or_else(|| panic!("no owner named: {e}"));
                let owner = netbox::model::owner::Owner::from_key(comment).expect("owner key");
                let record = netbox::firewall::record_name(&owner).expect("record");
                assert!(records.contains(&record), "{comment} has no record: {e}");
            }
        }
    }
}

/// The comment somewhere in an element as `nft -j` shows it (maps nest it in their key).
fn comment_in(v: &Value) -> Option<&str> {
    match v {
        Value::Object(o) => o
            .get("comment")
            .and_then(Value::as_str)
            .or_else(|| o.values().find_map(comment_in)),
        Value::Array(a) => a.iter().find_map(comment_in),
        _ => None,
    }
}

#[test]
fn two_hundred_attachments_each_get_their_own_rules() {
    if !private_host("firewall::two_hundred_attachments_each_get_their_own_rules") {
        return;
    }
    let config = conf(
        "many",
        "nbm0",
        "10.93.0.0/22",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    let mut first = None;
    let mut last = None;
    for i in 0..200u16 {
        let id = format!("m{i}");
        let (ip, result) = add(&id, &with_port(&config, 20000 + i));
        if i == 0 {
            first = Some((id.clone(), ip, result));
        } else if i == 199 {
            last = Some((id.clone(), ip, result));
        }
    }
    assert_eq!(netbox_owners().len(), 200);
    outside_namespace("client", "192.168.77.1", "192.168.77.2");
    for (port, (id, ip, result)) in [(20000, first), (20199, last)]
        .into_iter()
        .map(|(p, a)| (p, a.expect("attachment")))
    {
        // CHECK compares the whole state of the attachment with its configuration.
        let mut check = with_port(&config, port);
        check["prevResult"] = result;
        let (ok, out, stderr) = cni("CHECK", &id, Some(&id), &check);
        assert!(ok, "{id}: {out} {stderr}");
        // Its published port reaches it, and no other.
        serve_tcp(Some(&id), ip, 80);
        assert_eq!(
            ask_tcp(Some("client"), None, addr("192.168.77.1", port)).as_deref(),
            Some("192.168.77.2"),
            "{id}"
        );
    }
    assert_consistent();
    for i in 0..200u16 {
        del(&format!("m{i}"), &config);
    }
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn a_published_port_is_refused_to_others_while_its_owner_lives_and_taken_over_once_it_died() {
    if !private_host(
        "firewall::a_published_port_is_refused_to_others_while_its_owner_lives_and_taken_over_once_it_died",
    ) {
        return;
    }
    let config = conf(
        "ports",
        "nbf0",
        "10.91.0.0/24",
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
    );
    add("a", &config);
    // CNI: an error object with code 7 naming the owner; nothing of "b" is left.
    netns::create_named("b").expect("netns");
    let (ok, out, _) = cni("ADD", "b", Some("b"), &config);
    assert!(!ok);
    assert_eq!(out["code"], 7, "{out}");
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("8080/tcp") && msg.contains("container a"),
        "{msg}"
    );
    assert_eq!(netbox_owners().len(), 1, "{:?}", netbox_owners());
    // netbox run: exit 125, the owner named.
    let out = run_sh(&["-p", "8080:80"], "true").output().expect("run");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("container a"), "{stderr}");
    // Another address with the same port is another host port.
    let (ok, out, stderr) = cni("ADD", "b", Some("b"), &{
        let mut c = config.clone();
        c["runtimeConfig"]["portMappings"][0]["hostIP"] = json!("127.0.0.1");
        c
    });
    assert!(
        !ok,
        "a specific address under a published wildcard: {out} {stderr}"
    );
    del("a", &config);
    // Now free: taken.
    let (ok, out, stderr) = cni("ADD", "b", Some("b"), &config);
    assert!(ok, "{out} {stderr}");
    del("b", &config);
    // A killed run's port is taken over by the next attachment that publishes it.
    kill_run_once_ready(&["-p", "9000:80"]);
    add("c", &with_port(&config, 9000));
    let owners = netbox_owners();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(owners[0].contains("cni/c"), "{owners:?}");
    assert_consistent();
    del("c", &config);
    assert!(netbox_state().is_empty(), "{:?}", netbox_state());
}

#[test]
fn a_killed_runs_published_port_never_reaches_the_next_sandbox_with_its_address() {
    if !private_host(
        "firewall::a_killed_runs_published_port_never_reaches_the_next_sandbox_with_its_address",
    ) {
        return;
    }
    outside_namespace("client", "192.168.77.1", "192.168.77.2");
    kill_run_once_ready(&["--ip", "10.117.0.77", "-p", "30001:8080"]);
    // The same address, publishing nothing, serving on the port the dead run mapped.
    let mut child = start_ready(
        &["--ip", "10.117.0.77"],
        "echo ready; busybox nc -l -p 8080 -e busybox sh -c 'echo leaked'",
    );
    assert_eq!(
        ask_tcp(Some("client"), None, addr("192.168.77.1", 30001)),
        None
    );
    assert!(netbox_owners().is_empty(), "{:?}", netbox_owners());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

#[test]
fn cni_add_and_del_killed_mid_change_leave_a_state_gc_repairs() {
    if !private_host("firewall::cni_add_and_del_killed_mid_change_leave_a_state_gc_repairs") {
        return;
    }
    foreign_rules();
    let before = ruleset();
    let config = conf(
        "crash",
        "nbf0",
        "10.91.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true, "isolate": true}),
    );
    // The first ADD makes the shared tables; then ADDs and DELs killed at growing delays, each
    // somewhere between start and finish.
    add("base", &config);
    for i in 0..24u64 {
        let id = format!("k{i}");
        netns::create_named(&id).expect("netns");
        let command = if i % 3 == 2 { "DEL" } else { "ADD" };
        let mut cmd = Command::new(cni_bin());
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", format!("/run/netns/{id}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        std::thread::sleep(Duration::from_micros(250 * i));
        let _ = child.kill();
        let _ = child.wait();
        assert_consistent();
    }
    // GC with only "base" valid: everything else goes, and what stays is consistent.
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "base", "ifname": "eth0"}]);
    let (ok, out, stderr) = cni("GC", "", None, &gc);
    assert!(ok, "{out} {stderr}");
    assert_consistent();
    let owners = netbox_owners();
    assert!(
        owners.len() <= 1 && owners.iter().all(|o| o.contains("base")),
        "{owners:?}"
    );
    del("base", &config);
    assert!(restored(&before), "{:?}", netbox_state());
}
