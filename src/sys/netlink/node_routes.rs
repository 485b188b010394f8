//! What `netbox node routes` makes in the kernel: routes of the main table tagged with netbox's
//! route protocol number (so that a dump tells them from every other route), a VXLAN device
//! without learning, and the forwarding (FDB) and neighbour entries on that device. Nothing
//! here touches a route of another protocol or an entry of another device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::LinkVxlan;

use super::{errno_of, request_error, route_ip, validate_ifname, Link, NetlinkError, Result};

/// The route protocol number of netbox's routes between nodes (`ip route show proto 78`;
/// unassigned in iproute2's rt_protos).
pub const NODE_ROUTE_PROTOCOL: u8 = 78;

/// A route of the main table: `dst via gateway dev oif [onlink]`, with its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
}

/// What identifies a VXLAN tunnel: VNI, UDP port, local address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
}

/// A VXLAN device between nodes: unicast only (entries say where each peer is), no learning.
#[derive(Debug, Clone)]
pub struct NodeVxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay device and this node's address on it, when known.
    pub underlay: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl super::Netlink {
    /// Every route of the main table, both families, with its protocol.
    pub async fn main_table_routes(&self) -> Result<Vec<TableRoute>> {
        Ok(self
            .route_dump()
            .await?
            .iter()
            .filter_map(table_route)
            .collect())
    }

    /// Adds `route` with netbox's node protocol, replacing a route of the same destination
    /// (the caller checked that any such route is netbox's own).
    pub async fn replace_node_route(&self, route: &TableRoute) -> Result<()> {
        let msg = node_route_message(route);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| request_error(format!("adding route {}", describe(route)), e))
    }

    /// Deletes one of netbox's node routes; one already gone is fine.
    pub async fn delete_node_route(&self, route: &TableRoute) -> Result<()> {
        match self
            .handle
            .route()
            .del(node_route_message(route))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(request_error(
                format!("removing route {}", describe(route)),
                e,
            )),
        }
    }

    /// Creates the nodes' VXLAN device, up.
    pub async fn create_node_vxlan(&self, spec: &NodeVxlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false);
        if let Some(dev) = spec.underlay {
            b = b.dev(dev);
        }
        if let Some(local) = spec.local {
            b = b.local(local);
        }
        let msg = b.address(spec.mac.to_vec()).mtu(spec.mtu).up().build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                return Err(NetlinkError::LinkExists {
                    name: spec.name.clone(),
                })
            }
            Err(e) => {
                return Err(request_error(
                    format!("creating vxlan \"{}\" (vni {})", spec.name, spec.vni),
                    e,
                ))
            }
        }
        self.link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound {
                name: spec.name.clone(),
            })
    }

    /// A VXLAN device's VNI, UDP port and local address as the kernel reports them; None when
    /// there is no such device or it is not VXLAN.
    pub async fn vxlan_params(&self, name: &str) -> Result<Option<VxlanParams>> {
        use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
        let Some(msg) = self.link_message_by_name(name).await? else {
            return Ok(None);
        };
        let data = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
                _ => None,
            }),
            _ => None,
        });
        Ok(data.map(|v| {
            let mut p = VxlanParams::default();
            for item in v {
                match item {
                    InfoVxlan::Id(id) => p.vni = *id,
                    InfoVxlan::Port(port) => p.port = *port,
                    InfoVxlan::Local(local) => p.local = Some(*local),
                    _ => {}
                }
            }
            p
        }))
    }

    /// The unicast forwarding entries of a VXLAN device: (peer MAC, peer address).
    pub async fn vxlan_fdb(&self, link: &Link) -> Result<Vec<([u8; 6], IpAddr)>> {
        let mut req = self.handle.neighbours().get();
        req.message_mut().header.family = AddressFamily::Bridge;
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error(format!("listing the FDB of \"{}\"", link.name), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == link.index)
            .filter_map(|m| {
                let mac = lladdr(m)?;
                let dst = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_ip(d),
                    _ => None,
                })?;
                Some((mac, dst))
            })
            .collect())
    }

    /// Says that `mac` is behind the VXLAN peer `dst` (replacing where it was).
    pub async fn set_vxlan_fdb(&self, link: &Link, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(link.index, &mac)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                request_error(
                    format!(
                        "adding FDB entry {} dst {dst} on \"{}\"",
                        super::format_mac(&mac),
                        link.name
                    ),
                    e,
                )
            })
    }

    /// Removes a forwarding entry of a VXLAN device; one already gone is fine.
    pub async fn delete_vxlan_fdb(&self, link: &Link, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = link.index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst)));
        self.delete_neighbour_message(msg, &link.name).await
    }

    /// The permanent neighbour entries of `link`: (address, MAC).
    pub async fn permanent_neighbours(&self, link: &Link) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error(format!("listing neighbours of \"{}\"", link.name), e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == link.index
                    && m.header.state == netlink_packet_route::neighbour::NeighbourState::Permanent
            })
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_ip(d),
                    _ => None,
                })?;
                Some((ip, lladdr(m)?))
            })
            .collect())
    }

    /// Removes the neighbour entry of `ip` on `link`; one already gone is fine.
    pub async fn delete_neighbour(&self, link: &Link, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.ifindex = link.index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.delete_neighbour_message(msg, &link.name).await
    }

    async fn delete_neighbour_message(&self, msg: NeighbourMessage, name: &str) -> Result<()> {
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(e) => Err(request_error(format!("removing an entry of \"{name}\""), e)),
        }
    }
}

/// `dst via gateway dev oif` in words.
pub fn describe(route: &TableRoute) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if route.onlink {
        s.push_str(" onlink");
    }
    s
}

fn node_route_message(route: &TableRoute) -> RouteMessage {
    let mut msg = super::route_message(route.oif.unwrap_or(0), route.dst, route.gateway);
    if route.oif.is_none() {
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
    }
    msg.header.protocol = RouteProtocol::Other(NODE_ROUTE_PROTOCOL);
    if route.onlink {
        msg.header.flags.insert(RouteFlags::Onlink);
    }
    msg
}

/// A route of the main table as the kernel reports it (None for other tables).
pub(super) fn table_route(msg: &RouteMessage) -> Option<TableRoute> {
    let main = RouteHeader::RT_TABLE_MAIN;
    if msg.header.table != RouteMessage::default().header.table && msg.header.table != main {
        return None;
    }
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) if *t != u32::from(main) => return None,
            _ => {}
        }
    }
    let prefix = msg.header.destination_prefix_length;
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => IpNetwork::new(ip, prefix).ok()?,
        (None, AddressFamily::Inet) => IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?,
        (None, AddressFamily::Inet6) => IpNetwork::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok()?,
        _ => return None,
    };
    Some(TableRoute {
        dst,
        gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(msg.header.protocol),
    })
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // An FDB entry (family AF_BRIDGE) carries its destination undecoded: by length.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}
