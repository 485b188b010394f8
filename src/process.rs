//! The only fork/exec in netbox: start a command inside a sandbox, forward signals to it and
//! turn its end into a shell-style exit code.
//!
//! Everything the child needs is prepared before the fork (paths, maps, user lookups); after the
//! fork, the child only makes syscalls, in this order: die with the parent (PDEATHSIG), join the
//! network namespace (or, rootless, create user + network namespaces), take private mount and UTS
//! namespaces, mount private copies of /etc/resolv.conf and /etc/hosts and a /sys for its network
//! namespace, set the hostname, switch user, drop CAP_NET_ADMIN/CAP_SYS_ADMIN, exec.
//!
//! The parent blocks the forwarded signals (before any thread exists, so every thread inherits
//! the mask) and collects them with `sigwaitinfo`, which also reports SIGCHLD: no signal handler,
//! no self-pipe, no race between the child's exit and a signal.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use caps::{CapSet, Capability};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("sandbox set-up for {program:?} failed while {stage}: {source}")]
    Setup {
        program: String,
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program:?}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("user {0:?}: no such user")]
    UnknownUser(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

impl ProcessError {
    /// The exit code a shell would give: 127 command not found, 126 not executable, else 125
    /// (netbox's own failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            ProcessError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            ProcessError::Exec { .. } => 126,
            _ => 125,
        }
    }
}

type Result<T, E = ProcessError> = std::result::Result<T, E>;

/// How the child gets its network namespace.
#[derive(Debug)]
pub enum NetSetup {
    /// Join an existing namespace.
    Join(OwnedFd),
    /// The child creates a network namespace and hands it back ([`Pending::take_network`]) to
    /// be wired before the start: the namespace lives exactly as long as CMD.
    New,
    /// Create user + network namespaces in the child: loopback only, no privileges needed.
    NewRootless,
}

/// The user CMD runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from the group database when a name was given).
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

impl UserSpec {
    /// Parses `NAME`, `UID` or `UID:GID` (a numeric uid need not exist in /etc/passwd).
    pub fn parse(spec: &str) -> Result<UserSpec> {
        let invalid = |reason: &str| ProcessError::Invalid {
            what: "user",
            value: spec.into(),
            reason: reason.into(),
        };
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user_part.is_empty() {
            return Err(invalid("empty user"));
        }
        let mut user = match user_part.parse::<u32>() {
            Ok(uid) => match nix::unistd::User::from_uid(uid.into()).ok().flatten() {
                Some(u) => from_passwd(&u),
                None => UserSpec {
                    uid,
                    gid: uid,
                    groups: vec![],
                    name: None,
                    home: None,
                },
            },
            Err(_) => match nix::unistd::User::from_name(user_part).ok().flatten() {
                Some(u) => from_passwd(&u),
                None => return Err(ProcessError::UnknownUser(user_part.into())),
            },
        };
        if let Some(group) = group_part {
            user.gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| invalid("no such group"))?,
            };
            user.groups = vec![user.gid];
        }
        Ok(user)
    }

    /// The user who invoked netbox through sudo (SUDO_UID/SUDO_GID), if any and not root.
    pub fn from_sudo_env() -> Option<UserSpec> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        let gid: Option<u32> = std::env::var("SUDO_GID").ok().and_then(|g| g.parse().ok());
        let mut user = UserSpec::parse(&uid.to_string()).ok()?;
        if let Some(gid) = gid {
            user.gid = gid;
        }
        Some(user)
    }
}

fn from_passwd(u: &nix::unistd::User) -> UserSpec {
    let mut groups = vec![u.gid.as_raw()];
    if let Ok(name) = CString::new(u.name.as_bytes()) {
        if let Ok(list) = nix::unistd::getgrouplist(&name, u.gid) {
            groups = list.into_iter().map(|g| g.as_raw()).collect();
        }
    }
    UserSpec {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
        name: Some(u.name.clone()),
        home: Some(u.dir.clone()),
    }
}

