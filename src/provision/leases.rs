//! The lease store: one directory per network, safe against concurrent processes and crashes.
//!
//! Layout of `<data dir>/<network>/`:
//! - `lock`: held (flock) for every change, so allocations of all threads and processes
//!   serialize; the kernel drops it when its holder dies, however it dies;
//! - `leases/<ip>`: one entry per address handed out, a symlink to its owner's index
//!   (`../owners/cni/<container>+<ifname>` or `../owners/proc/<pid>.<start time>`). Whether an
//!   address is free is one `lstat`, whatever the number of leases;
//! - `owners/cni/<container>+<ifname>` and `owners/proc/<pid>.<start time>`: per owner, a symlink
//!   whose target lists the addresses it holds (`10.0.0.2,fd00::2`). Release by owner reads its
//!   index instead of every lease, and `reclaim_dead` lists only `owners/proc`, i.e. the
//!   `netbox run` sandboxes;
//! - `cursor.<set>`: the last address handed out in each range set. The scan for a free address
//!   resumes right after it, where the next address is almost always free, so an allocation is a
//!   few `lstat`s and three small writes at 10 or 20,000 leases alike (host-local instead reads
//!   every lease file under its lock). A lost or stale cursor only makes one scan longer;
//! - `tmp/`: entries being prepared.
//!
//! Crash safety. Records are symlinks because creating one is atomic and carries its whole
//! content: a crash leaves it absent or complete, never empty or half-written, and no data block
//! needs its own fsync. A lease is created with `symlink()`, which fails if the address is leased
//! already (as O_EXCL would): a second guard against handing it out twice besides the lock. An
//! index is prepared in `tmp/` and renamed over the old one. Ordering makes the store consistent
//! whatever the crash, even of the machine: the owner index is made durable (directory fsync)
//! before its leases are created, and leases are removed (and that made durable) before their
//! index, so every lease is always listed in its owner's index. An index naming an address its
//! owner does not hold (the crash came between the two steps) is harmless: a lease counts only if
//! its own symlink names the owner, so such entries are skipped and vanish at the next release.
//! `netbox run` leases record the pid and the process start time, so a lease whose process is
//! gone (killed with SIGKILL, or a reboot) is reclaimable and a reused pid is not taken for it.
//! The same fact makes their durability pointless (a machine crash kills the owner), so only CNI
//! leases pay for the directory fsyncs; the ordering holds for both.
//!
//! Migration from host-local: when `dataDir` points at host-local's directory, its lease files
//! (`<network>/<ip>`) are treated as taken, and its `lock` file is the one both lock.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::model::ipam::config::validate_network_name;
use crate::model::ipam::range::{scan_order, to_u128};
use crate::model::ipam::{IpamConfig, IpamError, Range};
use crate::model::owner::Owner;
use crate::sys::dirfd::{ensure_dir_all, Dir};

type Result<T, E = IpamError> = std::result::Result<T, E>;

/// What a lease's symlink target starts with, before the owner's index name.
const LEASE_TARGET_PREFIX: &str = "../owners/";

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its subnet's prefix.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index of the range set it came from.
    pub range_set: usize,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub owner: Owner,
}

/// Points of a write sequence, for tests that kill a process there to check crash safety.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `allocate`: the owner index is durable, the leases are not created yet.
    IndexWritten,
    /// `allocate`: the leases are durable, the cursors are not updated yet.
    LeasesWritten,
    /// `release`: the leases are removed, the index is still there.
    LeasesRemoved,
}

/// The leases of one network. Cheap to clone; any number of threads and processes may use the
/// same network at once.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    network: String,
    step_hook: Option<fn(Step)>,
    dirs: Arc<Dirs>,
}

