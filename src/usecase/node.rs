//! `netbox node routes`: routes from this node to the other nodes' pod CIDRs, from a node file
//! (see [`crate::model::nodes`]), made to match it.
//!
//! A peer whose address is on one of this node's subnets gets a host-gw route (`POD_CIDR via
//! NODE dev LINK`), as kindnet and flannel's host-gw do; a peer elsewhere (or every peer, when
//! asked) goes through a VXLAN device, `nbx-vxlan`: `POD_CIDR via VTEP dev nbx-vxlan onlink`,
//! the VTEP (the pod CIDR's first address) at the peer's device MAC (a neighbour entry), and
//! that MAC behind the peer's node address (an FDB entry). Device MACs are derived from node
//! addresses, so every node computes its peers' without exchanging anything.
//!
//! Ownership: routes carry netbox's route protocol number ([`NODE_ROUTE_PROTOCOL`]) and only
//! those are replaced or removed; the VXLAN device is netbox's by its name, and its entries
//! with it. A route of another protocol to one of the pod CIDRs is a conflict: refused before
//! anything changes. Applying the same file twice changes nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::model::nodes::NodeList;
use crate::sys::netlink::{
    describe_route, Link, Netlink, NodeVxlanSpec, TableRoute, VxlanParams, NODE_ROUTE_PROTOCOL,
};
use crate::sys::runtime::current_thread;
use crate::{Error, Result};

/// The VXLAN device between nodes.
pub const VXLAN_DEVICE: &str = "nbx-vxlan";
/// The VXLAN header and outer headers (IPv4, UDP, Ethernet) take 50 bytes of the underlay MTU.
const VXLAN_OVERHEAD: u32 = 50;

/// What to do with a node file.
#[derive(Debug, Clone)]
pub struct NodeRoutesSpec {
    pub file: PathBuf,
    /// Every peer through VXLAN, also those on a shared subnet.
    pub force_vxlan: bool,
    pub vni: u32,
    pub port: u16,
    /// Print what would change, change nothing.
    pub dry_run: bool,
}

impl NodeRoutesSpec {
    pub fn new(file: PathBuf) -> NodeRoutesSpec {
        NodeRoutesSpec {
            file,
            force_vxlan: false,
            vni: 1,
            port: 4789,
            dry_run: false,
        }
    }
}

/// One change, in words (`+ route ...`, `- fdb ...`).
pub type Change = String;

/// Reads the node file and makes this node's routes match it; returns the changes made (or,
/// with `dry_run`, that would be made). A bad file changes nothing.
pub fn apply(spec: &NodeRoutesSpec) -> Result<Vec<Change>> {
    let text = std::fs::read_to_string(&spec.file).map_err(|source| Error::Io {
        context: format!("reading node file {}", spec.file.display()),
        source,
    })?;
    apply_text(spec, &text)
}

fn apply_text(spec: &NodeRoutesSpec, text: &str) -> Result<Vec<Change>> {
    let list = NodeList::parse(text)
        .map_err(|e| Error::Config(format!("node file {}: {e}", spec.file.display())))?;
    let rt = current_thread()?;
    rt.block_on(async {
        let nl = Netlink::connect()?;
        let host = HostView::read(&nl).await?;
        let plan = Plan::new(spec, &list, &host)?;
        let mut changes = Vec::new();
        // A device made for another VNI, port, local address or MAC (the node's address
        // changed) is made again.
        let host = match plan.stale_device(&host) {
            Some(old) => {
                changes.push(format!(
                    "- device {VXLAN_DEVICE} (its VNI, port, local address or MAC changed)"
                ));
                if !spec.dry_run {
                    nl.delete_link_index(old.index, &old.name).await?;
                }
                host.without_vxlan()
            }
            None => host,
        };
        changes.extend(plan.changes(&host));
        if !spec.dry_run {
            plan.execute(&nl, &host).await?;
        }
        Ok(changes)
    })
}

