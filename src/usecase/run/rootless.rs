//! Bridge networking without privileges: the run enters the user's network host (see
//! `provision::usernet`: user + network + mount namespaces with pasta as the uplink), where it
//! is root of the user namespace and the rootful bridge path runs unchanged, with the uplink's
//! MTU as the interface's default. The network host masquerades whatever leaves through the
//! uplink (one rule made by its holder), so a run makes no firewall rule unless asked to.
//!
//! Published ports are not DNAT rules in there (the host's network namespace cannot be
//! reached from inside): each is bound here, in the host's namespace and as the user, before
//! entering, so a port in use or below net.ipv4.ip_unprivileged_port_start fails first; the
//! run relays what arrives to the sandbox's address (TCP connections, UDP peers) until it ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::firewall::{PortMapping, Protocol};
use crate::model::network;
use crate::provision::usernet;
use crate::sys::relay::Bound;
use crate::{Error, Result};

use super::RunSpec;

pub(super) fn run(spec: &RunSpec, network: &str, subnet: Option<IpNetwork>) -> Result<i32> {
    if !spec.tuns.is_empty() {
        return Err(Error::Config(
            "--tun needs root: rootless sandboxes cannot be given TUN devices".into(),
        ));
    }
    let bound = bind_ports(&spec.publish)?;
    let session = usernet::enter(true)?
        .ok_or_else(|| Error::Config("the user network host did not start".into()))?;
    let network = network::resolve(network, &network::conf_dirs(), subnet)?;
    let inside = RunSpec {
        publish: vec![],
        mtu: spec.mtu.or(Some(session.record.mtu)),
        ..spec.clone()
    };
    let mut bound = Some(bound);
    let code = super::bridge::run_with(&inside, &network, &mut |ips| {
        for (mapping, socket) in bound.take().unwrap_or_default() {
            let Some(ip) = target_ip(ips, mapping.host_ip) else {
                return Err(Error::Config(format!(
                    "publishing port {}: the sandbox has no address to relay to",
                    mapping.host_port
                )));
            };
            socket
                .relay(SocketAddr::new(ip, mapping.container_port))
                .map_err(|source| Error::Io {
                    context: "starting a port relay".into(),
                    source,
                })?;
        }
        Ok(())
    })?;
    drop(session);
    Ok(code)
}

/// The sandbox's address of the family of the host address (IPv4 when it is unspecified).
fn target_ip(ips: &[IpAddr], host_ip: Option<IpAddr>) -> Option<IpAddr> {
    let v6 = host_ip.is_some_and(|ip| ip.is_ipv6());
    ips.iter()
        .find(|ip| ip.is_ipv6() == v6)
        .or_else(|| ips.first())
        .copied()
}

/// Binds every published port in the host's network namespace, as the user.
fn bind_ports(publish: &[PortMapping]) -> Result<Vec<(PortMapping, Bound)>> {
    let start = crate::sys::userns::unprivileged_port_start();
    let mut out = vec![];
    for mapping in publish {
        let proto = mapping.protocol.as_str();
        if mapping.host_port < start {
            return Err(Error::Config(format!(
                "cannot publish port {}/{proto}: ports below {start} need root \
                 (net.ipv4.ip_unprivileged_port_start = {start}); choose a HOSTPORT >= {start}, \
                 or lower that sysctl",
                mapping.host_port
            )));
        }
        let ip = mapping.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, mapping.host_port);
        let socket = Bound::bind(addr, mapping.protocol == Protocol::Udp)
            .map_err(|source| Error::Config(format!("cannot publish {addr}/{proto}: {source}")))?;
        out.push((*mapping, socket));
    }
    Ok(out)
}
