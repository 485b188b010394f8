//! `netbox ls` and `netbox gc`: what netbox owns, and removing what it made whose owner is gone.
//!
//! Ownership is always read from what netbox wrote (records, veth aliases, lease owners), never
//! guessed from a name. Owners and when they are gone:
//! - a `netbox run` process (pid + start time): when that process no longer exists;
//! - a named sandbox (`netbox ns add NAME`): when its record is gone, was left half-made by a
//!   process that died, or its namespace is no longer the one it made (`ip netns del NAME`);
//! - a lab holder (`netbox lab up`, pid + start time): when it is gone (in host mode its
//!   namespaces are removed, listed in the lab's record);
//! - a CNI attachment (container id + ifname): when its record was left half-made by an ADD that
//!   died, or the namespace it was attached in is gone; without a record (made before records
//!   existed), when its host veth is gone. A live attachment is never removed: the runtime DELs
//!   it.
//!
//! gc holds the lifecycle lock exclusively (see `provision::records`), so a concurrent ADD, `ns add` or
//! `ns del` is either finished or not started while it judges, and two gcs take turns. Bridges
//! are never removed: they are shared, and an empty bridge costs nothing.
//!
//! Each kind of resource is found and judged separately ([`Resource`]): veths, namespaces,
//! leases, records, temporary files, firewall rules: adding one is one more method of `Sweep`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::model::network;
use crate::model::owner::Owner;
use crate::provision::leases::{Lease, Store};
use crate::provision::publish;
use crate::provision::records::{self, Kind, Lock, Phase, Record};
use crate::sys::netlink::{Link, Netlink};
use crate::sys::netns;
use crate::{Error, Result};

/// One thing gc removed (or would remove, with --dry-run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// veth, netns, lease, record, tmp
    pub kind: &'static str,
    pub name: String,
    /// The owner that is gone.
    pub owner: Option<String>,
}

/// What gc did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub removed: Vec<Resource>,
    pub errors: Vec<String>,
}

/// Everything gc and ls judge ownership from, read once.
struct View {
    records: Vec<Record>,
    links: Vec<Link>,
    /// gc holds the exclusive lock: no maker is at work.
    locked: bool,
}

impl View {
    fn read(locked: bool) -> Result<View> {
        let records = records::list()?;
        let links = crate::sys::runtime::current_thread()?
            .block_on(async { Netlink::connect()?.links().await })?;
        Ok(View {
            records,
            links,
            locked,
        })
    }

    /// A record whose owner is gone.
    fn record_stale(&self, r: &Record) -> bool {
        let unfinished = r.phase != Phase::Ready;
        match r.kind {
            Kind::Run => !r.owner.is_alive(),
            Kind::Ns | Kind::Cni if unfinished => self.locked || !r.writer.is_alive(),
            Kind::Ns => netns::named_inode(&r.name) != r.netns_inode,
            Kind::Cni => {
                r.netns_inode.is_none()
                    || netns::NetNs::open(&r.netns)
                        .ok()
                        .and_then(|ns| ns.inode().ok())
                        != r.netns_inode
            }
        }
    }

    /// An owner that is gone (see the module comment).
    fn owner_stale(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Process { .. } => !owner.is_alive(),
            Owner::Named { .. } => !self
                .records
                .iter()
                .any(|r| r.kind == Kind::Ns && &r.owner == owner && !self.record_stale(r)),
            Owner::Cni { .. } => match self
                .records
                .iter()
                .find(|r| r.kind == Kind::Cni && &r.owner == owner)
            {
                Some(r) => self.record_stale(r),
                None => !self
                    .links
                    .iter()
                    .any(|l| link_owner(l).as_ref() == Some(owner)),
            },
        }
    }

    /// Every lease store netbox may have written: the default data directory, those of records
    /// and of known conflists. Only directories that hold a netbox store are opened.
    fn stores(&self) -> Vec<Store> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        dirs.insert(crate::model::ipam::default_data_dir());
        dirs.extend(self.records.iter().map(|r| r.data_dir.clone()));
        for net in network::list(&network::conf_dirs()) {
            if let Ok(spec) = net.spec {
                dirs.insert(spec.ipam.data_dir());
            }
        }
        let mut out = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if entry.path().join("owners").is_dir() && entry.path().join("leases").is_dir() {
                    if let Ok(store) = Store::open(&dir, &name) {
                        out.push(store);
                    }
                }
            }
        }
        out
    }
}