/// What to start.
#[derive(Debug)]
pub struct SandboxSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub net: NetSetup,
    pub hostname: Option<String>,
    /// Give the sandbox private /etc/resolv.conf and /etc/hosts, whose content is sent with
    /// [`Pending::start`].
    pub private_files: bool,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Capabilities CMD keeps although netbox drops them by default.
    pub keep_caps: Vec<Capability>,
    pub user: Option<UserSpec>,
    /// CMD may open /dev/net/tun to attach to the TUN devices it owns (`--tun`): the sandbox
    /// gets its own device node, usable by anyone, in its mount namespace. Creating devices
    /// still takes CAP_NET_ADMIN, which CMD does not have.
    pub tun_access: bool,
}

/// Capabilities CMD loses by default: with them it could re-address its interface or leave its
/// namespaces.
pub const DROPPED_CAPS: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN];

/// Signals netbox passes on to CMD.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn waited_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the forwarded signals and SIGCHLD in the calling thread, to be collected by
/// [`Sandboxed::wait`]. Call it on the main thread before any other thread starts.
pub fn block_forwarded_signals() -> Result<()> {
    waited_set()
        .thread_block()
        .map_err(|source| ProcessError::Sys {
            what: "blocking signals",
            source,
        })
}

/// Takes a forwarded signal that arrived (blocked) before CMD started, if any: netbox then
/// stops instead of starting CMD.
pub fn take_pending_signal() -> Option<Signal> {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set is a valid sigset; a null siginfo is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) };
    Signal::try_from(n).ok()
}

/// A started sandboxed command.
#[derive(Debug)]
pub struct Sandboxed {
    pid: Pid,
}

/// Why the child stopped before exec: the stage it reports on its error pipe.
const STAGES: [&str; 14] = [
    "arming PDEATHSIG",
    "joining the network namespace",
    "creating user and network namespaces",
    "writing the uid/gid maps",
    "bringing loopback up",
    "creating mount and UTS namespaces",
    "mounting the private /etc/resolv.conf and /etc/hosts",
    "setting the hostname",
    "switching user or dropping capabilities",
    "changing to the working directory",
    "executing the command",
    "creating the network namespace",
    "waiting for the start",
    "making the sandbox's /dev/net/tun",
];
const STAGE_FILES: u8 = 6;
const STAGE_CWD: u8 = 9;
const STAGE_EXEC: u8 = 10;
const STAGE_NEW_NET: u8 = 11;
const STAGE_START: u8 = 12;
const STAGE_TUN: u8 = 13;

/// Content of the sandbox's private copies of the host's files, sent at start, when its
/// addresses are known.
#[derive(Debug, Clone, Default)]
pub struct PrivateFiles {
    pub resolv_conf: Vec<u8>,
    pub hosts: Vec<u8>,
}

impl PrivateFiles {
    /// The start message: per file, a length and the bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.resolv_conf.len() + self.hosts.len());
        for file in [&self.resolv_conf, &self.hosts] {
            out.extend_from_slice(&(file.len() as u32).to_le_bytes());
            out.extend_from_slice(file);
        }
        out
    }
}

/// Largest start message the child accepts.
const MAX_START_MESSAGE: usize = 1 << 20;

/// Everything the child uses, prepared before the fork.
struct Prepared {
    parent: libc::pid_t,
    net: ChildNet,
    /// For each of resolv.conf and hosts: (source in the scratch tmpfs, target), when the
    /// sandbox gets a private copy and the host has the file.
    targets: [Option<(CString, CString)>; 2],
    /// An existing directory the scratch tmpfs is mounted on for a moment.
    scratch: CString,
    hostname: Option<Vec<u8>>,
    user: Option<UserSpec>,
    keep_caps: Vec<Capability>,
    tun_access: bool,
    /// Stage failures go here (the parent reads it after the start).
    report: RawFd,
    /// The child's end of the control socket: network handles out, start message in.
    chan: RawFd,
}

enum ChildNet {
    Join(RawFd),
    New,
    Rootless { uid_map: CString, gid_map: CString },
}

/// A child forked and set up (namespaces made or joined, privileges still held) that waits for
/// [`Pending::start`] before it mounts its private files, drops privileges and execs CMD.
/// Forking first lets the child's set-up (creating a network namespace costs about half a
/// millisecond) run while the parent checks the host and wires the network. Dropping it
/// without starting kills the child.
#[derive(Debug)]
pub struct Pending {
    pid: Pid,
    /// The child sends network handles that were not taken yet ([`NetSetup::New`]).
    network_untaken: bool,
    chan: Option<OwnedFd>,
    report: OwnedFd,
    program: String,
}

