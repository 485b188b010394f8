//! Named sandboxes: `netbox ns add/del`, `netbox exec`, and the name a `netbox run --name`
//! carries while it lives. They are iproute2 named namespaces (/run/netns/NAME), so
//! `ip netns list` and `ip netns exec` see them, each with a record (see `state`) written before
//! anything is made.
//!
//! `ns add` and `ns del` hold the lifecycle lock shared for their whole duration, so `netbox gc`
//! (exclusive) only ever sees their records complete, or left by a process that died.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::attach::{self, AttachSpec};
use crate::ipam::{Owner, Store};
use crate::netlink::Netlink;
use crate::netns::{self, NetNs};
use crate::network::{self, NetworkSpec};
use crate::sandbox::{self, RunSpec};
use crate::state::{self, Kind, Lock, Phase, Record};
use crate::{Error, Result};

/// What `netbox ns add` makes.
#[derive(Debug, Clone)]
pub struct AddSpec {
    pub name: String,
    pub network: String,
    pub subnet: Option<IpNetwork>,
    pub ips: Vec<IpNetwork>,
    pub ifname: String,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// Creates a persistent sandbox: a named namespace attached to the network. On failure nothing
/// of it stays; if the process is killed, `netbox gc` removes what it made.
pub fn add(spec: &AddSpec) -> Result<Record> {
    netns::validate_name(&spec.name)?;
    if !sandbox::privileged() {
        return Err(Error::Config(
            "netbox ns add needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN on the host)".into(),
        ));
    }
    let network = network::resolve(&spec.network, &network::conf_dirs(), spec.subnet)?;
    let _lock = Lock::shared()?;
    // What a `ns add` or `ns del` of this name that died left is cleared first, as gc would.
    if let Some(old) = state::load_sandbox(&spec.name)? {
        if old.kind == Kind::Ns && old.phase != Phase::Ready && !old.writer.is_alive() {
            dismantle(&old)?;
        }
    }
    for tmp in state::dead_tmp_files() {
        let _ = state::remove_tmp(&tmp);
    }
    if netns::named_path(&spec.name).exists() {
        return Err(netns::NetnsError::Exists {
            name: spec.name.clone(),
        }
        .into());
    }
    let owner = Owner::Named {
        name: spec.name.clone(),
    };
    let mut record = Record {
        kind: Kind::Ns,
        name: spec.name.clone(),
        network: network.name.clone(),
        data_dir: sandbox::data_dir(&network),
        owner: owner.clone(),
        phase: Phase::Creating,
        writer: Owner::current_process()?,
        netns: netns::named_path(&spec.name),
        netns_inode: None,
        host_ifname: attach::random_host_ifname(),
        addresses: vec![],
        created: state::now(),
    };
    // The record reserves the name before the namespace exists.
    if !record.claim()? {
        return Err(Error::Config(format!(
            "sandbox \"{}\" exists (netbox ns del {0}; or netbox gc if its creation was interrupted)",
            spec.name
        )));
    }
    let ns = match netns::create_named(&spec.name) {
        Ok(ns) => ns,
        Err(e) => {
            let _ = record.remove();
            return Err(e.into());
        }
    };
    match wire(spec, &network, &mut record, &ns) {
        Ok(()) => Ok(record),
        Err(e) => {
            if let Err(undo) = dismantle(&record) {
                tracing::warn!(%undo, "rollback of sandbox {} failed; netbox gc retries", spec.name);
            }
            Err(e)
        }
    }
}

fn wire(spec: &AddSpec, network: &NetworkSpec, record: &mut Record, ns: &NetNs) -> Result<()> {
    record.netns_inode = Some(ns.inode()?);
    record.save()?;
    let store = Store::open(&record.data_dir, &network.name)?;
    let addresses = sandbox::allocate(&store, network, &record.owner, &spec.ips)?;
    record.addresses = addresses.iter().map(|a| a.to_string()).collect();
    sandbox::runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let inside = Netlink::connect_in(ns)?;
        let (bridge, routes) =
            futures::try_join!(host.link_by_name(&network.bridge), host.routes())?;
        network.check_no_overlap(&routes, bridge.as_ref().map(|b| b.index))?;
        let bridge = attach::ensure_bridge(&host, network, bridge).await?;
        let attach_spec = AttachSpec {
            host_ifname: record.host_ifname.clone(),
            ifname: spec.ifname.clone(),
            addresses,
            routes: network.ipam.routes.iter().map(|r| (r.dst, r.gw)).collect(),
            mtu: spec.mtu,
            mac: spec.mac,
            owner: state::alias(&network.name, &record.owner)?,
        };
        attach::attach_to_bridge(&host, &inside, ns, network, &bridge, &attach_spec).await?;
        Ok::<_, Error>(())
    })?;
    record.phase = Phase::Ready;
    record.save()
}

/// Removes a sandbox made by `ns add`. Idempotent: an unknown name is success (false), unless
/// /run/netns holds it without a record of netbox's: that namespace is not netbox's to delete.
pub fn del(name: &str) -> Result<bool> {
    netns::validate_name(name)?;
    let _lock = Lock::shared()?;
    let Some(mut record) = state::load_sandbox(name)? else {
        if netns::named_path(name).exists() {
            return Err(Error::Config(format!(
                "namespace \"{name}\" was not made by netbox (use ip netns del {name})"
            )));
        }
        return Ok(false);
    };
    if record.kind == Kind::Run && record.owner.is_alive() {
        return Err(Error::Config(format!(
            "sandbox \"{name}\" belongs to a running netbox run ({}); it goes when its command ends",
            record.owner
        )));
    }
    record.phase = Phase::Deleting;
    record.writer = Owner::current_process()?;
    record.save()?;
    dismantle(&record)?;
    Ok(true)
}

