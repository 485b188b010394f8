//! Ownership records: what netbox made, written down before it makes it, so that `netbox gc`
//! finds everything after a crash and never touches what it did not make.
//!
//! Layout of /run/netbox (tmpfs: records die with the machine, as the namespaces and veths do):
//! - `lock`: taken shared (flock) by every operation that creates or removes a sandbox or a CNI
//!   attachment (`netbox ns add/del`, `netbox-cni ADD/DEL`) for its whole duration, and
//!   exclusively by `netbox gc`. So gc never sees a half-made sandbox whose maker is still at
//!   work: a record in phase `creating` or `deleting` seen under the exclusive lock belongs to a
//!   process that died. `netbox run` does not take it: everything a run makes is owned by its
//!   process (pid + start time), which is alive or not whatever gc does.
//! - `sandboxes/<name>.json`: a named sandbox (`netbox ns add`, `netbox run --name`). Claimed
//!   atomically (link(2) of a complete file: present whole or absent) before the namespace is
//!   created, updated by rename.
//! - `cni/<container>+<ifname>.json`: a netbox-cni attachment with the namespace it was made in.
//! - `labs/<name>.json`: a lab's holder ([`LabRecord`]: `netbox lab up`), claimed the same way
//!   under the lab's own lock (`labs/<name>.lock`), with its control socket `labs/<name>.sock`.
//!   As root they live here; a user's labs live in $XDG_RUNTIME_DIR/netbox/labs (or
//!   /tmp/netbox-UID/labs); NETBOX_LAB_DIR overrides both.
//!
//! The host veth of each attachment carries its owner in its alias: `netbox:<network>:<key>`
//! (run and named sandboxes, `key` being [`Owner::key`]) or `netbox-cni:<network>:<container>:
//! <ifname>` (CNI). A veth whose alias does not parse as one of these is never netbox's.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::owner::Owner;
use crate::sys::dirfd::{ensure_dir_all, Dir};
use crate::{Error, Result};

/// Where records and the lock live unless NETBOX_RUN_DIR says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/netbox";

/// The state directory.
pub fn run_dir() -> PathBuf {
    // In a user's network host: its private state.
    if let Some(dir) = crate::sys::userns::inside_dir("run") {
        return dir;
    }
    match std::env::var_os("NETBOX_RUN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_RUN_DIR),
    }
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// The lifecycle lock (see the module comment). Released when dropped or when its holder dies.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Taken by makers and removers: any number at once.
    pub fn shared() -> Result<Lock> {
        Lock::take(false)
    }

    /// Taken by gc: alone.
    pub fn exclusive() -> Result<Lock> {
        Lock::take(true)
    }

    fn take(exclusive: bool) -> Result<Lock> {
        let dir = run_dir();
        ensure_dir_all(&dir, 0o755).map_err(io_err(format!("creating {}", dir.display())))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let taken = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        taken.map_err(io_err(format!("locking {}", path.display())))?;
        Ok(Lock(file))
    }
}

/// What kind of thing a record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `netbox ns add`: lives until `netbox ns del`.
    Ns,
    /// `netbox run --name`: lives as long as its process.
    Run,
    /// A netbox-cni attachment: lives as long as its namespace, until DEL.
    Cni,
}

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written before anything is made; things may exist or not.
    Creating,
    /// Complete.
    Ready,
    /// Being removed.
    Deleting,
}

/// One sandbox or attachment netbox made (or is making).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// Sandbox name (Ns, Run) or the owner's key (Cni).
    pub name: String,
    pub network: String,
    /// The lease store's data directory.
    pub data_dir: PathBuf,
    pub owner: Owner,
    pub phase: Phase,
    /// The process that wrote the record last (pid + start time).
    pub writer: Owner,
    /// Namespace path: /run/netns/NAME, or CNI_NETNS.
    pub netns: PathBuf,
    /// The namespace's nsfs inode once known: only that namespace is netbox's to remove.
    pub netns_inode: Option<u64>,
    pub host_ifname: String,
    /// Addresses with their prefix, once allocated.
    pub addresses: Vec<String>,
    /// Unix time of creation, in seconds.
    pub created: u64,
}

