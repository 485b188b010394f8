//! ADD: everything that can be refused is refused first (bridge kind, veth name, an earlier
//! attachment of the same container judged by `prior`), then the shared provisioning path
//! (addresses -> bridge -> attach, with a rollback guard), the firewall and the result. A
//! failed ADD leaves nothing behind, or the earlier attachment of the same container.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use super::{firewall_spec, io_failure, is_ours, netns_of, owner, runtime};
use crate::firewall;
use crate::model::conflist::IpamSection;
use crate::model::ipam::IpamConfig;
use crate::model::network::NetworkSpec;
use crate::model::owner::{cni_alias, cni_host_ifname, cni_host_mac, Owner};
use crate::provision::attach;
use crate::provision::connect::{self, Connect, Connected};
use crate::provision::ipam::IpamBackend;
use crate::provision::leases::Store;
use crate::provision::records;
use crate::provision::rollback::Rollback;
use crate::sys::netlink::{Link, Netlink};
use crate::sys::netns::NetNs;
use crate::usecase::cni::conf::{Env, NetConf};
use crate::usecase::cni::ipam::{open_store, CniIpam, Reported};
use crate::usecase::cni::prior::{self, Stale};
use crate::usecase::cni::result::{CniResult, Interface, IpConfig, RouteEntry};
use crate::usecase::cni::{code, delegate, CniError};

pub(super) fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let start = std::time::Instant::now();
    let (ns, ns_path) = netns_of(env, code::INVALID_ENVIRONMENT)?;
    // The socket inside is opened on its own thread while this one records the attachment.
    let inside = Netlink::connect_in_background(&ns).map_err(io_failure)?;
    // Refused before anything is looked at, rather than rolled back.
    if conf.wants_firewall() {
        firewall::nft::binary()?;
    }
    if let IpamSection::Delegated { plugin, .. } = conf.net.ipam() {
        delegate::find(plugin, env)?;
    }
    if let IpamSection::Builtin(cfg) = conf.net.ipam() {
        open_store(conf, cfg)?.check_request(cfg, &conf.ips)?;
    }
    // gc waits while an ADD is at work, and the record says what this one makes before it
    // makes anything (see `provision::records`).
    let _lock = records::Lock::shared().map_err(io_failure)?;
    let previous = match records::load_cni(&owner(env)) {
        Ok(p) => p,
        Err(e) => {
            // Unreadable: judged from the links alone, and replaced by this ADD's record.
            tracing::warn!(%e, "reading the attachment's record");
            None
        }
    };
    let mut record = cni_record(env, conf, &ns, &ns_path)?;
    // Without an earlier record (the usual case) this one is written while the socket inside
    // opens; otherwise only once the earlier attachment is judged stale.
    let early = previous.is_none();
    if early {
        record.save().map_err(io_failure)?;
    }
    let added = match runtime() {
        Ok(rt) => rt.block_on(add_recorded(
            env,
            conf,
            stdin,
            inside,
            &ns,
            &ns_path,
            previous,
            &mut record,
            start,
        )),
        Err(e) => Err((e, false)),
    };
    match &added {
        Ok(_) => {}
        // A refused or failed ADD leaves no record of its own; a refusal before the earlier
        // attachment was judged stale leaves that one's record as it was.
        Err((_, touched)) if *touched || early => {
            if let Err(e) = record.remove() {
                tracing::warn!(%e, "removing the record of a failed ADD");
            }
        }
        Err(_) => {}
    }
    added.map_err(|(e, _)| e)
}

fn cni_record(
    env: &Env,
    conf: &NetConf,
    ns: &NetNs,
    ns_path: &str,
) -> Result<records::Record, CniError> {
    let owner = owner(env);
    Ok(records::Record {
        kind: records::Kind::Cni,
        name: owner.key()?,
        network: conf.net.name.clone(),
        data_dir: match conf.net.ipam() {
            IpamSection::Builtin(cfg) => cfg.data_dir(),
            _ => crate::model::ipam::default_data_dir(),
        },
        owner,
        phase: records::Phase::Creating,
        writer: Owner::current_process()?,
        netns: PathBuf::from(ns_path),
        netns_inode: Some(
            ns.inode()
                .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?,
        ),
        host_ifname: cni_host_ifname(&env.container_id, &env.ifname),
        addresses: vec![],
        created: records::now(),
    })
}

/// Errors of [`add_recorded`] say whether the record was (re)written.
type AddError = (CniError, bool);