/// The owner a link's alias records, if netbox wrote it.
fn link_owner(link: &Link) -> Option<Owner> {
    link.alias
        .as_deref()
        .and_then(crate::model::owner::parse_alias)
        .map(|(_, o)| o)
}

fn owner_text(owner: &Owner) -> String {
    owner.key().unwrap_or_else(|_| owner.to_string())
}

/// Removes what netbox made whose owner is gone; with `dry_run`, only says what it would remove.
pub fn gc(dry_run: bool) -> Result<Report> {
    gc_with_progress(dry_run, &|_, _| {})
}

/// [`gc`], telling `progress` (done, total) as it removes host veths: the slow part (each
/// deletion waits for the kernel, tens of milliseconds), the rest is file work.
pub fn gc_with_progress(dry_run: bool, progress: &dyn Fn(usize, usize)) -> Result<Report> {
    let _lock = Lock::exclusive()?;
    let view = View::read(true)?;
    let mut sweep = Sweep::new(&view, dry_run)?;
    let stale: Vec<&Record> = view
        .records
        .iter()
        .filter(|r| view.record_stale(r))
        .collect();
    sweep.veths(progress);
    sweep.unaliased_cni_veths(&stale);
    sweep.namespaces(&stale);
    // Firewall state before leases: an address is never handed out again while rules (a
    // published port) still point at it.
    sweep.firewall();
    for store in view.stores() {
        sweep.leases(&store);
    }
    sweep.labs();
    // Records last: each stays until what it stands for is gone, so an interrupted gc resumes.
    sweep.records(&stale);
    Ok(sweep.report)
}

/// One gc pass: what it judges from, what it removed, and whether it only says so.
struct Sweep<'a> {
    view: &'a View,
    dry_run: bool,
    rt: tokio::runtime::Runtime,
    host: Netlink,
    report: Report,
}

