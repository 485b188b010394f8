//! The sandbox child, from the fork to the exec of CMD. Everything it uses was prepared before
//! the fork ([`Prepared`], [`ExecSpec`], a buffer for the start message, the seccomp program):
//! it only makes syscalls, and allocates nothing, so that a threaded library caller cannot
//! leave it stuck on an allocator lock.
//!
//! In order: die with netbox (PDEATHSIG); join or create the network namespace (rootless: the
//! user namespace came with the fork); take mount and UTS namespaces; mount /proc for its PID
//! namespace, a read-only /sys, the masks and read-only kernel paths, `--read-only`, the
//! private files and /dev/net/tun; set the hostname; switch user and cut the capabilities.
//! Then it waits for the start message, fills the private files, sets no_new_privs and the
//! seccomp filter, and either execs CMD (`--pid host`) or forks CMD and stays as the PID
//! namespace's init ([`super::signals::run_init`]).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::capabilities::{self, CapSets};
use super::mounts;
use super::seccomp::Filter;
use super::signals::run_init;

/// Why the child stopped before exec: the stage it reports on its error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    Pdeathsig,
    JoinNet,
    IdMaps,
    Loopback,
    MountNs,
    Files,
    Hostname,
    Privileges,
    Cwd,
    Exec,
    NewNet,
    Start,
    Tun,
    ReadOnly,
    Proc,
    Sys,
    Masks,
    Seccomp,
    Spawn,
}

impl Stage {
    const ALL: [Stage; 19] = [
        Stage::Pdeathsig,
        Stage::JoinNet,
        Stage::IdMaps,
        Stage::Loopback,
        Stage::MountNs,
        Stage::Files,
        Stage::Hostname,
        Stage::Privileges,
        Stage::Cwd,
        Stage::Exec,
        Stage::NewNet,
        Stage::Start,
        Stage::Tun,
        Stage::ReadOnly,
        Stage::Proc,
        Stage::Sys,
        Stage::Masks,
        Stage::Seccomp,
        Stage::Spawn,
    ];

    pub(crate) fn from_code(code: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(code)).copied()
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::Pdeathsig => "arming PDEATHSIG",
            Stage::JoinNet => "joining the network namespace",
            Stage::IdMaps => "writing the uid/gid maps",
            Stage::Loopback => "bringing loopback up",
            Stage::MountNs => "creating mount and UTS namespaces",
            Stage::Files => "mounting the private /etc/resolv.conf and /etc/hosts",
            Stage::Hostname => "setting the hostname",
            Stage::Privileges => "switching user or dropping capabilities",
            Stage::Cwd => "changing to the working directory",
            Stage::Exec => "executing the command",
            Stage::NewNet => "creating the network namespace",
            Stage::Start => "waiting for the start",
            Stage::Tun => "making the sandbox's /dev/net/tun",
            Stage::ReadOnly => {
                "making the root file system read-only (--read-only needs Linux 5.12)"
            }
            Stage::Proc => "mounting /proc for the PID namespace (--pid host shares the host's)",
            Stage::Sys => "mounting /sys read-only",
            Stage::Masks => "masking /proc and /sys paths",
            Stage::Seccomp => {
                "setting no_new_privs and the seccomp filter (--seccomp unconfined: no filter)"
            }
            Stage::Spawn => "starting the command in the PID namespace",
        }
    }
}

/// How the child gets its network namespace.
pub(crate) enum ChildNet {
    Join(RawFd),
    New,
    /// In the user namespace the fork made: write the maps, then make a network namespace.
    Rootless {
        uid_map: CString,
        gid_map: CString,
    },
}

