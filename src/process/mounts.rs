//! The sandbox's file system view, made by the child in its own mount namespace with plain
//! syscalls on static paths or buffers prepared before the fork: a /proc of its PID namespace
//! with the paths container runtimes mask masked and the writable kernel knobs read-only, a
//! read-only /sys of its network namespace, `--read-only`, the private /etc/resolv.conf and
//! /etc/hosts, and the sandbox's own /dev/net/tun.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

/// What docker masks: files get /dev/null over them, directories an empty read-only tmpfs.
const MASKED: [&CStr; 11] = [
    c"/proc/asound",
    c"/proc/acpi",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
    c"/sys/firmware",
    c"/sys/devices/virtual/powercap",
];

/// What docker makes read-only: the kernel's knobs (sysctls, core_pattern, sysrq, IRQ
/// affinity, ...), readable as before.
const READ_ONLY: [&CStr; 5] = [
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

/// Private, writable tmpfs mounts under `--read-only` (those that exist), as podman's
/// `--read-only-tmpfs` gives (it adds /run; netbox keeps the host's /run, where
/// /etc/resolv.conf often points).
const WRITABLE_UNDER_READ_ONLY: [&CStr; 3] = [c"/tmp", c"/var/tmp", c"/dev/shm"];

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2) with C strings; `None` is NULL.
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: NUL-terminated strings or NULL, as mount(2) takes them.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
}

/// Makes the new mount namespace a slave of the host's: the host's mounts still reach the
/// sandbox, none of the sandbox's reach the host.
pub(crate) fn detach_from_host() -> io::Result<()> {
    mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)
}

/// `--read-only`: every mount of the tree read-only (one mount_setattr call, Linux 5.12), then
/// private tmpfs mounts where programs expect to write.
pub(crate) fn read_only_root() -> io::Result<()> {
    /// struct mount_attr: attr_set, attr_clr, propagation, userns_fd.
    #[repr(C)]
    struct MountAttr {
        set: u64,
        clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        set: MOUNT_ATTR_RDONLY,
        clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            AT_RECURSIVE,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    for dir in WRITABLE_UNDER_READ_ONLY {
        match mount(
            Some(c"tmpfs"),
            dir,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=1777"),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => other?,
        }
    }
    Ok(())
}

/// A /proc for the sandbox's own PID namespace (the child is its pid 1).
pub(crate) fn fresh_proc() -> io::Result<()> {
    mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        NOSUID_NODEV_NOEXEC,
        None,
    )
}

/// A /sys of the sandbox's network namespace (/sys/class/net lists its links, as under
/// `ip netns exec`), read-only. Best effort: a /sys that cannot be replaced keeps showing the
/// host's names, and is made read-only in place.
pub(crate) fn read_only_sys() -> io::Result<()> {
    let fresh = mount(
        Some(c"sysfs"),
        c"/sys",
        Some(c"sysfs"),
        NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
        None,
    );
    if fresh.is_err() {
        read_only_bind(c"/sys")?;
    }
    Ok(())
}

fn read_only_bind(path: &CStr) -> io::Result<()> {
    mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
    mount(
        None,
        path,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID_NODEV_NOEXEC,
        None,
    )
}

/// Masks and read-only paths over /proc and /sys. Paths this kernel lacks are skipped.
pub(crate) fn mask_kernel_paths() -> io::Result<()> {
    let missing = |e: &io::Error| e.raw_os_error() == Some(libc::ENOENT);
    // The first masked directory gets an empty read-only tmpfs; the others a bind of it, which
    // is cheaper than a new file system each.
    let mut empty_dir: Option<&CStr> = None;
    for path in MASKED {
        // Look first: a failed mount of a file on a directory costs an RCU grace period.
        // SAFETY: stat fills the plain-data buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid buffer.
        if unsafe { libc::stat(path.as_ptr(), &mut st) } < 0 {
            let e = io::Error::last_os_error();
            if missing(&e) {
                continue;
            }
            return Err(e);
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            // /dev/null over a file.
            mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None)?;
            continue;
        }
        match empty_dir {
            Some(dir) => mount(Some(dir), path, None, libc::MS_BIND, None)?,
            None => {
                mount(
                    Some(c"tmpfs"),
                    path,
                    Some(c"tmpfs"),
                    NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
                    None,
                )?;
                empty_dir = Some(path);
            }
        }
    }
    for path in READ_ONLY {
        match read_only_bind(path) {
            Err(e) if missing(&e) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Over-mounts each target with an empty private file and returns the files, open for writing
/// (their content comes with the start). The files are made in a tmpfs mounted on `scratch` in
/// the sandbox's own mount namespace (a bind source must belong to it, and must have a name:
/// O_TMPFILE files cannot be bind-mounted), detached right away: the bind mounts keep the files
/// alive and nothing remains on any disk. Unmounting waits for an RCU grace period, one more
/// reason to do it before the start.
pub(crate) fn mount_private_files(
    scratch: &CString,
    targets: &[Option<(CString, CString)>; 2],
) -> io::Result<[RawFd; 2]> {
    let mut fds = [-1; 2];
    if targets.iter().all(Option::is_none) {
        return Ok(fds);
    }
    mount(
        Some(c"tmpfs"),
        scratch,
        Some(c"tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some(c"mode=0755,size=1m"),
    )?;
    let mut result = Ok(());
    for (slot, target) in fds.iter_mut().zip(targets) {
        let Some((source, target)) = target else {
            continue;
        };
        // SAFETY: a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                source.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            result = Err(io::Error::last_os_error());
            break;
        }
        *slot = fd;
        if let Err(e) = mount(Some(source), target, None, libc::MS_BIND, None) {
            result = Err(e);
            break;
        }
    }
    // SAFETY: a NUL-terminated path.
    unsafe { libc::umount2(scratch.as_ptr(), libc::MNT_DETACH) };
    result.map(|()| fds)
}

/// Gives the sandbox a /dev/net/tun of its own that anyone may open (a tmpfs over /dev/net in
/// its mount namespace): hosts ship the clone device as 0666 or 0600, and with 0600 a CMD that
/// is not root could not attach to the TUN devices made for it. Attaching needs ownership of
/// the device, creating one CAP_NET_ADMIN: neither changes.
pub(crate) fn private_tun_node() -> io::Result<()> {
    mount(
        Some(c"tmpfs"),
        c"/dev/net",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755"),
    )?;
    // SAFETY: plain syscalls on static C strings. The TUN/TAP clone device is 10:200.
    unsafe {
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
