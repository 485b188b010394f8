//! The one operation every front end shares: attach a sandbox's network namespace to a bridge
//! network (bridge + veth + addresses + routes), in two halves: [`ensure_bridge`] (shared by all
//! sandboxes of the network) and [`attach_to_bridge`] (one veth). The network's bridge options
//! (forceAddress, promiscMode, hairpinMode, enabledad, mtu) are applied here, so `netbox run`,
//! `netbox ns add` and netbox-cni give the same network for the same conflist.
//!
//! An attachment undoes every step it made when a later one fails, so a failed attach leaves
//! the host as it found it (apart from the bridge, which is shared and kept, as the reference
//! plugin does). Detaching is removing the host end of the veth, or letting the namespace die
//! (`netbox run`); the CNI DEL does the former and keeps going past failures.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::network::NetworkSpec;
use crate::provision::ipam::Addressing;
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
    /// Addresses and routes for the sandbox interface.
    pub addressing: Addressing,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// The host end's MAC (None: the kernel picks one).
    pub host_mac: Option<[u8; 6]>,
    /// Who owns the attachment, recorded on the host veth (its alias).
    pub owner: String,
    /// Lock the host end to the sandbox's MAC (anti-spoofing, see `Netlink::lock_port`).
    pub lock_port: bool,
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
/// its gateway addresses (`gateways`, when the network is a gateway) and the network's
/// promiscMode. `existing` is the bridge when the caller just looked it up. With the bridge
/// plugin's `forceAddress`, a bridge that carries another address in a gateway's subnet has it
/// replaced by the gateway (as the reference does; otherwise the bridge would answer for two
/// gateways); without, it is refused.
pub async fn ensure_bridge(
    host: &Netlink,
    network: &NetworkSpec,
    existing: Option<Link>,
    gateways: &[IpNetwork],
) -> Result<Link> {
    let force_address = network.force_address;
    let gateways: Vec<IpNetwork> = if network.is_gateway {
        gateways.to_vec()
    } else {
        vec![]
    };
    let spec = BridgeSpec {
        name: network.bridge.clone(),
        mtu: network.mtu,
    };
    let bridge = host.ensure_bridge_from(&spec, existing).await?;
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
    if network.promisc_mode {
        host.set_promiscuous(&bridge, true).await?;
    }
    Ok(bridge)
}

/// Refuses, without changing anything, a bridge that carries another address in one of the
/// gateway subnets (what [`ensure_bridge`] refuses without the network's `forceAddress`).
pub async fn check_bridge_addresses(
    host: &Netlink,
    network: &NetworkSpec,
    bridge: &Link,
    gateways: &[IpNetwork],
) -> Result<()> {
    if !network.is_gateway || gateways.is_empty() {
        return Ok(());
    }
    let present = gateway_family_addresses(host, bridge, gateways).await?;
    foreign_addresses(network, bridge, gateways, &present, false).map(|_| ())
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
        if network.hairpin_mode {
            host.set_hairpin(&host_link, true).await?;
        }
        if let (true, Some(mac)) = (spec.lock_port, sandbox_link.mac) {
            host.lock_port(&host_link, mac).await?;
        }
        Ok::<_, Error>((host_link, sandbox_link, gateways))
    };
    match configured.await {
        Ok((host_link, sandbox_link, gateways)) => Ok(Attachment {
            bridge: bridge.clone(),
            host: host_link,
            sandbox: sandbox_link,
            addresses: spec.addressing.addresses(),
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
    let addressing = &spec.addressing;
    // Requests that do not depend on each other share a round trip (the kernel still handles
    // them in order, one socket being one queue).
    let (lo, link) = futures::join!(sandbox.loopback_up(), sandbox.link_by_name(&spec.ifname));
    lo?;
    let link = link?.ok_or_else(|| crate::sys::netlink::NetlinkError::LinkNotFound {
        name: spec.ifname.clone(),
    })?;
    // With enabledad, IPv6 addresses (and the routes that need them) come after the link is
    // up, with duplicate address detection; the others without.
    let later = |a: &IpNetwork| network.enable_dad && a.is_ipv6();
    let (dad, now): (Vec<_>, Vec<_>) = addressing.assigned.iter().partition(|a| later(&a.address));
    // Addresses, then up (the peer cannot be brought up in the request that creates it).
    let added =
        futures::future::join_all(now.iter().map(|a| sandbox.add_address(&link, a.address)));
    let (added, up) = futures::join!(added, sandbox.set_up(link.index, &link.name));
    for result in added {
        result?;
    }
    up?;
    let mut gateways = Vec::new();
    for batch in [now, dad] {
        for a in &batch {
            if later(&a.address) {
                sandbox.add_address_dad(&link, a.address, true).await?;
            }
            if let (true, Some(gw)) = (network.is_default_gateway, a.via) {
                sandbox.add_route(&link, any_of(gw)?, Some(gw)).await?;
                gateways.push(gw);
            }
        }
        let v6_later = batch.iter().any(|a| later(&a.address));
        for (dst, gw) in addressing.routes_to_add(network.is_default_gateway) {
            if later_route(network, dst) == v6_later {
                sandbox.add_route(&link, dst, gw).await?;
            }
        }
    }
    // Its name, index and MAC are the ones looked up above; only its state changed.
    let mut link = link;
    link.up = true;
    Ok((link, gateways))
}

/// Routes to IPv6 destinations wait for the DAD addresses with enabledad.
fn later_route(network: &NetworkSpec, dst: IpNetwork) -> bool {
    network.enable_dad && dst.is_ipv6()
}

/// The default route's destination of `gw`'s family.
fn any_of(gw: IpAddr) -> Result<IpNetwork> {
    match gw {
        IpAddr::V4(_) => IpNetwork::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => IpNetwork::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
    }
    .map_err(|e| Error::Config(e.to_string()))
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
