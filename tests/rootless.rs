//! Rootless `netbox run` with real connectivity (issue 17), black box through the CLI: each
//! test builds the world of tests/world.rs in its private host and runs netbox as unprivileged
//! uids (its own uids: every process of them is killed when the test ends). The contract these
//! tests hold the feature to is ROOTLESS.md: the holder's record is
//! $XDG_RUNTIME_DIR/netbox/user-network.json with holder_pid and uplink_pid, the uplink is
//! pasta, NETBOX_USER_NET_LINGER is how long an unused holder stays.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{files_under, is_root, link_names, netbox_bin, private_host, sh, skip};
use crate::world::{
    alive, copy_runnable, owner, processes_of, runnable_by_all, wait_until, User, World, BEYOND,
    HELLO, HOST, HTTP_PORT, UDP_ECHO_PORT, WORLD, WORLD_NAME,
};

/// Environment variable that turns `rootless::role` into a small network program run as CMD.
const ROLE: &str = "NETBOX_TEST_ROLE";

/// The world, and the programs the test uids run.
struct Lab {
    world: World,
    netbox: PathBuf,
    test_bin: PathBuf,
    _programs: tempfile::TempDir,
}

impl Lab {
    /// Inside the private host (`test` is its name): the world, or None after a skip (not root,
    /// so no other uid to be; no pasta). Under CI both fail (harness::skip).
    fn new(test: &str) -> Option<Lab> {
        Lab::with_programs(test, None, || {})
    }

    /// [`Lab::new`], with the programs the uids run always copied to a directory under `under`
    /// and `then` called before the world is made (a test that mounts over /tmp there would
    /// otherwise hide a build tree under /tmp, and leave the world's files in the real one).
    fn with_programs(test: &str, under: Option<&Path>, then: impl FnOnce()) -> Option<Lab> {
        if !is_root() {
            skip(
                test,
                "needs root in its private host to run commands as other uids (setpriv)",
            );
            return None;
        }
        if !Command::new("sh")
            .args(["-c", "command -v pasta"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            skip(test, "pasta is not installed (apt-get install passt)");
            return None;
        }
        let programs = match under {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let place = |path: &Path| match under {
            Some(_) => copy_runnable(path, programs.path()),
            None => runnable_by_all(path, programs.path()),
        };
        let netbox = place(&netbox_bin());
        let test_bin = place(&std::env::current_exe().expect("test binary"));
        crate::world::claims_dir();
        then();
        Some(Lab {
            world: World::new(),
            netbox,
            test_bin,
            _programs: programs,
        })
    }

    /// A user (NETBOX_USER_NET_LINGER=0 unless changed).
    fn user(&self, uid: u32) -> User {
        User::new(uid, &self.netbox)
    }

    /// Shell words running the test binary as `role` (see [`role`]).
    fn role(&self, role: &str) -> String {
        format!(
            "env {ROLE}='{role}' '{}' rootless::role --exact --nocapture --test-threads=1",
            self.test_bin.display()
        )
    }

    /// The argv of [`Lab::role`] for `netbox run -- ARGV`.
    fn role_argv(&self, role: &str) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!("exec {}", self.role(role)),
        ]
    }
}

/// Not a test on its own: with NETBOX_TEST_ROLE set, a network program inside a sandbox.
/// `tcpecho:PORT` and `udpecho:PORT` answer "echo LINE from PEER-IP" forever (after printing
/// "listening"); `tcp:ADDR:PORT` and `udp:ADDR:PORT:MSG` print "tcp-reply ..." / "udp-reply
/// ..."; `ping:ADDR` sends an ICMP echo from an unprivileged ICMP socket and prints "pong ADDR".
#[test]
fn role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let (kind, arg) = role.split_once(':').expect("ROLE is KIND:ARG");
    match kind {
        "tcpecho" => {
            let listener =
                TcpListener::bind(("0.0.0.0", arg.parse::<u16>().expect("port"))).expect("listen");
            println!("listening");
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut line = String::new();
                let _ = BufReader::new(conn.try_clone().expect("clone")).read_line(&mut line);
                let _ = conn.write_all(format!("echo {} from {peer}\n", line.trim()).as_bytes());
            }
        }
        "udpecho" => {
            let sock =
                UdpSocket::bind(("0.0.0.0", arg.parse::<u16>().expect("port"))).expect("bind");
            println!("listening");
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]);
                let reply = format!("echo {} from {}", msg.trim(), peer.ip());
                let _ = sock.send_to(reply.as_bytes(), peer);
            }
        }
        "tcp" => println!(
            "tcp-reply {}",
            ask_tcp(arg).unwrap_or_else(|e| panic!("{e}"))
        ),
        "udp" => {
            let (target, msg) = arg.rsplit_once(':').expect("udp:ADDR:PORT:MSG");
            println!(
                "udp-reply {}",
                ask_udp(target, msg).unwrap_or_else(|e| panic!("{e}"))
            );
        }
        "ping" => {
            ping(arg);
            println!("pong {arg}");
        }
        "bulk" => {
            let (target, n) = arg.rsplit_once(':').expect("bulk:ADDR:PORT:BYTES");
            bulk(target, n.parse().expect("bytes"));
            println!("bulk-ok {n}");
        }
        "closed" => println!("closed-ok {}", closed(arg)),
        "hold" => {
            // One connection kept open (never half-closed) until CMD is stopped.
            let conn = TcpStream::connect(arg).unwrap_or_else(|e| panic!("connect {arg}: {e}"));
            println!("held");
            let _ = (&conn).read(&mut [0u8; 1]);
        }
        "many" => {
            let (target, n) = arg.rsplit_once(':').expect("many:ADDR:PORT:N");
            many(target, n.parse().expect("count"));
            println!("many-ok {n}");
        }
        "gateway-port" => {
            let gw = default_gateway();
            let tried = TcpStream::connect_timeout(
                &(gw, arg.parse::<u16>().expect("port")).into(),
                Duration::from_secs(2),
            );
            println!(
                "gateway-port {}",
                if tried.is_ok() { "open" } else { "closed" }
            );
        }
        other => panic!("unknown role {other}"),
    }
}

