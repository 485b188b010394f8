//! The operations: ADD, DEL, CHECK, GC, STATUS, over the same `attach` code and lease store as
//! `netbox run`.
//!
//! State lives in two places only, both found again from (container id, ifname) without any file
//! of the plugin's own: the lease store (owner `Cni { container_id, ifname }`) and the host veth,
//! whose name is a hash of the pair and whose alias records the owner. So DEL needs neither the
//! namespace nor a prevResult, and GC finds every attachment of a network by listing links.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::conf::{Command, Env, Ipam, NetConf};
use super::delegate;
use super::prior::{self, Stale};
use super::result::{CniResult, Dns, Interface, IpConfig, RouteEntry};
use super::{code, CniError, VersionResult};
use crate::firewall::{self, FirewallSpec};
use crate::model::ipam::{IpamConfig, Range};
use crate::model::network::NetworkSpec;
use crate::model::owner::{cni_alias, cni_host_ifname, cni_host_mac, Owner, CNI_ALIAS_PREFIX};
use crate::provision::attach::{self, AttachSpec};
use crate::provision::leases::Store;
use crate::provision::records;
use crate::sys::netlink::{Link, Netlink};
use crate::sys::netns::NetNs;

/// Runs the operation `env.command` asks for; the JSON to print, if any.
pub fn execute(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => add(env, conf, stdin).map(|r| Some(r.to_json(conf.version))),
        Command::Del => del(env, conf, stdin).map(|()| None),
        Command::Check => check(env, conf, stdin).map(|()| None),
        Command::Gc => gc(env, conf, stdin).map(|()| None),
        Command::Status => status(env, conf, stdin).map(|()| None),
        Command::Version => serde_json::to_value(VersionResult::answering(stdin))
            .map(Some)
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string())),
    }
}

/// True when `link` is the host end netbox made for this attachment: its alias says so, or it
/// carries the attachment's derived name and MAC.
fn is_ours(link: &Link, env: &Env) -> bool {
    if let Some(alias) = &link.alias {
        return alias.starts_with(CNI_ALIAS_PREFIX);
    }
    link.name == cni_host_ifname(&env.container_id, &env.ifname)
        && link.mac == Some(cni_host_mac(&env.container_id, &env.ifname))
}

