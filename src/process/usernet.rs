//! The processes of the per-user network host: the *keeper*, a forked child that makes the
//! user + network + mount namespaces and then only waits (its namespaces are the network
//! host), and the uplink program (pasta), both dying with the holder that started them.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;

use super::child::{loopback_up, write_file};

/// What the keeper sets up, prepared before the fork.
pub struct KeeperSpec {
    uid_map: CString,
    gid_map: CString,
    tmpfs: CString,
    subdirs: Vec<CString>,
}

impl KeeperSpec {
    /// Identity maps of the caller, a tmpfs on `tmpfs` (a directory of the caller's) with
    /// `subdirs` made in it.
    pub fn new(tmpfs: &Path, subdirs: &[&str]) -> io::Result<KeeperSpec> {
        let c = |s: String| CString::new(s).map_err(io::Error::other);
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ok(KeeperSpec {
            uid_map: c(format!("{uid} {uid} 1"))?,
            gid_map: c(format!("{gid} {gid} 1"))?,
            tmpfs: c(tmpfs.display().to_string())?,
            subdirs: subdirs
                .iter()
                .map(|d| c(format!("{}/{d}", tmpfs.display())))
                .collect::<io::Result<_>>()?,
        })
    }
}

/// Forks the keeper and waits until its namespaces are ready; returns its pid. Call it while
/// this process has one thread. Err names the step the kernel refused (its errno kept).
pub fn start_keeper(spec: &KeeperSpec) -> io::Result<u32> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = nix::unistd::getpid();
    // SAFETY: the process is single-threaded (the caller's contract); the child only makes
    // syscalls and exits without returning.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            let code = match keeper_setup(spec, parent) {
                Ok(()) => {
                    let _ = nix::unistd::write(&write_end, b"ok");
                    drop(write_end);
                    loop {
                        // SAFETY: pause only sleeps until a signal.
                        unsafe { libc::pause() };
                    }
                }
                Err((step, e)) => {
                    let msg = format!("{step}\n{}", e.raw_os_error().unwrap_or(0));
                    let _ = nix::unistd::write(&write_end, msg.as_bytes());
                    1
                }
            };
            // SAFETY: leave the forked copy without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            if answer == "ok" {
                return Ok(child.as_raw() as u32);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let (step, errno) = answer.split_once('\n').unwrap_or(("starting", "0"));
            let errno: i32 = errno.parse().unwrap_or(0);
            let source = if errno != 0 {
                io::Error::from_raw_os_error(errno)
            } else {
                io::Error::other("the keeper ended")
            };
            Err(io::Error::new(source.kind(), format!("{step}: {source}")))
        }
    }
}

fn keeper_setup(
    spec: &KeeperSpec,
    parent: nix::unistd::Pid,
) -> Result<(), (&'static str, io::Error)> {
    let sys = |step: &'static str| move |e: nix::Error| (step, io::Error::from(e));
    let io_at = |step: &'static str| move |e: io::Error| (step, e);
    // SAFETY: plain prctl; then make sure the holder did not die before it was armed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
        return Err(("arming the parent-death signal", io::Error::last_os_error()));
    }
    if nix::unistd::getppid() != parent {
        return Err(("starting", io::Error::other("the holder is gone")));
    }
    use nix::sched::CloneFlags;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS,
    )
    .map_err(sys("unshare(user+net+mount)"))?;
    write_file(c"/proc/self/setgroups", b"deny").map_err(io_at("writing the id maps"))?;
    write_file(c"/proc/self/uid_map", spec.uid_map.as_bytes())
        .map_err(io_at("writing the id maps"))?;
    write_file(c"/proc/self/gid_map", spec.gid_map.as_bytes())
        .map_err(io_at("writing the id maps"))?;
    use nix::mount::{mount, MsFlags};
    // Slave: the host's later mounts still appear here, nothing made here goes back.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("making / a slave mount"))?;
    mount(
        Some("tmpfs"),
        spec.tmpfs.as_c_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(sys("mounting the private state tmpfs"))?;
    for dir in &spec.subdirs {
        nix::unistd::mkdir(
            dir.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .map_err(sys("making the private state directories"))?;
    }
    loopback_up().map_err(io_at("bringing loopback up"))?;
    // The network host routes between its bridge and the uplink.
    write_file(c"/proc/sys/net/ipv4/ip_forward", b"1").map_err(io_at("turning on ip_forward"))?;
    let _ = write_file(c"/proc/sys/net/ipv6/conf/all/forwarding", b"1");
    Ok(())
}

/// Starts `program args` as a child that gets SIGKILL when this process dies, with stdin
/// closed and stdout/stderr into `log`.
pub fn spawn_supervised(
    program: &Path,
    args: &[String],
    log: &std::fs::File,
) -> io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs between fork and exec and only makes syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("parent gone"));
            }
            // Signals the holder blocks must reach the child normally.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts `program args` in the keeper's user and network namespaces with every capability
