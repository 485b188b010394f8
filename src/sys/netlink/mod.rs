//! Every rtnetlink request netbox makes, as typed verbs on a connection bound to one network
//! namespace. Nothing else in the crate builds netlink messages: rtnetlink changes its API in
//! nearly every minor release, and this keeps the blast radius to one file.
//!
//! A [`Netlink`] talks to the namespace its socket was created in. For a sandbox, the socket is
//! opened once inside the namespace (by the `netbox run` child that created it and passes it
//! back, or on a short-lived thread: [`Netlink::connect_in`]), so the sandbox is configured
//! without any further namespace switch. Connections must be made inside
//! a tokio runtime, whose task drives the socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteMessage, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use thiserror::Error;

use crate::sys::netns::NetNs;

mod bridge_vlan;
mod neigh;
mod node_routes;
mod tc;
mod vxlan;
pub use neigh::{add_permanent_neighbors_batch, NeighborEntry};
pub use node_routes::{
    describe as describe_route, NodeVxlanSpec, TableRoute, VxlanParams, NODE_ROUTE_PROTOCOL,
};
pub use tc::{NetemSpec, TbfSpec};
pub use vxlan::VxlanSpec;

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("interface \"{name}\" already exists")]
    LinkExists { name: String },
    #[error("interface \"{name}\" already exists inside the sandbox")]
    PeerExists { name: String },
    #[error("{owner}: address {address} already in use{}", .holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default())]
    AddressInUse {
        owner: String,
        address: IpNetwork,
        holder: Option<String>,
    },
    #[error("interface \"{name}\" not found")]
    LinkNotFound { name: String },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfname { name: String, reason: &'static str },
    #[error("the kernel has no \"{kind}\" queueing discipline ({hint})")]
    QdiscUnsupported {
        kind: &'static str,
        hint: &'static str,
    },
    #[error("\"{name}\" exists but is a {kind}, not a bridge")]
    NotABridge { name: String, kind: String },
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// What the kernel reports about a link, reduced to what netbox uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub up: bool,
    /// IFLA_LINK: for a veth, its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

impl Link {
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| format_mac(&m))
    }
}

/// A TUN/TAP device as the kernel reports it (IFLA_INFO_KIND "tun" and its IFLA_TUN_* data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunLink {
    pub index: u32,
    pub name: String,
    /// True for TAP (Ethernet frames), false for TUN (IP packets).
    pub tap: bool,
    /// Whether packets carry the 4-byte packet-information prefix (no IFF_NO_PI).
    pub packet_info: bool,
    pub vnet_hdr: bool,
    pub persist: bool,
    pub multi_queue: bool,
    pub num_queues: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub up: bool,
}

/// A route as the kernel reports it (main table only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A bridge to create or reuse.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: Option<u32>,
}

/// A veth pair whose peer is born inside another namespace under its final name.
#[derive(Debug, Clone)]
pub struct VethSpec {
    pub host_name: String,
    pub peer_name: String,
    pub controller: Option<u32>,
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
    /// The host end's MAC, set in the request that creates the pair: the kernel ignores an
    /// alias there, so an owner that must recognize the link from its first instant (a
    /// killed creator) derives it from its identity.
    pub host_mac: Option<[u8; 6]>,
    /// Recorded as the host end's alias (IFLA_IFALIAS): who owns this link.
    pub alias: Option<String>,
}

/// A connection to the rtnetlink interface of one namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// A netlink socket being opened inside another namespace ([`Netlink::connect_in_background`]).
#[derive(Debug)]
pub struct PendingConnection(
    std::thread::JoinHandle<
        std::result::Result<io::Result<netlink_sys::Socket>, crate::sys::netns::NetnsError>,
    >,
);

impl PendingConnection {
    /// Waits for the socket (the thread only enters the namespace and opens it) and connects.
    pub fn finish(self) -> crate::Result<Netlink> {
        let socket = self
            .0
            .join()
            .map_err(|_| crate::sys::netns::NetnsError::Thread("panicked".into()))??
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink::from_socket(socket)?)
    }
}