fn owner(env: &Env) -> Owner {
    Owner::Cni {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// The attachment's firewall as the configuration asks for it.
fn firewall_spec(
    env: &Env,
    conf: &NetConf,
    mac: Option<[u8; 6]>,
    addresses: Vec<IpNetwork>,
) -> FirewallSpec {
    let mut spec = FirewallSpec::new(
        owner(env),
        &conf.bridge,
        &cni_host_ifname(&env.container_id, &env.ifname),
    );
    spec.mac = mac;
    spec.addresses = addresses;
    spec.masquerade = conf.ip_masq;
    spec.ports = conf.port_mappings.clone();
    spec.spoof_check = conf.mac_spoof_chk;
    spec.isolate = conf.isolate;
    spec.isolate_networks = conf.isolate_networks;
    spec.block_host = conf.block_host;
    spec
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    Ok(crate::sys::runtime::current_thread()?)
}

fn open_store(conf: &NetConf, cfg: &IpamConfig) -> Result<Store, CniError> {
    Ok(Store::open(&cfg.data_dir(), &conf.name)?)
}

fn netns_of(env: &Env, missing_code: u32) -> Result<(NetNs, String), CniError> {
    let path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
    let ns =
        NetNs::open(path).map_err(|e| CniError::new(missing_code, format!("CNI_NETNS: {e}")))?;
    Ok((ns, path.display().to_string()))
}

/// Addresses, routes and DNS for one attachment, wherever they came from.
struct Addressing {
    addresses: Vec<(IpNetwork, Option<IpAddr>)>,
    routes: Vec<RouteEntry>,
    dns: Dns,
    /// The ranges the bridge's gateway addresses and default routes are computed from.
    ipam: IpamConfig,
}

fn ipam_add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Addressing, CniError> {
    match &conf.ipam {
        Ipam::Builtin(cfg) => {
            let store = open_store(conf, cfg)?;
            let leases = store.allocate(cfg, &owner(env), &conf.ips)?;
            let mut dns = conf.dns.clone();
            if let (true, Some(path)) = (dns.is_empty(), &cfg.resolv_conf) {
                // host-local reads it too; an unreadable file is a configuration error there.
                match std::fs::read_to_string(path) {
                    Ok(text) => dns = Dns::from_resolv_conf(&text),
                    Err(e) => {
                        let _ = store.release(&owner(env));
                        return Err(CniError::config(format!(
                            "ipam.resolvConf {}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            Ok(Addressing {
                addresses: leases.iter().map(|l| (l.address, l.gateway)).collect(),
                routes: cfg
                    .routes
                    .iter()
                    .map(|r| RouteEntry::new(r.dst, r.gw))
                    .collect(),
                dns,
                ipam: cfg.clone(),
            })
        }
        Ipam::Delegated { plugin } => {
            let result =
                delegate::call(plugin, "ADD", env, stdin, conf.version)?.unwrap_or_default();
            if let Some(all) = result.ips.iter().find(|i| i.address.prefix() == 0) {
                // Its gateway would claim every address on the host's bridge.
                let _ = delegate::call(plugin, "DEL", env, stdin, conf.version);
                return Err(CniError::config(format!(
                    "IPAM plugin {plugin:?} handed out {}: a subnet that covers every address",
                    all.address
                )));
            }
            let addresses: Vec<(IpNetwork, Option<IpAddr>)> =
                result.ips.iter().map(|i| (i.address, i.gateway)).collect();
            let dns = if result.dns.is_empty() {
                conf.dns.clone()
            } else {
                result.dns
            };
            Ok(Addressing {
                ipam: ranges_of(&addresses),
                addresses,
                routes: result.routes,
                dns,
            })
        }
        Ipam::None => Ok(Addressing {
            addresses: vec![],
            routes: vec![],
            dns: conf.dns.clone(),
            ipam: ranges_of(&[]),
        }),
    }
}

/// Ranges standing for a delegated plugin's addresses: one per address, whose gateway is the
/// plugin's or, as the reference bridge computes it, the subnet's first address.
fn ranges_of(addresses: &[(IpNetwork, Option<IpAddr>)]) -> IpamConfig {
    let range_sets = addresses
        .iter()
        .map(|(addr, gw)| {
            let subnet = IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr);
            let first = crate::model::ipam::range::from_u128(
                subnet.network(),
                crate::model::ipam::range::to_u128(subnet.network()) + 1,
            );
            vec![Range {
                subnet,
                range_start: addr.ip(),
                range_end: addr.ip(),
                gateway: Some(gw.unwrap_or(first)),
            }]
        })
        .collect();
    IpamConfig {
        range_sets,
        routes: vec![],
        data_dir: None,
        resolv_conf: None,
    }
}

fn ipam_del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Builtin(cfg) => {
            open_store(conf, cfg)?.release(&owner(env))?;
            Ok(())
        }
        Ipam::Delegated { plugin } => {
            delegate::call(plugin, "DEL", env, stdin, conf.version).map(|_| ())
        }
        Ipam::None => Ok(()),
    }
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let start = std::time::Instant::now();
    let (ns, ns_path) = netns_of(env, code::INVALID_ENVIRONMENT)?;
    // The socket inside is opened on its own thread while this one records the attachment.
    let inside = Netlink::connect_in_background(&ns).map_err(io_failure)?;
    // Refused before anything is looked at, rather than rolled back.
    if conf.wants_firewall() {
        firewall::nft::binary()?;
    }
    if let Ipam::Delegated { plugin } = &conf.ipam {
        delegate::find(plugin, env)?;
    }
    if let Ipam::Builtin(cfg) = &conf.ipam {
        open_store(conf, cfg)?.check_request(cfg, &conf.ips)?;
    }
    // gc waits while an ADD is at work, and the record says what this one makes before it
    // makes anything (see `state`).
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

fn io_failure(e: crate::Error) -> CniError {
    CniError::new(code::IO_FAILURE, e.to_string())
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
        network: conf.name.clone(),
        data_dir: match &conf.ipam {
            Ipam::Builtin(cfg) => cfg.data_dir(),
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
        host.link_by_name(&conf.bridge),
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
    if let (Ipam::Builtin(cfg), Some(bridge), false) = (&conf.ipam, &bridge, conf.force_address) {
        attach::check_bridge_addresses(&host, &network_spec(conf, cfg.clone()), bridge)
            .await
            .map_err(|e| refused(e.into()))?;
    }
    phase("checked");
    if let Some(stale) = stale {
        clear_stale(env, conf, stdin, &host, stale).await;
        record.save().map_err(|e| (io_failure(e), true))?;
    }
    let created_bridge = bridge.is_none();
    let made = async {
        let addressing = ipam_add(env, conf, stdin)?;
        phase("addresses allocated");
        let wired = wire(env, conf, &host, &sandbox, ns, ns_path, bridge, &addressing).await;
        let result = wired.and_then(|result| {
            record.phase = records::Phase::Ready;
            record.addresses = result.ips.iter().map(|i| i.address.to_string()).collect();
            // A record that says `creating` would let the next ADD take this attachment for
            // the leftovers of a dead one: the ADD fails instead.
            record.save().map_err(io_failure)?;
            Ok(result)
        });
        if result.is_err() {
            // Addresses go back too, so a failed ADD leaves nothing behind.
            if let Err(undo) = ipam_del(env, conf, stdin) {
                tracing::warn!(%undo, "releasing addresses after a failed ADD");
            }
        }
        result
    };
    match made.await {
        Ok(result) => Ok(result),
        Err(e) => {
            // The attachment undid itself (attach's rollback, or the veth removal here).
            if let Err(undo) = host.delete_link(&host_name).await {
                tracing::warn!(%undo, "removing the veth after a failed ADD");
            }
            if conf.wants_firewall() {
                if let Err(undo) = firewall::remove(&owner(env)) {
                    tracing::warn!(%undo, "removing rules after a failed ADD");
                }
            }
            if created_bridge {
                remove_unused_bridge(&host, &conf.bridge).await;
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
    let released = match (&conf.ipam, &stale.record) {
        // The leases are where the earlier ADD put them.
        (_, Some(r)) if matches!(conf.ipam, Ipam::Builtin(_)) || r.network != conf.name => {
            Store::open(&r.data_dir, &r.network)
                .and_then(|s| s.release(&owner(env)))
                .map(|_| ())
                .map_err(CniError::from)
        }
        _ => ipam_del(env, conf, stdin),
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

fn network_spec(conf: &NetConf, ipam: IpamConfig) -> NetworkSpec {
    NetworkSpec {
        name: conf.name.clone(),
        bridge: conf.bridge.clone(),
        mtu: conf.mtu,
        is_gateway: conf.is_gateway,
        is_default_gateway: conf.is_default_gateway,
        ipam,
        source: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn wire(
    env: &Env,
    conf: &NetConf,
    host: &Netlink,
    sandbox: &Netlink,
    ns: &NetNs,
    ns_path: &str,
    bridge: Option<Link>,
    addressing: &Addressing,
) -> Result<CniResult, CniError> {
    let network = network_spec(conf, addressing.ipam.clone());
    let bridge = attach::ensure_bridge_forced(host, &network, bridge, conf.force_address).await?;
    tracing::debug!("bridge ready");
    if conf.promisc_mode {
        host.set_promiscuous(&bridge, true).await?;
    }
    let gateway_of = |v4: bool| {
        addressing
            .addresses
            .iter()
            .find(|(a, gw)| a.is_ipv4() == v4 && gw.is_some())
            .and_then(|(_, gw)| *gw)
    };
    // A route without a gateway goes through the gateway of its family, as in the reference.
    let routes: Vec<(IpNetwork, Option<IpAddr>)> = addressing
        .routes
        .iter()
        .filter(|r| !(conf.is_default_gateway && r.dst.prefix() == 0))
        .map(|r| (r.dst, r.gw.or_else(|| gateway_of(r.dst.is_ipv4()))))
        .collect();
    // With enabledad, IPv6 addresses (and the routes that need them) are added after the attach,
    // with DAD; attach adds its addresses without.
    let later = |v6: bool| conf.enable_dad && v6;
    let (dad_routes, routes): (Vec<_>, Vec<_>) = routes
        .into_iter()
        .partition(|(dst, _)| later(dst.is_ipv6()));
    let spec = AttachSpec {
        host_ifname: cni_host_ifname(&env.container_id, &env.ifname),
        ifname: env.ifname.clone(),
        addresses: addressing
            .addresses
            .iter()
            .map(|a| a.0)
            .filter(|a| !later(a.is_ipv6()))
            .collect(),
        routes,
        mtu: conf.mtu,
        mac: conf.mac,
        host_mac: Some(cni_host_mac(&env.container_id, &env.ifname)),
        owner: cni_alias(&conf.name, &env.container_id, &env.ifname),
    };
    let mut attached =
        attach::attach_to_bridge(host, sandbox, ns, &network, &bridge, &spec).await?;
    tracing::debug!("attached");
    for (address, gateway) in addressing.addresses.iter().filter(|a| later(a.0.is_ipv6())) {
        sandbox
            .add_address_dad(&attached.sandbox, *address, true)
            .await?;
        if let (true, Some(gw)) = (conf.is_default_gateway, gateway) {
            let any = IpNetwork::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
                .map_err(|e| CniError::config(e.to_string()))?;
            sandbox.add_route(&attached.sandbox, any, Some(*gw)).await?;
            attached.gateways.push(*gw);
        }
    }
    for (dst, gw) in &dad_routes {
        sandbox.add_route(&attached.sandbox, *dst, *gw).await?;
    }
    // The bridge's MAC may have changed with its new port: report the one it has now.
    let hairpin = async {
        if conf.hairpin_mode {
            host.set_hairpin(&attached.host, true).await
        } else {
            Ok(())
        }
    };
    let (bridge_now, hairpin) = futures::join!(host.link_by_index(bridge.index), hairpin);
    hairpin?;
    let bridge = bridge_now?.unwrap_or(bridge);
    if conf.wants_firewall() {
        let spec = firewall_spec(
            env,
            conf,
            attached.sandbox.mac,
            addressing.addresses.iter().map(|a| a.0).collect(),
        );
        // The notices go to stderr: stdout carries the result.
        for notice in firewall::apply(&spec)?.notices {
            eprintln!("netbox-cni: {notice}");
        }
    }
    let mut result = CniResult {
        interfaces: vec![
            interface(&bridge, None),
            interface(&attached.host, None),
            interface(&attached.sandbox, Some(ns_path)),
        ],
        ips: addressing
            .addresses
            .iter()
            .map(|(address, gateway)| IpConfig {
                address: *address,
                gateway: *gateway,
                interface: Some(2),
            })
            .collect(),
        routes: vec![],
        dns: addressing.dns.clone(),
    };
    if conf.is_default_gateway {
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
        addressing
            .routes
            .iter()
            .filter(|r| !(conf.is_default_gateway && r.dst.prefix() == 0))
            .cloned(),
    );
    Ok(match &conf.prev_result {
        Some(prev) => chain(prev, result),
        None => result,
    })
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

/// DEL: best effort, idempotent, independent of the namespace and of prevResult. Both the veth
/// and the addresses are released even when one of them fails; the first failure is reported.
///
/// Deleting a veth costs the kernel 15-30 ms (it waits for RCU grace periods), most of a DEL.
/// So the host end is first brought down, which cuts the container off the bridge at once and
/// makes its address safe to hand out again, and the deletion itself is left to a detached
/// helper process (see [`REAP_ENV`]) that the runtime does not wait for. When the helper
/// cannot be started, the veth is deleted here.
fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let name = cni_host_ifname(&env.container_id, &env.ifname);
    // DEL must succeed whatever the state directory's condition: the lock only keeps gc from
    // judging this attachment mid-way, and gc removing it too is harmless.
    let _lock = records::Lock::shared()
        .map_err(|e| tracing::warn!(%e, "DEL without the lifecycle lock"))
        .ok();
    let veth = runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            if let Some(link) = host.link_by_name(&name).await? {
                if is_ours(&link, env) {
                    host.set_down(&link).await?;
                    if !spawn_reaper(&link) {
                        // Removing the host end removes the pair, addresses and routes inside.
                        host.delete_link_index(link.index, &link.name).await?;
                    }
                }
            }
            Ok::<_, CniError>(())
        })
    });
    let addresses = ipam_del(env, conf, stdin);
    // A DEL gets the ADD's configuration: rules exist only if it asks for some (GC removes those
    // of attachments whose configuration changed in between). Networks without any firewall
    // option pay nothing for it.
    let rules = if conf.wants_firewall() {
        firewall::remove(&owner(env)).map_err(CniError::from)
    } else {
        Ok(())
    };
    let result = veth.and(addresses).and(rules);
    if result.is_ok() {
        // Once the attachment is gone; a DEL that failed is retried by the runtime, or the
        // record lets gc finish it.
        if let Ok(key) = owner(env).key() {
            if let Err(e) = std::fs::remove_file(records::record_path(records::Kind::Cni, &key)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%e, "removing the attachment's record");
                }
            }
        }
    }
    result
}

/// Environment variable that makes `netbox-cni` a reaper: `INDEX:NAME:MAC` (MAC in plain hex)
/// of a host veth to delete, once, if it is still that netbox-cni link.
pub const REAP_ENV: &str = "NETBOX_CNI_REAP";

fn hex(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a detached reaper for `link`: the plugin binary itself, in its own process group,
/// with no stdio (a runtime waits for the plugin's stdout to close, so none may be inherited).
fn spawn_reaper(link: &Link) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    std::process::Command::new(exe)
        .env_clear()
        .env(
            REAP_ENV,
            format!(
                "{}:{}:{}",
                link.index,
                link.name,
                link.mac.map(|m| hex(&m)).unwrap_or_default()
            ),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .is_ok()
}

/// The reaper's work (see [`REAP_ENV`]). Index, name and MAC are checked again, and the alias
/// when there is one, so a link made since under the same name is never touched.
pub fn reap(job: &str) -> Result<(), CniError> {
    let mut parts = job.splitn(3, ':');
    let (Some(index), Some(name), mac) = (
        parts.next().and_then(|i| i.parse::<u32>().ok()),
        parts.next(),
        parts.next().unwrap_or_default(),
    ) else {
        return Err(CniError::env(format!(
            "{REAP_ENV}: {job:?} is not INDEX:NAME:MAC"
        )));
    };
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        if let Some(link) = host.link_by_index(index).await? {
            let ours = link
                .alias
                .as_deref()
                .is_none_or(|a| a.starts_with(CNI_ALIAS_PREFIX));
            let same = link.name == name && link.mac.map(|m| hex(&m)).unwrap_or_default() == mac;
            if ours && same {
                host.delete_link_index(link.index, &link.name).await?;
            }
        }
        Ok(())
    })
}

fn mismatch(msg: String) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

/// CHECK: the interface, its addresses and routes, the host veth on its bridge, and the leases,
/// against prevResult.
fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult"))?;
    let (ns, ns_path) = netns_of(env, code::UNKNOWN_CONTAINER)?;
    let host_name = cni_host_ifname(&env.container_id, &env.ifname);
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let sandbox = Netlink::connect_in(&ns)?;
        let (link, veth, bridge, routes) = futures::try_join!(
            sandbox.link_by_name(&env.ifname),
            host.link_by_name(&host_name),
            host.link_by_name(&conf.bridge),
            sandbox.routes()
        )?;
        let link = link.ok_or_else(|| {
            mismatch(format!(
                "interface \"{}\" not found in {ns_path}",
                env.ifname
            ))
        })?;
        let mine = prev
            .interfaces
            .iter()
            .position(|i| i.name == env.ifname && i.sandbox.is_some());
        if let Some(want) = mine.and_then(|i| prev.interfaces[i].mac.as_deref()) {
            let have = link.mac_string().unwrap_or_default();
            if !want.eq_ignore_ascii_case(&have) {
                return Err(mismatch(format!(
                    "interface \"{}\" has MAC {have}, prevResult says {want}",
                    env.ifname
                )));
            }
        }
        let have: Vec<IpNetwork> = sandbox
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        let ips: Vec<&IpConfig> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == mine)
            .collect();
        for ip in &ips {
            if !have.contains(&ip.address) {
                return Err(mismatch(format!(
                    "address {} is not on \"{}\"",
                    ip.address, env.ifname
                )));
            }
        }
        for r in &prev.routes {
            let found = routes.iter().any(|k| {
                k.dst == r.dst && (r.gw.is_none() || k.gateway == r.gw || k.gateway.is_none())
            });
            if !found {
                return Err(mismatch(format!(
                    "route to {}{} is missing in {ns_path}",
                    r.dst,
                    r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
                )));
            }
        }
        let veth =
            veth.ok_or_else(|| mismatch(format!("host interface \"{host_name}\" not found")))?;
        let bridge =
            bridge.ok_or_else(|| mismatch(format!("bridge \"{}\" not found", conf.bridge)))?;
        if !veth.up {
            // DEL brings it down before a detached helper deletes it.
            return Err(mismatch(format!("host interface \"{host_name}\" is down")));
        }
        if veth.controller != Some(bridge.index) {
            return Err(mismatch(format!(
                "host interface \"{host_name}\" is not a port of bridge \"{}\"",
                conf.bridge
            )));
        }
        if conf.wants_firewall() {
            let spec = firewall_spec(env, conf, link.mac, ips.iter().map(|i| i.address).collect());
            firewall::check(&spec).map_err(mismatch)?;
        }
        match &conf.ipam {
            Ipam::Builtin(cfg) => {
                let leases = open_store(conf, cfg)?.leases_of(&owner(env))?;
                for ip in ips
                    .iter()
                    .filter(|ip| cfg.set_of(ip.address.ip()).is_some())
                {
                    if !leases.iter().any(|l| l.ip == ip.address.ip()) {
                        return Err(mismatch(format!(
                            "address {} is not leased to container {} ({})",
                            ip.address.ip(),
                            env.container_id,
                            env.ifname
                        )));
                    }
                }
                Ok(())
            }
            Ipam::Delegated { plugin } => {
                delegate::call(plugin, "CHECK", env, stdin, conf.version).map(|_| ())
            }
            Ipam::None => Ok(()),
        }
    })
}

/// GC: every attachment of this network not in the valid list loses its veth and leases.
fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let keep: HashSet<String> = conf
        .valid_attachments
        .iter()
        .map(|(id, ifname)| cni_host_ifname(id, ifname))
        .collect();
    let prefix = format!("{CNI_ALIAS_PREFIX}{}:", conf.name);
    // Host ends not yet named by an alias (an ADD killed right after making them) are known by
    // their records: derived name and MAC.
    let unaliased: HashSet<(String, [u8; 6])> = records::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.kind == records::Kind::Cni && r.network == conf.name)
        .filter_map(|r| match r.owner {
            Owner::Cni {
                container_id,
                ifname,
            } => Some((
                cni_host_ifname(&container_id, &ifname),
                cni_host_mac(&container_id, &ifname),
            )),
            _ => None,
        })
        .collect();
    let veths = runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            let mut first_error = None;
            for link in host.links().await? {
                let ours = match (&link.alias, link.mac) {
                    (Some(a), _) => a.starts_with(&prefix),
                    (None, Some(mac)) => unaliased.contains(&(link.name.clone(), mac)),
                    (None, None) => false,
                };
                if ours && !keep.contains(&link.name) {
                    if let Err(e) = host.delete_link_index(link.index, &link.name).await {
                        first_error.get_or_insert(CniError::from(e));
                    }
                }
            }
            // Rules of attachments not kept: those of this network (by their veth's alias) and
            // those whose veth is gone (their network cannot be told, and they serve nothing).
            if firewall::nft::available() {
                let links = host.links().await?;
                for stale in firewall::owners()? {
                    let Owner::Cni {
                        container_id,
                        ifname,
                    } = &stale
                    else {
                        continue;
                    };
                    let veth = cni_host_ifname(container_id, ifname);
                    if keep.contains(&veth) {
                        continue;
                    }
                    let elsewhere = links.iter().any(|l| {
                        l.name == veth
                            && l.alias.as_deref().is_some_and(|a| !a.starts_with(&prefix))
                    });
                    if !elsewhere {
                        if let Err(e) = firewall::remove(&stale) {
                            first_error.get_or_insert(CniError::from(e));
                        }
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    });
    let leases = match &conf.ipam {
        Ipam::Builtin(cfg) => {
            let valid: Vec<Owner> = conf
                .valid_attachments
                .iter()
                .map(|(id, ifname)| Owner::Cni {
                    container_id: id.clone(),
                    ifname: ifname.clone(),
                })
                .collect();
            open_store(conf, cfg)?
                .gc(&valid)
                .map(|_| ())
                .map_err(CniError::from)
        }
        Ipam::Delegated { plugin } => delegated_gc(plugin, env, conf, stdin),
        Ipam::None => Ok(()),
    };
    // The records of the attachments the runtime no longer knows go with them.
    if veths.is_ok() && leases.is_ok() {
        for record in records::list().unwrap_or_default() {
            let valid = conf.valid_attachments.iter().any(|(id, ifname)| {
                record.owner
                    == Owner::Cni {
                        container_id: id.clone(),
                        ifname: ifname.clone(),
                    }
            });
            if record.kind == records::Kind::Cni && record.network == conf.name && !valid {
                if let Err(e) = record.remove() {
                    tracing::warn!(%e, "removing the record of a collected attachment");
                }
            }
        }
    }
    veths.and(leases)
}

