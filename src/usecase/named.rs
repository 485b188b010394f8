//! Named sandboxes: `netbox ns add/del`, `netbox exec`, and the name a `netbox run --name`
//! carries while it lives. They are iproute2 named namespaces (/run/netns/NAME), so
//! `ip netns list` and `ip netns exec` see them, each with a record (see `provision::records`) written before
//! anything is made.
//!
//! `ns add` and `ns del` hold the lifecycle lock shared for their whole duration, so `netbox gc`
//! (exclusive) only ever sees their records complete, or left by a process that died.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::network::{self, NetworkSpec};
use crate::model::owner::Owner;
use crate::provision::attach;
use crate::provision::command::{exec_in, RunSpec};
use crate::provision::connect::{self, Connect};
use crate::provision::ipam::{self, BuiltinIpam};
use crate::provision::publish::dismantle;
use crate::provision::records::{self, Kind, Lock, Phase, Record};
use crate::provision::rollback::Rollback;
use crate::sys::netlink::Netlink;
use crate::sys::netns::{self, NetNs};
use crate::sys::privilege::privileged;
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
    if !privileged() {
        return Err(Error::Config(
            "netbox ns add needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN on the host)".into(),
        ));
    }
    let network = network::resolve(&spec.network, &network::conf_dirs(), spec.subnet)?;
    let _lock = Lock::shared()?;
    // What a `ns add` or `ns del` of this name that died left is cleared first, as gc would.
    if let Some(old) = records::load_sandbox(&spec.name)? {
        if old.kind == Kind::Ns && old.phase != Phase::Ready && !old.writer.is_alive() {
            dismantle(&old)?;
        }
    }
    for tmp in records::dead_tmp_files() {
        let _ = records::remove_tmp(&tmp);
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
        data_dir: network.ipam.data_dir(),
        owner: owner.clone(),
        phase: Phase::Creating,
        writer: Owner::current_process()?,
        netns: netns::named_path(&spec.name),
        netns_inode: None,
        host_ifname: attach::random_host_ifname(),
        addresses: vec![],
        created: records::now(),
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
    let ipam = BuiltinIpam::open(network, ipam::requested_in(network, &spec.ips)?)?;
    // A failure is undone as a whole by the caller (`dismantle`, from the record).
    let mut rollback = Rollback::new();
    let connected = crate::sys::runtime::current_thread()?.block_on(async {
        let host = Netlink::connect()?;
        let inside = Netlink::connect_in(ns)?;
        let bridge = connect::lookup_bridge(&host, network).await?;
        connect::connect(
            Connect {
                host: &host,
                sandbox: &inside,
                ns,
                network,
                bridge,
                host_ifname: record.host_ifname.clone(),
                ifname: spec.ifname.clone(),
                mtu: spec.mtu,
                mac: spec.mac,
                host_mac: None,
                alias: crate::model::owner::alias(&network.name, &record.owner)?,
                // `ns add` makes no firewall rules, and with them no anti-spoofing.
                lock_port: false,
            },
            &ipam,
            &record.owner,
            &mut rollback,
        )
        .await
    });
    rollback.commit();
    let connected = connected?;
    record.addresses = connected
        .attachment
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    record.phase = Phase::Ready;
    record.save()
}

/// Removes a sandbox made by `ns add`. Idempotent: an unknown name is success (false), unless
/// /run/netns holds it without a record of netbox's: that namespace is not netbox's to delete.
pub fn del(name: &str) -> Result<bool> {
    netns::validate_name(name)?;
    let _lock = Lock::shared()?;
    let Some(mut record) = records::load_sandbox(name)? else {
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
    let addrs: Vec<IpAddr> = records::load_sandbox(name)?
        .map(|r| {
            r.addresses
                .iter()
                .filter_map(|a| a.parse::<IpNetwork>().ok().map(|n| n.ip()))
                .collect()
        })
        .unwrap_or_default();
    exec_in(spec, &ns, &addrs)
}