impl Netlink {
    /// Connects in the calling thread's namespace.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Opens a plain socket in the calling thread's namespace, for [`Netlink::from_socket`].
    /// Call it on a thread that has entered (or created) the target namespace.
    pub fn open_socket() -> io::Result<netlink_sys::Socket> {
        netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
    }

    /// Connects through a socket opened (possibly in another namespace) by [`Netlink::open_socket`].
    pub fn from_socket(socket: netlink_sys::Socket) -> Result<Netlink> {
        socket
            .set_non_blocking(true)
            .map_err(NetlinkError::Socket)?;
        // SAFETY: the descriptor comes from an owned, open netlink socket we give up here.
        let tokio_socket = unsafe {
            <netlink_sys::TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd())
        };
        let (conn, handle, _) = rtnetlink::from_socket(tokio_socket);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Connects through a netlink socket received from elsewhere (a sandbox child that made
    /// it inside its new namespace).
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<Netlink> {
        // SAFETY: `fd` is an open netlink socket that we own and hand over.
        let socket = unsafe {
            <netlink_sys::Socket as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(fd),
            )
        };
        Self::from_socket(socket)
    }

    /// Connects inside `ns`; the socket is made on a short-lived thread that entered it.
    pub fn connect_in(ns: &NetNs) -> crate::Result<Netlink> {
        let socket = ns
            .run_in(Self::open_socket)?
            .map_err(NetlinkError::Socket)?;
        Ok(Self::from_socket(socket)?)
    }

    /// [`Netlink::connect_in`] in two halves: the socket is opened on its thread while the
    /// caller goes on, and [`PendingConnection::finish`] connects through it.
    pub fn connect_in_background(ns: &NetNs) -> crate::Result<PendingConnection> {
        Ok(PendingConnection(ns.spawn_in(Self::open_socket)?))
    }

