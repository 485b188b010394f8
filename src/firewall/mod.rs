//! The firewall: masquerade, published ports, anti-spoofing and isolation with nftables, in
//! netbox's own tables only (never another program's table or chain).
//!
//! Two shared tables, `inet netbox` and `bridge netbox`, hold every attachment's state as set
//! and map elements looked up by the base chains (see [`layout`]), so neither an operation nor a
//! packet pays for the number of attachments. Every element belongs to one attachment,
//! identified by its [`Owner`], and names it in its comment; the owner's record (a chain
//! `owner-KEY` listing its elements) makes its state findable by name. So:
//! - adding is one transaction: the record and the elements, refused element by element when a
//!   live owner holds the same key (a published host port), taking over from a dead one;
//! - removing is one transaction that deletes what the record lists, needing neither the
//!   namespace nor the veth; removing twice is a no-op;
//! - the owners present are found by listing record chains ([`owners`]), and the `netbox run`
//!   owners by one small set ([`remove_dead_runs`]), which is how stale state (a crash, a
//!   SIGKILLed `netbox run`) is found and removed by GC or by the next run.
//!
//! - `sys::nfnetlink` (below): the nf_tables messages for elements and records (no `nft` per
//!   operation);
//! - `nft`: runs nft, once per network namespace, for the tables and their base chains;
//! - `layout`: the tables' content and what one attachment adds (pure functions);
//! - `sysctl`: ip_forward and route_localnet.

pub mod layout;
pub mod nft;
pub mod sysctl;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use thiserror::Error;

use crate::model::owner::{self, Owner};
use crate::sys::nfnetlink::{Batch, BatchError, Element, Family, Nfnl, EEXIST, ENOENT, ERESTART};
use layout::{RECORD_PREFIX, TABLE};

/// What the per-owner tables of netbox before the shared layout were called (still found and
/// removed, so an upgrade leaves nothing behind).
pub use crate::model::owner::TABLE_PREFIX as LEGACY_TABLE_PREFIX;
/// How often an operation re-reads and retries when the state changed under it.
const ATTEMPTS: usize = 8;

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error(
        "firewall: the nft binary was not found in PATH, /usr/sbin or /sbin \
         (install the nftables package)"
    )]
    NftMissing,
    #[error("firewall: {what}: {reason}")]
    Nft { what: String, reason: String },
    #[error("firewall: nf_tables: {what}: {reason}")]
    Netlink { what: String, reason: String },
    /// A host port a live attachment publishes already.
    #[error("firewall: host port {port} is published by {owner} already")]
    PortTaken { port: String, owner: Owner },
    /// Another key (an address, an interface) a live attachment's rules hold.
    #[error("firewall: {what} is in the rules of {owner} already")]
    Taken { what: String, owner: Owner },
    #[error("firewall: {0}")]
    Config(String),
    #[error("firewall: {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::sys::nfnetlink::NfnlError> for FirewallError {
    fn from(e: crate::sys::nfnetlink::NfnlError) -> FirewallError {
        FirewallError::Netlink {
            what: e.what,
            reason: e.reason,
        }
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Result<Protocol, FirewallError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(FirewallError::Config(format!(
                "protocol {other:?} is not supported (tcp or udp)"
            ))),
        }
    }
}

