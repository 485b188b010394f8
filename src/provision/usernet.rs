//! The per-user network host of rootless `netbox run` (and `ns add`, `exec`, `ls`, `gc`).
//!
//! A user without privileges gets bridge networking inside a network host of their own: user +
//! network + mount namespaces made by a *keeper* process, held by a small detached *holder*
//! (`netbox user-net hold`) that started it. Inside, the process that enters is root of the
//! user namespace (its uid mapped to itself) with every capability there, so the whole rootful
//! bridge path (leases, records, firewall, named namespaces) runs unchanged; its state lives in
//! a tmpfs the keeper mounted over `STATE/host` in its own mount namespace (`run`, `netns`,
//! `lib`), used in place of /run/netbox, /run/netns and /var/lib/netbox, invisible to the host
//! and gone with the keeper.
//!
//! - Uplink: outbound TCP is redirected to a listener the holder owns in the network host
//!   ([`TCP_UPLINK_PORT`]) and relayed from the host's namespace with splice
//!   ([`crate::sys::relay::relay_redirected`]): kernel TCP at both ends, at memory speed.
//!   The rest goes through pasta (package passt), the holder's child in the host's namespaces,
//!   attached to the keeper's network namespace (`--config-net`: the host's addresses and
//!   routes on its tap, `uplink0`), forwarding DNS sent to [`DNS_FORWARD`] to the host's first
//!   resolver. If it dies, the holder starts it again. The keeper turned on ip_forward; what
//!   leaves through the tap is masqueraded.
//! - State: `$XDG_RUNTIME_DIR/netbox` (or `/tmp/netbox-UID`, 0700, refused when another user's
//!   or a link): `user-network.json` (the holder's record), `user-network.users` (the lock every
//!   user of the network host holds shared for as long as it uses it), `user-network.start`
//!   (serialises starting a holder), `user-network.holder` (held by the holder alone) and the
//!   holder's log `user-network.log`.
//! - Lifetime: the holder exits once it can take the users lock exclusively and no named
//!   sandbox (`ns add`) is left, for NETBOX_USER_NET_LINGER seconds (default 5). It keeps the
//!   lock while it goes, so a command arriving then waits and starts a new holder. pasta and the
//!   keeper get SIGKILL when the holder dies, however it dies: nothing outlives it, and a record
//!   whose holder is gone (pid + start time) is replaced.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::owner::process_start_time;
use crate::process::usernet::{
    listen_in_keeper, spawn_in_keeper, spawn_supervised, start_keeper, KeeperSpec,
};
use crate::sys::relay;
use crate::sys::userns::{self, Inside, Namespaces};
use crate::{Error, Result};

/// The address in the network host that pasta maps to the host's first resolver.
pub const DNS_FORWARD: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The uplink's interface in the network host.
pub const UPLINK_IFNAME: &str = "uplink0";
/// Seconds the holder stays once unused (0: it goes with the last user).
pub const LINGER_VAR: &str = "NETBOX_USER_NET_LINGER";
/// MTU of the uplink (and default of the sandboxes' interfaces).
pub const MTU_VAR: &str = "NETBOX_USER_NET_MTU";
const DEFAULT_LINGER: u64 = 5;
const DEFAULT_MTU: u32 = 65520;

const RECORD: &str = "user-network.json";
const USERS_LOCK: &str = "user-network.users";
const START_LOCK: &str = "user-network.start";
const HOLDER_LOCK: &str = "user-network.holder";
const LOG: &str = "user-network.log";
const HOST_DIR: &str = "host";
/// The holder's TCP uplink listens on this port of the network host (tcpmux, unused): the
/// sandboxes' outbound TCP is redirected to it.
const TCP_UPLINK_PORT: u16 = 1;
/// How long a starting holder may take to report.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The holder's record, `user-network.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserNetRecord {
    pub holder_pid: u32,
    pub holder_start: u64,
    /// pasta's pid (0 while it is being restarted).
    pub uplink_pid: u32,
    /// The process whose namespaces are the network host.
    pub keeper_pid: u32,
    pub keeper_start: u64,
    pub uplink: String,
    pub uplink_ifname: String,
    pub mtu: u32,
    pub dns_forward: IpAddr,
    /// The private state inside (a tmpfs in the network host's mount namespace).
    pub state: PathBuf,
}

