//! A private "host": fresh network and mount namespaces (and a user namespace mapping only the
//! caller when it is not root), private tmpfs mounts over directories where netbox keeps state,
//! and a /sys of the new network namespace. What netbox makes inside (bridges, veths, named
//! namespaces, leases, rules) never reaches the real host and vanishes with the last process.
//! The test harness, the benchmarks and `netbox lab up --host private` run in one.

use std::ffi::CString;
use std::io::Write;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// What the kernel refused, and why.
#[derive(Debug)]
pub struct Refused {
    pub what: &'static str,
    pub error: std::io::Error,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel refused {}: {}", self.what, self.error)
    }
}

/// A private host to enter; everything it needs is prepared when it is made, so that
/// [`PrivateHost::enter`] can run in a child between fork and exec.
#[derive(Debug, Clone)]
pub struct PrivateHost {
    rootless: bool,
    uid_map: String,
    gid_map: String,
    dirs: Vec<CString>,
    dirs_required: bool,
}

impl PrivateHost {
    /// With a user namespace when `rootless`, and a tmpfs over each of `tmpfs_dirs`.
    pub fn new(rootless: bool, tmpfs_dirs: &[&str]) -> PrivateHost {
        PrivateHost {
            rootless,
            uid_map: format!("0 {} 1", nix::unistd::getuid().as_raw()),
            gid_map: format!("0 {} 1", nix::unistd::getgid().as_raw()),
            dirs: tmpfs_dirs
                .iter()
                .filter_map(|d| CString::new(*d).ok())
                .collect(),
            dirs_required: true,
        }
    }

    /// A directory that cannot be mounted over (missing, and rootless cannot create it) is
    /// skipped instead of refusing the whole.
    pub fn skip_missing_dirs(mut self) -> PrivateHost {
        self.dirs_required = false;
        self
    }

    /// Moves the calling process into the private host. Call it while the process has one
    /// thread, or in a child between fork and exec: it only makes system calls (and writes
    /// the prepared id maps).
    pub fn enter(&self) -> Result<(), Refused> {
        let refused = |what: &'static str| {
            move |e: nix::Error| Refused {
                what,
                error: e.into(),
            }
        };
        if self.rootless {
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
                .map_err(refused("unshare(user+net+mount)"))?;
            for (path, data) in [
                ("/proc/self/setgroups", "deny".as_bytes()),
                ("/proc/self/uid_map", self.uid_map.as_bytes()),
                ("/proc/self/gid_map", self.gid_map.as_bytes()),
            ] {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(data))
                    .map_err(|error| Refused {
                        what: "writing the user namespace's id maps",
                        error,
                    })?;
            }
        } else {
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
                .map_err(refused("unshare(net+mount)"))?;
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(refused("making / private"))?;
        for dir in &self.dirs {
            let mounted = mount(
                Some("tmpfs"),
                dir.as_c_str(),
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            );
            if self.dirs_required {
                mounted.map_err(refused("mounting a private tmpfs"))?;
            }
        }
        // sysfs shows the links of the network namespace that mounted it.
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(refused("mounting a private /sys"))
    }
}