/// What the child needs for exec, prepared before the fork.
struct ExecSpec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
}

/// Forks the child, which sets up its sandbox and waits for [`Pending::start`]. Call it while
/// the process has a single thread (the child allocates before exec).
pub fn prepare(spec: &SandboxSpec) -> Result<Pending> {
    let program = spec.program.to_string_lossy().into_owned();
    let (report_rx, report_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| ProcessError::Sys {
            what: "creating the set-up report pipe",
            source,
        })?;
    let (chan_parent, chan_child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| ProcessError::Sys {
        what: "creating the control socket",
        source,
    })?;
    let net = match &spec.net {
        NetSetup::Join(fd) => ChildNet::Join(fd.as_raw_fd()),
        NetSetup::New => ChildNet::New,
        NetSetup::NewRootless => {
            let uid = nix::unistd::getuid().as_raw();
            let gid = nix::unistd::getgid().as_raw();
            // Identity maps: CMD sees its own ids and, not being uid 0, loses every capability
            // at exec.
            ChildNet::Rootless {
                uid_map: cstr("uid map", format!("{uid} {uid} 1").as_bytes())?,
                gid_map: cstr("gid map", format!("{gid} {gid} 1").as_bytes())?,
            }
        }
    };
    let scratch_dir = SCRATCH_DIRS
        .iter()
        .find(|d| std::path::Path::new(d).is_dir())
        .copied()
        .unwrap_or("/tmp");
    let target = |path: &str| -> Result<Option<(CString, CString)>> {
        if !std::path::Path::new(path).exists() {
            return Ok(None);
        }
        let name = path.rsplit('/').next().unwrap_or("file");
        Ok(Some((
            cstr("path", format!("{scratch_dir}/{name}").as_bytes())?,
            cstr("path", path.as_bytes())?,
        )))
    };
    let prepared = Prepared {
        parent: nix::unistd::getpid().as_raw(),
        net,
        targets: if spec.private_files {
            [target("/etc/resolv.conf")?, target("/etc/hosts")?]
        } else {
            [None, None]
        },
        scratch: cstr("path", scratch_dir.as_bytes())?,
        hostname: spec.hostname.as_ref().map(|h| h.as_bytes().to_vec()),
        user: spec.user.clone(),
        keep_caps: spec.keep_caps.clone(),
        tun_access: spec.tun_access,
        report: report_tx.as_raw_fd(),
        chan: chan_child.as_raw_fd(),
    };
    let exec = exec_spec(spec)?;
    // SAFETY: fork in a process with one thread; the child only runs `child_main`, which ends
    // in exec or _exit and never returns into code that assumes the parent's state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(ProcessError::Sys {
            what: "forking the sandboxed process",
            source: nix::Error::last(),
        });
    }
    if pid == 0 {
        // Only the parent may hold its end: its close is how it says "never start".
        drop(chan_parent);
        drop(report_rx);
        child_main(&prepared, &exec);
    }
    drop(report_tx);
    drop(chan_child);
    Ok(Pending {
        pid: Pid::from_raw(pid),
        network_untaken: matches!(spec.net, NetSetup::New),
        chan: Some(chan_parent),
        report: report_rx,
        program,
    })
}