/// The ids and groups to switch to.
pub(crate) struct ChildUser {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Everything the child uses, prepared before the fork.
pub(crate) struct Prepared {
    /// A pidfd of netbox (-1 where the kernel has none): readable once netbox is gone.
    pub parent_pidfd: RawFd,
    /// netbox's pid, for kernels without pidfds (only meaningful without a PID namespace).
    pub parent: libc::pid_t,
    pub net: ChildNet,
    /// `net.ipv4.ping_group_range` for a new network namespace: every group (rootless: the
    /// caller's, the only one its user namespace maps).
    pub ping_groups: CString,
    /// CMD, not root of its user namespace, may bind any port in its own network namespace
    /// (a user's network host: `-p 8080:80` reaches a server on port 80).
    pub low_ports: bool,
    /// The child is pid 1 of a new PID namespace: it mounts /proc and forks CMD.
    pub pid_namespace: bool,
    /// For each of resolv.conf and hosts: (source in the scratch tmpfs, target), when the
    /// sandbox gets a private copy and the host has the file.
    pub targets: [Option<(CString, CString)>; 2],
    /// An existing directory the scratch tmpfs is mounted on for a moment.
    pub scratch: CString,
    pub hostname: Option<Vec<u8>>,
    pub user: Option<ChildUser>,
    pub caps: CapSets,
    pub seccomp: Option<Filter>,
    pub read_only: bool,
    pub tun_access: bool,
    /// Stage failures go here (the parent reads it after the start).
    pub report: RawFd,
    /// The child's end of the control socket: network handles out, start message in.
    pub chan: RawFd,
}

/// What the child needs for exec, prepared before the fork: the NUL-terminated pointer arrays
/// point into the strings, whose heap buffers never move.
pub(crate) struct ExecSpec {
    pub path: CString,
    #[allow(dead_code)] // owns what `argv_ptrs` points to
    pub argv: Vec<CString>,
    #[allow(dead_code)] // owns what `envp_ptrs` points to
    pub envp: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub envp_ptrs: Vec<*const libc::c_char>,
    pub cwd: Option<CString>,
}

/// Memory the child writes, allocated before the fork.
pub(crate) struct Buffers {
    /// Receives the start message.
    pub start: Vec<u8>,
    /// The stack CMD's process runs on between its clone and its exec (see [`spawn_command`]).
    pub stack: Vec<u8>,
}

/// Largest start message the child accepts.
const MAX_START_MESSAGE: usize = 1 << 20;
/// Stack for the few calls between clone and exec (posix_spawn's is of this order).
const SPAWN_STACK: usize = 64 << 10;

impl Buffers {
    pub(crate) fn new() -> Buffers {
        Buffers {
            start: vec![0u8; MAX_START_MESSAGE],
            stack: vec![0u8; SPAWN_STACK],
        }
    }
}

/// The child: set up everything that does not depend on the addresses, wait for the start
/// message, fill the files, confine, exec. Never returns.
pub(crate) fn child_main(p: &Prepared, exec: &ExecSpec, buffers: &mut Buffers) -> ! {
    let files = match child_setup(p) {
        Ok(files) => files,
        Err(_) => exit(125),
    };
    if let Some(cwd) = &exec.cwd {
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
            fail_and_exit(p.report, Stage::Cwd, io::Error::last_os_error());
        }
    }
    let msg = match receive_start(p.chan, &mut buffers.start) {
        Ok(Some(msg)) => msg,
        // netbox gave up (or died): do not run CMD.
        Ok(None) => exit(125),
        Err(e) => fail_and_exit(p.report, Stage::Start, e),
    };
    for (fd, content) in files.iter().zip(decode_start(msg)) {
        if *fd >= 0 {
            if let Err(e) = write_all(*fd, content) {
                fail_and_exit(p.report, Stage::Files, e);
            }
            // SAFETY: our own descriptor.
            unsafe { libc::close(*fd) };
        }
    }
    if let Err(e) = confine(p) {
        fail_and_exit(p.report, Stage::Seccomp, e);
    }
    if !p.pid_namespace {
        exec_command(exec, p.report);
    }
    let pid = spawn_command(exec, p.report, &mut buffers.stack);
    if pid < 0 {
        fail_and_exit(p.report, Stage::Spawn, io::Error::last_os_error());
    }
    // pid 1 keeps no descriptor: CMD's pipes close when CMD and its children do, and the
    // report pipe when CMD has exec'd. Nothing can ptrace it (not dumpable).
    // SAFETY: plain syscalls.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) < 0 {
            for fd in 0..1024 {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    run_init(pid)
}

/// fork(2) as the raw clone system call, with extra CLONE_* flags: the child returns 0 and
/// continues on a copy of the caller's stack.
///
/// # Safety
/// As fork: the child must only make syscalls until it execs or exits (the C library's own
/// fork bookkeeping is skipped).
pub(crate) unsafe fn clone_process(flags: libc::c_int) -> libc::pid_t {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // A NULL stack makes clone behave as fork; the other arguments are unused without the
    // flags that read them (their order differs between architectures, all are zero).
    libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) as libc::pid_t
}

/// What the spawned process reads: its exec arguments and where to report a failed exec.
struct SpawnArgs<'a> {
    exec: &'a ExecSpec,
    report: RawFd,
}