impl<'a> Sweep<'a> {
    fn new(view: &'a View, dry_run: bool) -> Result<Sweep<'a>> {
        let rt = crate::sys::runtime::current_thread()?;
        let host = rt.block_on(async { Netlink::connect() })?;
        Ok(Sweep {
            view,
            dry_run,
            rt,
            host,
            report: Report::default(),
        })
    }

    fn note(&mut self, kind: &'static str, name: String, owner: Option<&Owner>, r: Result<()>) {
        match r {
            Ok(()) => self.report.removed.push(Resource {
                kind,
                name,
                owner: owner.map(owner_text),
            }),
            Err(e) => self.report.errors.push(format!("{kind} {name}: {e}")),
        }
    }

    /// Runs `remove` unless this is a dry run.
    fn unless_dry(&self, remove: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.dry_run {
            Ok(())
        } else {
            remove()
        }
    }

    fn delete_link(&mut self, link: &Link, owner: &Owner) {
        let r = self.unless_dry(|| {
            self.rt
                .block_on(self.host.delete_link_index(link.index, &link.name))
                .map_err(Error::from)
        });
        self.note("veth", link.name.clone(), Some(owner), r);
    }

    /// Labs whose holder died: in host mode the namespaces it made, then the record. A lab
    /// whose lock is held (being brought up or down) is left alone.
    fn labs(&mut self) {
        let labs = match records::list_labs() {
            Ok(l) => l,
            Err(e) => {
                self.report.errors.push(format!("lab records: {e}"));
                return;
            }
        };
        for lab in labs.into_iter().filter(|l| l.is_stale()) {
            let lock = match records::LabLock::try_take(&lab.name) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    self.report.errors.push(format!("lab {}: {e}", lab.name));
                    continue;
                }
            };
            let owner = format!("lab {}", lab.name);
            let mut failed = false;
            if lab.mode == records::LabMode::Host {
                for ns in lab
                    .namespaces
                    .iter()
                    .filter(|n| netns::named_path(n).exists())
                {
                    let r = self.unless_dry(|| netns::delete_named(ns).map_err(Error::from));
                    failed |= r.is_err();
                    self.note_for("netns", ns.clone(), &owner, r);
                }
            }
            if failed {
                continue;
            }
            let r = self.unless_dry(|| lab.remove());
            if r.is_ok() && !self.dry_run {
                lock.remove(&lab.name);
            }
            self.note_for("record", lab.path().display().to_string(), &owner, r);
        }
    }

    /// [`Sweep::note`] for an owner that is not an [`Owner`] (a lab).
    fn note_for(&mut self, kind: &'static str, name: String, owner: &str, r: Result<()>) {
        match r {
            Ok(()) => self.report.removed.push(Resource {
                kind,
                name,
                owner: Some(owner.to_string()),
            }),
            Err(e) => self.report.errors.push(format!("{kind} {name}: {e}")),
        }
    }

    /// Host veths whose alias names a gone owner.
    fn veths(&mut self, progress: &dyn Fn(usize, usize)) {
        let view = self.view;
        let stale: Vec<(&Link, Owner)> = view
            .links
            .iter()
            .filter_map(|l| {
                link_owner(l)
                    .filter(|o| view.owner_stale(o))
                    .map(|o| (l, o))
            })
            .collect();
        for (done, (link, owner)) in stale.iter().enumerate() {
            self.delete_link(link, owner);
            progress(done + 1, stale.len());
        }
    }

    /// Host ends of stale CNI records not yet named by an alias (their ADD was killed right
    /// after making them): known by the name and MAC derived from the record's owner.
    fn unaliased_cni_veths(&mut self, stale: &[&Record]) {
        let view = self.view;
        for record in stale.iter().filter(|r| r.kind == Kind::Cni) {
            let Owner::Cni {
                container_id,
                ifname,
            } = &record.owner
            else {
                continue;
            };
            let mac = crate::model::owner::cni_host_mac(container_id, ifname);
            for link in view
                .links
                .iter()
                .filter(|l| l.alias.is_none() && l.name == record.host_ifname && l.mac == Some(mac))
            {
                self.delete_link(link, &record.owner);
            }
        }
    }

    /// Named namespaces of stale records, only when they are the ones netbox made.
    fn namespaces(&mut self, stale: &[&Record]) {
        for record in stale.iter().filter(|r| r.kind != Kind::Cni) {
            let path = netns::named_path(&record.name);
            if !path.exists() {
                continue;
            }
            let r = self.unless_dry(|| publish::remove_named_ns(record));
            if r.is_err() || self.dry_run || !path.exists() {
                self.note("netns", record.name.clone(), Some(&record.owner), r);
            }
        }
    }

    /// Leases of gone owners in one store, and indexes of dead processes a crash left.
    fn leases(&mut self, store: &Store) {
        let leases: Vec<Lease> = match store.leases() {
            Ok(l) => l,
            Err(e) => {
                self.report
                    .errors
                    .push(format!("leases in {}: {e}", store.dir().display()));
                return;
            }
        };
        // Owners with leases, and owners whose index names nothing (a crash mid-allocation).
        let indexed = store.owners().unwrap_or_default();
        let owners: BTreeSet<String> = leases
            .iter()
            .map(|l| &l.owner)
            .chain(indexed.iter())
            .filter(|o| self.view.owner_stale(o))
            .filter_map(|o| o.key().ok())
            .collect();
        for key in owners {
            let Some(owner) = Owner::from_key(&key) else {
                continue;
            };
            if !leases.iter().any(|l| l.owner == owner) {
                let name = format!("{}/owners/{key} (index only)", store.dir().display());
                self.note("lease", name, Some(&owner), Ok(()));
            }
            for lease in leases.iter().filter(|l| l.owner == owner) {
                let name = format!("{}/{}", store.dir().display(), lease.ip);
                self.note("lease", name, Some(&owner), Ok(()));
            }
            if !self.dry_run {
                if let Err(e) = store.release(&owner) {
                    self.report
                        .errors
                        .push(format!("releasing leases of {key}: {e}"));
                }
            }
        }
        if !self.dry_run {
            if let Err(e) = store.reclaim_dead() {
                self.report
                    .errors
                    .push(format!("{}: {e}", store.dir().display()));
            }
        }
        // Entries nobody can own (not links, or naming no owner): garbage, skipped by every
        // reader, removed here.
        let garbage = store.garbage();
        if !garbage.is_empty() {
            let r = self.unless_dry(|| store.remove_garbage().map(|_| ()).map_err(Error::from));
            let failed = r.err().map(|e| e.to_string());
            for path in garbage {
                let r = match &failed {
                    None => Ok(()),
                    Some(e) => Err(Error::Config(e.clone())),
                };
                self.note("garbage", path.display().to_string(), None, r);
            }
        }
    }

    /// Firewall state (elements and record in netbox's shared tables) of gone owners, then the
    /// shared tables once no owner is left. Without nft there is no rule netbox could have made.
    fn firewall(&mut self) {
        if !crate::firewall::nft::available() {
            return;
        }
        match crate::firewall::owners() {
            Ok(owners) => {
                for owner in owners.iter().filter(|o| self.view.owner_stale(o)) {
                    let name =
                        crate::firewall::record_name(owner).unwrap_or_else(|_| owner_text(owner));
                    let r = self.unless_dry(|| crate::firewall::remove(owner).map_err(Error::from));
                    self.note("firewall", name, Some(owner), r);
                }
            }
            Err(e) => self.report.errors.push(format!("firewall: {e}")),
        }
        if !self.dry_run {
            if let Err(e) = crate::firewall::remove_unused_tables() {
                self.report.errors.push(format!("firewall: {e}"));
            }
        }
    }

    /// The stale records, unless something failed (it may remain: the next gc retries), and
    /// temporary files of dead writers.
    fn records(&mut self, stale: &[&Record]) {
        let failed = !self.report.errors.is_empty();
        for record in stale {
            if failed {
                continue;
            }
            let r = self.unless_dry(|| record.remove());
            let name = record.path().display().to_string();
            self.note("record", name, Some(&record.owner), r);
        }
        for tmp in records::dead_tmp_files() {
            let r = self.unless_dry(|| records::remove_tmp(&tmp));
            self.note("tmp", tmp.display().to_string(), None, r);
        }
        // Unreadable CNI records, once nothing of the owner their name gives is left (no host
        // veth of that attachment): a live attachment keeps even a broken record.
        for (kind, path) in records::unreadable() {
            let owner = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| Owner::from_key(&format!("cni/{s}")));
            let Some(Owner::Cni {
                container_id,
                ifname,
            }) = owner.filter(|_| kind == Kind::Cni)
            else {
                continue;
            };
            let veth = crate::model::owner::cni_host_ifname(&container_id, &ifname);
            if self.view.links.iter().any(|l| l.name == veth) {
                continue;
            }
            let r = self.unless_dry(|| records::remove_tmp(&path));
            self.note("garbage", path.display().to_string(), None, r);
        }
    }
}