impl Pending {
    /// For [`NetSetup::New`]: waits for the child's new network namespace and returns a handle
    /// on it and a netlink socket opened inside it, so that the parent configures it without
    /// ever entering it.
    pub fn take_network(&mut self) -> Result<(OwnedFd, OwnedFd)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        self.network_untaken = false;
        let Some(chan) = &self.chan else {
            return Err(self.setup_failure());
        };
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = loop {
            match recvmsg::<()>(
                chan.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        let fds: Vec<RawFd> = match msg {
            Ok(msg) => msg
                .cmsgs()
                .map(|cmsgs| {
                    cmsgs
                        .filter_map(|c| match c {
                            ControlMessageOwned::ScmRights(fds) => Some(fds),
                            _ => None,
                        })
                        .flatten()
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => vec![],
        };
        // SAFETY: the kernel just installed these descriptors for us; we own them from here.
        let mut owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
            .collect();
        if owned.len() != 2 {
            // The child failed before handing them over: its report says why.
            return Err(self.setup_failure());
        }
        let socket = owned.pop();
        let ns = owned.pop();
        match (ns, socket) {
            (Some(ns), Some(socket)) => Ok((ns, socket)),
            _ => Err(self.setup_failure()),
        }
    }

    /// Sends the private files; the child mounts them, drops its privileges and execs CMD.
    pub fn start(mut self, files: &PrivateFiles) -> Result<Sandboxed> {
        if self.network_untaken {
            // Unread messages at close would reset the child's end (ECONNRESET): take them.
            self.take_network()?;
        }
        if let Some(chan) = self.chan.take() {
            // An error here means the child failed its set-up: the report says why.
            let _ = nix::sys::socket::send(
                chan.as_raw_fd(),
                &files.encode(),
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            );
            // Closing our end after the message is fine: SEQPACKET keeps it for the child.
        }
        match self.read_report() {
            None => Ok(Sandboxed { pid: self.pid }),
            Some(e) => Err(e),
        }
    }

    /// The child's report, once it has exec'd (None) or failed (the error).
    fn read_report(&mut self) -> Option<ProcessError> {
        let mut buf = [0u8; 5];
        let mut got = 0;
        while got < buf.len() {
            match nix::unistd::read(&self.report, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
        }
        if got == 0 {
            // The report pipe closed on exec: CMD runs.
            return None;
        }
        let _ = waitpid(self.pid, None);
        self.chan = None;
        let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let source = io::Error::from_raw_os_error(errno);
        let program = std::mem::take(&mut self.program);
        Some(match STAGES.get(usize::from(buf[0])) {
            Some(stage) if got == buf.len() && buf[0] != STAGE_EXEC => ProcessError::Setup {
                program,
                stage,
                source,
            },
            _ => ProcessError::Exec { program, source },
        })
    }

    /// The error of a child that stopped during set-up.
    fn setup_failure(&mut self) -> ProcessError {
        // Close our end so that a child still waiting gives up, then read why it stopped.
        self.chan = None;
        self.read_report().unwrap_or(ProcessError::Setup {
            program: self.program.clone(),
            stage: STAGES[STAGE_NEW_NET as usize],
            source: io::Error::other("the sandbox process ended early"),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(chan) = self.chan.take() {
            // The child reads EOF instead of the start message and exits.
            drop(chan);
            let _ = waitpid(self.pid, None);
        }
    }
}

fn cstr(what: &'static str, s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|e| ProcessError::Invalid {
        what,
        value: String::from_utf8_lossy(s).into_owned(),
        reason: e.to_string(),
    })
}

/// The exec arguments: the resolved path, argv (argv[0] as the user wrote it) and the
/// environment (netbox's own, with the spec's variables and the target user's HOME/USER).
fn exec_spec(spec: &SandboxSpec) -> Result<ExecSpec> {
    use std::os::unix::ffi::OsStrExt;
    let mut overrides: Vec<(OsString, OsString)> = spec.env.clone();
    if let Some(user) = &spec.user {
        if let Some(home) = &user.home {
            overrides.push(("HOME".into(), home.clone().into_os_string()));
        }
        if let Some(name) = &user.name {
            overrides.push(("USER".into(), name.into()));
            overrides.push(("LOGNAME".into(), name.into()));
        }
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
        .collect();
    for (k, v) in overrides {
        env.retain(|(e, _)| e != &k);
        env.push((k, v));
    }
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr("environment variable", &kv)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut argv = vec![cstr("command", spec.program.as_bytes())?];
    for arg in &spec.args {
        argv.push(cstr("argument", arg.as_bytes())?);
    }
    Ok(ExecSpec {
        path: cstr(
            "command",
            resolve_program(&spec.program, &spec.env).as_bytes(),
        )?,
        argv,
        envp,
        cwd: spec
            .cwd
            .as_ref()
            .map(|c| cstr("working directory", c.as_os_str().as_bytes()))
            .transpose()?,
    })
}

/// The child: set up everything that does not depend on the addresses (namespaces, mounts with
/// empty private files, privileges, working directory), wait for the start message, fill the
/// files, exec. What follows the start is only a few writes and the exec. Never returns.
fn child_main(p: &Prepared, exec: &ExecSpec) -> ! {
    // SAFETY: plain syscalls on buffers prepared before the fork or owned here.
    unsafe {
        let Ok(files) = child_setup(p) else {
            libc::_exit(125);
        };
        if let Some(cwd) = &exec.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                report(p.report, STAGE_CWD, io::Error::last_os_error());
                libc::_exit(125);
            }
        }
        let mut msg = vec![0u8; MAX_START_MESSAGE];
        let n = loop {
            let n = libc::recv(p.chan, msg.as_mut_ptr().cast(), msg.len(), 0);
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n < 0 {
            report(p.report, STAGE_START, io::Error::last_os_error());
            libc::_exit(125);
        }
        if n == 0 {
            // netbox gave up (or died): do not run CMD.
            libc::_exit(125);
        }
        for (fd, content) in files.iter().zip(decode_start(&msg[..n as usize])) {
            if *fd >= 0 {
                if let Err(e) = write_all(*fd, content) {
                    report(p.report, STAGE_FILES, e);
                    libc::_exit(125);
                }
                libc::close(*fd);
            }
        }
        // Rust ignores SIGPIPE and netbox blocks the forwarded signals: CMD gets the defaults.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let empty = SigSet::empty();
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut());
        let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = exec.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        libc::execve(exec.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        report(p.report, STAGE_EXEC, io::Error::last_os_error());
        libc::_exit(127);
    }
}

/// Reads the start message written by [`PrivateFiles::encode`]; missing parts are empty.
fn decode_start(mut msg: &[u8]) -> [&[u8]; 2] {
    let mut out: [&[u8]; 2] = [&[], &[]];
    for slot in &mut out {
        let Some((len, rest)) = msg.split_first_chunk::<4>() else {
            break;
        };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        *slot = &rest[..len];
        msg = &rest[len..];
    }
    out
}

/// Sends the new namespace and a netlink socket inside it to the parent.
fn send_network(chan: RawFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    // SAFETY: plain syscalls; the descriptors are closed here once sent (the message holds its
    // own references).
    unsafe {
        let sock = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let ns = libc::open(
            c"/proc/self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if ns < 0 {
            let e = io::Error::last_os_error();
            libc::close(sock);
            return Err(e);
        }
        let fds = [ns, sock];
        let byte = [0u8; 1];
        let iov = [std::io::IoSlice::new(&byte)];
        let sent = sendmsg::<()>(
            chan,
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        libc::close(ns);
        libc::close(sock);
        sent.map(|_| ()).map_err(io::Error::from)
    }
}

/// Writes a failed stage and its errno on the report pipe.
fn report(fd: RawFd, stage: u8, e: io::Error) {
    let errno = e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes();
    let buf = [stage, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: writing a valid buffer to an fd we own.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Runs in the child between fork and exec. Returns an error after writing the failed stage's
/// number on the report pipe.
/// Everything before the start. Returns the open private files (-1 where there is none), to be
/// filled once the start message brings their content.
fn child_setup(p: &Prepared) -> io::Result<[RawFd; 2]> {
    let fail = |stage: u8, e: io::Error| -> io::Error {
        let copy = io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
        report(p.report, stage, e);
        copy
    };
    let check = |stage: u8, rc: libc::c_int| -> io::Result<()> {
        if rc < 0 {
            Err(fail(stage, io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    // SAFETY (whole function): plain syscalls on valid, NUL-terminated, pre-built buffers.
    unsafe {
        check(
            0,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        )?;
        if libc::getppid() != p.parent {
            // netbox died before PDEATHSIG was armed.
            libc::_exit(125);
        }
        let mut flags = libc::CLONE_NEWNS;
        if p.hostname.is_some() {
            flags |= libc::CLONE_NEWUTS;
        }
        match &p.net {
            ChildNet::Join(fd) => {
                check(1, libc::setns(*fd, libc::CLONE_NEWNET))?;
                check(5, libc::unshare(flags))?;
            }
            ChildNet::New => {
                // The network namespace alone first: the parent waits for it, and copying the
                // mount table (CLONE_NEWNS) can follow while the parent wires the network.
                check(STAGE_NEW_NET, libc::unshare(libc::CLONE_NEWNET))?;
                match send_network(p.chan) {
                    // The parent already sent the start message and closed its end: it did not
                    // want the handles (loopback-only sandboxes).
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                    other => other.map_err(|e| fail(STAGE_NEW_NET, e))?,
                }
                loopback_up().map_err(|e| fail(4, e))?;
                check(5, libc::unshare(flags))?;
            }
            ChildNet::Rootless { uid_map, gid_map } => {
                check(
                    2,
                    libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | flags),
                )?;
                write_file(c"/proc/self/setgroups", b"deny").map_err(|e| fail(3, e))?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes()).map_err(|e| fail(3, e))?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes()).map_err(|e| fail(3, e))?;
                loopback_up().map_err(|e| fail(4, e))?;
            }
        }
        // Our mounts must not propagate back to the host; the host's still reach us.
        check(
            5,
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ),
        )?;
        // /sys/class/net should list this namespace's links, as under `ip netns exec`. Best
        // effort: a /sys that cannot be replaced only shows the host's names.
        libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
        if let Some(name) = &p.hostname {
            check(7, libc::sethostname(name.as_ptr().cast(), name.len()))?;
        }
        let files =
            mount_private_files(&p.scratch, &p.targets).map_err(|e| fail(STAGE_FILES, e))?;
        if p.tun_access {
            private_tun_node().map_err(|e| fail(STAGE_TUN, e))?;
        }
        if !matches!(p.net, ChildNet::Rootless { .. }) {
            drop_privileges(p).map_err(|e| fail(8, e))?;
        }
        Ok(files)
    }
}

/// Gives the sandbox a /dev/net/tun of its own that anyone may open (a tmpfs over /dev/net in
/// its mount namespace): hosts ship the clone device as 0666 or 0600, and with 0600 a CMD that
/// is not root could not attach to the TUN devices made for it. Attaching needs ownership of
/// the device, creating one CAP_NET_ADMIN: neither changes.
fn private_tun_node() -> io::Result<()> {
    // SAFETY: plain syscalls on static C strings.
    unsafe {
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/net".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=0755".as_ptr().cast(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        // The TUN/TAP clone device: character device 10:200.
        if libc::mknod(
            c"/dev/net/tun".as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(10, 200),
        ) < 0
            || libc::chmod(c"/dev/net/tun".as_ptr(), 0o666) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Switches user and drops the capabilities CMD must not have, keeping `keep_caps`.
fn drop_privileges(p: &Prepared) -> io::Result<()> {
    let to_io = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    let dropped: Vec<Capability> = DROPPED_CAPS
        .iter()
        .filter(|c| !p.keep_caps.contains(c))
        .copied()
        .collect();
    for cap in &dropped {
        // Out of the bounding set, CMD cannot regain it even through a setuid binary.
        caps::drop(None, CapSet::Bounding, *cap).map_err(to_io)?;
        caps::drop(None, CapSet::Inheritable, *cap).map_err(to_io)?;
    }
    if let Some(user) = &p.user {
        // SAFETY: plain syscalls.
        unsafe {
            if !p.keep_caps.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let groups: Vec<libc::gid_t> = user.groups.clone();
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setresgid(user.gid, user.gid, user.gid) < 0
                || libc::setresuid(user.uid, user.uid, user.uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Changing credentials clears the parent-death signal: arm it again, and make sure
            // netbox did not die in between.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != p.parent {
                libc::_exit(125);
            }
        }
        if user.uid != 0 && !p.keep_caps.is_empty() {
            // A non-root CMD keeps capabilities across exec only as ambient ones.
            for cap in &p.keep_caps {
                caps::raise(None, CapSet::Effective, *cap).map_err(to_io)?;
                caps::raise(None, CapSet::Inheritable, *cap).map_err(to_io)?;
                caps::raise(None, CapSet::Ambient, *cap).map_err(to_io)?;
            }
        }
    }
    for cap in &dropped {
        caps::drop(None, CapSet::Effective, *cap).map_err(to_io)?;
        caps::drop(None, CapSet::Permitted, *cap).map_err(to_io)?;
    }
    Ok(())
}

/// The program's path: as given when it holds a '/', else the first executable in PATH (the
/// sandbox's PATH when the caller sets one). Unresolved names are left for exec to report.
fn resolve_program(program: &OsString, env: &[(OsString, OsString)]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    if program.as_bytes().contains(&b'/') || program.is_empty() {
        return program.clone();
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return candidate.into_os_string();
        }
    }
    program.clone()
}

/// Directories the scratch tmpfs may cover for a moment, first existing wins.
const SCRATCH_DIRS: [&str; 4] = ["/tmp", "/dev/shm", "/run", "/mnt"];

/// Over-mounts each target with an empty private file and returns the files, open for writing
/// (their content comes with the start). The files are made in a tmpfs mounted on `scratch` in
/// the sandbox's own mount namespace (a bind source must belong to it, and must have a name:
/// O_TMPFILE files cannot be bind-mounted), detached right away: the bind mounts keep the files
/// alive and nothing remains on any disk. Unmounting waits for an RCU grace period, one more
/// reason to do it before the start.
fn mount_private_files(
    scratch: &CString,
    targets: &[Option<(CString, CString)>; 2],
) -> io::Result<[RawFd; 2]> {
    let mut fds = [-1; 2];
    if targets.iter().all(Option::is_none) {
        return Ok(fds);
    }
    // SAFETY: plain syscalls on valid, NUL-terminated buffers.
    unsafe {
        if libc::mount(
            c"tmpfs".as_ptr(),
            scratch.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=1m".as_ptr().cast(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut result = Ok(());
        for (slot, target) in fds.iter_mut().zip(targets) {
            let Some((source, target)) = target else {
                continue;
            };
            let fd = libc::open(
                source.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
            *slot = fd;
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) < 0
            {
                result = Err(io::Error::last_os_error());
                break;
            }
        }
        libc::umount2(scratch.as_ptr(), libc::MNT_DETACH);
        result.map(|()| fds)
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is a valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = write_all(fd, data);
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// Brings `lo` up with an ioctl: the child has no netlink connection, and one flag does not
/// deserve one.
fn loopback_up() -> io::Result<()> {
    // SAFETY: ifreq is plain data; the ioctls read and write it in place.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req);
        if rc >= 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req);
        }
        let result = if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(sock);
        result
    }
}

impl Sandboxed {
    /// Waits for CMD, forwarding signals to it, and returns its exit code (128+N when signal N
    /// killed it). Signals a terminal sent to the whole foreground process group already reached
    /// CMD when it shares netbox's group, so those are not sent twice.
    pub fn wait(self) -> Result<i32> {
        let set = waited_set();
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(ProcessError::Sys {
                        what: "waiting for the command",
                        source,
                    })
                }
            }
            // SAFETY: siginfo_t is plain data filled in by the kernel.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // A SIGCHLD can be lost when another thread of the process does not block it (a
            // library caller's threads): the timeout bounds the wait for the next waitpid.
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            // SAFETY: set, info and timeout are valid.
            let n = unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &timeout) };
            if n < 0 {
                continue; // EAGAIN (timeout) or EINTR
            }
            let Ok(sig) = Signal::try_from(n) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                continue;
            }
            if info.si_code == libc::SI_KERNEL && self.shares_our_process_group() {
                continue;
            }
            let _ = nix::sys::signal::kill(self.pid, sig);
        }
    }

    fn shares_our_process_group(&self) -> bool {
        nix::unistd::getpgid(Some(self.pid)).ok() == Some(nix::unistd::getpgrp())
    }
}

/// Makes `cmd` start inside the namespaces `fds` (each with its CLONE_NEW* type, in order: the
/// user namespace first). The setns calls run in the forked child, which is single-threaded, as
/// joining a user namespace requires. Used by labs to run commands in a node and to re-enter a
/// lab's private host.
pub fn enter_namespaces_on_exec(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, nix::sched::CloneFlags)>,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes setns syscalls on descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, kind) in &fds {
                nix::sched::setns(fd, *kind).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start as the holder of a private host: its own session, new network + mount
/// namespaces (and a user namespace mapping only the caller when not root), / made private and
/// fresh tmpfs mounts on `tmpfs_dirs` (those that exist), so named namespaces and state made
/// inside never reach the real host and vanish with the holder.
pub fn private_host_on_exec(cmd: &mut std::process::Command, rootless: bool, tmpfs_dirs: &[&str]) {
    use std::os::unix::process::CommandExt;
    let uid_map = format!("0 {} 1", nix::unistd::getuid().as_raw());
    let gid_map = format!("0 {} 1", nix::unistd::getgid().as_raw());
    let dirs: Vec<CString> = tmpfs_dirs
        .iter()
        .filter_map(|d| CString::new(*d).ok())
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls (the
    // strings were allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            use nix::sched::{unshare, CloneFlags};
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if rootless {
                unshare(
                    CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS,
                )
                .map_err(std::io::Error::from)?;
                for (path, data) in [
                    ("/proc/self/setgroups", "deny".as_bytes()),
                    ("/proc/self/uid_map", uid_map.as_bytes()),
                    ("/proc/self/gid_map", gid_map.as_bytes()),
                ] {
                    use std::io::Write;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)?
                        .write_all(data)?;
                }
            } else {
                unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)?;
            }
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            for dir in &dirs {
                mount(
                    Some("tmpfs"),
                    dir.as_c_str(),
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("mode=0755"),
                )
                .map_err(std::io::Error::from)?;
            }
            // A /sys of the private network namespace, for tools that read it.
            let _ = mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                MsFlags::empty(),
                None::<&str>,
            );
            Ok(())
        });
    }
}