impl UserNetRecord {
    /// Both the holder and the keeper are the processes the record names.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.holder_pid) == Some(self.holder_start)
            && process_start_time(self.keeper_pid) == Some(self.keeper_start)
    }
}

/// The user's state directory: `$XDG_RUNTIME_DIR/netbox`, or `/tmp/netbox-UID`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("netbox"),
        _ => PathBuf::from(format!("/tmp/netbox-{}", nix::unistd::getuid())),
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn open_state_dir() -> Result<PathBuf> {
    let dir = state_dir();
    userns::ensure_private_dir(&dir)
        .map_err(io_err(format!("state directory {}", dir.display())))?;
    Ok(dir)
}

fn open_lock(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))
}

/// The record in `dir`, if any.
pub fn load(dir: &Path) -> Option<UserNetRecord> {
    let text = std::fs::read(dir.join(RECORD)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The record of the user's running network host, if there is one (read only).
pub fn status() -> Option<UserNetRecord> {
    load(&state_dir()).filter(UserNetRecord::is_alive)
}

fn save(dir: &Path, record: &UserNetRecord) -> std::io::Result<()> {
    let tmp = dir.join(format!("{RECORD}.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(RECORD))
}

/// A use of the network host: while it lives, the holder stays.
#[derive(Debug)]
pub struct Session {
    _users: File,
    pub record: UserNetRecord,
}

/// Enters the user's network host, starting it when `start` (else Ok(None) when none runs).
/// Call it before any thread exists: joining a user namespace needs a single-threaded process.
pub fn enter(start: bool) -> Result<Option<Session>> {
    if !start && !state_dir().join(RECORD).exists() {
        // Nothing to enter; `ls` and friends leave no directory behind.
        return Ok(None);
    }
    let dir = open_state_dir()?;
    let users = open_lock(&dir, USERS_LOCK)?;
    users.lock_shared().map_err(io_err(format!(
        "locking {}",
        dir.join(USERS_LOCK).display()
    )))?;
    let record = match load(&dir).filter(UserNetRecord::is_alive) {
        Some(r) => r,
        None if !start => return Ok(None),
        None => {
            let starting = open_lock(&dir, START_LOCK)?;
            starting.lock().map_err(io_err(format!(
                "locking {}",
                dir.join(START_LOCK).display()
            )))?;
            match load(&dir).filter(UserNetRecord::is_alive) {
                Some(r) => r,
                None => start_holder(&dir)?,
            }
        }
    };
    let namespaces = Namespaces::of(record.keeper_pid)
        .ok()
        .filter(|_| process_start_time(record.keeper_pid) == Some(record.keeper_start))
        .ok_or_else(|| {
            Error::Config("the user network host went away while entering it; try again".into())
        })?;
    namespaces
        .enter()
        .map_err(io_err("entering the user network host".into()))?;
    userns::set_inside(Inside {
        state: record.state.clone(),
        dns_forward: record.dns_forward,
        mtu: record.mtu,
    });
    Ok(Some(Session {
        _users: users,
        record,
    }))
}

/// The one line that says pasta is missing and how to get it.
pub fn pasta_missing() -> Error {
    Error::Config("rootless networking needs pasta: apt-get install passt".into())
}

/// pasta opens /dev/net/tun as the user: some machines ship it 0600 (root only), and pasta's
/// own message would not say what to do.
fn tun_usable() -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    let tun = Path::new("/dev/net/tun");
    match access(tun, AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => Err(Error::Config(
            "rootless networking needs /dev/net/tun, which is missing: modprobe tun (as root)"
                .into(),
        )),
        Err(e) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tun)
                .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777))
                .unwrap_or_else(|_| "unreadable".into());
            Err(Error::Config(format!(
                "rootless networking needs /dev/net/tun open to users (mode {mode} here: {e}): \
                 chmod 0666 /dev/net/tun (as root; the usual mode)"
            )))
        }
    }
}