/// One sandbox or attachment in `netbox ls`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The sandbox's name (None for an unnamed run or a CNI attachment).
    pub name: Option<String>,
    /// ns, run, cni or lab
    pub kind: &'static str,
    pub network: String,
    pub addresses: Vec<String>,
    pub host_veth: Option<String>,
    /// The owner's key (`proc/PID.START`, `named/NAME`, `cni/CONTAINER+IFNAME`).
    pub owner: String,
    pub pid: Option<u32>,
    pub age_secs: Option<u64>,
    /// live, creating, deleting or stale
    pub state: &'static str,
}

/// A lease in `netbox ls`.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseEntry {
    pub network: String,
    pub ip: String,
    pub owner: String,
    pub stale: bool,
}

/// What `netbox ls` shows.
#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub sandboxes: Vec<Entry>,
    /// Leases whose owner is gone (a live owner's leases are its entry's addresses).
    pub stale_leases: Vec<LeaseEntry>,
    /// Firewall state whose owner is gone.
    pub stale_rules: Vec<RuleEntry>,
    /// Files in netbox's stores that read as nothing netbox writes (corrupt leases, indexes,
    /// records): skipped, and removed by gc once provably unowned.
    pub garbage: Vec<String>,
}

/// Firewall state (one attachment's rules, named by its record chain in `inet netbox`) whose
/// owner is gone.
#[derive(Debug, Serialize)]
pub struct RuleEntry {
    pub table: String,
    pub owner: String,
}

/// A lab in `netbox ls`.
fn lab_entry(lab: &records::LabRecord, now: u64) -> Entry {
    Entry {
        name: Some(lab.name.clone()),
        kind: "lab",
        network: match lab.mode {
            records::LabMode::Private => "(private)".into(),
            records::LabMode::Host => "(host)".into(),
        },
        addresses: vec![],
        host_veth: None,
        owner: format!("lab {}", lab.name),
        pid: match (&lab.holder, &lab.writer) {
            (Some(Owner::Process { pid, .. }), _) | (_, Owner::Process { pid, .. }) => Some(*pid),
            _ => None,
        },
        age_secs: Some(now.saturating_sub(lab.created)),
        state: match (lab.is_stale(), lab.phase) {
            (true, _) => "stale",
            (false, Phase::Ready) => "live",
            (false, _) => "creating",
        },
    }
}