/// Connects, sends "hello", returns the answer (trimmed).
fn ask_tcp(target: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"hello\n")
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("receive from {target}: {e}"))?;
    Ok(answer.trim().to_string())
}

/// The bulk role: sends `n` patterned bytes, half-closes, and checks that exactly those bytes
/// come back before the server's close (the world's echo answers after EOF).
fn bulk(target: &str, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let mut conn = TcpStream::connect(target).unwrap_or_else(|e| panic!("connect {target}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).expect("send");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        data
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).expect("receive");
    let data = sender.join().expect("sender");
    assert!(
        back == data,
        "{} bytes came back of {n}, or other bytes",
        back.len()
    );
}

/// The many role: `n` connections open at once, then each echoes one byte after half-close.
fn many(target: &str, n: usize) {
    let conns: Vec<TcpStream> = (0..n)
        .map(|i| TcpStream::connect(target).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    for (i, mut conn) in conns.into_iter().enumerate() {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        conn.write_all(&[i as u8]).expect("send");
        conn.shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let mut back = Vec::new();
        conn.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(back, [i as u8], "connection {i}");
    }
}

/// The closed role: a connection to a port nobody listens on fails (refused, or reset at the
/// first read) within a few seconds; returns how.
fn closed(target: &str) -> &'static str {
    let Ok(mut conn) = TcpStream::connect(target) else {
        return "refused";
    };
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = conn.write_all(b"hello\n");
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        other => panic!("{target}: a closed port answered {other:?}"),
    }
}

/// The sandbox's default gateway (IPv4), from /proc/net/route.
fn default_gateway() -> std::net::Ipv4Addr {
    let routes = std::fs::read_to_string("/proc/net/route").expect("/proc/net/route");
    routes
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000"))
                .then(|| u32::from_str_radix(f[2], 16).ok())
                .flatten()
        })
        .map(|gw| std::net::Ipv4Addr::from(u32::from_be(gw)))
        .expect("a default route")
}

/// Sends `msg` in a datagram, returns the reply (trimmed).
fn ask_udp(target: &str, msg: &str) -> Result<String, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    ask_udp_from(&sock, target, msg)
}