/// Starts CMD as the child of this process the way posix_spawn does: a clone that shares our
/// memory (no page tables to copy) and suspends us until it has exec'd or died, running on its
/// own `stack` so that it cannot overwrite our frames. Returns its pid, or -1.
fn spawn_command(exec: &ExecSpec, report: RawFd, stack: &mut [u8]) -> libc::pid_t {
    extern "C" fn start(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the SpawnArgs below, alive until this process execs or exits (the
        // parent is suspended until then: CLONE_VFORK).
        let args = unsafe { &*arg.cast::<SpawnArgs>() };
        exec_command(args.exec, args.report)
    }
    let mut args = SpawnArgs { exec, report };
    // The stack grows down: start at its end, aligned as the ABI requires.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `start` only resets its signal state and execs (or reports and _exits); it
    // touches no memory of ours but its own stack, `args` (read only) and errno.
    unsafe {
        libc::clone(
            start,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut SpawnArgs).cast(),
        )
    }
}

/// no_new_privs (always: a setuid binary gains nothing), then the seccomp filter. The last
/// set-up step: everything it refuses (mount, unshare, ...) is done by now.
fn confine(p: &Prepared) -> io::Result<()> {
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    match &p.seccomp {
        Some(filter) => filter.install(),
        None => Ok(()),
    }
}

/// Gives CMD the default signal state and execs it; reports and exits 127 when exec fails.
fn exec_command(exec: &ExecSpec, report_fd: RawFd) -> ! {
    // SAFETY: plain syscalls on buffers prepared before the fork.
    unsafe {
        // Rust ignores SIGPIPE and netbox blocks the forwarded signals: CMD gets the defaults.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(
            exec.path.as_ptr(),
            exec.argv_ptrs.as_ptr(),
            exec.envp_ptrs.as_ptr(),
        );
    }
    report(report_fd, Stage::Exec, io::Error::last_os_error());
    exit(127)
}

/// Waits for the start message; None when netbox closed the channel without sending one.
fn receive_start(chan: RawFd, buf: &mut [u8]) -> io::Result<Option<&[u8]>> {
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(chan, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: our own descriptor, not needed any more.
        unsafe { libc::close(chan) };
        return Ok((n > 0).then(|| &buf[..n as usize]));
    }
}

