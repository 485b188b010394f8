//! CHECK: the attachment as it is against prevResult.

use ipnetwork::IpNetwork;

use super::{firewall_spec, netns_of, owner, runtime};
use crate::firewall;
use crate::model::conflist::IpamSection;
use crate::model::owner::cni_host_ifname;
use crate::sys::netlink::Netlink;
use crate::usecase::cni::conf::{Env, NetConf};
use crate::usecase::cni::delegate;
use crate::usecase::cni::ipam::open_store;
use crate::usecase::cni::result::IpConfig;
use crate::usecase::cni::{code, CniError};

fn mismatch(msg: String) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

/// CHECK: the interface, its addresses and routes, the host veth on its bridge, and the leases,
/// against prevResult.
pub(super) fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
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
            host.link_by_name(&conf.net.bridge),
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
            bridge.ok_or_else(|| mismatch(format!("bridge \"{}\" not found", conf.net.bridge)))?;
        if !veth.up {
            // DEL brings it down before a detached helper deletes it.
            return Err(mismatch(format!("host interface \"{host_name}\" is down")));
        }
        if veth.controller != Some(bridge.index) {
            return Err(mismatch(format!(
                "host interface \"{host_name}\" is not a port of bridge \"{}\"",
                conf.net.bridge
            )));
        }
        if conf.wants_firewall() {
            let spec = firewall_spec(env, conf, link.mac, ips.iter().map(|i| i.address).collect());
            firewall::check(&spec).map_err(mismatch)?;
        }
        match conf.net.ipam() {
            IpamSection::Builtin(cfg) => {
                let leases = open_store(conf, cfg)?.leases_of(&owner(env))?;
                // Without the runtime's ranges (not passed on this CHECK) every address is
                // taken to be the store's.
                let ours =
                    |ip: std::net::IpAddr| cfg.range_sets.is_empty() || cfg.set_of(ip).is_some();
                for ip in ips.iter().filter(|ip| ours(ip.address.ip())) {
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
            IpamSection::Delegated { plugin, .. } => {
                delegate::call(plugin, "CHECK", env, stdin, conf.version).map(|_| ())
            }
            IpamSection::None => Ok(()),
        }
    })
}
