//! `pre_exec` helpers for `std::process::Command`, used by labs: start a command inside given
//! namespaces, as the holder of a private host, or in its own session; and `netbox doctor`'s
//! user-namespace probe. Unlike the sandbox child
//! (`child`), these start ordinary tools and apply no confinement.

use std::io;
use std::os::fd::OwnedFd;

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

/// Makes `cmd` start as the holder of a private host (see `sys::private_host`): its own
/// session, new network + mount namespaces (and a user namespace mapping only the caller when
/// not root), / made private and fresh tmpfs mounts on `tmpfs_dirs`, so named namespaces and
/// state made inside never reach the real host and vanish with the holder.
pub fn private_host_on_exec(cmd: &mut std::process::Command, rootless: bool, tmpfs_dirs: &[&str]) {
    use std::os::unix::process::CommandExt;
    let host = crate::sys::private_host::PrivateHost::new(rootless, tmpfs_dirs);
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls
    // (`PrivateHost` prepared everything it writes before the fork).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            host.enter().map_err(|refused| refused.error)
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

/// Raises this process's limit on open descriptors to `want` (labs open one per node while
/// building): the soft limit up to the hard one, and the hard one too where the process may
/// (CAP_SYS_RESOURCE, up to fs.nr_open); returns the soft and hard limits now in force.
pub fn raise_open_files(want: u64) -> io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if want <= soft {
        return Ok((soft, hard));
    }
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok((want, want));
    }
    let target = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
    Ok((target, hard))
}