/// How `--watch` polls.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// How often the file is read.
    pub interval: Duration,
    /// How often the file is applied even when it did not change: what someone else removed
    /// or changed (a route deleted by hand, the device gone) comes back, as a controller's
    /// periodic resync does.
    pub resync: Duration,
}

/// Applies the node file whenever its content changes, and every `resync` whatever happens;
/// reads it every `interval`. A version that does not read or parse is reported once through
/// `on_result` (and again at each resync) and leaves the routes as they are; the next good
/// version is applied.
///
/// The file is polled rather than watched with inotify: a Kubernetes ConfigMap volume swaps
/// a symlinked directory (an inotify watch on the file misses it) and editors replace files
/// by rename; reading a small file every few seconds sees every kind of update, and the
/// resync needs a timer anyway.
pub fn watch(
    spec: &NodeRoutesSpec,
    timing: WatchTiming,
    on_result: &mut dyn FnMut(&Result<Vec<Change>>),
) -> ! {
    // What was last read (the text, or the read error's message) and when it was applied.
    let mut last: Option<std::result::Result<String, String>> = None;
    let mut applied_at: Option<Instant> = None;
    loop {
        let read = std::fs::read_to_string(&spec.file).map_err(|source| Error::Io {
            context: format!("reading node file {}", spec.file.display()),
            source,
        });
        let seen = read.as_ref().map(String::clone).map_err(|e| e.to_string());
        let due = applied_at.is_none_or(|t| t.elapsed() >= timing.resync);
        if due || last.as_ref() != Some(&seen) {
            let result = read.and_then(|text| apply_text(spec, &text));
            applied_at = Some(Instant::now());
            last = Some(seen);
            on_result(&result);
        }
        std::thread::sleep(timing.interval);
    }
}

/// What the host has, read once per apply.
struct HostView {
    /// Interface addresses (index, address with prefix), loopback left out.
    addresses: Vec<(u32, IpNetwork)>,
    links: Vec<Link>,
    routes: Vec<TableRoute>,
    vxlan: Option<Link>,
    vxlan_params: Option<VxlanParams>,
    fdb: Vec<([u8; 6], IpAddr)>,
    neighbours: Vec<(IpAddr, [u8; 6])>,
}

impl HostView {
    async fn read(nl: &Netlink) -> Result<HostView> {
        let links = nl.links().await?;
        let lo: Vec<u32> = links
            .iter()
            .filter(|l| l.name == "lo")
            .map(|l| l.index)
            .collect();
        let addresses = nl
            .addresses(None)
            .await?
            .into_iter()
            .filter(|(i, _)| !lo.contains(i))
            .collect();
        let vxlan = links.iter().find(|l| l.name == VXLAN_DEVICE).cloned();
        if let Some(v) = &vxlan {
            if v.kind.as_deref() != Some("vxlan") {
                return Err(Error::Config(format!(
                    "\"{VXLAN_DEVICE}\" exists and is a {} device, not netbox's VXLAN device",
                    v.kind.as_deref().unwrap_or("plain")
                )));
            }
        }
        let (fdb, neighbours, vxlan_params) = match &vxlan {
            Some(v) => (
                nl.vxlan_fdb(v).await?,
                nl.permanent_neighbours(v).await?,
                nl.vxlan_params(&v.name).await?,
            ),
            None => (vec![], vec![], None),
        };
        Ok(HostView {
            addresses,
            links,
            routes: nl.main_table_routes().await?,
            vxlan,
            vxlan_params,
            fdb,
            neighbours,
        })
    }

    /// The host as it is once the VXLAN device is gone (with its entries and routes).
    fn without_vxlan(self) -> HostView {
        let index = self.vxlan.as_ref().map(|v| v.index);
        HostView {
            routes: self
                .routes
                .into_iter()
                .filter(|r| r.oif.is_none() || r.oif != index)
                .collect(),
            vxlan: None,
            vxlan_params: None,
            fdb: vec![],
            neighbours: vec![],
            ..self
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|(_, a)| a.ip() == ip)
    }

