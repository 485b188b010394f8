//! Addresses for a sandbox on a network: the ones asked for (checked against the network's
//! subnets), or the next free ones, from the lease store.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::network::NetworkSpec;
use crate::model::owner::Owner;
use crate::provision::leases::Store;
use crate::{Error, Result};

/// Leases addresses of `network` to `owner`: `ips` when given (each must lie in a subnet of the
/// network), else one free address per range set.
pub fn allocate(
    store: &Store,
    network: &NetworkSpec,
    owner: &Owner,
    ips: &[IpNetwork],
) -> Result<Vec<IpNetwork>> {
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
    let requested: Vec<IpAddr> = ips.iter().map(|i| i.ip()).collect();
    let leases = store.allocate(&network.ipam, owner, &requested)?;
    Ok(leases.into_iter().map(|a| a.address).collect())
}