/// Reads the start message written by `PrivateFiles::encode`; missing parts are empty.
pub(crate) fn decode_start(mut msg: &[u8]) -> [&[u8]; 2] {
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

fn exit(code: i32) -> ! {
    // SAFETY: ends the child without running the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

fn fail_and_exit(fd: RawFd, stage: Stage, e: io::Error) -> ! {
    report(fd, stage, e);
    exit(125)
}

/// Writes a failed stage and its errno on the report pipe.
fn report(fd: RawFd, stage: Stage, e: io::Error) {
    let errno = e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes();
    let buf = [stage as u8, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: writing a valid buffer to an fd we own.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// True while netbox lives (checked after PDEATHSIG is armed, which covers every later death).
fn parent_alive(p: &Prepared) -> bool {
    if p.parent_pidfd < 0 {
        // SAFETY: getppid only reads.
        return p.pid_namespace || unsafe { libc::getppid() } == p.parent;
    }
    let mut poll = libc::pollfd {
        fd: p.parent_pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; zero timeout. A pidfd is readable once its process ended.
    unsafe { libc::poll(&mut poll, 1, 0) == 0 }
}

fn arm_pdeathsig(p: &Prepared) -> io::Result<()> {
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if !parent_alive(p) {
        // netbox died before PDEATHSIG was armed.
        exit(125);
    }
    Ok(())
}

/// Everything before the start, each step reporting its stage when it fails. Returns the open
/// private files (-1 where there is none), to be filled once the start message brings them.
fn child_setup(p: &Prepared) -> Result<[RawFd; 2], ()> {
    let at = |stage: Stage| move |e: io::Error| report(p.report, stage, e);
    arm_pdeathsig(p).map_err(at(Stage::Pdeathsig))?;
    enter_network(p)?;
    mounts::detach_from_host().map_err(at(Stage::MountNs))?;
    if p.read_only {
        mounts::read_only_root().map_err(at(Stage::ReadOnly))?;
    }
    if p.pid_namespace {
        mounts::fresh_proc().map_err(at(Stage::Proc))?;
    }
    mounts::read_only_sys().map_err(at(Stage::Sys))?;
    mounts::mask_kernel_paths().map_err(at(Stage::Masks))?;
    if let Some(name) = &p.hostname {
        // SAFETY: a valid buffer of that length.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
            .map_err(at(Stage::Hostname))?;
    }
    let files = mounts::mount_private_files(&p.scratch, &p.targets).map_err(at(Stage::Files))?;
    if p.tun_access {
        mounts::private_tun_node().map_err(at(Stage::Tun))?;
    }
    drop_privileges(p).map_err(at(Stage::Privileges))?;
    Ok(files)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Joins or makes the network namespace, then the mount (and UTS) namespaces.
fn enter_network(p: &Prepared) -> Result<(), ()> {
    let at = |stage: Stage| move |e: io::Error| report(p.report, stage, e);
    let mut flags = libc::CLONE_NEWNS;
    if p.hostname.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    // SAFETY (whole block): plain syscalls on prepared buffers.
    unsafe {
        match &p.net {
            ChildNet::Join(fd) => {
                check(libc::setns(*fd, libc::CLONE_NEWNET)).map_err(at(Stage::JoinNet))?;
                check(libc::unshare(flags)).map_err(at(Stage::MountNs))?;
            }
            ChildNet::New => {
                // The network namespace alone first: the parent waits for it, and copying the
                // mount table (CLONE_NEWNS) can follow while the parent wires the network.
                check(libc::unshare(libc::CLONE_NEWNET)).map_err(at(Stage::NewNet))?;
                match send_network(p.chan) {
                    // The parent already sent the start message and closed its end: it did not
                    // want the handles (loopback-only sandboxes).
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                    other => other.map_err(at(Stage::NewNet))?,
                }
                loopback_up().map_err(at(Stage::Loopback))?;
                allow_unprivileged_ping(p);
                check(libc::unshare(flags)).map_err(at(Stage::MountNs))?;
            }
            ChildNet::Rootless { uid_map, gid_map } => {
                write_file(c"/proc/self/setgroups", b"deny").map_err(at(Stage::IdMaps))?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes()).map_err(at(Stage::IdMaps))?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes()).map_err(at(Stage::IdMaps))?;
                check(libc::unshare(libc::CLONE_NEWNET | flags)).map_err(at(Stage::MountNs))?;
                loopback_up().map_err(at(Stage::Loopback))?;
                allow_unprivileged_ping(p);
            }
        }
    }
    Ok(())
}

/// Lets every group of the sandbox's new network namespace open ICMP echo sockets, so that
/// `ping` works without CAP_NET_RAW (which the default set leaves out), as podman does with
/// `net.ipv4.ping_group_range`. The namespace is the sandbox's own; best effort.
fn allow_unprivileged_ping(p: &Prepared) {
    let _ = write_file(
        c"/proc/sys/net/ipv4/ping_group_range",
        p.ping_groups.as_bytes(),
    );
    if p.low_ports {
        let _ = write_file(c"/proc/sys/net/ipv4/ip_unprivileged_port_start", b"0");
    }
}

/// Cuts the bounding set, switches user, and leaves CMD the capabilities of `p.caps`: a root
/// CMD gets the bounding set as permitted and effective (and nothing inheritable or ambient,
/// as runc after CVE-2022-24769); any other user only the added ones, as ambient capabilities.
/// Rootless, the user namespace's capabilities are cut the same way (CMD is not root in it and
/// loses them at exec anyway).
fn drop_privileges(p: &Prepared) -> io::Result<()> {
    let CapSets { bounding, added } = p.caps;
    capabilities::limit_bounding_set(bounding)?;
    let Some(user) = &p.user else {
        return capabilities::set_capabilities(bounding, Default::default());
    };
    let ambient = if user.uid == 0 {
        Default::default()
    } else {
        capabilities::CapMask(added.0 & bounding.0)
    };
    // SAFETY: plain syscalls on prepared buffers.
    unsafe {
        if ambient.0 != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        check(libc::setgroups(user.groups.len(), user.groups.as_ptr()))?;
        check(libc::setresgid(user.gid, user.gid, user.gid))?;
        check(libc::setresuid(user.uid, user.uid, user.uid))?;
    }
    // Changing credentials clears the parent-death signal: arm it again, and make sure netbox
    // did not die in between.
    arm_pdeathsig(p)?;
    if user.uid == 0 {
        capabilities::set_capabilities(bounding, ambient)
    } else if ambient.0 != 0 {
        capabilities::set_capabilities(ambient, ambient)
    } else {
        Ok(()) // a non-root user without KEEPCAPS has none left
    }
}

/// Sends the new namespace and a netlink socket inside it to the parent.
fn send_network(chan: RawFd) -> io::Result<()> {
    // SAFETY: plain syscalls on stack buffers laid out as sendmsg(2) and cmsg(3) require; the
    // descriptors are closed here once sent (the message holds its own references).
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
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // Room for one SCM_RIGHTS message with two descriptors, aligned for cmsghdr.
        let mut control = [0u64; 8];
        let space = libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space.min(std::mem::size_of_val(&control)) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        let sent = libc::sendmsg(chan, &msg, libc::MSG_NOSIGNAL);
        let result = if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(ns);
        libc::close(sock);
        result
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

pub(crate) fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
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
pub(crate) fn loopback_up() -> io::Result<()> {
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