impl Store {
    /// Opens (creating if needed) the store of `network` under `data_dir`. The name is checked
    /// before anything touches the disk.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        validate_network_name(network)?;
        let dir = data_dir.join(network);
        let failed = |path: PathBuf| {
            move |source| IpamError::Io {
                path,
                context: "creating the store",
                source,
            }
        };
        // The data directory is the administrator's; below it every directory is opened from
        // its parent without following links (see `sys::dirfd`).
        ensure_dir_all(data_dir, 0o755).map_err(failed(data_dir.to_path_buf()))?;
        let root = Dir::open(data_dir)
            .and_then(|d| d.ensure_sub(network, 0o755))
            .map_err(failed(dir.clone()))?;
        let sub = |parent: &Dir, name: &str| {
            parent
                .ensure_sub(name, 0o755)
                .map_err(failed(parent.join(name)))
        };
        let owners = sub(&root, "owners")?;
        let dirs = Dirs {
            leases: sub(&root, "leases")?,
            cni: sub(&owners, "cni")?,
            proc: sub(&owners, "proc")?,
            named: sub(&owners, "named")?,
            tmp: sub(&root, "tmp")?,
            root,
        };
        Ok(Store {
            dir,
            network: network.into(),
            step_hook: None,
            dirs: Arc::new(dirs),
        })
    }

    /// Calls `hook` at each [`Step`]; tests use it to stop a process mid-way.
    #[doc(hidden)]
    pub fn with_step_hook(mut self, hook: fn(Step)) -> Store {
        self.step_hook = Some(hook);
        self
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands `owner` one address per range set: the requested one where given (each requested
    /// address picks the set that contains it), else the next free one after the set's cursor.
    /// An owner that already holds an address in a set gets it again, so a repeated ADD is
    /// idempotent. All or nothing: on failure nothing new stays leased.
    pub fn allocate(
        &self,
        cfg: &IpamConfig,
        owner: &Owner,
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>> {
        let index = owner.key()?;
        let wanted = self.requested_per_set(cfg, requested)?;
        let _lock = self.lock()?;
        self.clean_tmp();
        let previous = self.read_index(&index)?;
        // What the owner really holds: index entries whose lease names it.
        let held: Vec<IpAddr> = previous
            .iter()
            .flatten()
            .copied()
            .filter(|ip| self.holds(*ip, &index))
            .collect();
        let mut chosen: Vec<(usize, IpAddr, bool)> = Vec::new(); // (set, ip, newly leased)
        for (i, set) in cfg.range_sets.iter().enumerate() {
            let mine = held.iter().copied().find(|ip| cfg.set_of(*ip) == Some(i));
            let want = wanted.get(i).copied().flatten();
            let (ip, new) = match (want, mine) {
                (None, Some(ip)) => (ip, false),
                (Some(want), Some(ip)) if want == ip => (ip, false),
                (Some(want), _) => {
                    self.check_free(want)?;
                    (want, true)
                }
                (None, None) => (self.find_free(i, set)?, true),
            };
            chosen.push((i, ip, new));
        }
        // A process lease needs no durability: a machine crash kills its owner, and the lease of
        // a dead owner is reclaimable anyway. Skipping the directory fsyncs keeps `netbox run`
        // off the journal's latency on real disks.
        let durable = matches!(owner, Owner::Cni { .. });
        let fresh: Vec<(usize, IpAddr)> =
            chosen.iter().filter(|c| c.2).map(|c| (c.0, c.1)).collect();
        if !fresh.is_empty() {
            // Index first, durably: a lease is never on disk without its owner's index. It keeps
            // listing what the owner held before, so an undo or crash loses nothing.
            let mut ips = held.clone();
            ips.extend(fresh.iter().map(|f| f.1));
            self.write_index(&index, &ips)?;
            if durable {
                self.sync_dir(self.index_of(&index)?.0)?;
            }
            self.step(Step::IndexWritten);
            let mut linked = Vec::new();
            for (_, ip) in &fresh {
                if let Err(e) = self.create_lease(*ip, &index) {
                    self.undo(&linked, &index, previous.as_deref());
                    return Err(e);
                }
                linked.push(*ip);
            }
            if durable {
                if let Err(e) = self.sync_dir(&self.dirs.leases) {
                    self.undo(&linked, &index, previous.as_deref());
                    return Err(e);
                }
            }
            self.step(Step::LeasesWritten);
            for (set, ip) in &fresh {
                // Only a hint: no fsync, and a failure costs a longer scan next time.
                let _ = self.write_cursor(*set, *ip);
            }
            // Addresses replaced by a requested one go once the new lease is durable, so the
            // owner is never left with nothing; the index still lists them, which is harmless.
            for ip in held
                .iter()
                .filter(|ip| fresh.iter().any(|(set, _)| cfg.set_of(**ip) == Some(*set)))
            {
                self.remove_entry(self.lease_entry(*ip), "removing a lease")?;
            }
        }
        Ok(chosen
            .iter()
            .map(|(set, ip, _)| allocation(cfg, *set, *ip))
            .collect())
    }

    /// Releases every lease of `owner`. Idempotent: returns how many were released, 0 when it
    /// held none.
    pub fn release(&self, owner: &Owner) -> Result<usize> {
        // An owner that cannot have an index (allocate refuses it) holds nothing.
        let Ok(index) = owner.key() else {
            return Ok(0);
        };
        let _lock = self.lock()?;
        self.release_locked(&index)
    }

    /// Every lease of the network, in address order.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for name in list_dir(&self.dirs.leases, "listing leases")? {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            // Gone between the listing and the read: not a lease any more. An entry that is
            // not a link is garbage ([`Store::garbage`]): skipped, not fatal.
            let Ok(Some(index)) = self.lease_owner(ip) else {
                continue;
            };
            if let Some(owner) = Owner::from_key(&index) {
                out.push(Lease { ip, owner });
            }
        }
        out.sort_by_key(|l| (l.ip.is_ipv6(), to_u128(l.ip)));
        Ok(out)
    }

    /// The leases `owner` holds (read from its index: cheap at any number of leases).
    pub fn leases_of(&self, owner: &Owner) -> Result<Vec<Lease>> {
        let Ok(index) = owner.key() else {
            return Ok(vec![]);
        };
        Ok(self
            .read_index(&index)?
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| self.holds(*ip, &index))
            .map(|ip| Lease {
                ip,
                owner: owner.clone(),
            })
            .collect())
    }

    /// Garbage collection: releases every CNI lease whose attachment is not in `valid`, and
    /// every process lease whose process is dead; live `netbox run` sandboxes keep theirs.
    /// Returns the released leases. It reads every lease (not only the indexes), so it would
    /// also clear anything inconsistent.
    pub fn gc(&self, valid: &[Owner]) -> Result<Vec<Lease>> {
        let _lock = self.lock()?;
        let keep = |owner: &Owner| match owner {
            Owner::Cni { .. } => valid.contains(owner),
            Owner::Process { .. } => owner.is_alive(),
            // Named sandboxes are not the runtime's: only `netbox gc` judges them.
            Owner::Named { .. } => true,
        };
        let released: Vec<Lease> = self
            .leases()?
            .into_iter()
            .filter(|lease| !keep(&lease.owner))
            .collect();
        for lease in &released {
            self.remove_entry(self.lease_entry(lease.ip), "removing a lease")?;
        }
        if !released.is_empty() {
            self.sync_dir(&self.dirs.leases)?;
        }
        // Indexes go after their leases; also those left naming nothing by a crash.
        for (kind, dir) in [
            ("cni", &self.dirs.cni),
            ("proc", &self.dirs.proc),
            ("named", &self.dirs.named),
        ] {
            for file in list_dir(dir, "listing owners")? {
                let index = format!("{kind}/{file}");
                let Some(owner) = Owner::from_key(&index) else {
                    continue;
                };
                let ips = self.read_index(&index)?.unwrap_or_default();
                if !keep(&owner) || !ips.iter().any(|ip| self.holds(*ip, &index)) {
                    self.remove_entry(self.index_of(&index)?, "removing an owner index")?;
                }
            }
        }
        drop(_lock);
        // Entries nobody can own go too: one garbage file never stops the network's gc.
        self.remove_garbage()?;
        Ok(released)
    }

    /// Every owner with an index, whether or not it still holds a lease (a crash between
    /// writing the index and creating the leases leaves an index naming nothing).
    pub fn owners(&self) -> Result<Vec<Owner>> {
        let mut out = Vec::new();
        for (kind, dir) in [
            ("cni", &self.dirs.cni),
            ("proc", &self.dirs.proc),
            ("named", &self.dirs.named),
        ] {
            for file in list_dir(dir, "listing owners")? {
                if let Some(owner) = Owner::from_key(&format!("{kind}/{file}")) {
                    out.push(owner);
                }
            }
        }
        Ok(out)
    }

    /// Releases the leases of `netbox run` processes that are gone; returns how many. Reads only
    /// the process owners' indexes.
    pub fn reclaim_dead(&self) -> Result<usize> {
        self.reclaim_dead_with(|_| true)
    }

    /// [`Store::reclaim_dead`], calling `before_release` on each dead owner under the lock before
    /// its addresses are released (so before anyone can be handed them); an owner for which it
    /// returns false keeps its leases. `netbox run` removes the owner's firewall state there.
    pub fn reclaim_dead_with(
        &self,
        mut before_release: impl FnMut(&Owner) -> bool,
    ) -> Result<usize> {
        let _lock = self.lock()?;
        let mut count = 0;
        for file in list_dir(&self.dirs.proc, "listing owners")? {
            let index = format!("proc/{file}");
            let Some(owner) = Owner::from_key(&index).filter(|o| !o.is_alive()) else {
                continue;
            };
            if before_release(&owner) {
                count += self.release_locked(&index)?;
            }
        }
        Ok(count)
    }

    fn release_locked(&self, index: &str) -> Result<usize> {
        let entry = self.index_of(index)?;
        let ips = match self.read_index(index)? {
            Some(ips) => ips,
            // No index, but an entry there: garbage in its place. The owner's leases are
            // found by reading every lease instead.
            None if entry.exists() => self
                .leases()?
                .into_iter()
                .filter(|l| l.owner.key().ok().as_deref() == Some(index))
                .map(|l| l.ip)
                .collect(),
            None => return Ok(0),
        };
        let mut count = 0;
        for ip in ips {
            // The index may name an address someone else holds now (see the module comment).
            if self.holds(ip, index) {
                self.remove_entry(self.lease_entry(ip), "removing a lease")?;
                count += 1;
            }
        }
        if count > 0 && index.starts_with("cni/") {
            // The removals are durable before the index goes: see the module comment.
            self.sync_dir(&self.dirs.leases)?;
        }
        self.step(Step::LeasesRemoved);
        self.remove_entry(entry, "removing an owner index")?;
        Ok(count)
    }

    /// Refuses what [`Store::allocate`] would refuse in `requested` whatever the leases
    /// (outside every range, reserved, two in one set), without touching anything.
    pub fn check_request(&self, cfg: &IpamConfig, requested: &[IpAddr]) -> Result<()> {
        self.requested_per_set(cfg, requested).map(|_| ())
    }

    /// One requested address per range set (None where none was asked for), checked against
    /// the configuration before anything is locked.
    fn requested_per_set(
        &self,
        cfg: &IpamConfig,
        requested: &[IpAddr],
    ) -> Result<Vec<Option<IpAddr>>> {
        let mut wanted = vec![None; cfg.range_sets.len()];
        for ip in requested {
            let set = cfg.set_of(*ip).ok_or_else(|| IpamError::RequestedOutside {
                network: self.network.clone(),
                ip: *ip,
                ranges: cfg.describe(),
            })?;
            if cfg.range_sets[set]
                .iter()
                .any(|r| r.contains(*ip) && r.is_reserved(*ip))
            {
                return Err(IpamError::RequestedReserved {
                    network: self.network.clone(),
                    ip: *ip,
                });
            }
            if let Some(other) = wanted[set].replace(*ip) {
                return Err(IpamError::RequestedTwice {
                    network: self.network.clone(),
                    a: other,
                    b: *ip,
                });
            }
        }
        Ok(wanted)
    }

    /// Fails when a requested address is leased (by netbox or by host-local).
    fn check_free(&self, ip: IpAddr) -> Result<()> {
        let holder = match self.lease_owner(ip) {
            Ok(Some(index)) => Owner::from_key(&index)
                .map(|o| o.to_string())
                .unwrap_or(index),
            Ok(None) if self.host_local_lease(ip).exists() => "a host-local lease".into(),
            Ok(None) => return Ok(()),
            // Never handed out on a doubt.
            Err(_) => "an entry netbox cannot read".into(),
        };
        Err(IpamError::RequestedTaken {
            network: self.network.clone(),
            ip,
            owner: holder,
        })
    }

    /// The first free address after the set's cursor: usually the very first one tried.
    fn find_free(&self, set_index: usize, set: &[Range]) -> Result<IpAddr> {
        let cursor = self.read_cursor(set_index);
        scan_order(set, cursor)
            .find(|ip| !self.lease_entry(*ip).exists() && !self.host_local_lease(*ip).exists())
            .ok_or_else(|| IpamError::Exhausted {
                network: self.network.clone(),
                ranges: set
                    .iter()
                    .map(Range::describe)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// True when the lease of `ip` points at the index `index`.
    fn holds(&self, ip: IpAddr, index: &str) -> bool {
        matches!(self.lease_owner(ip), Ok(Some(i)) if i == index)
    }

    /// Puts things back after a failed allocation (best effort: the error being reported
    /// matters more than a failure here, and the index still lists anything left behind).
    fn undo(&self, linked: &[IpAddr], index: &str, previous: Option<&[IpAddr]>) {
        for ip in linked {
            let _ = self.lease_entry(*ip).remove();
        }
        let _ = self.dirs.leases.sync();
        match previous {
            Some(ips) => {
                let _ = self.write_index(index, ips);
            }
            None => {
                if let Some(entry) = self.index_entry(index) {
                    let _ = entry.remove();
                }
            }
        }
    }

    fn step(&self, step: Step) {
        if let Some(hook) = self.step_hook {
            hook(step);
        }
    }

    fn lock(&self) -> Result<File> {
        // flock: per open file, so threads of one process exclude each other too; released
        // when the file is closed, including when the process dies. Never through a link.
        self.dirs.root.lock("lock").map_err(|source| IpamError::Io {
            path: self.dir.join("lock"),
            context: "taking the lock",
            source,
        })
    }

    /// Removes what writers that crashed left in `tmp/` (we hold the lock: no one is writing).
    fn clean_tmp(&self) {
        for name in self.dirs.tmp.entries().unwrap_or_default() {
            let _ = self.dirs.tmp.unlink(&name);
        }
    }

    fn lease_entry(&self, ip: IpAddr) -> Entry<'_> {
        Entry(&self.dirs.leases, ip.to_string())
    }

    fn host_local_lease(&self, ip: IpAddr) -> Entry<'_> {
        Entry(&self.dirs.root, ip.to_string())
    }

    /// The entry of an index name (`cni/<file>`, `proc/<file>`, `named/<file>`).
    fn index_entry(&self, index: &str) -> Option<Entry<'_>> {
        let (kind, file) = index.split_once('/')?;
        let dir = match kind {
            "cni" => &self.dirs.cni,
            "proc" => &self.dirs.proc,
            "named" => &self.dirs.named,
            _ => return None,
        };
        (!file.is_empty() && !file.contains('/')).then(|| Entry(dir, file.to_string()))
    }

    fn index_of(&self, index: &str) -> Result<Entry<'_>> {
        self.index_entry(index)
            .ok_or_else(|| IpamError::BadOwner(format!("index name {index:?}")))
    }

    /// A name in `tmp/` for preparing a `kind` of record: the pid keeps processes apart, the
    /// lock threads. Short, whatever the record's name.
    fn tmp_entry(&self, kind: &str) -> Entry<'_> {
        Entry(&self.dirs.tmp, format!("{kind}.{}", std::process::id()))
    }

    /// The index name a lease points at, None when the address is free. A lease entry that is
    /// not a link (garbage: netbox never writes one) is an error the callers judge.
    fn lease_owner(&self, ip: IpAddr) -> Result<Option<String>> {
        let Some(target) = self.lease_entry(ip).readlink()? else {
            return Ok(None);
        };
        Ok(Some(
            target
                .strip_prefix(LEASE_TARGET_PREFIX)
                .map(str::to_string)
                .unwrap_or(target),
        ))
    }

    /// Creates the lease of `ip` for the owner of `index`; fails if the address is leased.
    fn create_lease(&self, ip: IpAddr, index: &str) -> Result<()> {
        let entry = self.lease_entry(ip);
        entry
            .0
            .symlink(&format!("{LEASE_TARGET_PREFIX}{index}"), &entry.1)
            .map_err(|source| IpamError::Io {
                path: entry.path(),
                context: if source.kind() == io::ErrorKind::AlreadyExists {
                    // Only a writer that bypassed the lock can get here.
                    "address already leased (was the store changed without its lock?)"
                } else {
                    "creating a lease"
                },
                source,
            })
    }

    /// The addresses an index lists, None when there is no index (or it is not a link:
    /// garbage, which [`Store::release`] and [`Store::gc`] clear).
    fn read_index(&self, index: &str) -> Result<Option<Vec<IpAddr>>> {
        let entry = self.index_of(index)?;
        Ok(match entry.readlink() {
            Ok(target) => target,
            Err(IpamError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                None
            }
            Err(e) => return Err(e),
        }
        .map(|target| target.split(',').filter_map(|s| s.parse().ok()).collect()))
    }

    /// Replaces an index atomically (a symlink prepared in `tmp/`, renamed into place).
    fn write_index(&self, index: &str, ips: &[IpAddr]) -> Result<()> {
        let target = ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let tmp = self.tmp_entry("index");
        let entry = self.index_of(index)?;
        tmp.0
            .symlink_replacing(&target, &tmp.1)
            .and_then(|()| tmp.0.rename(&tmp.1, entry.0, &entry.1))
            .map_err(|source| {
                let _ = tmp.remove();
                IpamError::Io {
                    path: entry.path(),
                    context: "writing an owner index",
                    source,
                }
            })
    }

    /// Saves a scan hint: written whole then renamed, never fsynced.
    fn write_cursor(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        let tmp = self.tmp_entry("cursor");
        tmp.0
            .write_replacing(&tmp.1, ip.to_string().as_bytes(), 0o644)?;
        tmp.0
            .rename(&tmp.1, &self.dirs.root, &format!("cursor.{set}"))
            .inspect_err(|_| {
                let _ = tmp.0.unlink(&tmp.1);
            })
    }

    fn read_cursor(&self, set: usize) -> Option<IpAddr> {
        let bytes = self.dirs.root.read(&format!("cursor.{set}")).ok()?;
        String::from_utf8(bytes).ok()?.trim().parse().ok()
    }

    fn remove_entry(&self, entry: Entry<'_>, context: &'static str) -> Result<()> {
        entry.0.unlink(&entry.1).map_err(|source| IpamError::Io {
            path: entry.path(),
            context,
            source,
        })
    }

    fn sync_dir(&self, dir: &Dir) -> Result<()> {
        dir.sync().map_err(|source| IpamError::Io {
            path: dir.path().to_path_buf(),
            context: "syncing a directory",
            source,
        })
    }

    /// Entries of lease or index entries that are not netbox's form (not a link, or a link
    /// whose target names no owner): garbage from a crash of the file system or a hand, which
    /// nobody can own. Listed by `netbox ls`, removed by gc.
    pub fn garbage(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for name in self.dirs.leases.entries().unwrap_or_default() {
            let entry = Entry(&self.dirs.leases, name);
            let owned = entry.0.readlink(&entry.1).ok().flatten().is_some_and(|t| {
                t.to_str()
                    .and_then(|t| t.strip_prefix(LEASE_TARGET_PREFIX))
                    .and_then(Owner::from_key)
                    .is_some()
            });
            if !owned || entry.1.parse::<IpAddr>().is_err() {
                out.push(entry.path());
            }
        }
        for (kind, dir) in [
            ("cni", &self.dirs.cni),
            ("proc", &self.dirs.proc),
            ("named", &self.dirs.named),
        ] {
            for name in dir.entries().unwrap_or_default() {
                let entry = Entry(dir, name);
                let ok = Owner::from_key(&format!("{kind}/{}", entry.1)).is_some()
                    && entry.0.readlink(&entry.1).ok().flatten().is_some();
                if !ok {
                    out.push(entry.path());
                }
            }
        }
        out
    }

    /// Removes what [`Store::garbage`] lists (under the lock); how many entries went.
    pub fn remove_garbage(&self) -> Result<usize> {
        let _lock = self.lock()?;
        let garbage = self.garbage();
        for path in &garbage {
            let (Some(dir), Some(name)) = (
                path.parent().and_then(|d| self.dir_at(d)),
                path.file_name().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            self.remove_entry(Entry(dir, name.to_string()), "removing garbage")?;
        }
        Ok(garbage.len())
    }

    fn dir_at(&self, path: &Path) -> Option<&Dir> {
        [
            &self.dirs.leases,
            &self.dirs.cni,
            &self.dirs.proc,
            &self.dirs.named,
        ]
        .into_iter()
        .find(|d| d.path() == path)
    }
}