    /// The link whose subnet holds `ip` (the longest prefix), if any: the peer is on-link.
    fn on_link(&self, ip: IpAddr) -> Option<u32> {
        let vxlan = self.vxlan.as_ref().map(|v| v.index);
        self.addresses
            .iter()
            .filter(|(i, a)| Some(*i) != vxlan && a.contains(ip) && a.prefix() < max_prefix(ip))
            .max_by_key(|(_, a)| a.prefix())
            .map(|(i, _)| *i)
    }

    fn link_name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    }

    fn owned_routes(&self) -> impl Iterator<Item = &TableRoute> {
        self.routes
            .iter()
            .filter(|r| r.protocol == NODE_ROUTE_PROTOCOL)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// A peer reached through the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VxlanPeer {
    node: Ipv4Addr,
    mac: [u8; 6],
    vtep: IpAddr,
}

/// A route to be, before the VXLAN device (and so its index) may exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    dst: IpNetwork,
    gateway: IpAddr,
    /// None: through the VXLAN device.
    oif: Option<u32>,
}

/// What this node should have.
struct Plan {
    routes: Vec<Wanted>,
    /// The VXLAN device, when any peer goes through it.
    vxlan: Option<NodeVxlanSpec>,
    /// This node's VTEP address (its first pod CIDR's first address), when it is in the file.
    local_vtep: Option<IpNetwork>,
    peers: Vec<VxlanPeer>,
}

/// The VXLAN device MAC of the node at `ip`: 0e:6e (locally administered, unicast) and the
/// address, the same on every node.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x6e, o[0], o[1], o[2], o[3]]
}

impl Plan {
    fn new(spec: &NodeRoutesSpec, list: &NodeList, host: &HostView) -> Result<Plan> {
        let mut plan = Plan {
            routes: vec![],
            vxlan: None,
            local_vtep: None,
            peers: vec![],
        };
        for node in list.nodes.iter().filter(|n| !host.is_local(n.address)) {
            let link = host.on_link(node.address).filter(|_| !spec.force_vxlan);
            for cidr in &node.pod_cidrs {
                if cidr.is_ipv4() != node.address.is_ipv4() && link.is_some() {
                    return Err(Error::Config(format!(
                        "node {}: pod CIDR {cidr} is not of the node address's family (give \
                         the node one line per family)",
                        node.address
                    )));
                }
                let wanted = match link {
                    Some(oif) => Wanted {
                        dst: *cidr,
                        gateway: node.address,
                        oif: Some(oif),
                    },
                    None => {
                        let IpAddr::V4(node_v4) = node.address else {
                            return Err(Error::Config(format!(
                                "node {}: VXLAN between nodes needs IPv4 node addresses",
                                node.address
                            )));
                        };
                        let vtep = cidr.network();
                        plan.peers.push(VxlanPeer {
                            node: node_v4,
                            mac: vtep_mac(node_v4),
                            vtep,
                        });
                        Wanted {
                            dst: *cidr,
                            gateway: vtep,
                            oif: None,
                        }
                    }
                };
                plan.routes.push(wanted);
            }
        }
        // A route to a pod CIDR that another owner made is not replaced.
        for w in &plan.routes {
            if let Some(r) = host
                .routes
                .iter()
                .find(|r| r.dst == w.dst && r.protocol != NODE_ROUTE_PROTOCOL)
            {
                let dev = r.oif.map(|i| host.link_name(i)).unwrap_or_default();
                return Err(Error::Config(format!(
                    "a route to {} exists that netbox did not make ({} dev {dev}, protocol {}); \
                     remove it or the node's entry",
                    w.dst,
                    describe_route(&TableRoute {
                        oif: None,
                        ..r.clone()
                    }),
                    r.protocol
                )));
            }
        }
        if !plan.peers.is_empty() {
            // Peers address this node's device by the MAC of its address in the file.
            let Some((local, local_v4)) = list.nodes.iter().find_map(|n| match n.address {
                IpAddr::V4(v4) if host.is_local(n.address) => Some((n, v4)),
                _ => None,
            }) else {
                return Err(Error::Config(format!(
                    "node file {}: this node (none of its IPv4 addresses) is not in it, so \
                     VXLAN peers could not reach it; add its line",
                    spec.file.display()
                )));
            };
            let underlay = host
                .addresses
                .iter()
                .find(|(_, a)| a.ip() == local.address)
                .map(|(i, _)| *i);
            let underlay_mtu = underlay
                .and_then(|i| host.links.iter().find(|l| l.index == i))
                .and_then(|l| l.mtu)
                .unwrap_or(1500);
            plan.local_vtep = local
                .pod_cidrs
                .iter()
                .find(|c| c.is_ipv4())
                .and_then(|c| IpNetwork::new(c.network(), 32).ok());
            plan.vxlan = Some(NodeVxlanSpec {
                name: VXLAN_DEVICE.into(),
                vni: spec.vni,
                port: spec.port,
                underlay,
                local: Some(local_v4),
                mac: vtep_mac(local_v4),
                mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            });
        }
        Ok(plan)
    }