    /// Looks a link up by name; `None` when absent.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        Ok(self
            .link_message_by_name(name)
            .await?
            .map(|msg| link_from_message(&msg)))
    }

    /// The kernel's message about the link `name`; `None` when absent.
    async fn link_message_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up \"{name}\""), e)),
        }
    }

    /// Looks a link up by index; `None` when absent.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up link {index}"), e)),
        }
    }

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        Ok(self
            .link_messages()
            .await?
            .iter()
            .map(link_from_message)
            .collect())
    }

    /// The TUN/TAP devices of the namespace, with their flags, owner and group.
    pub async fn tun_links(&self) -> Result<Vec<TunLink>> {
        Ok(self
            .link_messages()
            .await?
            .iter()
            .filter_map(tun_from_message)
            .collect())
    }

    async fn link_messages(&self) -> Result<Vec<LinkMessage>> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("listing links".into(), e))
    }

    /// Creates the bridge, or reuses it when it exists (as a bridge); sets the MTU and brings it
    /// up either way. Concurrent callers racing to create it both succeed.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let existing = self.link_by_name(&spec.name).await?;
        self.ensure_bridge_from(spec, existing).await
    }

    /// [`Netlink::ensure_bridge`] for a caller that just looked the name up (`existing`).
    pub async fn ensure_bridge_from(
        &self,
        spec: &BridgeSpec,
        existing: Option<Link>,
    ) -> Result<Link> {
        validate_ifname(&spec.name)?;
        if let Some(link) = existing {
            return self.reuse_bridge(spec, link).await;
        }
        // Pinned at creation: otherwise the kernel gives the bridge the lowest MAC of its ports,
        // which changes as ports come and go (results would lie, neighbours would re-learn the
        // gateway). An address set on creation is one the kernel keeps.
        let mut builder = LinkBridge::new(&spec.name)
            .up()
            .address(random_mac().to_vec());
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        }
        match self.handle.link().add(builder.build()).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(request_error(
                    format!("creating bridge \"{}\"", spec.name),
                    e,
                ))
            }
        }
        let link =
            self.link_by_name(&spec.name)
                .await?
                .ok_or_else(|| NetlinkError::LinkNotFound {
                    name: spec.name.clone(),
                })?;
        self.reuse_bridge(spec, link).await
    }

    async fn reuse_bridge(&self, spec: &BridgeSpec, link: Link) -> Result<Link> {
        if link.kind.as_deref() != Some("bridge") {
            return Err(NetlinkError::NotABridge {
                name: spec.name.clone(),
                kind: link.kind.unwrap_or_else(|| "device of unknown kind".into()),
            });
        }
        let wants_mtu = spec.mtu.is_some_and(|m| link.mtu != Some(m));
        if !link.up || wants_mtu {
            let mut msg = LinkUnspec::new_with_index(link.index).up();
            if let Some(mtu) = spec.mtu {
                msg = msg.mtu(mtu);
            }
            self.handle
                .link()
                .set(msg.build())
                .execute()
                .await
                .map_err(|e| request_error(format!("bringing bridge \"{}\" up", spec.name), e))?;
        }
        Ok(link)
    }

    /// Creates a veth pair: the host end here (enslaved to `controller`, up), the peer directly
    /// inside `peer_ns` under its final name (no move, no rename). Returns the host end.
    pub async fn create_veth(&self, spec: &VethSpec, peer_ns: &NetNs) -> Result<Link> {
        self.create_veth_pair(spec, peer_ns).await?;
        match self.link_by_name(&spec.host_name).await {
            Ok(Some(link)) => Ok(link),
            other => {
                let _ = self.delete_link(&spec.host_name).await;
                other?.ok_or_else(|| NetlinkError::LinkNotFound {
                    name: spec.host_name.clone(),
                })
            }
        }
    }

    /// [`Netlink::create_veth`] without the look-up of the host end. Looking a link up makes
    /// the kernel apply its pending carrier change first: right after the creation that is
    /// "no carrier" (the peer is down), which waits for an RCU grace period; once the peer is
    /// up it is cheap. Callers that configure the peer first look the host end up afterwards.
    pub async fn create_veth_pair(&self, spec: &VethSpec, peer_ns: &NetNs) -> Result<()> {
        validate_ifname(&spec.host_name)?;
        validate_ifname(&spec.peer_name)?;
        // One queue each way, asked for explicitly: otherwise the kernel allocates a queue per
        // CPU and then cuts the real count down to one, which waits for an expedited RCU grace
        // period per end (a good part of a sandbox start in a VM). One is the count veth
        // ends up with anyway.
        let one_queue = |b: LinkMessageBuilder<LinkUnspec>| {
            b.append_extra_attribute(LinkAttribute::NumTxQueues(1))
                .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        };
        let mut peer = one_queue(
            LinkMessageBuilder::<LinkUnspec>::new()
                .name(spec.peer_name.clone())
                .setns_by_fd(peer_ns.as_fd().as_raw_fd()),
        );
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.to_vec());
        }
        let mut host = one_queue(
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                .name(spec.host_name.clone())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
                .up(),
        );
        if let Some(ctrl) = spec.controller {
            host = host.controller(ctrl);
        }
        if let Some(mtu) = spec.mtu {
            host = host.mtu(mtu);
        }
        if let Some(mac) = spec.host_mac {
            host = host.address(mac.to_vec());
        }
        match self.handle.link().add(host.build()).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                // Either end's name may be the one taken; the host end is the one we can see.
                if self.link_by_name(&spec.host_name).await?.is_some() {
                    return Err(NetlinkError::LinkExists {
                        name: spec.host_name.clone(),
                    });
                }
                return Err(NetlinkError::PeerExists {
                    name: spec.peer_name.clone(),
                });
            }
            Err(e) => {
                return Err(request_error(
                    format!(
                        "creating veth \"{}\" <-> \"{}\"",
                        spec.host_name, spec.peer_name
                    ),
                    e,
                ))
            }
        }
        // The kernel ignores IFLA_IFALIAS on creation: the owner is recorded by name after.
        if let Some(alias) = &spec.alias {
            let msg = LinkUnspec::new_with_name(&spec.host_name).alias(alias.clone());
            if let Err(e) = self.handle.link().set(msg.build()).execute().await {
                let _ = self.delete_link(&spec.host_name).await;
                return Err(request_error(
                    format!("recording the owner of \"{}\"", spec.host_name),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| request_error(format!("bringing \"{name}\" up"), e))
    }

    /// Brings `lo` up.
    pub async fn loopback_up(&self) -> Result<()> {
        // lo is always index 1 in a network namespace.
        self.set_up(1, "lo").await
    }

    /// Adds an address; IPv6 addresses skip duplicate address detection (netbox owns them, and
    /// DAD would hold the first packets back for a second or more). An address already present
    /// on this very link is accepted, so the operation can be repeated.
    pub async fn add_address(&self, link: &Link, address: IpNetwork) -> Result<()> {
        self.add_address_dad(link, address, false).await
    }

    /// [`Netlink::add_address`], with IPv6 duplicate address detection when `dad` is true (the
    /// address stays tentative until DAD completes).
    pub async fn add_address_dad(&self, link: &Link, address: IpNetwork, dad: bool) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(link.index, address.ip(), address.prefix());
        if address.is_ipv6() && !dad {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                let holders = self.address_holders(address.ip()).await?;
                if holders.iter().any(|(index, _)| *index == link.index) {
                    return Ok(());
                }
                Err(NetlinkError::AddressInUse {
                    owner: format!("\"{}\"", link.name),
                    address,
                    holder: holders
                        .into_iter()
                        .next()
                        .map(|(_, name)| format!("\"{name}\"")),
                })
            }
            Err(e) => Err(request_error(
                format!("adding address {address} to \"{}\"", link.name),
                e,
            )),
        }
    }

    /// Ensures `address` is on `link` (the gateway address of a bridge): present already is
    /// fine, present on another link is an error naming both.
    pub async fn ensure_address(&self, link: &Link, address: IpNetwork) -> Result<()> {
        let holders = self.address_holders(address.ip()).await?;
        if holders.iter().any(|(index, _)| *index == link.index) {
            return Ok(());
        }
        if let Some((_, name)) = holders.into_iter().next() {
            return Err(NetlinkError::AddressInUse {
                owner: format!("bridge \"{}\"", link.name),
                address,
                holder: Some(format!("\"{name}\"")),
            });
        }
        self.add_address(link, address).await
    }

    /// Links holding `ip`, as (index, name).
    pub async fn address_holders(&self, ip: IpAddr) -> Result<Vec<(u32, String)>> {
        let mut req = self.handle.address().get().set_address_filter(ip);
        // One family's dump: a host with many veths has an IPv6 link-local address on each.
        req.message_mut().header.family = family_of(ip.is_ipv4());
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error(format!("looking up address {ip}"), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let index = msg.header.index;
            let name = match self.link_by_index(index).await? {
                Some(l) => l.name,
                None => format!("link {index}"),
            };
            out.push((index, name));
        }
        Ok(out)
    }

    /// Addresses on a link (or all links), as (index, address/prefix).
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        self.addresses_of(index, None).await
    }

    /// [`Netlink::addresses`] of one family (IPv4 when `v4` is `Some(true)`), or of both. The
    /// kernel dumps the addresses of every link whatever the index asked for; a family at least
    /// keeps the IPv6 link-local address of every veth on the host out of an IPv4 question.
    pub async fn addresses_of(
        &self,
        index: Option<u32>,
        v4: Option<bool>,
    ) -> Result<Vec<(u32, IpNetwork)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        if let Some(v4) = v4 {
            req.message_mut().header.family = family_of(v4);
        }
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("listing addresses".into(), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                if let Ok(net) = IpNetwork::new(ip, msg.header.prefix_len) {
                    out.push((msg.header.index, net));
                }
            }
        }
        Ok(out)
    }

    /// Removes `address` (matched by address and prefix) from the link `index`; an address
    /// that is not there is success.
    pub async fn delete_address(&self, index: u32, address: IpNetwork) -> Result<()> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address.ip())
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error(format!("looking up address {address}"), e))?;
        for msg in msgs
            .into_iter()
            .filter(|m| m.header.prefix_len == address.prefix())
        {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(request_error(format!("removing address {address}"), e)),
            }
        }
        Ok(())
    }

    /// Adds a route through `link`, via `gateway` when given (on-link otherwise).
    pub async fn add_route(
        &self,
        link: &Link,
        dst: IpNetwork,
        gateway: Option<IpAddr>,
    ) -> Result<()> {
        let msg = route_message(link.index, dst, gateway);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request_error(
                format!(
                    "adding route {dst}{} on \"{}\"",
                    gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                    link.name
                ),
                e,
            )),
        }
    }

    /// The main table's routes, both families.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        Ok(self
            .route_dump()
            .await?
            .iter()
            .filter_map(route_from_message)
            .collect())
    }

    /// Every route the kernel reports, both families, in one round trip.
    async fn route_dump(&self) -> Result<Vec<RouteMessage>> {
        let dump = |query: RouteMessage| async move {
            self.handle
                .route()
                .get(query)
                .execute()
                .try_collect::<Vec<RouteMessage>>()
                .await
                .map_err(|e| request_error("listing routes".into(), e))
        };
        // Both families in one round trip.
        let (mut v4, v6) = futures::try_join!(
            dump(RouteMessageBuilder::<Ipv4Addr>::new().build()),
            dump(RouteMessageBuilder::<Ipv6Addr>::new().build())
        )?;
        v4.extend(v6);
        Ok(v4)
    }

    /// Turns hairpin mode of a bridge port on or off (frames may leave by the port they came in,
    /// so a container reaches itself through a service address).
    pub async fn set_hairpin(&self, port: &Link, on: bool) -> Result<()> {
        self.set_port_options(
            port,
            vec![InfoBridgePort::HairpinMode(on)],
            "setting hairpin mode on",
        )
        .await
    }

    /// Sets bridge port options of `port`; `what` names the change in errors.
    async fn set_port_options(
        &self,
        port: &Link,
        options: Vec<InfoBridgePort>,
        what: &str,
    ) -> Result<()> {
        let msg = LinkUnspec::new_with_index(port.index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(options))
            .build();
        // Port settings go in RTM_NEWLINK on the existing link: RTM_SETLINK ignores them.
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| request_error(format!("{what} \"{}\"", port.name), e))
    }

    /// Port security on a bridge port: only frames whose source MAC is `mac` enter the bridge
    /// from `port`, whether they are forwarded or delivered to the host itself. A static FDB
    /// entry names the sandbox's MAC on the port, learning is off and the port is locked: the
    /// bridge drops every other source address before its netfilter hooks see the frame (an
    /// nftables `ether saddr` match cannot see the link-layer header of every frame a veth
    /// delivers, so it cannot be the only guard). The kernel removes the entry with the port.
    pub async fn lock_port(&self, port: &Link, mac: [u8; 6]) -> Result<()> {
        use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
        self.handle
            .neighbours()
            .add_bridge(port.index, &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .map_err(|e| request_error(format!("pinning the MAC of \"{}\"", port.name), e))?;
        self.set_port_options(
            port,
            vec![
                InfoBridgePort::Learning(false),
                InfoBridgePort::Locked(true),
            ],
            "locking bridge port",
        )
        .await
    }

    /// Brings a link down. A link already gone counts as down.
    pub async fn set_down(&self, link: &Link) -> Result<()> {
        match self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).down().build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // Gone already (its namespace died in between): as down as it gets, as for delete.
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(request_error(format!("bringing \"{}\" down", link.name), e)),
        }
    }

    /// Sets or clears IFF_PROMISC on a link.
    pub async fn set_promiscuous(&self, link: &Link, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .promiscuous(on)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| request_error(format!("setting promiscuous mode on \"{}\"", link.name), e))
    }

    /// Deletes a link by index (for a caller that looked it up itself). Idempotent.
    pub async fn delete_link_index(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(request_error(format!("deleting \"{name}\""), e)),
        }
    }

    /// Deletes a link by name. Idempotent: an absent link is success. Deleting either end of a
    /// veth removes both.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(request_error(format!("deleting \"{name}\""), e)),
        }
    }
}

