//! Network namespaces: anonymous ones held by a file descriptor, and named ones bind-mounted
//! under /run/netns the way iproute2 does it (`ip netns add` and `netbox ns add` see each other).
//!
//! This is the only module that calls setns/unshare on a thread of the netbox process (the child
//! set-up in `process` acts on a forked single-threaded child). Both act on the calling thread
//! only, so every switch happens on a short-lived `std::thread` that exits right after: a tokio
//! worker or a pooled thread would carry the foreign namespace into unrelated work.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use thiserror::Error;

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Overrides [`NETNS_RUN_DIR`].
pub const NETNS_DIR_VAR: &str = "NETBOX_NETNS_DIR";

/// Where named namespaces live: in a user's network host its private state's `netns`, else
/// NETBOX_NETNS_DIR, else /run/netns.
pub fn netns_dir() -> PathBuf {
    if let Some(dir) = super::userns::inside_dir("netns") {
        return dir;
    }
    match std::env::var_os(NETNS_DIR_VAR) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(NETNS_RUN_DIR),
    }
}
/// Longest namespace name accepted (a path component, kept readable).
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("creating a network namespace: {0}")]
    Create(#[source] Errno),
    #[error("opening network namespace {path:?}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {what}: {source}")]
    Enter {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("network namespace \"{name}\" already exists")]
    Exists { name: String },
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{what} {path:?}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace helper thread failed: {0}")]
    Thread(String),
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// A handle on a network namespace: an open nsfs file. The namespace lives at least as long as
/// this handle (or any other reference: a process, a bind mount, a socket made inside it).
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl NetNs {
    /// Creates an anonymous namespace, alive only through the returned handle.
    pub fn create() -> Result<NetNs> {
        Ok(Self::create_with(|| ())?.0)
    }

    /// Creates an anonymous namespace and runs `init` inside it, on the thread that made it.
    /// Used to open sockets that stay bound to the new namespace (netlink, for configuring it
    /// without ever switching again).
    pub fn create_with<T, F>(init: F) -> Result<(NetNs, T)>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        on_fresh_thread(move || {
            unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Create)?;
            let ns = NetNs::open(Path::new("/proc/thread-self/ns/net"))?;
            let value = init();
            Ok((
                NetNs {
                    fd: ns.fd,
                    path: None,
                },
                value,
            ))
        })
    }

    /// Takes over a handle received from elsewhere (another process), checking it is one.
    pub fn from_fd(fd: OwnedFd) -> Result<NetNs> {
        let st = nix::sys::statfs::fstatfs(&fd).map_err(|e| NetnsError::Open {
            path: PathBuf::from("(received handle)"),
            source: e.into(),
        })?;
        if st.filesystem_type().0 as u64 != 0x6e73_6673 {
            return Err(NetnsError::Open {
                path: PathBuf::from("(received handle)"),
                source: io::Error::other("not a network namespace file"),
            });
        }
        Ok(NetNs { fd, path: None })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        let mut ns = NetNs::open(Path::new("/proc/thread-self/ns/net"))?;
        ns.path = None;
        Ok(ns)
    }

    /// Opens a namespace by path (/run/netns/NAME, /proc/PID/ns/net, ...).
    pub fn open(path: &Path) -> Result<NetNs> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // A path that is not an nsfs file (a plain file, a directory) would make setns fail
        // later with EINVAL; say so now. nsfs has magic 0x6e736673.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        if st.filesystem_type().0 as u64 != 0x6e73_6673 {
            return Err(NetnsError::Open {
                path: path.to_path_buf(),
                source: io::Error::other("not a network namespace file"),
            });
        }
        Ok(NetNs {
            fd: file.into(),
            path: Some(path.to_path_buf()),
        })
    }

    /// The nsfs inode: equal inodes mean the same namespace.
    pub fn inode(&self) -> Result<u64> {
        let file = File::from(self.fd.try_clone().map_err(|source| NetnsError::Io {
            what: "duplicating namespace handle",
            path: self.describe_path(),
            source,
        })?);
        let meta = file.metadata().map_err(|source| NetnsError::Io {
            what: "stat of namespace",
            path: self.describe_path(),
            source,
        })?;
        Ok(meta.ino())
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_fd();
        let what = self.describe();
        on_fresh_thread(move || {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                what: what.clone(),
                source,
            })?;
            Ok(f())
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, without waiting for it: a
    /// service that stays in it (a lab's listener), or work done while the caller goes on (a
    /// socket opened inside). The thread is dedicated: it never does other work.
    pub fn spawn_in<T, F>(&self, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.try_clone_fd()?;
        let what = self.describe();
        std::thread::Builder::new()
            .name("netbox-netns-svc".into())
            .spawn(move || {
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { what, source })?;
                drop(fd);
                Ok(f())
            })
            .map_err(|e| NetnsError::Thread(e.to_string()))
    }

    /// A duplicate of the underlying descriptor (to hand to a child process).
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|source| NetnsError::Io {
            what: "duplicating namespace handle",
            path: self.describe_path(),
            source,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("{p:?}"),
            None => format!("(anonymous, fd {})", self.fd.as_raw_fd()),
        }
    }

    fn describe_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(anonymous)"))
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Checks a name for /run/netns: one path component, printable, bounded.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(NetnsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a file name");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    netns_dir().join(name)
}