    /// The VXLAN device's forwarding entries: each peer's MAC behind its node address, once
    /// per peer (a peer with several pod CIDRs has one device).
    fn fdb(&self) -> Vec<([u8; 6], IpAddr)> {
        let mut out: Vec<([u8; 6], IpAddr)> = Vec::new();
        for p in &self.peers {
            let entry = (p.mac, IpAddr::V4(p.node));
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    }

    /// The VXLAN device's neighbour entries: each pod CIDR's VTEP at its node's MAC.
    fn neighbours(&self) -> Vec<(IpAddr, [u8; 6])> {
        self.peers.iter().map(|p| (p.vtep, p.mac)).collect()
    }

    /// The existing VXLAN device when it is not the one the plan needs.
    fn stale_device<'h>(&self, host: &'h HostView) -> Option<&'h Link> {
        let (spec, link) = (self.vxlan.as_ref()?, host.vxlan.as_ref()?);
        let wanted = VxlanParams {
            vni: spec.vni,
            port: spec.port,
            local: spec.local,
        };
        (link.mac != Some(spec.mac) || host.vxlan_params != Some(wanted)).then_some(link)
    }

    /// The kernel route of `w`, given the VXLAN device's index.
    fn route(w: &Wanted, vxlan: Option<u32>) -> TableRoute {
        TableRoute {
            dst: w.dst,
            gateway: Some(w.gateway),
            oif: w.oif.or(vxlan),
            onlink: w.oif.is_none(),
            protocol: NODE_ROUTE_PROTOCOL,
        }
    }

    fn route_in_words(&self, w: &Wanted, host: &HostView) -> String {
        match w.oif {
            Some(i) => format!(
                "{} via {} dev {} (host-gw)",
                w.dst,
                w.gateway,
                host.link_name(i)
            ),
            None => format!(
                "{} via {} dev {VXLAN_DEVICE} onlink (vxlan)",
                w.dst, w.gateway
            ),
        }
    }

    /// Whether an existing owned route already is `w`.
    fn matches(w: &Wanted, r: &TableRoute, host: &HostView) -> bool {
        let vxlan = host.vxlan.as_ref().map(|v| v.index);
        *r == Plan::route(w, vxlan) && (w.oif.is_some() || vxlan.is_some())
    }

    fn changes(&self, host: &HostView) -> Vec<Change> {
        let mut out = Vec::new();
        if self.vxlan.is_some() && host.vxlan.is_none() {
            out.push(format!("+ device {VXLAN_DEVICE}"));
        }
        for w in &self.routes {
            if !host.owned_routes().any(|r| Plan::matches(w, r, host)) {
                out.push(format!("+ route {}", self.route_in_words(w, host)));
            }
        }
        for r in host.owned_routes() {
            if !self.routes.iter().any(|w| Plan::matches(w, r, host)) {
                let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                let dev = r.oif.map(|i| host.link_name(i)).unwrap_or_default();
                out.push(format!("- route {}{via} dev {dev}", r.dst));
            }
        }
        let (fdb, neighbours) = (self.fdb(), self.neighbours());
        let mac = |m: &[u8; 6]| crate::sys::netlink::format_mac(m);
        for (m, dst) in fdb.iter().filter(|e| !host.fdb.contains(e)) {
            out.push(format!("+ fdb {} dst {dst}", mac(m)));
        }
        for (ip, m) in neighbours.iter().filter(|e| !host.neighbours.contains(e)) {
            out.push(format!("+ neighbour {ip} lladdr {}", mac(m)));
        }
        for (m, dst) in host.fdb.iter().filter(|e| !fdb.contains(e)) {
            out.push(format!("- fdb {} dst {dst}", mac(m)));
        }
        for (ip, m) in host.neighbours.iter().filter(|e| !neighbours.contains(e)) {
            out.push(format!("- neighbour {ip} lladdr {}", mac(m)));
        }
        if self.vxlan.is_none() && host.vxlan.is_some() {
            out.push(format!("- device {VXLAN_DEVICE}"));
        }
        out
    }

    async fn execute(&self, nl: &Netlink, host: &HostView) -> Result<()> {
        // Routes that are no longer wanted go first: a CIDR moving to another node never
        // has two routes.
        for r in host.owned_routes() {
            if !self.routes.iter().any(|w| Plan::matches(w, r, host)) {
                nl.delete_node_route(r).await?;
            }
        }
        let vxlan = match (&self.vxlan, &host.vxlan) {
            (Some(_), Some(existing)) => Some(self.sync_vxlan(nl, host, existing).await?),
            (Some(spec), None) => {
                let link = nl.create_node_vxlan(spec).await?;
                let fresh = HostView {
                    fdb: vec![],
                    neighbours: vec![],
                    ..HostView::read(nl).await?
                };
                Some(self.sync_vxlan(nl, &fresh, &link).await?)
            }
            (None, Some(existing)) => {
                nl.delete_link_index(existing.index, &existing.name).await?;
                None
            }
            (None, None) => None,
        };
        // Read again: routes through a device that went went with it.
        let current = nl.main_table_routes().await?;
        for w in &self.routes {
            let route = Plan::route(w, vxlan.as_ref().map(|l| l.index));
            if !current.contains(&route) {
                nl.replace_node_route(&route).await?;
            }
        }
        Ok(())
    }

    /// The device's address and entries made to match the plan; returns the device.
    async fn sync_vxlan(&self, nl: &Netlink, host: &HostView, link: &Link) -> Result<Link> {
        if let Some(vtep) = self.local_vtep {
            nl.ensure_address(link, vtep).await?;
        }
        let (fdb, neighbours) = (self.fdb(), self.neighbours());
        for (mac, dst) in host.fdb.iter().filter(|e| !fdb.contains(e)) {
            nl.delete_vxlan_fdb(link, *mac, *dst).await?;
        }
        for (ip, _) in host.neighbours.iter().filter(|e| !neighbours.contains(e)) {
            nl.delete_neighbour(link, *ip).await?;
        }
        for (mac, dst) in fdb.iter().filter(|e| !host.fdb.contains(e)) {
            nl.set_vxlan_fdb(link, *mac, *dst).await?;
        }
        for (ip, mac) in neighbours.iter().filter(|e| !host.neighbours.contains(e)) {
            nl.add_permanent_neighbor(link, *ip, *mac).await?;
        }
        Ok(link.clone())
    }
}
