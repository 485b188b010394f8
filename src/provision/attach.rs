//! The one operation every front end shares: attach a sandbox's network namespace to a bridge
//! network (bridge + veth + addresses + routes), in two halves: [`ensure_bridge`] (shared by all
//! sandboxes of the network) and [`attach_to_bridge`] (one veth).
//!
//! An attachment undoes every step it made when a later one fails, so a failed attach leaves
//! the host as it found it (apart from the bridge, which is shared and kept, as the reference
//! plugin does). Detaching is removing the host end of the veth, or letting the namespace die
//! (`netbox run`); the CNI DEL does the former and keeps going past failures.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::network::NetworkSpec;
use crate::sys::netlink::{BridgeSpec, Link, Netlink, VethSpec};
use crate::sys::netns::NetNs;
use crate::{Error, Result};

/// What to attach.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    /// Host end of the veth: unique per attachment (the kernel frees names lazily).
    pub host_ifname: String,
    /// Name of the interface inside the sandbox.
    pub ifname: String,
    /// Addresses for the sandbox interface, with their prefix.
    pub addresses: Vec<IpNetwork>,
    /// Extra routes (destination, gateway) besides the default route.
    pub routes: Vec<(IpNetwork, Option<IpAddr>)>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// The host end's MAC (None: the kernel picks one).
    pub host_mac: Option<[u8; 6]>,
    /// Who owns the attachment, recorded on the host veth (its alias).
    pub owner: String,
}

/// What an attachment made.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub bridge: Link,
    pub host: Link,
    pub sandbox: Link,
    pub addresses: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
}

/// The host half of an attachment, shared by all sandboxes of a network: the bridge, up, with
/// its gateway addresses. `existing` is the bridge when the caller just looked it up.
pub async fn ensure_bridge(
    host: &Netlink,
    network: &NetworkSpec,
    existing: Option<Link>,
) -> Result<Link> {
    ensure_bridge_forced(host, network, existing, false).await
}

/// [`ensure_bridge`], with the bridge plugin's `forceAddress`: a bridge that carries another
/// address in a gateway's subnet is refused, or with `force_address` has it replaced by the
/// gateway (as the reference does; otherwise the bridge would answer for two gateways).
pub async fn ensure_bridge_forced(
    host: &Netlink,
    network: &NetworkSpec,
    existing: Option<Link>,
    force_address: bool,
) -> Result<Link> {
    let spec = BridgeSpec {
        name: network.bridge.clone(),
        mtu: network.mtu,
    };
    let bridge = host.ensure_bridge_from(&spec, existing).await?;
    let gateways = network.gateway_addresses();
    let mut present = Vec::new();
    if !gateways.is_empty() {
        present = gateway_family_addresses(host, &bridge, &gateways).await?;
        for other in foreign_addresses(network, &bridge, &gateways, &present, force_address)? {
            host.delete_address(bridge.index, other).await?;
        }
    }
    // A gateway already on the bridge (the usual case: every sandbox after the first) needs
    // no second look at who else holds it.
    for gw in gateways
        .into_iter()
        .filter(|gw| !present.iter().any(|(_, a)| a.ip() == gw.ip()))
    {
        host.ensure_address(&bridge, gw).await?;
    }
    Ok(bridge)
}

/// Refuses, without changing anything, a bridge that carries another address in one of the
/// network's gateway subnets (what [`ensure_bridge_forced`] without `force_address` refuses).
pub async fn check_bridge_addresses(
    host: &Netlink,
    network: &NetworkSpec,
    bridge: &Link,
) -> Result<()> {
    let gateways = network.gateway_addresses();
    if gateways.is_empty() {
        return Ok(());
    }
    let present = gateway_family_addresses(host, bridge, &gateways).await?;
    foreign_addresses(network, bridge, &gateways, &present, false).map(|_| ())
}

/// The bridge's addresses, of the gateways' family when they share one.
async fn gateway_family_addresses(
    host: &Netlink,
    bridge: &Link,
    gateways: &[IpNetwork],
) -> Result<Vec<(u32, IpNetwork)>> {
    let v4 = gateways.iter().all(|g| g.is_ipv4());
    let v6 = gateways.iter().all(|g| g.is_ipv6());
    let family = (v4 || v6).then_some(v4);
    Ok(host.addresses_of(Some(bridge.index), family).await?)
}

/// Addresses of `present` other than a gateway but inside a gateway's subnet: an error unless
/// `force_address` (then they are the ones to replace).
fn foreign_addresses(
    network: &NetworkSpec,
    bridge: &Link,
    gateways: &[IpNetwork],
    present: &[(u32, IpNetwork)],
    force_address: bool,
) -> Result<Vec<IpNetwork>> {
    let mut out = Vec::new();
    for gw in gateways {
        let subnet = IpNetwork::new(gw.network(), gw.prefix())
            .map_err(|e| Error::Config(format!("gateway {gw}: {e}")))?;
        for (_, other) in present.iter().filter(|(_, a)| {
            a.is_ipv4() == gw.is_ipv4() && a.ip() != gw.ip() && subnet.contains(a.ip())
        }) {
            if !force_address {
                return Err(Error::Config(format!(
                    "bridge \"{}\" already has address {other}, different from the gateway \
                     {gw} of network \"{}\" (set forceAddress to replace it)",
                    bridge.name, network.name
                )));
            }
            out.push(*other);
        }
    }
    Ok(out)
}