/// Creates a named namespace exactly as `ip netns add NAME` does: /run/netns is made a shared
/// mount point (so namespaces created later appear in every mount namespace), an empty file is
/// created and the new namespace is bind-mounted onto it. Fails if the name is taken.
pub fn create_named(name: &str) -> Result<NetNs> {
    let path = claim_name(name)?;
    let target = path.clone();
    let bound = on_fresh_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Create)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NetnsError::Mount {
            what: "bind-mounting the new namespace onto",
            path: target.clone(),
            source,
        })
    });
    if let Err(e) = bound {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    NetNs::open(&path)
}

/// Reserves `name`: validates it and creates its empty mount point under /run/netns (the
/// shared mount point `ip netns` uses); fails if the name is taken.
fn claim_name(name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    prepare_run_dir()?;
    let path = named_path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => NetnsError::Exists {
                name: name.to_string(),
            },
            _ => NetnsError::Io {
                what: "creating namespace mount point",
                path: path.clone(),
                source,
            },
        })?;
    Ok(path)
}

/// Gives an existing namespace a name under /run/netns (as `ip netns attach NAME PID` does):
/// fails if the name is taken.
pub fn bind_named(name: &str, ns: &NetNs) -> Result<()> {
    let path = claim_name(name)?;
    let source = format!("/proc/self/fd/{}", ns.fd.as_raw_fd());
    if let Err(source) = mount(
        Some(source.as_str()),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&path);
        return Err(NetnsError::Mount {
            what: "bind-mounting the namespace onto",
            path,
            source,
        });
    }
    Ok(())
}

/// The nsfs inode of the namespace named `name`, None when the name is absent or is not a
/// mounted namespace.
pub fn named_inode(name: &str) -> Option<u64> {
    NetNs::open(&named_path(name)).ok()?.inode().ok()
}

/// Deletes a named namespace (unmount + unlink). Idempotent: a missing name is success. The
/// namespace itself lives on while processes or handles still use it.
pub fn delete_named(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = named_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Mount {
                what: "unmounting",
                path,
                source,
            })
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            what: "removing",
            path,
            source,
        }),
    }
}

/// Makes /run/netns exist and be a shared mount point, as iproute2 does.
fn prepare_run_dir() -> Result<()> {
    let dir = &netns_dir();
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
        what: "creating",
        path: dir.into(),
        source,
    })?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first, then share it.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| NetnsError::Mount {
                what: "bind-mounting onto itself",
                path: dir.into(),
                source,
            })?;
            make_shared().map_err(|source| NetnsError::Mount {
                what: "making shared",
                path: dir.into(),
                source,
            })
        }
        Err(source) => Err(NetnsError::Mount {
            what: "making shared",
            path: dir.into(),
            source,
        }),
    }
}

/// Runs `f` on a new thread that ends when `f` returns, so a namespace switch made inside can
/// never leak into other work.
fn on_fresh_thread<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netbox-netns".into())
            .spawn_scoped(s, f)
            .map_err(|e| NetnsError::Thread(e.to_string()))?
            .join()
            .map_err(|_| NetnsError::Thread("panicked".into()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_or_overflow_are_rejected() {
        for bad in ["", ".", "..", "a/b", "a\0b", "x y", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "sandbox-1", "web_2.test", &"n".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good:?} rejected");
        }
    }
}
