//! The shared provisioning path of `netbox run`, `netbox ns add` and netbox-cni ADD: allocate
//! addresses -> ensure the bridge -> attach the namespace, each undo registered in the caller's
//! [`Rollback`] right after its step, so the caller's later steps (firewall, publish) join the
//! same guard and a failure anywhere undoes exactly what was made.

use crate::model::network::NetworkSpec;
use crate::model::owner::Owner;
use crate::provision::attach::{self, AttachSpec, Attachment};
use crate::provision::ipam::{Addressing, IpamBackend};
use crate::provision::rollback::Rollback;
use crate::sys::netlink::{Link, Netlink};
use crate::sys::netns::NetNs;
use crate::Result;

/// Where and what to attach.
pub struct Connect<'a> {
    /// A socket in the host's namespace.
    pub host: &'a Netlink,
    /// A socket inside the sandbox's namespace.
    pub sandbox: &'a Netlink,
    pub ns: &'a NetNs,
    pub network: &'a NetworkSpec,
    /// The bridge as the caller just looked it up (None: absent, it is made).
    pub bridge: Option<Link>,
    pub host_ifname: String,
    pub ifname: String,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// The host end's MAC (None: the kernel picks one).
    pub host_mac: Option<[u8; 6]>,
    /// The owner's record on the host veth (its alias).
    pub alias: String,
    /// Only the sandbox's MAC may enter the bridge from its port (anti-spoofing).
    pub lock_port: bool,
}

/// What [`connect`] made.
pub struct Connected<X> {
    pub attachment: Attachment,
    pub addressing: Addressing,
    /// What the IPAM backend reported besides the addresses.
    pub extra: X,
}

/// Allocates `owner`'s addresses from `ipam`, ensures the bridge and attaches the namespace.
/// The release of the addresses joins `rollback`; a failed attach undoes itself.
pub async fn connect<'r, B: IpamBackend>(
    spec: Connect<'_>,
    ipam: &'r B,
    owner: &'r Owner,
    rollback: &mut Rollback<'r>,
) -> Result<Connected<B::Extra>, B::Error> {
    let (addressing, extra) = ipam.allocate(owner)?;
    rollback.push("release the addresses", move || {
        if ipam.release(owner).is_err() {
            tracing::warn!("releasing addresses during a rollback failed; gc retries");
        }
    });
    tracing::debug!("addresses allocated");
    let bridge = attach::ensure_bridge(
        spec.host,
        spec.network,
        spec.bridge,
        &addressing.bridge_gateways,
    )
    .await?;
    let attach_spec = AttachSpec {
        host_ifname: spec.host_ifname,
        ifname: spec.ifname,
        addressing: addressing.clone(),
        mtu: spec.mtu,
        mac: spec.mac,
        host_mac: spec.host_mac,
        owner: spec.alias,
        lock_port: spec.lock_port,
    };
    let attachment = attach::attach_to_bridge(
        spec.host,
        spec.sandbox,
        spec.ns,
        spec.network,
        &bridge,
        &attach_spec,
    )
    .await?;
    Ok(Connected {
        attachment,
        addressing,
        extra,
    })
}

/// The network's bridge as it is now, after refusing a network whose subnet overlaps a host
/// route that is not the network's own.
pub async fn lookup_bridge(host: &Netlink, network: &NetworkSpec) -> Result<Option<Link>> {
    let (mut bridge, routes) =
        futures::try_join!(host.link_by_name(&network.bridge), host.routes())?;
    if network
        .check_no_overlap(&routes, bridge.as_ref().map(|b| b.index))
        .is_err()
        && bridge.is_none()
    {
        // A concurrent run may have made the bridge (and its subnet route) between the two
        // answers: look again before calling its own route an overlap.
        bridge = host.link_by_name(&network.bridge).await?;
    }
    network.check_no_overlap(&routes, bridge.as_ref().map(|b| b.index))?;
    Ok(bridge)
}

/// An undo that deletes a host veth by name (on a runtime of its own: rollbacks run after the
/// caller's runtime has returned).
pub fn delete_veth_later(name: String) -> impl FnOnce() {
    move || {
        let deleted = crate::sys::runtime::current_thread().and_then(|rt| {
            rt.block_on(async { Ok(Netlink::connect()?.delete_link(&name).await?) })
        });
        if let Err(e) = deleted {
            tracing::warn!(%e, link = %name, "rollback of veth failed");
        }
    }
}