/// there kept across exec (the user's uid is not 0 in there), feeding `input` on stdin; the
/// caller collects it (`wait_with_output`).
pub fn spawn_in_keeper(
    keeper_pid: u32,
    program: &Path,
    args: &[&str],
    input: &[u8],
) -> io::Result<std::process::Child> {
    use std::io::Write;
    let user = std::fs::File::open(format!("/proc/{keeper_pid}/ns/user"))?;
    let net = std::fs::File::open(format!("/proc/{keeper_pid}/ns/net"))?;
    let caps = super::capabilities::kernel_caps();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only makes syscalls on descriptors
    // opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&user, nix::sched::CloneFlags::CLONE_NEWUSER)?;
            nix::sched::setns(&net, nix::sched::CloneFlags::CLONE_NEWNET)?;
            super::capabilities::keep_across_exec(caps)?;
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // Small (one pipe buffer): written at once, closed so the program reads to its end.
        let _ = stdin.write_all(input);
    }
    Ok(child)
}

/// TCP listeners on `port` of every address (IPv4, and IPv6 when the network host has it)
/// made inside the keeper's network namespace and handed back (SCM_RIGHTS) by a short-lived
/// child: this process cannot enter that namespace itself (it would have to join the user
/// namespace, for good). Call it while this process has one thread.
pub fn listen_in_keeper(keeper_pid: u32, port: u16) -> io::Result<Vec<std::net::TcpListener>> {
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    };
    use std::os::fd::AsFd;
    let user = std::fs::File::open(format!("/proc/{keeper_pid}/ns/user"))?;
    let net = std::fs::File::open(format!("/proc/{keeper_pid}/ns/net"))?;
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: the process is single-threaded (the caller's contract); the child only makes
    // syscalls and exits without returning.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(mine);
            let sent = (|| -> nix::Result<()> {
                nix::sched::setns(&user, nix::sched::CloneFlags::CLONE_NEWUSER)?;
                nix::sched::setns(&net, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let mut fds = vec![listen_any(false, port)?];
                // No IPv6 in the network host (disabled) is not an error.
                if let Ok(fd) = listen_any(true, port) {
                    fds.push(fd);
                }
                let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
                let iov = [io::IoSlice::new(b"l")];
                sendmsg::<()>(
                    theirs.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&raw)],
                    MsgFlags::empty(),
                    None,
                )?;
                Ok(())
            })();
            let code = match sent {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&theirs, (e as i32).to_string().as_bytes());
                    1
                }
            };
            // SAFETY: leave the forked copy without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            let mut buf = [0u8; 16];
            let received = super::fdpass::recv_fds(mine.as_fd(), &mut buf);
            let failure = match &received {
                Ok(fds) if fds.is_empty() => {
                    // The child's errno, as text, when it failed.
                    let errno = std::str::from_utf8(&buf)
                        .ok()
                        .and_then(|s| s.trim_end_matches('\0').parse().ok())
                        .unwrap_or(0);
                    Some(if errno != 0 {
                        io::Error::from_raw_os_error(errno)
                    } else {
                        io::Error::other("the listener's maker ended")
                    })
                }
                _ => None,
            };
            let _ = nix::sys::wait::waitpid(child, None);
            match failure {
                Some(e) => Err(e),
                None => Ok(received?
                    .into_iter()
                    .map(std::net::TcpListener::from)
                    .collect()),
            }
        }
    }
}

/// A listening TCP socket on `port` of every address of one family.
fn listen_any(v6: bool, port: u16) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn, SockaddrIn6,
    };
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if v6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
        bind(fd.as_raw_fd(), &SockaddrIn6::from(any))?;
    } else {
        bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    }
    listen(&fd, Backlog::new(1024)?)?;
    Ok(fd)
}