#[allow(clippy::too_many_arguments)]
async fn add_recorded(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    inside: crate::sys::netlink::PendingConnection,
    ns: &NetNs,
    ns_path: &str,
    previous: Option<records::Record>,
    record: &mut records::Record,
    start: std::time::Instant,
) -> Result<CniResult, AddError> {
    let phase = |what: &str| tracing::debug!(us = start.elapsed().as_micros() as u64, "{what}");
    let refused = |e: CniError| (e, false);
    let host = Netlink::connect().map_err(|e| refused(e.into()))?;
    let sandbox = inside.finish().map_err(|e| refused(io_failure(e)))?;
    phase("connected");
    let host_name = cni_host_ifname(&env.container_id, &env.ifname);
    let (inside_link, bridge, existing) = futures::try_join!(
        sandbox.link_by_name(&env.ifname),
        host.link_by_name(&conf.net.bridge),
        host.link_by_name(&host_name)
    )
    .map_err(|e| refused(e.into()))?;
    // Everything that can be refused is refused before anything is changed.
    if let Some(b) = bridge
        .as_ref()
        .filter(|b| b.kind.as_deref() != Some("bridge"))
    {
        return Err(refused(CniError::config(format!(
            "bridge: \"{}\" exists but is a {}, not a bridge",
            b.name,
            b.kind.as_deref().unwrap_or("device of unknown kind")
        ))));
    }
    if let Some(taken) = existing.as_ref().filter(|l| !is_ours(l, env)) {
        return Err(refused(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "host interface \"{host_name}\" (the name derived from container {} and {}) is \
                 taken by {}",
                env.container_id,
                env.ifname,
                taken
                    .alias
                    .as_deref()
                    .unwrap_or("a link netbox did not make")
            ),
        )));
    }
    let stale = prior::Found {
        container_id: &env.container_id,
        ifname: &env.ifname,
        ns_path,
        ns_inode: record.netns_inode.unwrap_or_default(),
        record: previous,
        host: existing,
        inside: inside_link,
    }
    .judge()
    .map_err(refused)?;
    // The network as every front end reads it; its addresses come from the IPAM backend.
    let network = NetworkSpec::from_bridge_conf(&conf.net, no_ranges(), None);
    if let (IpamSection::Builtin(cfg), Some(bridge), false) =
        (conf.net.ipam(), &bridge, conf.net.force_address)
    {
        attach::check_bridge_addresses(&host, &network, bridge, &cfg.first_gateways())
            .await
            .map_err(|e| refused(e.into()))?;
    }
    phase("checked");
    if let Some(stale) = stale {
        clear_stale(env, conf, stdin, &host, stale).await;
        record.save().map_err(|e| (io_failure(e), true))?;
    }
    let created_bridge = bridge.is_none();
    let ipam = CniIpam::new(env, conf, stdin).map_err(|e| (e, true))?;
    let owner = owner(env);
    // The undo of each step sits next to it; the veth, rules and bridge are undone below.
    let mut rollback = Rollback::new();
    let made = async {
        let connected = connect::connect(
            Connect {
                host: &host,
                sandbox: &sandbox,
                ns,
                network: &network,
                bridge,
                host_ifname: host_name.clone(),
                ifname: env.ifname.clone(),
                mtu: conf.net.link_mtu,
                mac: conf.mac,
                host_mac: Some(cni_host_mac(&env.container_id, &env.ifname)),
                alias: cni_alias(&conf.net.name, &env.container_id, &env.ifname),
                lock_port: conf.net.mac_spoof_chk,
            },
            &ipam,
            &owner,
            &mut rollback,
        )
        .await?;
        phase("attached");
        let result = finish(env, conf, &host, ns_path, &connected).await?;
        record.phase = records::Phase::Ready;
        record.addresses = result.ips.iter().map(|i| i.address.to_string()).collect();
        // A record that says `creating` would let the next ADD take this attachment for the
        // leftovers of a dead one: the ADD fails instead.
        record.save().map_err(io_failure)?;
        Ok::<_, CniError>(result)
    };
    let made = made.await;
    if made.is_ok() {
        rollback.commit();
    } else {
        // Addresses go back first, so a failed ADD leaves nothing behind.
        drop(rollback);
    }
    match made {
        Ok(result) => Ok(result),
        Err(e) => {
            // The attachment undid itself (attach's rollback, or the veth removal here).
            if let Err(undo) = host.delete_link(&host_name).await {
                tracing::warn!(%undo, "removing the veth after a failed ADD");
            }
            if conf.wants_firewall() {
                if let Err(undo) = firewall::remove(&owner) {
                    tracing::warn!(%undo, "removing rules after a failed ADD");
                }
            }
            if created_bridge {
                remove_unused_bridge(&host, &conf.net.bridge).await;
            }
            Err((e, true))
        }
    }
}

