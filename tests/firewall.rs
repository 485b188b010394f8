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

/// Names of netbox's tables (`nft -j list tables`), all families.
pub fn netbox_tables() -> Vec<String> {
    tables()
        .into_iter()
        .filter(|t| t.contains(" netbox-"))
        .collect()
}

/// `family name` of every table.
fn tables() -> Vec<String> {
    let out: Value = serde_json::from_str(&sh("nft -j list tables")).expect("nft -j");
    out["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let t = i.get("table")?;
            Some(format!("{} {}", t["family"].as_str()?, t["name"].as_str()?))
        })
        .collect()
}

/// The whole ruleset as `nft -j -s` shows it (no counter values), without the version banner.
fn ruleset() -> Value {
    let mut out: Value = serde_json::from_str(&sh("nft -j -s list ruleset")).expect("nft -j");
    if let Some(items) = out["nftables"].as_array_mut() {
        items.retain(|i| i.get("metainfo").is_none());
    }
    out
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
    let table = netbox_tables()
        .into_iter()
        .find(|t| t.starts_with("inet "))
        .expect("inet table");
    sh(&format!("nft delete table {table}"));
    let (ok, out, _) = cni("CHECK", "server", Some("server"), &check);
    assert!(!ok);
    assert_eq!(out["code"], 100, "{out}");
    del("server", &config);
    del("neighbour", &neighbour);
    assert!(netbox_tables().is_empty(), "{:?}", netbox_tables());
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
    assert!(netbox_tables().is_empty());
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
    assert!(netbox_tables().is_empty());
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
    assert!(netbox_tables().is_empty());
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
    add("one", &config);
    add("two", &config);
    add("three", &config);
    assert_eq!(netbox_tables().len(), 6, "{:?}", netbox_tables());
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
    let left = netbox_tables();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().any(|t| t.contains("three")) && left.iter().any(|t| t.contains("four")));
    del("three", &config);
    del("four", &other);
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
    assert!(!netbox_tables().is_empty());
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
    // The removal is a transaction netbox starts on exit and does not wait for.
    eventually("the ruleset is restored", || ruleset() == before);
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
    eventually("the rules are removed", || netbox_tables().is_empty());
    // Without it, no rule is made and the trip has no way back.
    sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    let out = run_sh(&[], &format!("busybox timeout 3 {ask}"))
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    assert!(netbox_tables().is_empty());
}

/// Starts `netbox run ARGS` and SIGKILLs netbox once CMD runs: its rules stay behind.
fn kill_run_once_ready(args: &[&str]) {
    let mut child = run_sh(args, "echo ready; sleep 60")
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
    assert_eq!(netbox_tables().len(), 2, "{:?}", netbox_tables());
    let owners = netbox::firewall::owners().expect("owners");
    assert_eq!(owners.len(), 1);
    assert!(!owners[0].is_alive());
    // The next run that makes rules removes them.
    let out = run_sh(&["--masquerade"], "true").output().expect("run");
    assert!(out.status.success());
    eventually("the dead run's rules are removed", || ruleset() == before);
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
    assert_eq!(netbox_tables().len(), 2, "{:?}", netbox_tables());
    // Not doubled: CHECK counts the rules.
    let mut check = config.clone();
    check["prevResult"] = result;
    let (ok, out, stderr) = cni("CHECK", "x", Some("x"), &check);
    assert!(ok, "{out} {stderr}");
    del("x", &config);
    assert!(netbox_tables().is_empty());
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
    assert!(netbox_tables().is_empty());
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
    add("alive", &config);
    netns::delete_named("lost").expect("delete netns");
    // The run's inet and bridge tables (anti-spoofing), one inet table per CNI attachment.
    assert_eq!(netbox_tables().len(), 4, "{:?}", netbox_tables());

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
    assert_eq!(netbox_tables().len(), 4, "a dry run removes nothing");
    let out = netbox().args(["gc"]).output().expect("gc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the live attachment's tables remain.
    let left = netbox_tables();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("alive"), "{left:?}");
    del("alive", &config);
    assert_eq!(ruleset(), before);
}