/// Checks an interface name before it reaches the kernel.
pub fn validate_ifname(name: &str) -> Result<()> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(NetlinkError::InvalidIfname {
            name: name.to_string(),
            reason,
        }),
    }
}

/// Why the kernel would refuse `name` as an interface name, if it would.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not allowed")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("contains '/', ':', whitespace or a control character")
    } else {
        None
    }
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if getrandom(&mut mac).is_err() {
        // Time and pid: distinct enough for a bridge's address.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(40);
        mac.copy_from_slice(&t.to_be_bytes()[2..]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Fills `buf` from the kernel's random source.
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 && n as usize == buf.len() {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn route_message(oif: u32, dst: IpNetwork, gateway: Option<IpAddr>) -> RouteMessage {
    let mut msg = match (dst, gateway) {
        (IpNetwork::V4(d), gw) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .output_interface(oif);
            if let Some(IpAddr::V4(g)) = gw {
                b = b.gateway(g);
            }
            b.build()
        }
        (IpNetwork::V6(d), gw) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .output_interface(oif);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            b.build()
        }
    };
    if gateway.is_none() {
        msg.header.scope = RouteScope::Link;
    }
    msg
}

fn family_of(v4: bool) -> AddressFamily {
    if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_from_message(msg: &RouteMessage) -> Option<Route> {
    node_routes::table_route(msg).map(|r| Route {
        dst: r.dst,
        gateway: r.gateway,
        oif: r.oif,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn link_from_message(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        controller: None,
        kind: None,
        alias: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        peer: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                link.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::Link(peer) => link.peer = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn tun_from_message(msg: &LinkMessage) -> Option<TunLink> {
    use netlink_packet_core::Nla;
    // IFLA_TUN_* (linux/if_link.h).
    const OWNER: u16 = 1;
    const GROUP: u16 = 2;
    const TYPE: u16 = 3;
    const PI: u16 = 4;
    const VNET_HDR: u16 = 5;
    const PERSIST: u16 = 6;
    const MULTI_QUEUE: u16 = 7;
    const NUM_QUEUES: u16 = 8;
    let link = link_from_message(msg);
    if link.kind.as_deref() != Some("tun") {
        return None;
    }
    let mut tun = TunLink {
        index: link.index,
        name: link.name,
        tap: false,
        packet_info: false,
        vnet_hdr: false,
        persist: false,
        multi_queue: false,
        num_queues: None,
        owner: None,
        group: None,
        up: link.up,
    };
    let infos = msg.attributes.iter().filter_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    for info in infos.flatten() {
        let LinkInfo::Data(InfoData::Tun(nlas)) = info else {
            continue;
        };
        for nla in nlas {
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            let byte = value.first().copied().unwrap_or(0);
            let word = <[u8; 4]>::try_from(value.as_slice())
                .ok()
                .map(u32::from_ne_bytes);
            match nla.kind() {
                // An owner or group of -1 means none.
                OWNER => tun.owner = word.filter(|w| *w != u32::MAX),
                GROUP => tun.group = word.filter(|w| *w != u32::MAX),
                TYPE => tun.tap = byte == libc::IFF_TAP as u8,
                PI => tun.packet_info = byte != 0,
                VNET_HDR => tun.vnet_hdr = byte != 0,
                PERSIST => tun.persist = byte != 0,
                MULTI_QUEUE => tun.multi_queue = byte != 0,
                NUM_QUEUES => tun.num_queues = word,
                _ => {}
            }
        }
    }
    Some(tun)
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn request_error(what: String, e: rtnetlink::Error) -> NetlinkError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    };
    NetlinkError::Request { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_over_15_bytes_or_with_slashes_are_rejected() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:b", ".", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = parse_mac("02:42:ac:11:00:02").expect("valid");
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        for bad in [
            "",
            "02:42",
            "02:42:ac:11:00:02:03",
            "zz:42:ac:11:00:02",
            "2:42:ac:11:00:02",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad:?} accepted");
        }
    }
}
