//! Unprivileged user namespaces: joining another process's user, mount and network namespaces
//! from this process (the per-user network host), and the kernel switches that allow or refuse
//! them.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sched::CloneFlags;

/// The namespaces of a process to join, opened while it is known to be the right process.
#[derive(Debug)]
pub struct Namespaces {
    user: OwnedFd,
    mnt: OwnedFd,
    net: OwnedFd,
}

impl Namespaces {
    /// Opens /proc/PID/ns/{user,mnt,net}.
    pub fn of(pid: u32) -> io::Result<Namespaces> {
        let open =
            |kind: &str| std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map(OwnedFd::from);
        Ok(Namespaces {
            user: open("user")?,
            mnt: open("mnt")?,
            net: open("net")?,
        })
    }

    /// Moves this process into the namespaces: the user namespace first (which gives it every
    /// capability there), then mount and network. The kernel refuses a user namespace to a
    /// process with more than one thread: call it before any thread exists. The working
    /// directory is the mount namespace's root afterwards: it is restored by path.
    pub fn enter(self) -> io::Result<()> {
        let cwd = std::env::current_dir().ok();
        for (fd, kind) in [
            (&self.user, CloneFlags::CLONE_NEWUSER),
            (&self.mnt, CloneFlags::CLONE_NEWNS),
            (&self.net, CloneFlags::CLONE_NEWNET),
        ] {
            nix::sched::setns(fd, kind).map_err(io::Error::from)?;
        }
        if let Some(cwd) = cwd {
            let _ = std::env::set_current_dir(cwd);
        }
        // Not uid 0 in there (the user's own uid is mapped): the tools netbox runs inside
        // (nft) keep the capabilities as ambient ones. CMD's are set explicitly at its start.
        crate::process::capabilities::keep_across_exec(crate::process::capabilities::kernel_caps())
    }
}

/// True when this process runs in a user namespace other than the initial one.
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|map| map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}

/// Why the kernel refuses unprivileged user namespaces, naming the switch that is off and how
/// to turn it on; None when no known switch is off.
pub fn refusal_hint() -> Option<String> {
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        Some("user.max_user_namespaces is 0 (sudo sysctl -w user.max_user_namespaces=15000)".into())
    } else if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        Some(
            "kernel.unprivileged_userns_clone is 0 (sudo sysctl -w kernel.unprivileged_userns_clone=1)"
                .into(),
        )
    } else if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
        == Some("1")
    {
        Some(
            "kernel.apparmor_restrict_unprivileged_userns is 1 (sudo sysctl -w \
             kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for netbox)"
                .into(),
        )
    } else {
        None
    }
}

/// The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start of
/// the calling thread's network namespace; 1024 when unreadable).
pub fn unprivileged_port_start() -> u16 {
    read_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The first executable `name` in PATH.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Creates `dir` (mode 0700) if missing and checks it is a directory of the caller's own, not
/// a link and closed to others: a state directory in a place others can write (/tmp).
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a link?): refusing it",
            dir.display()
        )));
    }
    if meta.uid() != uid {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to you (uid {uid}): refusing it",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// What a process that entered a user's network host knows about it: where the host's private
/// state lives (in place of /run/netbox, /run/netns and /var/lib/netbox) and the uplink's DNS
/// forwarding address. Set once, by the process that entered, before any thread exists.
#[derive(Debug, Clone)]
pub struct Inside {
    pub state: std::path::PathBuf,
    pub dns_forward: std::net::IpAddr,
    pub mtu: u32,
}

static INSIDE: std::sync::OnceLock<Inside> = std::sync::OnceLock::new();

/// Records that this process is inside a user's network host.
pub fn set_inside(inside: Inside) {
    let _ = INSIDE.set(inside);
}

/// The user's network host this process entered, if any.
pub fn inside() -> Option<&'static Inside> {
    INSIDE.get()
}

/// `sub` of the entered network host's private state, if this process entered one.
pub fn inside_dir(sub: &str) -> Option<std::path::PathBuf> {
    inside().map(|i| i.state.join(sub))
}
