//! IPAM backends: where a sandbox's addresses come from. [`IpamBackend`] is the seam; netbox's
//! own lease store is [`BuiltinIpam`], and netbox-cni adds a delegated IPAM plugin (in
//! `usecase::cni`). Every backend answers with an [`Addressing`]: the addresses with their
//! gateways, the extra routes, and the gateways the bridge carries, so that attaching needs no
//! knowledge of where they came from.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::ipam::IpamConfig;
use crate::model::network::NetworkSpec;
use crate::model::owner::Owner;
use crate::provision::leases::Store;
use crate::{Error, Result};

/// One address handed to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The address with its subnet's prefix.
    pub address: IpNetwork,
    /// The gateway the backend reports for it.
    pub gateway: Option<IpAddr>,
    /// The gateway its default route goes through (the reported one, or the backend's default).
    pub via: Option<IpAddr>,
}

/// What an IPAM backend hands out for one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addressing {
    pub assigned: Vec<Assigned>,
    /// Extra routes (destination, gateway); a route without a gateway goes through the gateway
    /// of the sandbox's address of its family, as with host-local's routes.
    pub routes: Vec<(IpNetwork, Option<IpAddr>)>,
    /// The gateway addresses (with their subnet's prefix) a gateway bridge carries.
    pub bridge_gateways: Vec<IpNetwork>,
}

impl Addressing {
    /// The addresses, with their prefix.
    pub fn addresses(&self) -> Vec<IpNetwork> {
        self.assigned.iter().map(|a| a.address).collect()
    }

    /// The extra routes as they are added: gateways filled in, and default routes left out
    /// when the network gives its own default route (`isDefaultGateway`).
    pub fn routes_to_add(&self, default_gateway: bool) -> Vec<(IpNetwork, Option<IpAddr>)> {
        self.routes
            .iter()
            .filter(|(dst, _)| !(default_gateway && dst.prefix() == 0))
            .map(|(dst, gw)| {
                let family_gw = || {
                    self.assigned
                        .iter()
                        .filter(|a| a.address.is_ipv4() == dst.is_ipv4())
                        .find_map(|a| a.gateway)
                };
                (*dst, gw.or_else(family_gw))
            })
            .collect()
    }
}

/// A source of addresses. `allocate` and `release` are keyed by the owner, so a release needs
/// nothing from the allocation (a crash between the two is recovered by owner).
pub trait IpamBackend {
    type Error: From<Error>;
    /// What the backend reports besides addresses (a CNI IPAM plugin's DNS).
    type Extra;
    fn allocate(
        &self,
        owner: &Owner,
    ) -> std::result::Result<(Addressing, Self::Extra), Self::Error>;
    fn release(&self, owner: &Owner) -> std::result::Result<(), Self::Error>;
}

/// netbox's own lease store, with a network's IPAM configuration.
#[derive(Debug, Clone)]
pub struct BuiltinIpam<'a> {
    pub store: Store,
    pub config: &'a IpamConfig,
    pub requested: Vec<IpAddr>,
}

impl<'a> BuiltinIpam<'a> {
    /// The store of `network`, handing out `requested` addresses when given.
    pub fn open(network: &'a NetworkSpec, requested: Vec<IpAddr>) -> Result<BuiltinIpam<'a>> {
        Ok(BuiltinIpam {
            store: Store::open(&network.ipam.data_dir(), &network.name)?,
            config: &network.ipam,
            requested,
        })
    }

    /// Routes and gateways of the configuration around `assigned`.
    fn addressing(&self, assigned: Vec<Assigned>) -> Addressing {
        Addressing {
            assigned,
            routes: self.config.routes.iter().map(|r| (r.dst, r.gw)).collect(),
            bridge_gateways: self.config.first_gateways(),
        }
    }
}

impl IpamBackend for BuiltinIpam<'_> {
    type Error = Error;
    type Extra = ();

    fn allocate(&self, owner: &Owner) -> Result<(Addressing, ())> {
        let leases = self.store.allocate(self.config, owner, &self.requested)?;
        let assigned = leases
            .into_iter()
            .map(|a| Assigned {
                address: a.address,
                gateway: a.gateway,
                via: self.config.gateway_for(a.address.ip()),
            })
            .collect();
        Ok((self.addressing(assigned), ()))
    }

    fn release(&self, owner: &Owner) -> Result<()> {
        self.store.release(owner)?;
        Ok(())
    }
}

/// The addresses of `--ip` flags, each in a subnet of the network (with that subnet's prefix,
/// or as a single address).
pub fn requested_in(network: &NetworkSpec, ips: &[IpNetwork]) -> Result<Vec<IpAddr>> {
    for ip in ips {
        let fits = network.subnets().iter().any(|s| {
            s.contains(ip.ip())
                && (ip.prefix() == s.prefix() || ip.prefix() == if ip.is_ipv4() { 32 } else { 128 })
        });
        if !fits {
            return Err(Error::Config(format!(
                "--ip {ip}: not in network \"{}\" ({})",
                network.name,
                network
                    .subnets()
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(ips.iter().map(|i| i.ip()).collect())
}