/// Unix time now, in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Record {
    /// The record's file.
    pub fn path(&self) -> PathBuf {
        record_path(self.kind, &self.name)
    }

    /// Creates the record, failing with `Ok(false)` when one exists already: the name is taken.
    pub fn claim(&self) -> Result<bool> {
        let path = self.path();
        let (dir, tmp) = self.write_tmp()?;
        let linked = dir.link(&tmp, &dir, &file_name(&path));
        let _ = dir.unlink(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(format!("creating {}", path.display()))(e)),
        }
    }

    /// Replaces the record (written whole, then renamed over the old one).
    pub fn save(&self) -> Result<()> {
        let path = self.path();
        let (dir, tmp) = self.write_tmp()?;
        dir.rename(&tmp, &dir, &file_name(&path)).map_err(|e| {
            let _ = dir.unlink(&tmp);
            io_err(format!("writing {}", path.display()))(e)
        })
    }

    /// Removes the record. Idempotent.
    pub fn remove(&self) -> Result<()> {
        remove_file(&self.path())
    }

    /// Writes the record whole under a temporary name in its directory (opened without
    /// following links); a write that fails (a full disk) leaves nothing.
    fn write_tmp(&self) -> Result<(Dir, String)> {
        write_tmp(open_kind_dir(self.kind)?, &file_name(&self.path()), self)
    }
}

/// Writes `value` whole under a temporary name beside `file` in `dir`; a write that fails (a
/// full disk) leaves nothing.
fn write_tmp(dir: Dir, file: &str, value: &impl Serialize) -> Result<(Dir, String)> {
    let tmp = format!(".tmp.{}.{file}", std::process::id());
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    dir.write_replacing(&tmp, &text, 0o644)
        .map_err(io_err(format!("writing {}", dir.join(&tmp).display())))?;
    Ok((dir, tmp))
}