/// Removes everything a record stands for: the host veth (if its alias names the record's
/// owner), the named namespace (if it is the recorded one), the leases, then the record. Keeps
/// going past failures and reports the first.
pub(crate) fn dismantle(record: &Record) -> Result<()> {
    // Deleting a veth costs the kernel 15-30 ms. When the namespace goes, the kernel removes
    // the pair with it; bringing the host end down first cuts the sandbox off the bridge at
    // once, so its address is safe to hand out again even while a process still holds the
    // namespace (gc deletes such a veth once its owner's record is gone).
    let lazy = record.kind != Kind::Cni && owns_named_ns(record);
    let veth = sandbox::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            remove_veth(&host, record, lazy).await
        })
    });
    let ns = if record.kind == Kind::Cni {
        Ok(()) // the runtime's namespace
    } else {
        remove_named_ns(record)
    };
    let leases = Store::open(&record.data_dir, &record.network)
        .and_then(|s| s.release(&record.owner))
        .map(|_| ())
        .map_err(Error::from);
    veth.and(ns).and(leases)?;
    record.remove()
}

/// Deletes the record's host veth (or, with `lazy`, only brings it down) when it is there and
/// its alias names the record's owner.
pub(crate) async fn remove_veth(host: &Netlink, record: &Record, lazy: bool) -> Result<()> {
    if let Some(link) = host.link_by_name(&record.host_ifname).await? {
        let ours = link
            .alias
            .as_deref()
            .and_then(state::parse_alias)
            .is_some_and(|(_, owner)| owner == record.owner);
        if ours && lazy {
            host.set_down(&link).await?;
        } else if ours {
            host.delete_link_index(link.index, &link.name).await?;
        }
    }
    Ok(())
}

/// True when /run/netns/NAME is the recorded namespace, or the record was written before the
/// namespace existed (it reserved the name: creation was cut short).
fn owns_named_ns(record: &Record) -> bool {
    let current = netns::named_inode(&record.name);
    match record.netns_inode {
        Some(inode) => current == Some(inode),
        // Only a record of an unfinished creation lacks the inode (a ready one always has it).
        None => record.kind == Kind::Ns && record.phase != Phase::Ready && current.is_some(),
    }
}

/// Unmounts /run/netns/NAME when it is netbox's (see [`owns_named_ns`]).
pub(crate) fn remove_named_ns(record: &Record) -> Result<()> {
    let current = netns::named_inode(&record.name);
    let ours = owns_named_ns(record);
    // An empty mount point left by a creation that was cut short is the record's too.
    let leftover = current.is_none()
        && match record.kind {
            Kind::Ns => record.phase != Phase::Ready,
            Kind::Run => true,
            Kind::Cni => false,
        }
        && netns::named_path(&record.name).is_file();
    if ours || leftover {
        netns::delete_named(&record.name)?;
    }
    Ok(())
}

/// Runs CMD in a named namespace (made by netbox or by `ip netns add`).
pub fn exec(name: &str, spec: &RunSpec) -> Result<i32> {
    netns::validate_name(name)?;
    let ns = NetNs::open(&netns::named_path(name)).map_err(|e| match &e {
        netns::NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Config(format!(
                "no sandbox named \"{name}\" (netbox ls lists them)"
            ))
        }
        _ => e.into(),
    })?;
    let addrs: Vec<IpAddr> = state::load_sandbox(name)?
        .map(|r| {
            r.addresses
                .iter()
                .filter_map(|a| a.parse::<IpNetwork>().ok().map(|n| n.ip()))
                .collect()
        })
        .unwrap_or_default();
    sandbox::exec_in(spec, &ns, &addrs)
}

/// `netbox run --name`: records the sandbox, then names its namespace. Undoes both on failure.
pub(crate) fn publish_run(
    name: &str,
    network: &NetworkSpec,
    owner: &Owner,
    ns: &NetNs,
    host_ifname: &str,
    addresses: &[IpNetwork],
) -> Result<Record> {
    let record = Record {
        kind: Kind::Run,
        name: name.into(),
        network: network.name.clone(),
        data_dir: sandbox::data_dir(network),
        owner: owner.clone(),
        phase: Phase::Ready,
        writer: owner.clone(),
        netns: netns::named_path(name),
        netns_inode: Some(ns.inode()?),
        host_ifname: host_ifname.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        created: state::now(),
    };
    if !record.claim()? {
        return Err(Error::Config(format!(
            "sandbox \"{name}\" exists (netbox ls lists sandboxes)"
        )));
    }
    if let Err(e) = netns::bind_named(name, ns) {
        let _ = record.remove();
        return Err(e.into());
    }
    Ok(record)
}

/// The end of a `netbox run --name`: the name goes, and with the last process the namespace.
pub(crate) fn unpublish_run(record: &Record) {
    if let Err(e) = remove_named_ns(record).and_then(|()| record.remove()) {
        tracing::warn!(%e, "removing the name of sandbox {}; netbox gc retries", record.name);
    }
}
