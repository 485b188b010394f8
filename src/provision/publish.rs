//! Publishing a sandbox under a name, and the teardown of what a record stands for: the one
//! place that knows how a named namespace, its record, its host veth and its leases go
//! together. Used by `netbox run --name`, `netbox ns add/del` and `netbox gc`.

use ipnetwork::IpNetwork;

use crate::model::network::NetworkSpec;
use crate::model::owner::Owner;
use crate::provision::leases::Store;
use crate::provision::records::{self, Kind, Phase, Record};
use crate::sys::netlink::Netlink;
use crate::sys::netns::{self, NetNs};
use crate::{Error, Result};

/// Removes everything a record stands for: the host veth (if its alias names the record's
/// owner), the named namespace (if it is the recorded one), the leases, then the record. Keeps
/// going past failures and reports the first.
pub fn dismantle(record: &Record) -> Result<()> {
    // Deleting a veth costs the kernel 15-30 ms. When the namespace goes, the kernel removes
    // the pair with it; bringing the host end down first cuts the sandbox off the bridge at
    // once, so its address is safe to hand out again even while a process still holds the
    // namespace (gc deletes such a veth once its owner's record is gone).
    let lazy = record.kind != Kind::Cni && owns_named_ns(record);
    let veth = crate::sys::runtime::current_thread().and_then(|rt| {
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
            .and_then(crate::model::owner::parse_alias)
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
pub fn remove_named_ns(record: &Record) -> Result<()> {
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

/// `netbox run --name`: records the sandbox, then names its namespace. Undoes both on failure.
pub fn publish_run(
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
        data_dir: network.ipam.data_dir(),
        owner: owner.clone(),
        phase: Phase::Ready,
        writer: owner.clone(),
        netns: netns::named_path(name),
        netns_inode: Some(ns.inode()?),
        host_ifname: host_ifname.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        created: records::now(),
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
pub fn unpublish_run(record: &Record) {
    if let Err(e) = remove_named_ns(record).and_then(|()| record.remove()) {
        tracing::warn!(%e, "removing the name of sandbox {}; netbox gc retries", record.name);
    }
}

/// Removes the names of `netbox run --name` sandboxes whose run was killed: their namespace
/// mount would keep the namespace (and its veth) alive. Called at every run; cheap when there
/// are no named sandboxes. Never fails the run.
pub fn reap_dead_runs() {
    let Ok(entries) = std::fs::read_dir(records::run_dir().join("sandboxes")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Ok(Some(record)) = records::load_sandbox(name) else {
            continue;
        };
        if record.kind == Kind::Run && !record.owner.is_alive() {
            if let Err(e) = remove_named_ns(&record).and_then(|()| record.remove()) {
                tracing::warn!(%e, "removing the name of a killed run's sandbox {name}");
            }
        }
    }
    for tmp in records::dead_tmp_files() {
        let _ = records::remove_tmp(&tmp);
    }
}
