//! The "test world" of rootless networking, shared by tests/rootless.rs and benches/rootless.rs
//! (which includes this file with `#[path]`, so it uses nothing from the test harness).
//!
//! Inside a private host (as root): a `world` namespace behind a veth, the private host's
//! default route through it, servers in it (busybox httpd, a UDP echo, a DNS responder); then
//! commands as unprivileged uids through setpriv, each with its own HOME and XDG_RUNTIME_DIR.
//! Nothing here ever talks to an address outside the private host.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The private host's address on the world veth (the "other address" beside loopback).
pub const HOST: &str = "10.213.0.1";
/// The world namespace's address.
pub const WORLD: &str = "10.213.0.2";
/// An address on the world's loopback: reachable only through the default route ("beyond").
pub const BEYOND: &str = "198.51.100.7";
/// The world namespace's name (/run/netns/world).
pub const WORLD_NS: &str = "world";
/// The name the world's DNS responder answers (with [`WORLD`]).
pub const WORLD_NAME: &str = "www.world.test";
/// busybox httpd in the world serves [`HELLO`] at /hello on this port.
pub const HTTP_PORT: u16 = 8080;
pub const HELLO: &str = "hello from the world";
/// The world's UDP echo port: it answers "echo MSG from PEER-IP".
pub const UDP_ECHO_PORT: u16 = 7001;

/// Runs a shell command, panicking with its output when it fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) until `cond` holds.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The world: built in the current (private) host, torn down with it.
pub struct World {
    servers: Vec<Child>,
    _files: tempfile::TempDir,
}

impl World {
    /// Namespace, veth, addresses, default route, ICMP echo sockets for every group (pasta
    /// answers a sandbox's pings with them), the private host's resolv.conf naming the world's
    /// resolver, and the servers.
    pub fn new() -> World {
        sh(&format!(
            "ip netns add {WORLD_NS} && \
             ip link add wan0 type veth peer name eth0 netns {WORLD_NS} && \
             ip addr add {HOST}/24 dev wan0 && ip link set wan0 up && \
             ip -n {WORLD_NS} link set lo up && \
             ip -n {WORLD_NS} addr add {WORLD}/24 dev eth0 && \
             ip -n {WORLD_NS} link set eth0 up && \
             ip -n {WORLD_NS} addr add {BEYOND}/32 dev lo && \
             ip route add default via {WORLD} && \
             sysctl -qw net.ipv4.ping_group_range='0 2147483647'"
        ));
        let files = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // pasta opens /dev/net/tun as the user: distributions ship it 0666, some machines
        // (this CI's) 0600. A 0666 node over it, in this private host's mounts only.
        let f = files.path().display();
        sh(&format!(
            "mkdir {f}/dev && mount -t tmpfs tmpfs {f}/dev && \
             mknod -m 666 {f}/dev/tun c 10 200 && mount --bind {f}/dev/tun /dev/net/tun"
        ));
        std::fs::write(files.path().join("hello"), HELLO).expect("write hello");
        let resolv = files.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {WORLD}\n")).expect("resolv.conf");
        // The private host's mount namespace is its own: this hides the real resolv.conf from
        // everything started in it, pasta included.
        sh(&format!(
            "mount --bind {} /etc/resolv.conf",
            resolv.display()
        ));
        let httpd = Command::new("ip")
            .args(["netns", "exec", WORLD_NS, "busybox", "httpd", "-f", "-p"])
            .arg(HTTP_PORT.to_string())
            .arg("-h")
            .arg(files.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox httpd in the world");
        let world = World {
            servers: vec![httpd],
            _files: files,
        };
        world.serve_udp(SocketAddr::from(([0, 0, 0, 0], UDP_ECHO_PORT)), udp_echo);
        world.serve_udp(SocketAddr::from(([0, 0, 0, 0], 53)), |q, _| {
            dns_answer(q, &[(WORLD_NAME, WORLD.parse().expect("address"))])
        });
        wait_until("the world's httpd", Duration::from_secs(10), || {
            world_connect(HTTP_PORT)
        });
        world
    }

    /// `ip netns exec world CMD...` (iperf3 -s for the bench, say); killed with the world.
    pub fn spawn(&mut self, cmd: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", WORLD_NS])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a world server");
        self.servers.push(child);
    }