fn ask_udp_from(sock: &UdpSocket, target: &str, msg: &str) -> Result<String, String> {
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    sock.send_to(msg.as_bytes(), target)
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut buf = [0u8; 2048];
    let n = sock
        .recv(&mut buf)
        .map_err(|e| format!("reply from {target}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// One ICMP echo through an unprivileged ICMP socket (what ping uses without privileges: the
/// sandbox's ping_group_range must cover the user's group); panics without an answer.
fn ping(addr: &str) {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain socket(2) call; the descriptor is owned by the UdpSocket below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
    assert!(
        fd >= 0,
        "ICMP echo socket refused: {} (ping_group_range: {})",
        std::io::Error::last_os_error(),
        std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default()
    );
    // SAFETY: fd is a fresh socket nobody else owns. A datagram socket of any protocol works
    // with send_to/recv.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Echo request: type 8, code 0; the kernel fills in the identifier and the checksum.
    let request = [8u8, 0, 0, 0, 0, 0, 0, 1, b'n', b'b', b'x'];
    sock.send_to(&request, (addr, 0))
        .unwrap_or_else(|e| panic!("ping {addr}: {e}"));
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no echo reply from {addr}: {e}"));
    assert!(n >= 8 && buf[0] == 0, "not an echo reply: {:?}", &buf[..n]);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A failed command's message: exactly one line on stderr, no panic, the exit status netbox
/// uses for its own failures (125).
fn one_error_line(what: &str, out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{what}: expected netbox's own failure (125):\n{}{err}",
        text(&out.stdout)
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one error line expected:\n{err}");
    lines[0].to_string()
}

/// `netbox run ARGS` in the background with stdout piped.
fn spawn(user: &User, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = user
        .netbox(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start netbox");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

/// Reads CMD's output until a line ending with `want` (libtest may print its test line first).
fn wait_line(out: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("read CMD output");
        assert!(n > 0, "CMD ended before printing {want:?}");
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// Ends a background run with SIGTERM (netbox passes it to CMD) and waits for it.
fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

/// The `netbox ls --json` sandboxes of a user, as (name, first address without its prefix).
fn listed(user: &User) -> Vec<(String, String)> {
    let out = output(&mut user.netbox(&["ls", "--json"]));
    assert_ok("netbox ls --json", &out);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ls --json: {e}: {}", text(&out.stdout)));
    listing["sandboxes"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| {
                    let name = s["name"].as_str().unwrap_or("").to_string();
                    let addr = s["addresses"][0]
                        .as_str()
                        .unwrap_or("")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    (name, addr)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The holder's and the uplink's pids from the user's record, both alive.
fn holder_and_uplink(user: &User) -> (i32, i32) {
    let mut pids = (0, 0);
    wait_until(
        "user-network.json with a live holder_pid and uplink_pid",
        Duration::from_secs(10),
        || {
            pids = (
                user.record_pid("holder_pid").unwrap_or(0),
                user.record_pid("uplink_pid").unwrap_or(0),
            );
            pids.0 > 0 && pids.1 > 0 && alive(pids.0) && alive(pids.1)
        },
    );
    pids
}

/// What a rootless sandbox must reach: the world's UDP echo (the reply names the private
/// host's address: the traffic left as the user's own sockets), asserted from CMD's output.
fn assert_reaches_world(what: &str, out: &Output) {
    assert_ok(what, out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("udp-reply echo {what} from {HOST}")),
        "{what}: {stdout}"
    );
}

#[test]
fn sandbox_gets_an_address_and_reaches_the_world() {
    let test = "rootless::sandbox_gets_an_address_and_reaches_the_world";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let links_before = link_names();
    let user = lab.user(63101);
    let script = [
        "ip -j addr show eth0".to_string(),
        "ip -j route".into(),
        "cat /etc/resolv.conf".into(),
        format!("busybox wget -qO- http://{WORLD}:{HTTP_PORT}/hello"),
        format!("busybox wget -qO- http://{BEYOND}:{HTTP_PORT}/hello"),
        lab.role(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:datagram")),
        lab.role(&format!("ping:{WORLD}")),
        lab.role(&format!("ping:{BEYOND}")),
        format!("getent ahostsv4 {WORLD_NAME}"),
        format!("busybox wget -qO- http://{WORLD_NAME}:{HTTP_PORT}/hello"),
    ]
    .join("; echo; echo ---; ");
    let out = output(&mut user.netbox(&["run", "--", "sh", "-c", &script]));
    assert_ok("rootless netbox run", &out);
    let all = text(&out.stdout);
    let parts: Vec<&str> = all.split("---\n").map(str::trim).collect();
    assert_eq!(parts.len(), 10, "{all}");
    // An address on eth0 and a default route through it.
    let addr: serde_json::Value = serde_json::from_str(parts[0]).expect("addr json");
    let inet: Vec<&serde_json::Value> = addr[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1, "{all}");
    assert_eq!(addr[0]["operstate"], "UP", "{all}");
    let routes: serde_json::Value = serde_json::from_str(parts[1]).expect("route json");
    assert!(
        routes
            .as_array()
            .expect("routes")
            .iter()
            .any(|r| r["dst"] == "default" && r["dev"] == "eth0" && r["gateway"].is_string()),
        "{all}"
    );
    // DNS: some resolver, none on the sandbox's own loopback (names are checked below).
    assert!(parts[2].contains("nameserver "), "{}", parts[2]);
    assert!(
        !parts[2].lines().any(|l| l.starts_with("nameserver 127.")),
        "{}",
        parts[2]
    );
    // TCP to the world and beyond it (only the default route leads there), UDP, ICMP, DNS.
    assert_eq!(parts[3], HELLO, "{all}");
    assert_eq!(parts[4], HELLO, "{all}");
    assert!(
        parts[5].contains(&format!("udp-reply echo datagram from {HOST}")),
        "{all}"
    );
    assert!(parts[6].contains(&format!("pong {WORLD}")), "{all}");
    assert!(parts[7].contains(&format!("pong {BEYOND}")), "{all}");
    assert!(parts[8].starts_with(WORLD), "{all}");
    assert_eq!(parts[9], HELLO, "{all}");
    // With no linger, nothing of the user is left once the run ended, and nothing reached the
    // private host: no links, no named namespaces, nothing in root's netbox directories.
    user.wait_none_left("after a rootless run");
    assert_eq!(link_names(), links_before);
    assert_eq!(
        files_under(std::path::Path::new("/run/netns")),
        ["/run/netns/world".to_string()].into_iter().collect()
    );
    for dir in ["/run/netbox", "/var/lib/netbox"] {
        assert!(
            files_under(std::path::Path::new(dir)).is_empty(),
            "{dir}: {:?}",
            files_under(std::path::Path::new(dir))
        );
    }
    // The user's state is theirs, private.
    let state = user.state_dir();
    assert_eq!(owner(&state), Some(user.uid));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state)
        .expect("state dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", state.display());
}

#[test]
fn loopback_resolver_of_the_host_is_reached_through_the_uplink() {
    let test = "rootless::loopback_resolver_of_the_host_is_reached_through_the_uplink";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    // A resolver on the private host's loopback only (as systemd-resolved or dnsmasq), named
    // so by its resolv.conf.
    let resolver = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = resolver.recv_from(&mut buf) {
            let names = [("loop.world.test", WORLD.parse().expect("address"))];
            if let Some(reply) = crate::world::dns_answer(&buf[..n], &names) {
                let _ = resolver.send_to(&reply, peer);
            }
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("write");
    sh(&format!(
        "mount --bind {} /etc/resolv.conf",
        resolv.display()
    ));
    let user = lab.user(63102);
    let out = output(&mut user.netbox(&[
        "run",
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo ---; getent ahostsv4 loop.world.test",
    ]));
    assert_ok("rootless run with a loopback resolver", &out);
    let all = text(&out.stdout);
    let (conf, answer) = all.split_once("---\n").expect("two parts");
    assert!(conf.contains("nameserver "), "{conf}");
    assert!(
        !conf.lines().any(|l| l.starts_with("nameserver 127.")),
        "the sandbox's own loopback has no resolver:\n{conf}"
    );
    assert!(answer.starts_with(WORLD), "{all}");
}

#[test]
fn published_ports_reach_cmd_from_the_host_and_beyond() {
    let test = "rootless::published_ports_reach_cmd_from_the_host_and_beyond";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63103);
    let script = format!(
        "{} & exec {}",
        lab.role("udpecho:7000"),
        lab.role("tcpecho:7000")
    );
    let host_only = format!("{HOST}:18082:7000");
    let (mut run, mut out) = spawn(
        &user,
        &[
            "run",
            "-p",
            "18080:7000",
            "-p",
            "127.0.0.1:18081:7000",
            "-p",
            &host_only,
            "-p",
            "15353:7000/udp",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_line(&mut out, "listening");
    wait_line(&mut out, "listening");
    let echoed = |target: &str| {
        let answer = ask_tcp(target).unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.starts_with("echo hello from "), "{target}: {answer}");
    };
    let refused = |target: &str| {
        assert!(ask_tcp(target).is_err(), "{target} must not be published");
    };
    // All addresses: loopback, the host's other address, and from the world through it.
    echoed("127.0.0.1:18080");
    echoed(&format!("{HOST}:18080"));
    let from_world = lab
        .world
        .thread(|| ask_tcp(&format!("{HOST}:18080")))
        .join()
        .expect("world client");
    assert!(
        from_world
            .as_deref()
            .is_ok_and(|a| a.starts_with("echo hello from ")),
        "from the world: {from_world:?}"
    );
    // One address only.
    echoed("127.0.0.1:18081");
    refused(&format!("{HOST}:18081"));
    echoed(&format!("{HOST}:18082"));
    refused("127.0.0.1:18082");
    // UDP: each peer its own session, its own replies.
    let one = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let two = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..2 {
        let a = ask_udp_from(&one, "127.0.0.1:15353", "one").expect("udp one");
        let b = ask_udp_from(&two, "127.0.0.1:15353", "two").expect("udp two");
        assert!(a.starts_with("echo one from "), "{a}");
        assert!(b.starts_with("echo two from "), "{b}");
    }
    let world_udp = lab
        .world
        .thread(|| ask_udp(&format!("{HOST}:15353"), "far"))
        .join()
        .expect("world client");
    assert!(
        world_udp
            .as_deref()
            .is_ok_and(|a| a.starts_with("echo far from ")),
        "{world_udp:?}"
    );
    // The relays die with the run.
    stop(&mut run);
    refused("127.0.0.1:18080");
    user.wait_none_left("after the run with published ports");
}

/// Outbound TCP leaves through the holder's TCP uplink (a splice relay from a redirect), so
/// what a direct connection guarantees is checked through it: megabytes both ways intact,
/// half-close, a closed port failing fast, the peer seeing the user's own host address; and
/// the relay's listener cannot be reached without a redirection (no open proxy).
#[test]
fn outbound_tcp_keeps_its_bytes_half_close_and_refusals() {
    let test = "rootless::outbound_tcp_keeps_its_bytes_half_close_and_refusals";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    const ECHO_PORT: u16 = 7301;
    // The world's echo: everything until EOF, then the same bytes back, then close; every
    // connection's peer address is reported.
    let (peers_tx, peers) = std::sync::mpsc::channel::<String>();
    let _echo = lab.world.thread(move || {
        let listener = TcpListener::bind(("0.0.0.0", ECHO_PORT)).expect("listen");
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peers_tx = peers_tx.clone();
            std::thread::spawn(move || {
                let peer = conn.peer_addr().map(|a| a.ip().to_string());
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() && conn.write_all(&got).is_ok() {
                    let _ = peers_tx.send(peer.unwrap_or_default());
                }
            });
        }
    });
    let user = lab.user(63119);
    let script = [
        lab.role(&format!("bulk:{WORLD}:{ECHO_PORT}:8000000")),
        lab.role(&format!("bulk:{BEYOND}:{ECHO_PORT}:1")),
        lab.role(&format!("closed:{WORLD}:7399")),
        lab.role("gateway-port:1"),
        // More connections at once than a default descriptor limit would let the relay hold.
        lab.role(&format!("many:{WORLD}:{ECHO_PORT}:300")),
    ]
    .join(" && ");
    // The soft descriptor limit most desktops have (the holder raises its own to the hard one).
    let netbox = lab.netbox.display().to_string();
    let out = output(&mut user.command(
        "prlimit",
        &[
            "--nofile=1024:20000",
            &netbox,
            "run",
            "--",
            "sh",
            "-c",
            &script,
        ],
    ));
    assert_ok("outbound TCP roles", &out);
    let stdout = text(&out.stdout);
    for want in [
        "bulk-ok 8000000",
        "bulk-ok 1",
        "closed-ok ",
        "gateway-port closed",
        "many-ok 300",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let seen: Vec<String> = peers.try_iter().collect();
    assert_eq!(seen.len(), 302, "connections echoed");
    assert!(
        seen.iter().all(|p| p == HOST),
        "the world sees the user's host address: {seen:?}"
    );
    // The bytes went through the holder's relay, not pasta: the host-side end of a live
    // sandbox connection is the holder's socket.
    let argv = lab.role_argv(&format!("hold:{WORLD}:{ECHO_PORT}"));
    let mut args = vec!["run", "--"];
    args.extend(argv.iter().map(String::as_str));
    let (mut run, mut out) = spawn(&user, &args);
    wait_line(&mut out, "held");
    let (holder, uplink) = holder_and_uplink(&user);
    let owners = sh(&format!(
        "ss -Htnp state established dst {WORLD}:{ECHO_PORT}"
    ));
    assert!(
        owners.contains(&format!("pid={holder},")) && !owners.contains(&format!("pid={uplink},")),
        "the world-side connection is not the holder's ({holder}; pasta {uplink}): {owners}"
    );
    stop(&mut run);
}

#[test]
fn sandboxes_of_one_user_reach_each_other() {
    let test = "rootless::sandboxes_of_one_user_reach_each_other";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63104);
    let server = lab.role_argv("tcpecho:7000");
    let mut args = vec!["run", "--name", "alpha", "--"];
    args.extend(server.iter().map(String::as_str));
    let (mut run, mut out) = spawn(&user, &args);
    wait_line(&mut out, "listening");
    let sandboxes = listed(&user);
    let alpha = sandboxes
        .iter()
        .find(|(n, _)| n == "alpha")
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| panic!("alpha not in ls: {sandboxes:?}"));
    assert!(alpha.parse::<std::net::Ipv4Addr>().is_ok(), "{sandboxes:?}");
    // exec enters it: the same address.
    let inside = output(&mut user.netbox(&["exec", "alpha", "--", "ip", "-br", "addr"]));
    assert_ok("netbox exec alpha", &inside);
    assert!(
        text(&inside.stdout).contains(&alpha),
        "{}",
        text(&inside.stdout)
    );
    // A second run reaches it by address, from its own address.
    let client = lab.role_argv(&format!("tcp:{alpha}:7000"));
    let mut args = vec!["run", "--"];
    args.extend(client.iter().map(String::as_str));
    let out2 = output(&mut user.netbox(&args));
    assert_ok("second run", &out2);
    let reply = text(&out2.stdout);
    assert!(reply.contains("tcp-reply echo hello from "), "{reply}");
    assert!(!reply.contains(&format!("from {alpha}\n")), "{reply}");
    // A named namespace of the same user too (ns add / exec / ns del).
    let added = output(&mut user.netbox(&["ns", "add", "beta"]));
    assert_ok("netbox ns add beta", &added);
    assert!(
        text(&added.stdout).starts_with("beta "),
        "{}",
        text(&added.stdout)
    );
    let mut args = vec!["exec", "beta", "--"];
    args.extend(client.iter().map(String::as_str));
    let out3 = output(&mut user.netbox(&args));
    assert_ok("exec beta", &out3);
    assert!(
        text(&out3.stdout).contains("tcp-reply echo hello from "),
        "{}",
        text(&out3.stdout)
    );
    assert!(listed(&user).iter().any(|(n, _)| n == "beta"));
    assert_ok(
        "ns del beta",
        &output(&mut user.netbox(&["ns", "del", "beta"])),
    );
    // Its veth goes with its namespace, which the kernel tears down in the background: ls
    // may show it as stale for a moment.
    crate::harness::eventually("beta to leave netbox ls", || {
        !listed(&user).iter().any(|(n, _)| n == "beta")
    });
    // gc leaves a live sandbox alone.
    assert_ok("netbox gc", &output(&mut user.netbox(&["gc"])));
    assert!(listed(&user).iter().any(|(n, _)| n == "alpha"));
    stop(&mut run);
    user.wait_none_left("after the last sandbox ended");
}

#[test]
fn another_user_can_neither_see_nor_enter() {
    let test = "rootless::another_user_can_neither_see_nor_enter";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let owner_user = lab.user(63105);
    let other = lab.user(63106);
    assert_ok(
        "ns add secret",
        &output(&mut owner_user.netbox(&["ns", "add", "secret"])),
    );
    assert!(listed(&owner_user).iter().any(|(n, _)| n == "secret"));
    let (holder, _) = holder_and_uplink(&owner_user);
    // Not listed, not enterable through netbox ...
    assert!(
        !listed(&other).iter().any(|(n, _)| n == "secret"),
        "{:?}",
        listed(&other)
    );
    let exec = output(&mut other.netbox(&["exec", "secret", "--", "true"]));
    assert!(!exec.status.success(), "another user entered: {exec:?}");
    let _ = output(&mut other.netbox(&["ns", "del", "secret"]));
    assert!(listed(&owner_user).iter().any(|(n, _)| n == "secret"));
    // ... nor by hand: the holder's namespaces and the state directory are closed to them.
    let pid = holder.to_string();
    for ns in [&["-U", "-n"][..], &["-n"], &["-m"]] {
        let mut args = vec!["-t", pid.as_str()];
        args.extend_from_slice(ns);
        args.extend(["--", "true"]);
        let entered = output(&mut other.command("nsenter", &args));
        assert!(!entered.status.success(), "nsenter {args:?} worked");
    }
    let state = owner_user.state_dir();
    let peek = output(&mut other.command("ls", &[state.to_str().expect("path")]));
    assert!(!peek.status.success(), "{}", text(&peek.stdout));
    // Pointed at the owner's runtime directory, the other user's netbox refuses it.
    let mut borrowed = other.netbox(&["run", "--", "true"]);
    borrowed.env("XDG_RUNTIME_DIR", &owner_user.runtime);
    let out = output(&mut borrowed);
    assert!(!out.status.success(), "ran in another user's runtime dir");
    let foreign: Vec<String> = files_under(&owner_user.runtime)
        .into_iter()
        .filter(|f| owner(std::path::Path::new(f)) == Some(other.uid))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
    assert_ok(
        "ns del secret",
        &output(&mut owner_user.netbox(&["ns", "del", "secret"])),
    );
    owner_user.wait_none_left("after the named sandbox was deleted");
    other.wait_none_left("the other user");
}

#[test]
fn killing_the_run_leaves_nothing_and_the_next_run_works() {
    let test = "rootless::killing_the_run_leaves_nothing_and_the_next_run_works";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63107);
    let server = lab.role_argv("tcpecho:7000");
    let mut args = vec!["run", "--name", "victim", "--"];
    args.extend(server.iter().map(String::as_str));
    let (mut run, mut out) = spawn(&user, &args);
    wait_line(&mut out, "listening");
    let (holder, uplink) = holder_and_uplink(&user);
    sigkill(run.id() as i32);
    let _ = run.wait();
    // CMD, holder and pasta all go (no linger).
    user.wait_none_left("after kill -9 of the run");
    assert!(!alive(holder) && !alive(uplink));
    // The name is free again and the network works.
    let argv = lab.role_argv(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:victim"));
    let mut args = vec!["run", "--name", "victim", "--"];
    args.extend(argv.iter().map(String::as_str));
    assert_reaches_world("victim", &output(&mut user.netbox(&args)));
    assert!(!listed(&user).iter().any(|(n, _)| n == "victim"));
    user.wait_none_left("after the next run");
}

#[test]
fn killing_the_holder_leaves_nothing_and_the_next_run_works() {
    let test = "rootless::killing_the_holder_leaves_nothing_and_the_next_run_works";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63108);
    let server = lab.role_argv("tcpecho:7000");
    let mut args = vec!["run", "--name", "orphan", "--"];
    args.extend(server.iter().map(String::as_str));
    let (mut run, mut out) = spawn(&user, &args);
    wait_line(&mut out, "listening");
    let (holder, uplink) = holder_and_uplink(&user);
    sigkill(holder);
    // pasta dies with its holder, whatever the run does.
    wait_until(
        "pasta to die with the holder",
        Duration::from_secs(10),
        || !alive(uplink),
    );
    stop(&mut run);
    user.wait_none_left("after kill -9 of the holder and the run's end");
    // The dead holder's record does not stop the next one.
    let argv = lab.role_argv(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:orphan"));
    let mut args = vec!["run", "--name", "orphan", "--"];
    args.extend(argv.iter().map(String::as_str));
    assert_reaches_world("orphan", &output(&mut user.netbox(&args)));
    user.wait_none_left("after the next run");
}

#[test]
fn killing_pasta_gets_it_restarted_and_the_next_run_works() {
    let test = "rootless::killing_pasta_gets_it_restarted_and_the_next_run_works";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63109);
    let server = lab.role_argv("tcpecho:7000");
    let mut args = vec!["run", "--name", "keeper", "--"];
    args.extend(server.iter().map(String::as_str));
    let (mut run, mut out) = spawn(&user, &args);
    wait_line(&mut out, "listening");
    let (holder, uplink) = holder_and_uplink(&user);
    sigkill(uplink);
    let mut restarted = 0;
    wait_until("a new pasta in the record", Duration::from_secs(10), || {
        restarted = user.record_pid("uplink_pid").unwrap_or(0);
        restarted > 0 && restarted != uplink && alive(restarted)
    });
    assert_eq!(user.record_pid("holder_pid"), Some(holder));
    assert!(!alive(uplink));
    // A new sandbox and the running one both reach the world again.
    let argv = lab.role_argv(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:fresh"));
    let mut args = vec!["run", "--"];
    args.extend(argv.iter().map(String::as_str));
    assert_reaches_world("fresh", &output(&mut user.netbox(&args)));
    let argv = lab.role_argv(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:keeper"));
    let mut args = vec!["exec", "keeper", "--"];
    args.extend(argv.iter().map(String::as_str));
    assert_reaches_world("keeper", &output(&mut user.netbox(&args)));
    stop(&mut run);
    user.wait_none_left("after the run ended");
    assert!(!alive(restarted));
}

#[test]
fn holder_lingers_then_goes_away() {
    let test = "rootless::holder_lingers_then_goes_away";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let mut user = lab.user(63110);
    user.set_env("NETBOX_USER_NET_LINGER", "3");
    assert_ok(
        "first run",
        &output(&mut user.netbox(&["run", "--", "true"])),
    );
    let (holder, uplink) = holder_and_uplink(&user);
    // Reused by the next run within the linger.
    assert_ok(
        "second run",
        &output(&mut user.netbox(&["run", "--", "true"])),
    );
    assert_eq!(user.record_pid("holder_pid"), Some(holder));
    assert_eq!(user.record_pid("uplink_pid"), Some(uplink));
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(holder) && alive(uplink), "gone before its linger");
    user.wait_none_left("after the linger");
}

#[test]
fn rootless_bridge_sandboxes_are_confined() {
    let test = "rootless::rootless_bridge_sandboxes_are_confined";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63111);
    let out = output(&mut user.netbox(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo $$; id -u; cat /proc/self/status; unshare -U true; echo unshare=$?",
    ]));
    assert_ok("rootless run", &out);
    let all = text(&out.stdout);
    let mut lines = all.lines();
    assert_eq!(lines.next(), Some("2"), "PID namespace: {all}");
    let uid = lines.next().unwrap_or("");
    assert!(
        uid == user.uid.to_string() || uid == "0",
        "CMD's uid is its user's or 0: {uid}"
    );
    let field = |name: &str| {
        all.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {all}"))
            .to_string()
    };
    let mask = |name: &str| u64::from_str_radix(&field(name), 16).expect("hex");
    // The default capability set of rootful sandboxes (tests/confine.rs): never more.
    const DEFAULT_CAPS: u64 = 0x8004_05fb;
    assert_eq!(field("NoNewPrivs"), "1", "{all}");
    assert_eq!(field("Seccomp"), "2", "{all}");
    assert_eq!(mask("CapEff") & !DEFAULT_CAPS, 0, "{all}");
    assert_eq!(mask("CapBnd") & !DEFAULT_CAPS, 0, "{all}");
    assert!(all.contains("unshare=1"), "{all}");
}

#[test]
fn pasta_missing_is_one_line_naming_the_package() {
    let test = "rootless::pasta_missing_is_one_line_naming_the_package";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let mut user = lab.user(63112);
    // A PATH with every program but pasta (and passt).
    let bin = user.dir().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for dir in ["/usr/bin", "/bin"] {
        for e in std::fs::read_dir(dir).expect("read bin dir").flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if !n.starts_with("pasta") && !n.starts_with("passt") && !bin.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
            }
        }
    }
    user.set_env("PATH", &format!("{}:/usr/sbin:/sbin", bin.display()));
    let out = output(&mut user.netbox(&["run", "--", "echo", "CMD-RAN"]));
    let line = one_error_line("run without pasta", &out);
    assert_eq!(
        line, "netbox: rootless networking needs pasta: apt-get install passt",
        "{line}"
    );
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    // --net none needs no uplink.
    let none = output(&mut user.netbox(&["run", "--net", "none", "--", "true"]));
    assert_ok("--net none without pasta", &none);
    user.wait_none_left("after the refused run");
}

/// Some machines ship /dev/net/tun 0600: pasta cannot open it as the user, and the run says
/// so in one line with the fix instead of pasta's own words.
#[test]
fn tun_closed_to_users_is_one_line_with_the_fix() {
    let test = "rootless::tun_closed_to_users_is_one_line_with_the_fix";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63118);
    // The world mounted a 0666 node over /dev/net/tun in this private host: a 0600 one now.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("tun");
    sh(&format!(
        "mknod -m 600 {n} c 10 200 && mount --bind {n} /dev/net/tun",
        n = node.display()
    ));
    let out = output(&mut user.netbox(&["run", "--", "echo", "CMD-RAN"]));
    let line = one_error_line("run with /dev/net/tun 0600", &out);
    assert!(
        line.contains("mode 0600") && line.contains("chmod 0666 /dev/net/tun"),
        "{line}"
    );
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    user.wait_none_left("after the refused run");
}

#[test]
fn host_ports_below_the_unprivileged_range_or_taken_are_refused() {
    let test = "rootless::host_ports_below_the_unprivileged_range_or_taken_are_refused";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63113);
    let run_publishing =
        |spec: &str| output(&mut user.netbox(&["run", "-p", spec, "--", "echo", "CMD-RAN"]));
    sh("sysctl -qw net.ipv4.ip_unprivileged_port_start=1024");
    let out = run_publishing("80:8080");
    let line = one_error_line("-p 80:8080", &out);
    assert!(
        line.contains("net.ipv4.ip_unprivileged_port_start") && line.contains("1024"),
        "{line}"
    );
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    // The value is the private host's, read now.
    sh("sysctl -qw net.ipv4.ip_unprivileged_port_start=2000");
    let line = one_error_line("-p 1500:8080", &run_publishing("1500:8080"));
    assert!(
        line.contains("ip_unprivileged_port_start") && line.contains("2000"),
        "{line}"
    );
    // A port someone else holds: one line, CMD never runs.
    let taken = TcpListener::bind("127.0.0.1:18090").expect("bind");
    let out = run_publishing("127.0.0.1:18090:8080");
    let line = one_error_line("-p of a taken port", &out);
    assert!(line.contains("18090"), "{line}");
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    drop(taken);
    user.wait_none_left("after the refused runs");
}

#[test]
fn disabled_user_namespaces_name_the_sysctl() {
    let test = "rootless::disabled_user_namespaces_name_the_sysctl";
    if !private_host(test) {
        return;
    }
    let Some(lab) = Lab::new(test) else { return };
    let user = lab.user(63114);
    // user.max_user_namespaces is per user namespace: 0 in one of the user's own (identity
    // mapped), set while it still has its capabilities there; netbox runs in it without any.
    let netbox = lab.netbox.display().to_string();
    let uid = user.uid.to_string();
    let (map_user, map_group) = (format!("--map-user={uid}"), format!("--map-group={uid}"));
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && \
         exec setpriv --inh-caps=-all --ambient-caps=-all -- '{netbox}' run -- echo CMD-RAN"
    );
    let out = output(&mut user.command(
        "unshare",
        &[
            "--user",
            &map_user,
            &map_group,
            "--keep-caps",
            "--",
            "sh",
            "-c",
            &script,
        ],
    ));
    let line = one_error_line("run with user namespaces disabled", &out);
    assert!(line.contains("user.max_user_namespaces"), "{line}");
    assert!(!text(&out.stdout).contains("CMD-RAN"));
}

#[test]
fn state_without_xdg_runtime_dir_is_private_and_checked() {
    let test = "rootless::state_without_xdg_runtime_dir_is_private_and_checked";
    if !private_host(test) {
        return;
    }
    // Everything below in a /tmp of this private host only; the programs first go to this
    // private host's /run/netbox (the build tree itself may be under /tmp).
    let private_tmp = || {
        sh("mount -t tmpfs -o mode=1777 tmpfs /tmp");
    };
    let Some(lab) = Lab::with_programs(test, Some(Path::new("/run/netbox")), private_tmp) else {
        return;
    };
    let unset = |user: &User, args: &[&str]| {
        let mut cmd = user.netbox(args);
        cmd.env_remove("XDG_RUNTIME_DIR");
        output(&mut cmd)
    };
    // The fallback: /tmp/netbox-UID, the user's, 0700.
    let user = lab.user(63115);
    let argv = lab.role_argv(&format!("udp:{WORLD}:{UDP_ECHO_PORT}:tmpstate"));
    let mut args = vec!["run", "--"];
    args.extend(argv.iter().map(String::as_str));
    assert_reaches_world("tmpstate", &unset(&user, &args));
    let dir = PathBuf::from(format!("/tmp/netbox-{}", user.uid));
    let meta = std::fs::symlink_metadata(&dir).expect("/tmp/netbox-UID made");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), user.uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    user.wait_none_left("after the run");
    // Refused: a symlink planted there, or a directory someone else owns.
    let planted = lab.user(63116);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(elsewhere.path(), Some(planted.uid), Some(planted.uid))
        .expect("chown");
    std::os::unix::fs::symlink(elsewhere.path(), format!("/tmp/netbox-{}", planted.uid))
        .expect("symlink");
    let out = unset(&planted, &["run", "--", "echo", "CMD-RAN"]);
    assert!(!out.status.success(), "followed a symlink: {out:?}");
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    assert!(files_under(elsewhere.path()).is_empty());
    let squatted = lab.user(63117);
    let squat = format!("/tmp/netbox-{}", squatted.uid);
    std::fs::create_dir(&squat).expect("mkdir");
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::os::unix::fs::chown(&squat, Some(planted.uid), Some(planted.uid)).expect("chown");
    let out = unset(&squatted, &["run", "--", "echo", "CMD-RAN"]);
    assert!(
        !out.status.success(),
        "used a directory of another user: {out:?}"
    );
    assert!(!text(&out.stdout).contains("CMD-RAN"));
    assert!(processes_of(planted.uid).is_empty() && processes_of(squatted.uid).is_empty());
}

#[test]
fn root_runs_are_unchanged() {
    let test = "rootless::root_runs_are_unchanged";
    if !private_host(test) {
        return;
    }
    let Some(_lab) = Lab::new(test) else { return };
    let runtime = tempfile::tempdir().expect("tempdir");
    let out = output(
        Command::new(netbox_bin())
            .args(["run", "--", "ip", "-j", "-4", "addr", "show", "eth0"])
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env_remove("SUDO_UID")
            .stdin(Stdio::null()),
    );
    assert_ok("root run", &out);
    let addr: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ip = addr[0]["addr_info"][0]["local"].as_str().unwrap_or("");
    assert!(ip.starts_with("10.117.0."), "the built-in network: {ip}");
    // The bridge is the (private) host's own, the state root's; no per-user network.
    assert!(link_names().iter().any(|n| n == "netbox0"));
    assert!(
        files_under(runtime.path()).is_empty(),
        "{:?}",
        files_under(runtime.path())
    );
}
