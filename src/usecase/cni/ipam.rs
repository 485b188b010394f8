//! The plugin's IPAM backends: netbox's store (with host-local's `resolvConf`), an IPAM plugin
//! on CNI_PATH (delegated, as the reference bridge does), or none (layer 2 only). All three
//! answer through [`IpamBackend`], so ADD attaches the same way whatever the source.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::conf::{Env, NetConf};
use super::delegate;
use super::result::{Dns, RouteEntry};
use super::CniError;
use crate::model::conflist::IpamSection;
use crate::model::ipam::range::{from_u128, to_u128};
use crate::model::ipam::IpamConfig;
use crate::model::owner::Owner;
use crate::provision::ipam::{Addressing, Assigned, BuiltinIpam, IpamBackend};
use crate::provision::leases::Store;

/// What the result reports besides the addresses: DNS, and the routes as IPAM gave them.
pub struct Reported {
    pub dns: Dns,
    pub routes: Vec<RouteEntry>,
}

/// The backend a configuration names, for one invocation.
pub enum CniIpam<'a> {
    Builtin {
        ipam: BuiltinIpam<'a>,
        conf: &'a NetConf,
    },
    Delegated {
        plugin: &'a str,
        env: &'a Env,
        stdin: &'a [u8],
        conf: &'a NetConf,
    },
    None {
        conf: &'a NetConf,
    },
}

impl<'a> CniIpam<'a> {
    pub fn new(env: &'a Env, conf: &'a NetConf, stdin: &'a [u8]) -> Result<CniIpam<'a>, CniError> {
        Ok(match conf.net.ipam() {
            IpamSection::Builtin(cfg) => CniIpam::Builtin {
                ipam: BuiltinIpam {
                    store: open_store(conf, cfg)?,
                    config: cfg,
                    requested: conf.ips.clone(),
                },
                conf,
            },
            IpamSection::Delegated { plugin, .. } => CniIpam::Delegated {
                plugin,
                env,
                stdin,
                conf,
            },
            IpamSection::None => CniIpam::None { conf },
        })
    }
}

/// The lease store of a configuration's built-in IPAM.
pub fn open_store(conf: &NetConf, cfg: &IpamConfig) -> Result<Store, CniError> {
    Ok(Store::open(&cfg.data_dir(), conf.name())?)
}

impl IpamBackend for CniIpam<'_> {
    type Error = CniError;
    type Extra = Reported;

    fn allocate(&self, owner: &Owner) -> Result<(Addressing, Reported), CniError> {
        match self {
            CniIpam::Builtin { ipam, conf } => {
                let (addressing, ()) = ipam.allocate(owner)?;
                let mut dns = conf.dns.clone();
                if let (true, Some(path)) = (dns.is_empty(), &ipam.config.resolv_conf) {
                    // host-local reads it too; an unreadable file is a configuration error.
                    match std::fs::read_to_string(path) {
                        Ok(text) => dns = Dns::from_resolv_conf(&text),
                        Err(e) => {
                            let _ = ipam.release(owner);
                            return Err(CniError::config(format!(
                                "ipam.resolvConf {}: {e}",
                                path.display()
                            )));
                        }
                    }
                }
                let routes = addressing
                    .routes
                    .iter()
                    .map(|(dst, gw)| RouteEntry::new(*dst, *gw))
                    .collect();
                Ok((addressing, Reported { dns, routes }))
            }
            CniIpam::Delegated {
                plugin,
                env,
                stdin,
                conf,
            } => {
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
                let mut addressing = delegated_addressing(&addresses);
                addressing.routes = result.routes.iter().map(|r| (r.dst, r.gw)).collect();
                let dns = if result.dns.is_empty() {
                    conf.dns.clone()
                } else {
                    result.dns
                };
                let routes = result.routes;
                Ok((addressing, Reported { dns, routes }))
            }
            CniIpam::None { conf } => Ok((
                Addressing::default(),
                Reported {
                    dns: conf.dns.clone(),
                    routes: vec![],
                },
            )),
        }
    }

    fn release(&self, owner: &Owner) -> Result<(), CniError> {
        match self {
            CniIpam::Builtin { ipam, .. } => Ok(ipam.release(owner)?),
            CniIpam::Delegated {
                plugin,
                env,
                stdin,
                conf,
            } => delegate::call(plugin, "DEL", env, stdin, conf.version).map(|_| ()),
            CniIpam::None { .. } => Ok(()),
        }
    }
}

/// A delegated plugin's addresses: each routes through its gateway or, as the reference bridge
/// computes it, its subnet's first address, which the bridge carries.
fn delegated_addressing(addresses: &[(IpNetwork, Option<IpAddr>)]) -> Addressing {
    let mut out = Addressing::default();
    for (address, gateway) in addresses {
        let subnet = IpNetwork::new(address.network(), address.prefix()).unwrap_or(*address);
        let first = from_u128(subnet.network(), to_u128(subnet.network()) + 1);
        let via = gateway.unwrap_or(first);
        out.assigned.push(Assigned {
            address: *address,
            gateway: *gateway,
            via: Some(via),
        });
        if let Ok(gw) = IpNetwork::new(via, subnet.prefix()) {
            out.bridge_gateways.push(gw);
        }
    }
    out
}