/// The directories of a store, each opened from its parent without following links.
#[derive(Debug)]
struct Dirs {
    root: Dir,
    leases: Dir,
    cni: Dir,
    proc: Dir,
    named: Dir,
    tmp: Dir,
}

/// One entry: a directory and a name in it.
struct Entry<'a>(&'a Dir, String);

impl Entry<'_> {
    fn path(&self) -> PathBuf {
        self.0.join(&self.1)
    }

    /// True unless certainly absent (an entry that cannot be examined counts as present, so
    /// that an address is never handed out on a doubt).
    fn exists(&self) -> bool {
        self.0.exists(&self.1)
    }

    fn remove(&self) -> io::Result<()> {
        self.0.unlink(&self.1)
    }

    /// A link's target, None when there is no such entry.
    fn readlink(&self) -> Result<Option<String>> {
        self.0
            .readlink(&self.1)
            .map(|t| t.map(|t| t.to_string_lossy().into_owned()))
            .map_err(|source| IpamError::Io {
                path: self.path(),
                context: "reading a record",
                source,
            })
    }
}

/// Entry names of a directory.
fn list_dir(dir: &Dir, context: &'static str) -> Result<Vec<String>> {
    dir.entries().map_err(|source| IpamError::Io {
        path: dir.path().to_path_buf(),
        context,
        source,
    })
}

fn allocation(cfg: &IpamConfig, set: usize, ip: IpAddr) -> Allocation {
    let range = cfg.range_sets[set].iter().find(|r| r.contains(ip));
    let prefix = range
        .map(|r| r.subnet.prefix())
        .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
    Allocation {
        // The prefix comes from a valid subnet of the same family: the fallback never runs.
        address: IpNetwork::new(ip, prefix).unwrap_or_else(|_| IpNetwork::from(ip)),
        gateway: range.and_then(|r| r.gateway),
        range_set: set,
    }
}