fn remove_file(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Ok(());
    };
    match Dir::open(parent) {
        Ok(dir) => dir
            .unlink(name)
            .map_err(io_err(format!("removing {}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record")
        .to_string()
}

/// The directory of `kind`'s records, created if needed; below the state directory nothing
/// is reached through a link.
fn open_kind_dir(kind: Kind) -> Result<Dir> {
    let run = run_dir();
    ensure_dir_all(&run, 0o755).map_err(io_err(format!("creating {}", run.display())))?;
    let name = match kind {
        Kind::Ns | Kind::Run => "sandboxes",
        Kind::Cni => "cni",
    };
    Dir::open(&run)
        .and_then(|d| d.ensure_sub(name, 0o755))
        .map_err(io_err(format!("opening {}", run.join(name).display())))
}

fn kind_dir(kind: Kind) -> PathBuf {
    run_dir().join(match kind {
        Kind::Ns | Kind::Run => "sandboxes",
        Kind::Cni => "cni",
    })
}

/// File of the record `name` of `kind`. CNI names are owner keys (`cni/<container>+<ifname>`,
/// already escaped): the file is named after their last component.
pub fn record_path(kind: Kind, name: &str) -> PathBuf {
    let file = name.rsplit('/').next().unwrap_or(name);
    kind_dir(kind).join(format!("{file}.json"))
}

/// The record of a named sandbox, if any.
pub fn load_sandbox(name: &str) -> Result<Option<Record>> {
    load(&record_path(Kind::Ns, name))
}

/// The record of a CNI attachment, if any.
pub fn load_cni(owner: &Owner) -> Result<Option<Record>> {
    let key = owner.key()?;
    load(&record_path(Kind::Cni, &key))
}

fn load(path: &Path) -> Result<Option<Record>> {
    let read = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Dir::open(parent).and_then(|d| d.read(name)),
        _ => Err(io::Error::from(io::ErrorKind::NotFound)),
    };
    match read {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Config(format!("record {} is not netbox's: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Every record, sandboxes then CNI attachments. Files that do not parse are skipped with a
/// warning: netbox never removes what it cannot read as its own.
pub fn list() -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for kind in [Kind::Ns, Kind::Cni] {
        let dir = kind_dir(kind);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match load(&path) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(%e, "skipping a record"),
            }
        }
    }
    Ok(out)
}

/// Record files that do not read as a record (truncated, garbage, not a regular file):
/// skipped by [`list`], shown by `netbox ls`, removed by `netbox gc` once nothing of their
/// owner is left.
pub fn unreadable() -> Vec<(Kind, PathBuf)> {
    let mut out = Vec::new();
    for kind in [Kind::Ns, Kind::Cni] {
        let Ok(entries) = fs::read_dir(kind_dir(kind)) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if !hidden && load(&path).is_err() {
                out.push((kind, path));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Where lab records live (see the module comment).
pub fn lab_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETBOX_LAB_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return run_dir().join("labs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => Path::new(&d).join("netbox/labs"),
        None => PathBuf::from(format!("/tmp/netbox-{}/labs", nix::unistd::getuid())),
    }
}

/// The lab directory, created if needed, opened without following a link.
fn open_lab_dir() -> Result<Dir> {
    let dir = lab_dir();
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    Dir::open(&dir).map_err(io_err(format!("opening {}", dir.display())))
}

/// Where a lab lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabMode {
    /// In the holder's private host: everything goes with the holder.
    Private,
    /// Named namespaces on the real host: removed by the holder, `lab down` or `gc`.
    Host,
}

/// A lab that is up (or coming up): its holder and what it made on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    pub name: String,
    pub phase: Phase,
    /// The holder process, once it reported the lab up.
    pub holder: Option<Owner>,
    /// The process that wrote the record last (`lab up`).
    pub writer: Owner,
    pub mode: LabMode,
    /// The lab file.
    pub file: PathBuf,
    /// Named namespaces of the lab (on the host only in host mode).
    pub namespaces: Vec<String>,
    pub created: u64,
}

impl LabRecord {
    pub fn path(&self) -> PathBuf {
        lab_path(&self.name)
    }

    fn file_name(&self) -> String {
        format!("{}.json", self.name)
    }

    /// Writes the record whole under a temporary name beside it.
    fn write_tmp(&self) -> Result<(Dir, String)> {
        write_tmp(open_lab_dir()?, &self.file_name(), self)
    }

    /// Creates the record; `Ok(false)` when the lab has one already.
    pub fn claim(&self) -> Result<bool> {
        let (dir, tmp) = self.write_tmp()?;
        let linked = dir.link(&tmp, &dir, &self.file_name());
        let _ = dir.unlink(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(format!("creating {}", self.path().display()))(e)),
        }
    }

    /// Replaces the record (written whole, then renamed over the old one).
    pub fn save(&self) -> Result<()> {
        let (dir, tmp) = self.write_tmp()?;
        dir.rename(&tmp, &dir, &self.file_name()).map_err(|e| {
            let _ = dir.unlink(&tmp);
            io_err(format!("writing {}", self.path().display()))(e)
        })
    }

    /// Removes the record, then its control socket and log. Idempotent.
    pub fn remove(&self) -> Result<()> {
        let dir = match Dir::open(&lab_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("opening {}", lab_dir().display()))(e)),
        };
        let _ = dir.unlink(&format!("{}.sock", self.name));
        let _ = dir.unlink(&format!("{}.log", self.name));
        dir.unlink(&self.file_name())
            .map_err(io_err(format!("removing {}", self.path().display())))
    }

    /// Gone: its holder died, or the `up` that was making it did.
    pub fn is_stale(&self) -> bool {
        match (&self.holder, self.phase) {
            (Some(h), Phase::Ready) => !h.is_alive(),
            _ => !self.writer.is_alive(),
        }
    }
}

/// The record file of lab `name`.
pub fn lab_path(name: &str) -> PathBuf {
    lab_dir().join(format!("{name}.json"))
}