/// A published port: host port (on `host_ip`, or every local address) to sandbox port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// `[HOSTIP:]HOSTPORT:PORT[/tcp|udp]`, an IPv6 host address in brackets (`[::1]:8080:80`).
    pub fn parse(s: &str) -> Result<PortMapping, FirewallError> {
        let bad = |why: &str| {
            FirewallError::Config(format!(
                "port mapping {s:?}: {why} (expected [HOSTIP:]HOSTPORT:PORT[/tcp|udp])"
            ))
        };
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, proto)) => (
                spec,
                Protocol::parse(proto).map_err(|e| bad(&e.to_string()))?,
            ),
            None => (s, Protocol::Tcp),
        };
        let (host, container) = spec.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        let (host_ip, host_port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
                (Some(ip), port)
            }
            None => (None, host),
        };
        let port = |p: &str| -> Result<u16, FirewallError> {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port between 1 and 65535")))
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// One attachment's firewall.
#[derive(Debug, Clone)]
pub struct FirewallSpec {
    pub owner: Owner,
    /// The bridge the sandbox is a port of.
    pub bridge: String,
    /// The host end of the sandbox's veth.
    pub host_veth: String,
    /// The sandbox interface's MAC (anti-spoofing).
    pub mac: Option<[u8; 6]>,
    /// The sandbox's addresses, with their subnets' prefixes.
    pub addresses: Vec<IpNetwork>,
    /// Traffic leaving the network gets the host's address as source.
    pub masquerade: bool,
    /// Destinations masquerading leaves alone (a cluster's pod and node CIDRs).
    pub no_masquerade_to: Vec<IpNetwork>,
    pub ports: Vec<PortMapping>,
    /// Frames and packets from the sandbox must carry its own MAC and addresses.
    pub spoof_check: bool,
    /// Only the gateway is reachable on the bridge (no sandbox-to-sandbox frames).
    pub isolate: bool,
    /// New connections from outside the bridge (other networks) only through published ports.
    pub isolate_networks: bool,
    /// The sandbox cannot reach the host's own addresses (replies excepted).
    pub block_host: bool,
}

impl FirewallSpec {
    /// A spec with nothing enabled.
    pub fn new(owner: Owner, bridge: &str, host_veth: &str) -> FirewallSpec {
        FirewallSpec {
            owner,
            bridge: bridge.into(),
            host_veth: host_veth.into(),
            mac: None,
            addresses: vec![],
            masquerade: false,
            no_masquerade_to: vec![],
            ports: vec![],
            spoof_check: false,
            isolate: false,
            isolate_networks: false,
            block_host: false,
        }
    }

    /// True when the spec makes no rule at all.
    pub fn is_empty(&self) -> bool {
        layout::elements(self).is_ok_and(|e| e.is_empty())
    }

    fn validate(&self) -> Result<(), FirewallError> {
        if (self.masquerade || !self.ports.is_empty()) && self.addresses.is_empty() {
            return Err(FirewallError::Config(
                "masquerade and published ports need the sandbox to have an address".into(),
            ));
        }
        for p in &self.ports {
            if let Some(h) = p.host_ip {
                if !self.addresses.iter().any(|a| a.is_ipv4() == h.is_ipv4()) {
                    return Err(FirewallError::Config(format!(
                        "port mapping {p}: the sandbox has no {} address",
                        if h.is_ipv4() { "IPv4" } else { "IPv6" }
                    )));
                }
            }
        }
        let mut seen = HashSet::new();
        for p in &self.ports {
            if !seen.insert((p.host_ip, p.host_port, p.protocol)) {
                return Err(FirewallError::Config(format!(
                    "host port {}/{} is published twice",
                    p.host_port,
                    p.protocol.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// What applying a spec changed on the host besides the rules.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Kernel switches turned on (ip_forward, route_localnet), one sentence each.
    pub notices: Vec<String>,
}

/// An owner's key in nft's name alphabet after `prefix` (see [`owner::nft_name`]).
fn escaped_name(prefix: &str, owner: &Owner) -> Result<String, FirewallError> {
    owner::nft_name(prefix, owner).map_err(|e| FirewallError::Config(e.to_string()))
}

fn unescape_name(prefix: &str, name: &str) -> Option<Owner> {
    owner::owner_of_nft_name(prefix, name)
}

/// The name of an owner's record chain in `inet netbox`: `owner-` and the escaped key.
pub fn record_name(owner: &Owner) -> Result<String, FirewallError> {
    escaped_name(RECORD_PREFIX, owner)
}

/// The owner a record chain stands for (None for the base chains).
pub fn owner_of_record(name: &str) -> Option<Owner> {
    unescape_name(RECORD_PREFIX, name)
}

/// The owner a per-owner table of older netbox versions stands for.
pub fn owner_of_table(name: &str) -> Option<Owner> {
    unescape_name(LEGACY_TABLE_PREFIX, name)
}

/// The comment every element of `owner` carries: its key.
fn comment(owner: &Owner) -> Result<String, FirewallError> {
    let key = owner
        .key()
        .map_err(|e| FirewallError::Config(e.to_string()))?;
    if key.len() > crate::sys::nfnetlink::MAX_COMMENT {
        return Err(FirewallError::Config(format!(
            "{owner}: its key is too long for an nft comment"
        )));
    }
    Ok(key)
}

fn netlink_error(what: &str, errno: i32) -> FirewallError {
    FirewallError::Netlink {
        what: what.into(),
        reason: std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// The process's nf_tables socket, opened on first use and kept: closing a netfilter socket
/// makes the kernel wait for the clean-up of the last transaction that deleted something (an
/// RCU grace period, about 10 ms, whoever deleted), so it is closed once, by [`release`].
static SOCKET: std::sync::Mutex<Option<(Nfnl, bool)>> = std::sync::Mutex::new(None);

/// Runs `f` on the process's socket; `changes` marks that it commits something.
fn with_socket<T>(
    changes: bool,
    f: impl FnOnce(&mut Nfnl) -> Result<T, FirewallError>,
) -> Result<T, FirewallError> {
    let mut guard = SOCKET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.is_none() {
        *guard = Some((Nfnl::open()?, false));
    }
    match guard.as_mut() {
        Some((nl, changed)) => {
            *changed |= changes;
            f(nl)
        }
        None => Err(netlink_error("opening a netfilter socket", libc::EIO)),
    }
}

/// Closes the process's socket. After a change, without waiting for the kernel's clean-up (see
/// [`crate::sys::nfnetlink::Nfnl::close_in_background`]): call it when the firewall work of an operation is
/// done (`netbox run` after removing its rules, a CNI command before exiting).
pub fn release() {
    let taken = SOCKET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some((nl, true)) = taken {
        nl.close_in_background();
    }
}

/// The elements an owner's record lists; None when it has no record.
fn read_record(nl: &mut Nfnl, owner: &Owner) -> Result<Option<Vec<Element>>, FirewallError> {
    let chain = record_name(owner)?;
    Ok(nl.rule_comments(Family::Inet, TABLE, &chain)?.map(|notes| {
        notes
            .iter()
            .filter_map(|n| layout::parse_record(n))
            .collect()
    }))
}

/// One deletion in a transaction that replaces state: an element, or a record chain (with its
/// rules).
#[derive(Debug, Clone)]
enum Deletion {
    Element(Element),
    Record(String),
}

impl Deletion {
    fn add_to(&self, batch: &mut Batch) {
        match self {
            Deletion::Element(e) => batch.delete_element(TABLE, e),
            Deletion::Record(chain) => batch.delete_chain(Family::Inet, TABLE, chain),
        }
    }
}

/// The deletions that remove an owner's state: its elements, then its record.
fn deletions(nl: &mut Nfnl, owner: &Owner) -> Result<Vec<Deletion>, FirewallError> {
    Ok(match read_record(nl, owner)? {
        Some(elements) => elements
            .into_iter()
            .map(Deletion::Element)
            .chain([Deletion::Record(record_name(owner)?)])
            .collect(),
        None => vec![],
    })
}

/// Drops from `deletions` those that failed with ENOENT (gone already: removed by hand, or by
/// a concurrent remover); true when all failures were of that kind.
fn drop_gone(deletions: &mut Vec<Deletion>, errors: &[BatchError]) -> bool {
    let mut gone: Vec<usize> = Vec::new();
    for e in errors {
        match e.index {
            Some(i) if e.errno == ENOENT && i < deletions.len() => gone.push(i),
            _ => return false,
        }
    }
    gone.sort_unstable();
    gone.dedup();
    for i in gone.into_iter().rev() {
        deletions.remove(i);
    }
    true
}

/// Installs the attachment's rules in one transaction, after turning on the kernel switches
/// they need. State of the same owner left from a crash is replaced, in the same transaction;
/// so is the state of a dead `netbox run` holding one of its keys. A host port published by a
/// live owner is refused ([`FirewallError::PortTaken`]).
pub fn apply(spec: &FirewallSpec) -> Result<Applied, FirewallError> {
    spec.validate()?;
    let elements = layout::elements(spec)?;
    let mut applied = Applied::default();
    if elements.is_empty() {
        return Ok(applied);
    }
    let note = comment(&spec.owner)?;
    let record = record_name(&spec.owner)?;
    if spec.masquerade || !spec.ports.is_empty() {
        let v4 = spec.addresses.iter().any(|a| a.is_ipv4());
        let v6 = spec.addresses.iter().any(|a| a.is_ipv6());
        applied.notices = sysctl::ensure_forwarding(v4, v6)?;
    }
    if !spec.ports.is_empty() && spec.addresses.iter().any(|a| a.is_ipv4()) {
        applied
            .notices
            .extend(sysctl::ensure_route_localnet(&spec.bridge)?);
    }
    with_socket(true, |nl| apply_with(nl, spec, &elements, &note, &record))?;
    Ok(applied)
}

fn apply_with(
    nl: &mut Nfnl,
    spec: &FirewallSpec,
    elements: &[Element],
    note: &str,
    record: &str,
) -> Result<(), FirewallError> {
    // State replaced in the same transaction: this owner's own from before, dead holders'.
    let mut evicted: Vec<Owner> = Vec::new();
    let mut evict: Vec<Deletion> = Vec::new();
    for holder in overlapping_port_holders(nl, &spec.owner, elements)? {
        evict.extend(deletions(nl, &holder)?);
        evicted.push(holder);
    }
    let mut upgraded = false;
    for _ in 0..ATTEMPTS {
        let mut batch = Batch::new();
        for d in &evict {
            d.add_to(&mut batch);
        }
        let first = evict.len();
        batch.create_chain(Family::Inet, TABLE, record);
        for e in elements {
            batch.create_element(TABLE, e, note);
            batch.add_note(Family::Inet, TABLE, record, &layout::record(e));
        }
        let errors = match nl.commit(&batch)? {
            Ok(()) => return Ok(()),
            Err(errors) => errors,
        };
        let (evict_errors, errors): (Vec<BatchError>, Vec<BatchError>) = errors
            .into_iter()
            .partition(|e| e.index.is_some_and(|i| i < first));
        if !drop_gone(&mut evict, &evict_errors) {
            // What was to be replaced changed otherwise: read it again.
            evicted.clear();
            evict.clear();
        }
        let mut missing_tables = false;
        let mut holders: Vec<Owner> = Vec::new();
        for BatchError { index, errno } in errors {
            let Some(i) = index else {
                return Err(netlink_error("adding the rules", errno));
            };
            match (i - first, errno) {
                (0, EEXIST) => holders.push(spec.owner.clone()),
                (_, ENOENT) => missing_tables = true,
                (i, EEXIST) if i % 2 == 1 => {
                    let element = &elements[(i - 1) / 2];
                    let holder = nl
                        .element(TABLE, element)?
                        .and_then(|info| info.comment)
                        .and_then(|c| Owner::from_key(&c));
                    match holder {
                        Some(h) if h == spec.owner || !h.is_alive() => holders.push(h),
                        Some(h) => return Err(taken(element, h)),
                        None => {
                            // An element without an owner (not made by netbox): leave it, say so.
                            return Err(FirewallError::Config(format!(
                                "{} is in netbox's tables without an owner; remove it or run `netbox gc`",
                                layout::describe(element)
                            )));
                        }
                    }
                }
                (i, errno) => {
                    let what = match i {
                        0 => format!("creating the record chain {record}"),
                        i if i % 2 == 1 => {
                            format!("adding {}", layout::describe(&elements[(i - 1) / 2]))
                        }
                        i => format!("recording {}", layout::describe(&elements[(i - 2) / 2])),
                    };
                    return Err(netlink_error(&what, errno));
                }
            }
        }
        for holder in holders {
            if !evicted.contains(&holder) {
                evict.extend(deletions(nl, &holder)?);
                evicted.push(holder);
            }
        }
        if missing_tables && !ensure_tables(nl)? && !upgraded {
            // Both tables are there, a set is not: they were made by an older netbox.
            upgrade_tables()?;
            upgraded = true;
        }
    }
    Err(FirewallError::Netlink {
        what: format!("adding the rules of {}", spec.owner),
        reason: "the ruleset kept changing; try again".into(),
    })
}

/// Published ports that overlap without sharing a key: a port on one host address and the same
/// port on every address (either may come first). A live holder is refused; the dead ones
/// returned, to be evicted. Looks only when the spec publishes ports: one look-up per port on
/// an address, one read of the (usually empty) address-specific maps per family otherwise.
fn overlapping_port_holders(
    nl: &mut Nfnl,
    owner: &Owner,
    elements: &[Element],
) -> Result<Vec<Owner>, FirewallError> {
    let mut dead = Vec::new();
    let mut judge = |holder: Option<Owner>, element: &Element| -> Result<(), FirewallError> {
        match holder {
            Some(h) if h == *owner => Ok(()),
            Some(h) if !h.is_alive() => {
                if !dead.contains(&h) {
                    dead.push(h);
                }
                Ok(())
            }
            Some(h) => Err(taken(element, h)),
            None => Ok(()),
        }
    };
    for e in elements {
        match e.set {
            "dnat4" | "dnat6" => {
                let addr_len = if e.set == "dnat4" { 4 } else { 16 };
                let any = Element {
                    set: if e.set == "dnat4" {
                        "dnat4any"
                    } else {
                        "dnat6any"
                    },
                    key: e.key[addr_len..].to_vec(),
                    ..e.clone()
                };
                let holder = nl
                    .element(TABLE, &any)?
                    .and_then(|i| i.comment)
                    .and_then(|c| Owner::from_key(&c));
                judge(holder, e)?;
            }
            "dnat4any" | "dnat6any" => {
                let (specific, addr_len) = if e.set == "dnat4any" {
                    ("dnat4", 4)
                } else {
                    ("dnat6", 16)
                };
                for info in nl.elements(Family::Inet, TABLE, specific)? {
                    if info.key.get(addr_len..) == Some(&e.key[..]) {
                        let holder = info.comment.as_deref().and_then(Owner::from_key);
                        judge(holder, e)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(dead)
}

/// The error for a key held by a live owner.
fn taken(element: &Element, owner: Owner) -> FirewallError {
    let what = layout::describe(element);
    if element.set.starts_with("dnat") {
        FirewallError::PortTaken { port: what, owner }
    } else {
        FirewallError::Taken { what, owner }
    }
}

/// Creates the shared tables that are missing (with `nft`: the base chains' rules are nft's to
/// encode); true when one was. A concurrent creator winning the race is fine.
fn ensure_tables(nl: &mut Nfnl) -> Result<bool, FirewallError> {
    let tables = nl.tables()?;
    let mut created = false;
    for family in [Family::Inet, Family::Bridge] {
        if tables
            .iter()
            .any(|(f, name)| *f == Some(family) && name == TABLE)
        {
            continue;
        }
        created = true;
        match nft::apply_text(layout::skeleton(family)) {
            Ok(()) => {}
            Err(FirewallError::Nft { reason, .. }) if reason.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Brings tables an older netbox made up to this layout in one transaction: the missing sets
/// are added, the base chains' rules replaced; the elements (every attachment's state) stay.
fn upgrade_tables() -> Result<(), FirewallError> {
    tracing::info!("upgrading netbox's nftables tables to this version's layout");
    let text: String = [Family::Inet, Family::Bridge]
        .into_iter()
        .map(layout::upgrade)
        .collect();
    nft::apply_text(&text)
}

/// Removes every rule of `owner`, in one transaction; nothing to remove is success.
pub fn remove(owner: &Owner) -> Result<(), FirewallError> {
    with_socket(true, |nl| remove_with(nl, owner))
}

fn remove_with(nl: &mut Nfnl, owner: &Owner) -> Result<(), FirewallError> {
    let mut pending = deletions(nl, owner)?;
    if pending.is_empty() {
        return remove_legacy(nl, owner);
    }
    for _ in 0..ATTEMPTS {
        let mut batch = Batch::new();
        for d in &pending {
            d.add_to(&mut batch);
        }
        match nl.commit(&batch)? {
            Ok(()) => return Ok(()),
            // Gone already (removed by hand or concurrently): the rest, again.
            Err(errors) if drop_gone(&mut pending, &errors) => {
                if !pending.iter().any(|d| matches!(d, Deletion::Record(_))) {
                    return Ok(());
                }
            }
            Err(errors) => {
                let errno = errors.first().map_or(libc::EIO, |e| e.errno);
                return Err(netlink_error(
                    &format!("removing the rules of {owner}"),
                    errno,
                ));
            }
        }
    }
    Err(FirewallError::Netlink {
        what: format!("removing the rules of {owner}"),
        reason: "the ruleset kept changing; try again".into(),
    })
}

/// Deletes the per-owner tables older netbox versions made, if any.
fn remove_legacy(nl: &mut Nfnl, owner: &Owner) -> Result<(), FirewallError> {
    let name = escaped_name(LEGACY_TABLE_PREFIX, owner)?;
    for family in [Family::Inet, Family::Bridge] {
        let mut batch = Batch::new();
        batch.delete_table(family, &name);
        match nl.commit(&batch)? {
            Ok(()) => {}
            Err(errors) if errors.iter().all(|e| e.errno == ENOENT) => {}
            Err(errors) => {
                let errno = errors.first().map_or(libc::EIO, |e| e.errno);
                return Err(netlink_error(&format!("deleting table {name}"), errno));
            }
        }
    }
    Ok(())
}

/// Owners that have rules in the current network namespace.
pub fn owners() -> Result<Vec<Owner>, FirewallError> {
    with_socket(false, owners_with)
}

fn owners_with(nl: &mut Nfnl) -> Result<Vec<Owner>, FirewallError> {
    let mut seen = HashSet::new();
    let mut out: Vec<Owner> = nl
        .chains(Family::Inet, TABLE)?
        .iter()
        .filter_map(|c| owner_of_record(c))
        .filter(|o| seen.insert(o.clone()))
        .collect();
    for (family, name) in nl.tables()? {
        if family.is_some() && name != TABLE {
            if let Some(o) = owner_of_table(&name).filter(|o| seen.insert(o.clone())) {
                out.push(o);
            }
        }
    }
    Ok(out)
}

/// Removes the rules of every `netbox run` owner whose process is gone; how many owners. Reads
/// one set that lists only `netbox run` owners, so it costs about one netlink round trip when
/// there is nothing stale, whatever the number of other attachments.
pub fn remove_dead_runs() -> Result<usize, FirewallError> {
    let dead: Vec<Owner> = with_socket(false, |nl| {
        Ok(nl.elements(Family::Inet, TABLE, layout::RUNS)?)
    })?
    .into_iter()
    .filter_map(|e| e.comment.as_deref().and_then(Owner::from_key))
    .filter(|o| !o.is_alive())
    .collect();
    for owner in &dead {
        remove(owner)?;
    }
    Ok(dead.len())
}

/// Deletes the shared tables when no owner has state in them (GC); true when it did. A change
/// by anyone in between makes it do nothing (the transaction is bound to the generation read).
pub fn remove_unused_tables() -> Result<bool, FirewallError> {
    with_socket(true, remove_unused_tables_with)
}

fn remove_unused_tables_with(nl: &mut Nfnl) -> Result<bool, FirewallError> {
    let generation = nl.generation()?;
    if nl
        .chains(Family::Inet, TABLE)?
        .iter()
        .any(|c| c.starts_with(RECORD_PREFIX))
    {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.only_at_generation(generation);
    for (family, name) in nl.tables()? {
        if let (Some(family), true) = (family, name == TABLE) {
            batch.delete_table(family, TABLE);
        }
    }
    match nl.commit(&batch)? {
        Ok(()) => Ok(!batch.is_empty()),
        Err(errors) if errors.iter().any(|e| e.errno == ERESTART) => Ok(false),
        Err(errors) => Err(netlink_error(
            "deleting the unused netbox tables",
            errors.first().map_or(libc::EIO, |e| e.errno),
        )),
    }
}

/// Checks that the owner's state is exactly what `spec` makes: its record lists the spec's
/// elements, and each of them is in its set with the owner's comment.
pub fn check(spec: &FirewallSpec) -> Result<(), String> {
    let expected = layout::elements(spec).map_err(|e| e.to_string())?;
    with_socket(false, |nl| Ok(check_with(nl, spec, &expected))).map_err(|e| e.to_string())?
}

fn check_with(nl: &mut Nfnl, spec: &FirewallSpec, expected: &[Element]) -> Result<(), String> {
    let have = read_record(nl, &spec.owner)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let key = spec.owner.key().map_err(|e| e.to_string())?;
    let listed: HashSet<String> = have.iter().map(layout::record).collect();
    for e in expected {
        if !listed.contains(&layout::record(e)) {
            return Err(format!(
                "{} is missing from the firewall record of {}",
                layout::describe(e),
                spec.owner
            ));
        }
        let info = nl.element(TABLE, e).map_err(|e| e.to_string())?;
        if info.and_then(|i| i.comment).as_deref() != Some(key.as_str()) {
            return Err(format!(
                "{} is missing from the firewall of {}",
                layout::describe(e),
                spec.owner
            ));
        }
    }
    if have.len() != expected.len() {
        return Err(format!(
            "the firewall of {} holds {} elements, {} expected",
            spec.owner,
            have.len(),
            expected.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_round_trip_to_owners() {
        for owner in [
            Owner::Cni {
                container_id: "f".repeat(64),
                ifname: "eth0".into(),
            },
            Owner::Cni {
                container_id: "a_b.c-d".into(),
                ifname: "e+t h".into(),
            },
            Owner::Process {
                pid: 42,
                start_time: 123456,
            },
        ] {
            let name = record_name(&owner).expect("name");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./-_".contains(&b)));
            assert_eq!(owner_of_record(&name), Some(owner.clone()));
            let legacy = escaped_name(LEGACY_TABLE_PREFIX, &owner).expect("legacy");
            assert_eq!(owner_of_table(&legacy), Some(owner));
        }
        assert_eq!(owner_of_record("prerouting"), None);
        assert_eq!(owner_of_table("filter"), None);
        assert_eq!(owner_of_table("netbox-garbage"), None);
    }

    #[test]
    fn port_mappings_parse() {
        let p = PortMapping::parse("8080:80").expect("parse");
        assert_eq!((p.host_ip, p.host_port, p.container_port), (None, 8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        let p = PortMapping::parse("127.0.0.1:53:5353/udp").expect("parse");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(p.protocol, Protocol::Udp);
        let p = PortMapping::parse("[::1]:8080:80/tcp").expect("parse");
        assert_eq!(p.host_ip, Some("::1".parse().expect("ip")));
        assert_eq!(p.to_string(), "[::1]:8080:80/tcp");
        for bad in ["80", "0:80", "8080:70000", "x:80:80", "80:80/sctp", ":80"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec() -> FirewallSpec {
        let mut s = FirewallSpec::new(
            Owner::Process {
                pid: 1,
                start_time: 2,
            },
            "br0",
            "veth0",
        );
        s.addresses = vec!["10.0.0.2/24".parse().expect("cidr")];
        s
    }

    #[test]
    fn bad_specs_are_refused_before_nft_runs() {
        let mut s = spec();
        s.addresses.clear();
        s.masquerade = true;
        assert!(apply(&s).is_err());
        let mut s = spec();
        s.ports = vec![PortMapping::parse("[::1]:80:80").expect("parse")];
        assert!(apply(&s).is_err());
        let mut s = spec();
        s.ports = vec![PortMapping::parse("80:80").expect("parse"); 2];
        assert!(apply(&s).is_err());
    }
}