/// Starts a holder and waits for its report; its record once it is up.
fn start_holder(dir: &Path) -> Result<UserNetRecord> {
    let pasta = userns::find_program("pasta").ok_or_else(pasta_missing)?;
    tun_usable()?;
    let exe = std::env::current_exe().map_err(io_err("finding the netbox binary".into()))?;
    let log_path = dir.join(LOG);
    let log =
        File::create(&log_path).map_err(io_err(format!("creating {}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.args(["user-net", "hold", "--pasta"])
        .arg(&pasta)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .current_dir("/");
    crate::process::new_session_on_exec(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(io_err("starting the user network holder".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Config("the user network holder has no stdout".into()))?;
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    match serde_json::from_str::<HolderReport>(line.trim()) {
        Ok(HolderReport::Ready) => {
            // Detached: it outlives this process.
            std::mem::forget(child);
            load(dir)
                .filter(UserNetRecord::is_alive)
                .ok_or_else(|| Error::Config("the user network holder left no record".into()))
        }
        Ok(HolderReport::Failed { error }) => {
            let _ = child.wait();
            Err(Error::Config(error))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(Error::Config(format!(
                "the user network holder stopped without a report{}",
                match log.lines().last() {
                    Some(l) => format!(": {l}"),
                    None => String::new(),
                }
            )))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum HolderReport {
    Ready,
    Failed { error: String },
}

fn report(r: &HolderReport) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
    let _ = out.flush();
    drop(out);
    // Nobody reads stdout any more.
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn env_number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The holder's main (`netbox user-net hold`): makes the network host, starts and supervises
/// the uplink, and goes when unused. Returns the exit code. Call it first thing in the process.
pub fn hold(pasta: &Path) -> i32 {
    match Holder::start(pasta) {
        Ok(mut holder) => {
            report(&HolderReport::Ready);
            holder.supervise();
            holder.stop();
            0
        }
        Err(e) => {
            report(&HolderReport::Failed {
                error: crate::error::chain(&e),
            });
            1
        }
    }
}

struct Holder {
    dir: PathBuf,
    _holder_lock: File,
    users: File,
    record: UserNetRecord,
    pasta: PathBuf,
    uplink: Option<std::process::Child>,
    log: File,
    signals: nix::sys::signal::SigSet,
    linger: Duration,
}

impl Holder {
    fn start(pasta: &Path) -> Result<Holder> {
        use nix::sys::signal::{SigSet, Signal};
        let t0 = Instant::now();
        let phase =
            |what: &str| tracing::debug!(us = t0.elapsed().as_micros() as u64, "holder: {what}");
        // Blocked before anything starts: collected with sigtimedwait, inherited blocked by
        // nobody (the children unblock them).
        let mut signals = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            signals.add(s);
        }
        signals
            .thread_block()
            .map_err(|e| Error::Config(format!("blocking signals: {e}")))?;
        // Every relayed TCP connection holds six descriptors: the soft limit (often 1024)
        // would cap the sandboxes at ~170 connections; the hard one is the user's to use.
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
        let dir = open_state_dir()?;
        let holder_lock = open_lock(&dir, HOLDER_LOCK)?;
        // A holder on its way out (record removed, pasta and keeper being stopped) still has
        // it for a moment: wait for it; only one starter at a time gets here (START_LOCK).
        let deadline = Instant::now() + START_TIMEOUT;
        while holder_lock.try_lock().is_err() {
            if Instant::now() > deadline {
                return Err(Error::Config(
                    "another user network holder is running".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let users = open_lock(&dir, USERS_LOCK)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG))
            .map_err(io_err("opening the holder's log".into()))?;
        let state = dir.join(HOST_DIR);
        userns::ensure_private_dir(&state).map_err(io_err(format!("{}", state.display())))?;
        let spec = KeeperSpec::new(&state, &["run", "netns", "lib"])
            .map_err(io_err("preparing the network host".into()))?;
        let keeper_pid = start_keeper(&spec).map_err(|e| {
            if e.to_string().starts_with("unshare") || e.to_string().starts_with("writing the id") {
                Error::Config(format!(
                    "rootless networking needs unprivileged user namespaces, and the kernel \
                     refused one ({e}){}",
                    match userns::refusal_hint() {
                        Some(hint) => format!(": {hint}"),
                        None => String::new(),
                    }
                ))
            } else {
                Error::Config(format!("making the user network host: {e}"))
            }
        })?;
        phase("keeper ready");
        // While this process has one thread; served once the uplink is up.
        let tcp_uplink = listen_in_keeper(keeper_pid, TCP_UPLINK_PORT).map_err(io_err(
            "listening for the TCP uplink in the network host".into(),
        ));
        let me = std::process::id();
        let mut holder = Holder {
            record: UserNetRecord {
                holder_pid: me,
                holder_start: process_start_time(me).unwrap_or(0),
                uplink_pid: 0,
                keeper_pid,
                keeper_start: process_start_time(keeper_pid).unwrap_or(0),
                uplink: "pasta".into(),
                uplink_ifname: UPLINK_IFNAME.into(),
                mtu: env_number(MTU_VAR, DEFAULT_MTU),
                dns_forward: DNS_FORWARD,
                state,
            },
            dir,
            _holder_lock: holder_lock,
            users,
            pasta: pasta.to_path_buf(),
            uplink: None,
            log,
            signals,
            linger: Duration::from_secs(env_number(LINGER_VAR, DEFAULT_LINGER)),
        };
        // nft and pasta start side by side (each takes milliseconds).
        let started = holder.masquerade().and_then(|nft| {
            let up = holder.start_uplink();
            phase("uplink started");
            let made = Holder::masquerade_made(nft);
            phase("masquerade rule made");
            up.and(made)
        });
        let served = tcp_uplink.and_then(|listeners| {
            listeners
                .into_iter()
                .try_for_each(relay::relay_redirected)
                .map_err(io_err("starting the TCP uplink".into()))
        });
        if let Err(e) = started.and(served) {
            holder.stop();
            return Err(e);
        }
        phase("uplink up");
        holder.save()?;
        Ok(holder)
    }

    /// The network host's rules, for all its sandboxes:
    /// - outbound TCP is redirected to the holder's TCP uplink ([`TCP_UPLINK_PORT`]), all
    ///   but DNS to pasta's forward address; nobody reaches that port without a redirection;
    /// - what still leaves through pasta (UDP, ICMP, DNS) leaves under the uplink's address
    ///   (the only one pasta answers for), whatever sandbox sent it.
    fn masquerade(&self) -> Result<std::process::Child> {
        let nft = crate::firewall::nft::binary()?;
        let (up, port, dns) = (UPLINK_IFNAME, TCP_UPLINK_PORT, self.record.dns_forward);
        let rules = format!(
            "table inet netbox-uplink {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{up}\" masquerade\n\
             \t}}\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname != \"{up}\" meta l4proto tcp fib daddr oifname \"{up}\" \
             ip daddr != {dns} redirect to :{port}\n\
             \t\tiifname != \"{up}\" meta l4proto tcp fib daddr oifname \"{up}\" \
             meta nfproto ipv6 redirect to :{port}\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\ttcp dport {port} ct status ! dnat drop\n\
             \t}}\n\
             }}\n"
        );
        spawn_in_keeper(self.record.keeper_pid, &nft, &["-f", "-"], rules.as_bytes())
            .map_err(io_err("running nft in the user network host".into()))
    }

    fn masquerade_made(nft: std::process::Child) -> Result<()> {
        let out = nft
            .wait_with_output()
            .map_err(io_err("running nft in the user network host".into()))?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "masquerading the user network host: nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        save(&self.dir, &self.record).map_err(io_err(format!(
            "writing {}",
            self.dir.join(RECORD).display()
        )))
    }

    /// Starts pasta and waits until it has configured the network host (its pid file).
    fn start_uplink(&mut self) -> Result<()> {
        let pidfile = self.dir.join("user-network.pasta.pid");
        let _ = std::fs::remove_file(&pidfile);
        let k = self.record.keeper_pid;
        let args: Vec<String> = [
            "--config-net",
            "--foreground",
            "--quiet",
            "--ns-ifname",
            UPLINK_IFNAME,
            "--mtu",
            &self.record.mtu.to_string(),
            "--dns-forward",
            &self.record.dns_forward.to_string(),
            "--no-map-gw",
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
            "--pid",
            &pidfile.display().to_string(),
            "--userns",
            &format!("/proc/{k}/ns/user"),
            "--netns",
            &format!("/proc/{k}/ns/net"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = spawn_supervised(&self.pasta, &args, &self.log)
            .map_err(io_err(format!("starting {}", self.pasta.display())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if pidfile.exists() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default();
                return Err(Error::Config(format!(
                    "the uplink (pasta) ended at start ({status}){}",
                    match log.lines().rev().find(|l| !l.trim().is_empty()) {
                        Some(l) => format!(": {}", l.trim()),
                        None => String::new(),
                    }
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Config(
                    "the uplink (pasta) did not start in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let _ = std::fs::remove_file(&pidfile);
        self.record.uplink_pid = child.id();
        self.uplink = Some(child);
        Ok(())
    }

    /// Until told to stop, the keeper ends or nobody has used the network host for the linger
    /// time: restarts the uplink when it dies.
    fn supervise(&mut self) {
        let mut idle_since: Option<Instant> = None;
        let mut last_restart: Option<Instant> = None;
        loop {
            if let Some(sig) = wait_signal(&self.signals, Duration::from_millis(50)) {
                if sig != libc::SIGCHLD {
                    return;
                }
            }
            // Reap: the keeper gone ends the network host; pasta gone is restarted.
            if let Some(up) = &mut self.uplink {
                if !matches!(up.try_wait(), Ok(None)) {
                    self.uplink = None;
                    self.record.uplink_pid = 0;
                }
            }
            let keeper = nix::unistd::Pid::from_raw(self.record.keeper_pid as i32);
            match nix::sys::wait::waitpid(keeper, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                _ => return,
            }
            if self.uplink.is_none()
                && last_restart.is_none_or(|t| t.elapsed() > Duration::from_millis(200))
            {
                last_restart = Some(Instant::now());
                match self.start_uplink() {
                    Ok(()) => {
                        let _ = self.save();
                    }
                    Err(e) => {
                        let _ = writeln!(self.log, "netbox: restarting the uplink: {e}");
                    }
                }
            }
            if self.unused() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.linger {
                    // Keep the users lock while going: a newcomer waits, then starts anew.
                    if self.users.try_lock().is_ok() {
                        return;
                    }
                }
            } else {
                idle_since = None;
            }
        }
    }

    /// Nobody holds the users lock and no named sandbox lives in the network host.
    fn unused(&self) -> bool {
        if self.users.try_lock().is_err() {
            return false;
        }
        let _ = self.users.unlock();
        let sandboxes = Path::new(&format!("/proc/{}/root", self.record.keeper_pid))
            .join(
                self.record
                    .state
                    .strip_prefix("/")
                    .unwrap_or(&self.record.state),
            )
            .join("run/sandboxes");
        let named = std::fs::read_dir(&sandboxes)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().ends_with(".json")
                        && std::fs::read_to_string(e.path())
                            .map(|t| {
                                t.contains("\"kind\": \"ns\"") || t.contains("\"kind\":\"ns\"")
                            })
                            .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        !named
    }

    /// Removes the record and ends pasta and the keeper.
    fn stop(&mut self) {
        if load(&self.dir).is_some_and(|r| r.holder_pid == self.record.holder_pid) {
            let _ = std::fs::remove_file(self.dir.join(RECORD));
        }
        if let Some(mut up) = self.uplink.take() {
            let _ = up.kill();
            let _ = up.wait();
        }
        let keeper = nix::unistd::Pid::from_raw(self.record.keeper_pid as i32);
        let _ = nix::sys::signal::kill(keeper, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(keeper, None);
    }
}

/// The next blocked signal of `set` within `timeout`, if any.
fn wait_signal(set: &nix::sys::signal::SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait with a valid set and timespec; no siginfo wanted.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}