/// GC of a delegated IPAM: forwarded to a delegate that speaks GC (1.1.0, as the spec asks of
/// plugins with delegates); an older one (host-local before 1.2) gets a DEL for each attachment
/// of this network netbox recorded and the runtime no longer lists, which releases its leases.
fn delegated_gc(plugin: &str, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if delegate::speaks(plugin, "GC", env, conf.version)? {
        return delegate::call_negotiated(plugin, "GC", env, stdin, conf.version).map(|_| ());
    }
    let mut first_error = None;
    for record in records::list().unwrap_or_default() {
        let Owner::Cni {
            container_id,
            ifname,
        } = &record.owner
        else {
            continue;
        };
        let valid = conf
            .valid_attachments
            .iter()
            .any(|(id, i)| id == container_id && i == ifname);
        if record.kind != records::Kind::Cni || record.network != conf.name || valid {
            continue;
        }
        let stale = Env {
            command: Command::Del,
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            netns: None,
            raw_args: String::new(),
            args: Default::default(),
            raw_path: env.raw_path.clone(),
        };
        if let Err(e) = delegate::call(plugin, "DEL", &stale, stdin, conf.version) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// STATUS: 50 when an ADD would fail for want of addresses or of a bridge, or when the
/// delegated IPAM plugin says it cannot serve one.
fn status(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if let Ipam::Delegated { plugin } = &conf.ipam {
        // A delegate that cannot be run cannot serve an ADD either.
        let answered =
            delegate::speaks(plugin, "STATUS", env, conf.version).and_then(|speaks| match speaks {
                true => delegate::call_negotiated(plugin, "STATUS", env, stdin, conf.version),
                false => Ok(None),
            });
        if let Err(e) = answered {
            let code = match e.code {
                code::NOT_AVAILABLE_DEGRADED => code::NOT_AVAILABLE_DEGRADED,
                _ => code::NOT_AVAILABLE,
            };
            return Err(CniError::new(code, e.msg).with_details(e.details));
        }
    }
    let bridge = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        Ok::<_, CniError>(host.link_by_name(&conf.bridge).await?)
    })?;
    if let Some(b) = bridge.filter(|b| b.kind.as_deref() != Some("bridge")) {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "bridge \"{}\" cannot be made: the name is taken by a {}",
                b.name,
                b.kind.as_deref().unwrap_or("device of unknown kind")
            ),
        ));
    }
    if conf.wants_firewall() {
        if let Err(e) = firewall::nft::binary() {
            return Err(CniError::new(code::NOT_AVAILABLE, e.to_string()));
        }
    }
    if let Ipam::Builtin(cfg) = &conf.ipam {
        let leases = open_store(conf, cfg)?.leases()?;
        for (i, set) in cfg.range_sets.iter().enumerate() {
            let used = leases
                .iter()
                .filter(|l| cfg.set_of(l.ip) == Some(i))
                .count() as u128;
            if used >= capacity(set) {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!(
                        "network \"{}\": no free address left in {}",
                        conf.name,
                        set.iter()
                            .map(Range::describe)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Addresses a range set can hand out: its size less the reserved addresses inside it (the
/// network, broadcast and gateway addresses can only sit at its ends or be the gateway).
fn capacity(set: &[Range]) -> u128 {
    set.iter()
        .map(|r| {
            let mut reserved: Vec<IpAddr> = [Some(r.range_start), Some(r.range_end), r.gateway]
                .into_iter()
                .flatten()
                .filter(|ip| r.contains(*ip) && r.is_reserved(*ip))
                .collect();
            reserved.dedup();
            reserved.sort();
            reserved.dedup();
            r.size().saturating_sub(reserved.len() as u128)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_out_gateway_network_and_broadcast() {
        let r = Range::new("10.0.0.0/29".parse().expect("cidr"), None, None, None).expect("range");
        // .1-.6 minus the gateway .1
        assert_eq!(capacity(&[r]), 5);
    }
}
