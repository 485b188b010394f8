//! The parent's side of the sandbox child: [`prepare`] builds everything the child will use
//! (exec arguments, capability masks, the seccomp program, paths, a buffer for the start
//! message), forks it into its PID namespace, and [`Pending`] talks to it until it runs CMD.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::capabilities;
use super::child::{self, ChildNet, ChildUser, ExecSpec, Prepared, Stage};
use super::seccomp;
use super::signals::Sandboxed;
use super::{NetSetup, PidMode, ProcessError, Result, SandboxSpec};

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

/// Forks the child, which sets up its sandbox and waits for [`Pending::start`]. Everything the
/// child uses is built here, before the fork: the child allocates nothing, so a threaded caller
/// is safe too (signals should still be blocked first, see `block_forwarded_signals`).
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
    let parent_pidfd = own_pidfd();
    let prepared = prepared(
        spec,
        parent_pidfd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        report_tx.as_raw_fd(),
        chan_child.as_raw_fd(),
    )?;
    let exec = exec_spec(spec)?;
    let mut buffers = child::Buffers::new();
    let mut flags = 0;
    if prepared.pid_namespace {
        flags |= libc::CLONE_NEWPID;
    }
    if matches!(prepared.net, ChildNet::Rootless { .. }) {
        // The user namespace first, in the same call: it is what allows the others.
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: the child only runs `child_main`, which makes syscalls on what was prepared
    // above, allocates nothing, and ends in exec or _exit.
    let pid = unsafe { child::clone_process(flags) };
    if pid < 0 {
        return Err(ProcessError::Sys {
            what: "forking the sandboxed process",
            source: nix::Error::last(),
        });
    }
    if pid == 0 {
        // Only the parent may hold its end: its close is how it says "never start". (close,
        // not drop: no destructor code runs in the child.)
        // SAFETY: closing descriptors of this process.
        unsafe {
            libc::close(chan_parent.as_raw_fd());
            libc::close(report_rx.as_raw_fd());
        }
        child::child_main(&prepared, &exec, &mut buffers);
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

/// A pidfd of this process, which the child polls to learn whether netbox is still there
/// (Linux 5.3; None before).
fn own_pidfd() -> Option<OwnedFd> {
    // SAFETY: pidfd_open of our own pid; the kernel returns a new descriptor (CLOEXEC).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    // SAFETY: a descriptor the kernel just gave us.
    (fd >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// The child's instructions.
fn prepared(
    spec: &SandboxSpec,
    parent_pidfd: RawFd,
    report: RawFd,
    chan: RawFd,
) -> Result<Prepared> {
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
    let rootless = matches!(net, ChildNet::Rootless { .. });
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
    let confinement = &spec.confinement;
    let caps = capabilities::merge(&confinement.cap_add, &confinement.cap_drop)?;
    Ok(Prepared {
        parent_pidfd,
        parent: nix::unistd::getpid().as_raw(),
        low_ports: crate::sys::userns::inside().is_some(),
        // In a user namespace only its mapped groups can be named (the caller's own).
        ping_groups: if rootless || crate::sys::userns::inside().is_some() {
            let gid = nix::unistd::getgid().as_raw();
            cstr("ping groups", format!("{gid} {gid}").as_bytes())?
        } else {
            c"0 2147483647".into()
        },
        net,
        pid_namespace: confinement.pid == PidMode::Private,
        targets: if spec.private_files {
            [target("/etc/resolv.conf")?, target("/etc/hosts")?]
        } else {
            [None, None]
        },
        scratch: cstr("path", scratch_dir.as_bytes())?,
        hostname: spec.hostname.as_ref().map(|h| h.as_bytes().to_vec()),
        // Rootless, CMD keeps the caller's own ids.
        user: spec.user.as_ref().filter(|_| !rootless).map(|u| ChildUser {
            uid: u.uid,
            gid: u.gid,
            groups: u.groups.clone(),
        }),
        caps,
        seccomp: if confinement.seccomp {
            Some(seccomp::compile(caps.bounding)?)
        } else {
            None
        },
        read_only: confinement.read_only,
        tun_access: spec.tun_access,
        report,
        chan,
    })
}

impl Pending {
    /// For [`NetSetup::New`]: waits for the child's new network namespace and returns a handle
    /// on it and a netlink socket opened inside it, so that the parent configures it without
    /// ever entering it.
    pub fn take_network(&mut self) -> Result<(OwnedFd, OwnedFd)> {
        self.network_untaken = false;
        let Some(chan) = &self.chan else {
            return Err(self.setup_failure());
        };
        let mut byte = [0u8; 1];
        let mut owned = super::fdpass::recv_fds(chan.as_fd(), &mut byte).unwrap_or_default();
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
        Some(match Stage::from_code(buf[0]) {
            Some(stage) if got == buf.len() && stage != Stage::Exec => ProcessError::Setup {
                program,
                stage: stage.describe(),
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
            stage: Stage::NewNet.describe(),
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
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        let mut ptrs: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ptrs
    };
    Ok(ExecSpec {
        argv_ptrs: pointers(&argv),
        envp_ptrs: pointers(&envp),
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