/// Makes `cmd` start in its own session (a detached lab holder on the real host).
pub fn new_session_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Tries to create a user + network namespace in a child process, as the caller or, when
/// `as_nobody`, as user nobody (what an unprivileged user may do, asked by root). Err says
/// why the kernel refused.
pub fn try_user_namespace(as_nobody: bool) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls.
    unsafe {
        cmd.pre_exec(move || {
            use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
            if as_nobody {
                setgroups(&[]).map_err(io::Error::from)?;
                let gid = Gid::from_raw(65534);
                let uid = Uid::from_raw(65534);
                setresgid(gid, gid, gid).map_err(io::Error::from)?;
                setresuid(uid, uid, uid).map_err(io::Error::from)?;
            }
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(io::Error::from)
        });
    }
    let status = cmd.spawn()?.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("test process {status}")))
    }
}

/// Makes `cmd` start in a mount namespace of its own where /etc/hosts holds `content` (a lab's
/// names). The file is written into a tmpfs mounted on /tmp for a moment, bound over
/// /etc/hosts and the tmpfs detached again (the bind keeps the file): nothing reaches the disk
/// or outlives the command's namespace. (A memfd cannot be the source: the kernel refuses
/// binds from its internal mount.)
pub fn hosts_file_on_exec(cmd: &mut std::process::Command, content: std::sync::Arc<Vec<u8>>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes syscalls on data made
    // before the fork (the content and C string literals).
    unsafe {
        cmd.pre_exec(move || {
            use nix::mount::{mount, umount2, MntFlags, MsFlags};
            let none = None::<&str>;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            // Our mounts must not propagate back to the namespace we came from.
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
            mount(
                Some(c"tmpfs"),
                c"/tmp",
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID,
                Some(c"size=16m"),
            )?;
            let fd = nix::fcntl::open(
                c"/tmp/hosts",
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )?;
            let mut rest: &[u8] = &content;
            while !rest.is_empty() {
                let n = nix::unistd::write(&fd, rest)?;
                rest = &rest[n..];
            }
            drop(fd);
            mount(
                Some(c"/tmp/hosts"),
                c"/etc/hosts",
                none,
                MsFlags::MS_BIND,
                none,
            )?;
            umount2(c"/tmp", MntFlags::MNT_DETACH)?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_need_not_exist() {
        let u = UserSpec::parse("54321:54322").expect("parse");
        assert_eq!((u.uid, u.gid), (54321, 54322));
        assert!(UserSpec::parse("").is_err());
        assert!(matches!(
            UserSpec::parse("no-such-user-netbox"),
            Err(ProcessError::UnknownUser(_))
        ));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let nf = ProcessError::Exec {
            program: "x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(nf.exit_code(), 127);
        let denied = ProcessError::Exec {
            program: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(denied.exit_code(), 126);
    }
}