    /// Runs `f` on a thread that lives in the world's network namespace (a net namespace may be
    /// joined by one thread of a multi-threaded process).
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{WORLD_NS}")).expect("world netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("join the world");
            f()
        })
    }

    /// A UDP server in the world: `answer` turns each datagram into a reply (or none).
    pub fn serve_udp(
        &self,
        addr: SocketAddr,
        answer: impl Fn(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + 'static,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.thread(move || {
            let sock = UdpSocket::bind(addr).expect("bind a world UDP server");
            let _ = tx.send(());
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                if let Some(reply) = answer(&buf[..n], peer) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("world UDP server up");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// True when a TCP connection to the world's `port` succeeds (from the private host).
fn world_connect(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from((WORLD.parse::<Ipv4Addr>().expect("address"), port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The UDP echo's answer: "echo MSG from PEER-IP", so a test sees whose address arrived.
fn udp_echo(msg: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    Some(
        format!(
            "echo {} from {}",
            String::from_utf8_lossy(msg).trim(),
            peer.ip()
        )
        .into_bytes(),
    )
}

/// A DNS answer to `query`: A records for the known names, NXDOMAIN for other names, an empty
/// answer for other types of a known name. None for what is not a one-question query.
pub fn dns_answer(query: &[u8], names: &[(&str, Ipv4Addr)]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let question = query.get(12..at + 4)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let name = labels.join(".");
    let found = names.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
    let mut reply = Vec::with_capacity(question.len() + 32);
    reply.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD, AA; RA; NOERROR or NXDOMAIN.
    reply.push(0x84 | (query[2] & 0x79));
    reply.push(if found.is_some() { 0x80 } else { 0x83 });
    let answers = u16::from(found.is_some() && qtype == 1);
    for count in [1, answers, 0, 0] {
        reply.extend_from_slice(&count.to_be_bytes());
    }
    reply.extend_from_slice(question);
    if let (Some(ip), 1) = (found, answers) {
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// `path` itself when every other user may run it, else a copy in `dir` that they may (the
/// build tree may be private; a copy of a debug build is large, so only when needed).
pub fn runnable_by_all(path: &Path, dir: &Path) -> PathBuf {
    let open = path
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
        && std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if open {
        return path.to_path_buf();
    }
    copy_runnable(path, dir)
}

/// A copy of `path` in `dir` that every user may run.
pub fn copy_runnable(path: &Path, dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.join(path.file_name().expect("a file name"));
    std::fs::copy(path, &copy).expect("copy a program");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// An unprivileged user: a uid with no passwd entry, its own HOME and XDG_RUNTIME_DIR (0700,
/// theirs), commands run through setpriv. Every process of the uid is killed when it drops, so
/// give each test its own uid; a uid is also claimed (an exclusive lock shared by every test
/// process) for the User's life, so two tests given the same one wait for each other instead of
/// killing each other's processes.
pub struct User {
    pub uid: u32,
    pub home: PathBuf,
    pub runtime: PathBuf,
    netbox: PathBuf,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// Dropped after [`Drop::drop`] killed the uid's processes.
    _claim: std::fs::File,
}

impl User {
    /// `netbox` is a binary the uid may run (see [`runnable_by_all`]).
    pub fn new(uid: u32, netbox: &Path) -> User {
        let claim = claim_uid(uid);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let home = dir.path().join("home");
        let runtime = dir.path().join("run");
        for d in [&home, &runtime] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).expect("chown");
        }
        User {
            uid,
            home,
            runtime,
            netbox: netbox.to_path_buf(),
            env: vec![("NETBOX_USER_NET_LINGER".into(), "0".into())],
            dir,
            _claim: claim,
        }
    }

    /// Sets (or replaces) an environment variable of the user's commands.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// `program ARGS` as this user, in a clean environment: PATH, HOME, XDG_RUNTIME_DIR and
    /// what [`User::set_env`] added; cwd HOME, stdin closed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        let (uid, gid) = (
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.uid),
        );
        cmd.args([uid.as_str(), gid.as_str(), "--clear-groups", "--"])
            .arg(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .stdin(Stdio::null());
        cmd
    }

    /// `netbox ARGS` as this user.
    pub fn netbox(&self, args: &[&str]) -> Command {
        self.command(&self.netbox, args)
    }

    /// The user's netbox state directory ($XDG_RUNTIME_DIR/netbox).
    pub fn state_dir(&self) -> PathBuf {
        self.runtime.join("netbox")
    }

    /// The holder's record, user-network.json, when there is one.
    pub fn record(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("user-network.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A pid field of the holder's record (holder_pid, uplink_pid).
    pub fn record_pid(&self, field: &str) -> Option<i32> {
        self.record()?[field]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    }

    /// Live processes whose real uid is this user's, with their command names.
    pub fn processes(&self) -> Vec<(i32, String)> {
        processes_of(self.uid)
    }

    /// Waits (bounded) until no process of this user is left.
    pub fn wait_none_left(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: processes of uid {} still running: {left:?}",
                self.uid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every process of this user (this test's own uid: nothing else runs as it).
    pub fn kill_all(&self) {
        for _ in 0..100 {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                kill_if_owned(pid, self.uid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The user's temporary directory (0755, root's): for files the test shares with them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The directory of the uid claims: the build's temporary directory, shared by every test
/// process and opened once, so a test that later mounts over the path (a build tree under
/// /tmp) still reaches it: such a test calls it before its mount.
pub fn claims_dir() -> &'static std::fs::File {
    static DIR: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let path = env!("CARGO_TARGET_TMPDIR");
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"))
    })
}

/// Takes the exclusive lock of `uid` in [`claims_dir`], waiting while another test holds it.
fn claim_uid(uid: u32) -> std::fs::File {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let name = format!("test-uid-{uid}.lock");
    let fd = nix::fcntl::openat(
        claims_dir(),
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap_or_else(|e| panic!("opening {name} in the build's tmp: {e}"));
    let file = std::fs::File::from(fd);
    file.lock()
        .unwrap_or_else(|e| panic!("locking {name}: {e}"));
    file
}

/// SIGKILL to `pid` if it is still a process of `uid`: the pid is pinned by a pidfd before its
/// owner is checked again, so a pid that ended and was reused (all tests share one PID
/// namespace) is never hit.
fn kill_if_owned(pid: i32, uid: u32) {
    // SAFETY: pidfd_open with a pid and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return; // gone already
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let owned = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| real_uid(&status) == Some(uid));
    if owned {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a valid signal, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// A field of /proc/PID/status ("Name:", say), trimmed; empty when missing.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// The real uid in a /proc/PID/status.
fn real_uid(status: &str) -> Option<u32> {
    status_field(status, "Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
}

/// Live processes (not zombies) whose real uid is `uid`, with their command names.
pub fn processes_of(uid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| status_field(&status, name).to_string();
        if real_uid(&status) == Some(uid) && !field("State:").starts_with('Z') {
            out.push((pid, field("Name:")));
        }
    }
    out
}

/// True while `pid` is a live process (not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Owner uid of `path` (not following a symlink).
pub fn owner(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path).ok().map(|m| m.uid())
}

/// Writes `bytes` to a child's stdin, ignoring a closed pipe.
pub fn feed(child: &mut Child, bytes: &[u8]) {
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(bytes);
    }
}