/// The per-sandbox half: a veth from `bridge` into `ns`, addresses and routes inside. Undoes
/// itself on failure.
pub async fn attach_to_bridge(
    host: &Netlink,
    sandbox: &Netlink,
    ns: &NetNs,
    network: &NetworkSpec,
    bridge: &Link,
    spec: &AttachSpec,
) -> Result<Attachment> {
    let veth = VethSpec {
        host_name: spec.host_ifname.clone(),
        peer_name: spec.ifname.clone(),
        controller: Some(bridge.index),
        mtu: spec.mtu.or(network.mtu),
        peer_mac: spec.mac,
        host_mac: spec.host_mac,
        alias: Some(spec.owner.clone()),
    };
    host.create_veth_pair(&veth, ns).await?;
    let configured = async {
        let (sandbox_link, gateways) = configure_sandbox(sandbox, network, spec).await?;
        // Looked up once its peer is up (see `create_veth_pair`).
        let host_link = host.link_by_name(&spec.host_ifname).await?.ok_or_else(|| {
            crate::sys::netlink::NetlinkError::LinkNotFound {
                name: spec.host_ifname.clone(),
            }
        })?;
        Ok::<_, Error>((host_link, sandbox_link, gateways))
    };
    match configured.await {
        Ok((host_link, sandbox_link, gateways)) => Ok(Attachment {
            bridge: bridge.clone(),
            host: host_link,
            sandbox: sandbox_link,
            addresses: spec.addresses.clone(),
            gateways,
        }),
        Err(e) => {
            // Removing the host end removes the pair, and with it everything set inside.
            if let Err(undo) = host.delete_link(&spec.host_ifname).await {
                tracing::warn!(%undo, link = %spec.host_ifname, "rollback of veth failed");
            }
            Err(e)
        }
    }
}

async fn configure_sandbox(
    sandbox: &Netlink,
    network: &NetworkSpec,
    spec: &AttachSpec,
) -> Result<(Link, Vec<IpAddr>)> {
    // Requests that do not depend on each other share a round trip (the kernel still handles
    // them in order, one socket being one queue).
    let (lo, link) = futures::join!(sandbox.loopback_up(), sandbox.link_by_name(&spec.ifname));
    lo?;
    let link = link?.ok_or_else(|| crate::sys::netlink::NetlinkError::LinkNotFound {
        name: spec.ifname.clone(),
    })?;
    // Addresses, then up (the peer cannot be brought up in the request that creates it).
    let addresses = futures::future::join_all(
        spec.addresses
            .iter()
            .map(|address| sandbox.add_address(&link, *address)),
    );
    let (added, up) = futures::join!(addresses, sandbox.set_up(link.index, &link.name));
    for result in added {
        result?;
    }
    up?;
    let mut gateways = Vec::new();
    if network.is_default_gateway {
        for address in &spec.addresses {
            if let Some(gw) = crate::model::network::gateway_for(network, address.ip()) {
                let any = match gw {
                    IpAddr::V4(_) => IpNetwork::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                    IpAddr::V6(_) => IpNetwork::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
                }
                .map_err(|e| crate::Error::Config(e.to_string()))?;
                sandbox.add_route(&link, any, Some(gw)).await?;
                gateways.push(gw);
            }
        }
    }
    for (dst, gw) in &spec.routes {
        // A route without "gw" goes through the gateway of the sandbox's address of the same
        // family, as with host-local's routes.
        let gw = gw.or_else(|| {
            spec.addresses
                .iter()
                .filter(|a| a.is_ipv4() == dst.is_ipv4())
                .find_map(|a| crate::model::network::gateway_for(network, a.ip()))
        });
        sandbox.add_route(&link, *dst, gw).await?;
    }
    // Its name, index and MAC are the ones looked up above; only its state changed.
    let mut link = link;
    link.up = true;
    Ok((link, gateways))
}

/// A fresh host-side veth name: "nbx" and 8 random hex digits. Names are never reused right
/// away, because the kernel frees a veth's name only once its namespace is gone.
pub fn random_host_ifname() -> String {
    let mut buf = [0u8; 4];
    if crate::sys::netlink::getrandom(&mut buf).is_err() {
        // Fall back on time and pid: unique enough for a name that is retried on EEXIST.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf = (t ^ std::process::id().rotate_left(16)).to_be_bytes();
    }
    format!("nbx{:08x}", u32::from_be_bytes(buf))
}