/// Clears what a provably stale earlier attachment left (see `prior`): its veth (and the peer
/// with it), rules, addresses. Best effort: what remains is the new ADD's to fail on.
async fn clear_stale(env: &Env, conf: &NetConf, stdin: &[u8], host: &Netlink, stale: Stale) {
    tracing::info!(
        why = stale.why,
        "clearing a stale attachment of the same container"
    );
    if let Some(link) = &stale.host {
        if let Err(e) = host.delete_link_index(link.index, &link.name).await {
            tracing::warn!(%e, "removing a stale veth");
        }
    }
    if firewall::nft::available() {
        if let Err(e) = firewall::remove(&owner(env)) {
            tracing::warn!(%e, "removing a stale attachment's rules");
        }
    }
    let released = match (conf.net.ipam(), &stale.record) {
        // The leases are where the earlier ADD put them.
        (_, Some(r))
            if matches!(conf.net.ipam(), IpamSection::Builtin(_)) || r.network != conf.net.name =>
        {
            Store::open(&r.data_dir, &r.network)
                .and_then(|s| s.release(&owner(env)))
                .map(|_| ())
                .map_err(CniError::from)
        }
        _ => CniIpam::new(env, conf, stdin).and_then(|ipam| ipam.release(&owner(env))),
    };
    if let Err(e) = released {
        tracing::warn!(%e, "releasing a stale attachment's addresses");
    }
}

/// Removes a bridge this ADD created, unless another attachment has joined it since.
async fn remove_unused_bridge(host: &Netlink, name: &str) {
    let Ok(Some(bridge)) = host.link_by_name(name).await else {
        return;
    };
    let ports = match host.links().await {
        Ok(links) => links.iter().any(|l| l.controller == Some(bridge.index)),
        Err(_) => true,
    };
    if !ports {
        if let Err(e) = host.delete_link_index(bridge.index, &bridge.name).await {
            tracing::warn!(%e, "removing the bridge a failed ADD created");
        }
    }
}

fn interface(link: &Link, sandbox: Option<&str>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac_string(),
        mtu: link.mtu,
        sandbox: sandbox.map(str::to_string),
        socket_path: None,
        pci_id: None,
    }
}

/// Appends this plugin's result to the previous plugin's, as chained plugins do.
fn chain(prev: &CniResult, mut ours: CniResult) -> CniResult {
    let shift = prev.interfaces.len();
    for ip in &mut ours.ips {
        ip.interface = ip.interface.map(|i| i + shift);
    }
    let mut out = prev.clone();
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips);
    out.routes.extend(ours.routes);
    if !ours.dns.is_empty() {
        out.dns = ours.dns;
    }
    out
}

/// An IPAM configuration without ranges: with the plugin's IPAM backends the addresses,
/// gateways and routes come from the backend, never from the network's ranges.
fn no_ranges() -> IpamConfig {
    IpamConfig {
        range_sets: vec![],
        routes: vec![],
        data_dir: None,
        resolv_conf: None,
    }
}

/// After the attach: the firewall, then the result with the bridge as it is now (its MAC may
/// have changed with its new port).
async fn finish(
    env: &Env,
    conf: &NetConf,
    host: &Netlink,
    ns_path: &str,
    connected: &Connected<Reported>,
) -> Result<CniResult, CniError> {
    let bridge_now = host
        .link_by_index(connected.attachment.bridge.index)
        .await?;
    if conf.wants_firewall() {
        let spec = firewall_spec(
            env,
            conf,
            connected.attachment.sandbox.mac,
            connected.addressing.addresses(),
        );
        // The notices go to stderr: stdout carries the result.
        for notice in firewall::apply(&spec)?.notices {
            eprintln!("netbox-cni: {notice}");
        }
    }
    Ok(cni_result(conf, connected, bridge_now, ns_path))
}

/// The result: bridge, host veth and sandbox interface, the addresses on the latter, the
/// default routes through the gateways and IPAM's routes, chained after prevResult.
fn cni_result(
    conf: &NetConf,
    connected: &Connected<Reported>,
    bridge_now: Option<Link>,
    ns_path: &str,
) -> CniResult {
    let attached = &connected.attachment;
    let bridge = bridge_now.unwrap_or_else(|| attached.bridge.clone());
    let mut result = CniResult {
        interfaces: vec![
            interface(&bridge, None),
            interface(&attached.host, None),
            interface(&attached.sandbox, Some(ns_path)),
        ],
        ips: connected
            .addressing
            .assigned
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(2),
            })
            .collect(),
        routes: vec![],
        dns: connected.extra.dns.clone(),
    };
    if conf.net.is_default_gateway {
        for v4 in [true, false] {
            if let Some(gw) = attached
                .gateways
                .iter()
                .find(|g| g.is_ipv4() == v4)
                .copied()
            {
                let any: IpAddr = if v4 {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                if let Ok(dst) = IpNetwork::new(any, 0) {
                    result.routes.push(RouteEntry::new(dst, Some(gw)));
                }
            }
        }
    }
    result.routes.extend(
        connected
            .extra
            .routes
            .iter()
            .filter(|r| !(conf.net.is_default_gateway && r.dst.prefix() == 0))
            .cloned(),
    );
    match &conf.prev_result {
        Some(prev) => chain(prev, result),
        None => result,
    }
}