/// Every sandbox netbox owns, and leases whose owner is gone.
pub fn ls() -> Result<Listing> {
    let view = View::read(false)?;
    let mut out = Listing::default();
    let kind_name = |k: Kind| match k {
        Kind::Ns => "ns",
        Kind::Run => "run",
        Kind::Cni => "cni",
    };
    let now = records::now();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for r in &view.records {
        let stale = view.record_stale(r);
        seen.insert(owner_text(&r.owner));
        out.sandboxes.push(Entry {
            name: (r.kind != Kind::Cni).then(|| r.name.clone()),
            kind: kind_name(r.kind),
            network: r.network.clone(),
            addresses: r.addresses.clone(),
            host_veth: view
                .links
                .iter()
                .any(|l| l.name == r.host_ifname)
                .then(|| r.host_ifname.clone()),
            owner: owner_text(&r.owner),
            pid: match (&r.owner, &r.writer) {
                (Owner::Process { pid, .. }, _) => Some(*pid),
                (_, Owner::Process { pid, .. }) if r.phase != Phase::Ready => Some(*pid),
                _ => None,
            },
            age_secs: Some(now.saturating_sub(r.created)),
            state: match (stale, r.phase) {
                (true, _) => "stale",
                (false, Phase::Creating) => "creating",
                (false, Phase::Deleting) => "deleting",
                (false, Phase::Ready) => "live",
            },
        });
    }
    for lab in records::list_labs()? {
        out.sandboxes.push(lab_entry(&lab, now));
    }
    let stores = view.stores();
    let mut leases: Vec<(String, Lease)> = Vec::new();
    for store in &stores {
        let network = store
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        for lease in store.leases().unwrap_or_default() {
            leases.push((network.clone(), lease));
        }
    }
    // Attachments known by their veth only: unnamed runs, CNI attachments without a record.
    for link in &view.links {
        let Some((network, owner)) = link
            .alias
            .as_deref()
            .and_then(crate::model::owner::parse_alias)
        else {
            continue;
        };
        let key = owner_text(&owner);
        if !seen.insert(key.clone()) {
            continue;
        }
        let (kind, pid, age) = match &owner {
            Owner::Process { pid, start_time } => ("run", Some(*pid), process_age(*start_time)),
            Owner::Named { .. } => ("ns", None, None),
            Owner::Cni { .. } => ("cni", None, None),
        };
        out.sandboxes.push(Entry {
            name: match &owner {
                Owner::Named { name } => Some(name.clone()),
                _ => None,
            },
            kind,
            addresses: leases
                .iter()
                .filter(|(_, l)| l.owner == owner)
                .map(|(_, l)| l.ip.to_string())
                .collect(),
            network,
            host_veth: Some(link.name.clone()),
            owner: key,
            pid,
            age_secs: age,
            state: if view.owner_stale(&owner) {
                "stale"
            } else {
                "live"
            },
        });
    }
    if crate::firewall::nft::available() {
        for owner in crate::firewall::owners().unwrap_or_default() {
            if view.owner_stale(&owner) {
                out.stale_rules.push(RuleEntry {
                    table: crate::firewall::record_name(&owner).unwrap_or_default(),
                    owner: owner_text(&owner),
                });
            }
        }
    }
    for store in &stores {
        out.garbage
            .extend(store.garbage().iter().map(|p| p.display().to_string()));
    }
    out.garbage.extend(
        records::unreadable()
            .into_iter()
            .map(|(_, p)| p.display().to_string()),
    );
    for (network, lease) in leases {
        if view.owner_stale(&lease.owner) {
            out.stale_leases.push(LeaseEntry {
                network,
                ip: lease.ip.to_string(),
                owner: owner_text(&lease.owner),
                stale: true,
            });
        }
    }
    Ok(out)
}

/// Seconds since a process started, from its start time in clock ticks since boot.
fn process_age(start_ticks: u64) -> Option<u64> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some((uptime as u64).saturating_sub(start_ticks / hz as u64))
}