/// The record of lab `name`, if any.
pub fn load_lab(name: &str) -> Result<Option<LabRecord>> {
    let path = lab_path(name);
    let read = Dir::open(&lab_dir()).and_then(|d| d.read(&format!("{name}.json")));
    match read {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Config(format!("record {} is not netbox's: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Every lab record (files that do not parse are skipped with a warning).
pub fn list_labs() -> Result<Vec<LabRecord>> {
    let dir = lab_dir();
    let entries = match Dir::open(&dir).and_then(|d| d.entries()) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    names.sort();
    let mut out = vec![];
    for name in names {
        match load_lab(&name) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => tracing::warn!(%e, "skipping a lab record"),
        }
    }
    Ok(out)
}

/// A lab's own lock (`labs/<name>.lock`), held while its record changes: `up`, `down`, gc.
#[derive(Debug)]
pub struct LabLock(#[allow(dead_code)] File);

impl LabLock {
    pub fn take(name: &str) -> Result<LabLock> {
        loop {
            let (file, path) = LabLock::open(name)?;
            file.lock()
                .map_err(io_err(format!("locking {}", path.display())))?;
            if LabLock::current(&file, &path) {
                return Ok(LabLock(file));
            }
        }
    }

    fn open(name: &str) -> Result<(File, PathBuf)> {
        let dir = open_lab_dir()?;
        let file_name = format!("{name}.lock");
        let file = dir
            .open_file(
                &file_name,
                nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
                0o644,
            )
            .map_err(io_err(format!(
                "opening {}",
                dir.join(&file_name).display()
            )))?;
        Ok((file, dir.join(&file_name)))
    }

    /// Whether the locked file is still the one at `path`: the lab's last holder of the lock
    /// removes the file ([`LabLock::remove`]), and a waiter that locked the removed one must
    /// start over.
    fn current(file: &File, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Removes the lock file (the lab is gone), still holding the lock.
    pub fn remove(&self, name: &str) {
        if let Ok(dir) = Dir::open(&lab_dir()) {
            let _ = dir.unlink(&format!("{name}.lock"));
        }
    }

    /// The lock if nobody holds it (gc passes over a lab at work).
    pub fn try_take(name: &str) -> Result<Option<LabLock>> {
        let (file, path) = LabLock::open(name)?;
        match file.try_lock() {
            Ok(()) if LabLock::current(&file, &path) => Ok(Some(LabLock(file))),
            Ok(()) => Ok(None),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(io_err(format!("locking {}", path.display()))(e))
            }
        }
    }
}

/// Temporary files of writers that died (`.tmp.<pid>.*` of a pid that is gone).
pub fn dead_tmp_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [kind_dir(Kind::Ns), kind_dir(Kind::Cni), lab_dir()] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(".tmp."))
                .and_then(|n| n.split('.').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Removes a file found by [`dead_tmp_files`].
pub fn remove_tmp(path: &Path) -> Result<()> {
    remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_once_and_records_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The only test that sets it: no other test of this binary reads the state directory.
        std::env::set_var("NETBOX_RUN_DIR", dir.path());
        let me = Owner::current_process().expect("me");
        let mut record = Record {
            kind: Kind::Ns,
            name: "box".into(),
            network: "netbox".into(),
            data_dir: dir.path().join("ipam"),
            owner: Owner::Named { name: "box".into() },
            phase: Phase::Creating,
            writer: me,
            netns: "/run/netns/box".into(),
            netns_inode: None,
            host_ifname: "nbx00000001".into(),
            addresses: vec![],
            created: now(),
        };
        assert!(record.claim().expect("claim"));
        assert!(!record.claim().expect("second claim"));
        record.phase = Phase::Ready;
        record.netns_inode = Some(42);
        record.save().expect("save");
        assert_eq!(load_sandbox("box").expect("load"), Some(record.clone()));
        assert_eq!(list().expect("list"), vec![record.clone()]);
        // No temporary file is left behind.
        let files: Vec<_> = fs::read_dir(dir.path().join("sandboxes"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(files, vec![std::ffi::OsString::from("box.json")]);
        record.remove().expect("remove");
        record.remove().expect("remove twice");
        assert_eq!(load_sandbox("box").expect("load"), None);
        std::env::remove_var("NETBOX_RUN_DIR");
    }
}
