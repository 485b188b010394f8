//! The lab file: its schema (TOML or JSON, see README "Labs"), validation, and resolution into a
//! [`Plan`] where every interface has its name and address and every check its target address.
//!
//! Addresses not given are drawn from the link's subnet, the switch's subnet, or the next /24 of
//! the lab's pool, with the pure range arithmetic of `ipam::range` (a lab is short-lived and
//! private: no lease store is needed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::LabError;
use crate::model::ipam::range::{from_u128, subnet_bounds};

type Result<T, E = LabError> = std::result::Result<T, E>;

/// Longest node, switch or lab name: node namespaces are named LAB-NODE (netns names are at most
/// 64 bytes) and a switch's ports are named SWITCH.N (interface names are at most 15 bytes).
pub const MAX_NAME_LEN: usize = 24;
pub const MAX_SWITCH_NAME_LEN: usize = 10;
/// Pool the unaddressed links draw /24 subnets from when the file names none.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// A lab file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Lab name (default: the file's stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Where subnets of links and switches without one come from (/24 each).
    #[serde(default)]
    pub pool: Option<IpNetwork>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, rename = "switch")]
    pub switches: Vec<SwitchSpec>,
    #[serde(default, rename = "link")]
    pub links: Vec<LinkSpec>,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// Forwarding on (IPv4 and IPv6).
    #[serde(default)]
    pub router: bool,
    /// "DST via GW" or "DST dev IFNAME"; DST may be "default"; GW may be a node name.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Services netbox runs in the node: "tcp:PORT" (accepts and closes), "udp:PORT" (echoes).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Commands started in the node (through `sh -c`) when the lab comes up.
    #[serde(default)]
    pub start: Vec<String>,
    #[serde(default)]
    pub tun: Vec<TunSpec>,
    #[serde(default)]
    pub tap: Vec<TunSpec>,
    #[serde(default)]
    pub vxlan: Vec<VxlanNodeSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunSpec {
    pub name: String,
    #[serde(default)]
    pub address: Option<IpNetwork>,
    /// uid allowed to attach to the device.
    #[serde(default)]
    pub owner: Option<u32>,
    /// netbox answers ICMP echo requests that the kernel routes into this TUN (a user-space
    /// responder reading the device, as examples/tun_echo.rs does). TUN devices only.
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanNodeSpec {
    pub name: String,
    pub vni: u32,
    /// Underlay interface of the node.
    pub dev: String,
    /// Underlay address of the other end (or a node name: its address on the underlay).
    pub remote: String,
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// Switch (living in this node) the VXLAN device joins.
    #[serde(default)]
    pub switch: Option<String>,
    #[serde(default)]
    pub address: Option<IpNetwork>,
}

fn default_vxlan_port() -> u16 {
    4789
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    pub name: String,
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    /// The node the bridge lives in (a simulated host); default: the lab's own fabric.
    #[serde(default)]
    pub node: Option<String>,
    /// Address of the bridge itself (only for a switch inside a node).
    #[serde(default)]
    pub address: Option<IpNetwork>,
    /// Give the ports fixed MACs and every node permanent neighbour entries for the others, so
    /// no ARP is needed. For large switches: the kernel's neighbour table holds 1024 learned
    /// entries for the whole host (gc_thresh3), and 50 nodes that all talk need 2450.
    #[serde(default)]
    pub static_arp: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// "NODE" or "NODE:IFNAME".
    pub a: String,
    /// "NODE", "NODE:IFNAME" or a switch name.
    pub b: String,
    #[serde(default)]
    pub a_ip: Option<IpNetwork>,
    #[serde(default)]
    pub b_ip: Option<IpNetwork>,
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    /// Egress rate limit of both ends: "20mbit", "512kbit", "1gbit", "100kbps" (bytes).
    #[serde(default)]
    pub rate: Option<String>,
    /// Added delay: "10ms" (needs sch_netem).
    #[serde(default)]
    pub delay: Option<String>,
    /// Packet loss: "1%" (needs sch_netem).
    #[serde(default)]
    pub loss: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub from: String,
    /// A node name or an address.
    pub to: String,
    #[serde(default)]
    pub tcp: Option<u16>,
    #[serde(default)]
    pub udp: Option<u16>,
    #[serde(default)]
    pub ping: bool,
    /// "reach" (default) or "unreachable".
    #[serde(default)]
    pub expect: Option<String>,
}

impl Topology {
    /// Reads a lab file: TOML, or JSON when it ends in .json.
    pub fn from_file(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
            what: format!("reading lab file {}", path.display()),
            source,
        })?;
        let mut topo = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<Topology>(&text).map_err(|e| LabError::Parse {
                file: path.display().to_string(),
                message: e.to_string(),
            })?
        } else {
            Topology::from_toml(&text).map_err(|e| match e {
                LabError::Parse { message, .. } => LabError::Parse {
                    file: path.display().to_string(),
                    message,
                },
                other => other,
            })?
        };
        if topo.name.is_none() {
            topo.name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| s.replace('_', "-"));
        }
        Ok(topo)
    }

    pub fn from_toml(text: &str) -> Result<Topology> {
        toml::from_str(text).map_err(|e| LabError::Parse {
            file: "(text)".into(),
            message: e.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("lab")
    }
}

/// Which way a check expects it to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Reach,
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// A check with its target resolved.
#[derive(Debug, Clone, Serialize)]
pub struct CheckPlan {
    pub from: String,
    pub to: String,
    pub addr: IpAddr,
    pub probe: Probe,
    pub expect: Expect,
}

impl CheckPlan {
    pub fn describe(&self) -> String {
        let what = match self.probe {
            Probe::Tcp(p) => format!("tcp {}:{p}", self.addr),
            Probe::Udp(p) => format!("udp {}:{p}", self.addr),
            Probe::Ping => format!("ping {}", self.addr),
        };
        let exp = match self.expect {
            Expect::Reach => "",
            Expect::Unreachable => " (expect unreachable)",
        };
        format!("{} -> {} {what}{exp}", self.from, self.to)
    }
}

/// One end of a link in a node.
#[derive(Debug, Clone, Serialize)]
pub struct IfacePlan {
    pub name: String,
    pub address: Option<IpNetwork>,
}

#[derive(Debug, Clone, Serialize)]
pub enum EndPlan {
    /// An interface in a node.
    Node { node: String, iface: IfacePlan },
    /// A port on a switch: the port's interface name in the switch's namespace.
    Switch { switch: String, port: String },
}

impl EndPlan {
    pub fn label(&self) -> String {
        match self {
            EndPlan::Node { node, iface } => format!("{node}:{}", iface.name),
            EndPlan::Switch { switch, .. } => switch.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkPlan {
    pub a: EndPlan,
    pub b: EndPlan,
    pub rate_bytes: Option<u64>,
    pub rate: Option<String>,
    pub delay_ns: Option<u64>,
    pub loss_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutePlan {
    pub dst: IpNetwork,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Listen {
    Tcp(u16),
    Udp(u16),
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub router: bool,
    pub routes: Vec<RoutePlan>,
    pub listen: Vec<Listen>,
    pub start: Vec<String>,
    pub tun: Vec<TunSpec>,
    pub tap: Vec<TunSpec>,
    pub vxlan: Vec<(VxlanNodeSpec, Ipv4Addr)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwitchPlan {
    pub name: String,
    pub static_arp: bool,
    pub node: Option<String>,
    pub subnet: IpNetwork,
    pub address: Option<IpNetwork>,
}

/// A topology resolved: what the builder creates.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub nodes: Vec<NodePlan>,
    pub switches: Vec<SwitchPlan>,
    pub links: Vec<LinkPlan>,
    pub checks: Vec<CheckPlan>,
}

impl Plan {
    /// Addresses of a node, per interface, in link order.
    pub fn addresses_of(&self, node: &str) -> Vec<(String, IpNetwork)> {
        let mut out = vec![];
        for link in &self.links {
            for end in [&link.a, &link.b] {
                if let EndPlan::Node { node: n, iface } = end {
                    if n == node {
                        if let Some(a) = iface.address {
                            out.push((iface.name.clone(), a));
                        }
                    }
                }
            }
        }
        for sw in &self.switches {
            if sw.node.as_deref() == Some(node) {
                if let Some(a) = sw.address {
                    out.push((sw.name.clone(), a));
                }
            }
        }
        if let Some(n) = self.nodes.iter().find(|n| n.name == node) {
            for v in &n.vxlan {
                if let Some(a) = v.0.address {
                    out.push((v.0.name.clone(), a));
                }
            }
            for t in n.tun.iter().chain(&n.tap) {
                if let Some(a) = t.address {
                    out.push((t.name.clone(), a));
                }
            }
        }
        out
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The fixed MAC of a port with this IPv4 address on a static-ARP switch: 02:6c:A:B:C:D.
pub fn static_mac(ip: IpAddr) -> Option<[u8; 6]> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some([0x02, 0x6c, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => None,
    }
}

/// Checks a lab, node or switch name.
pub fn validate_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(LabError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > max {
        return bad("too long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("must start with a letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

/// Parses "20mbit", "512kbit", "1gbit", "800bit", "100kbps" into bytes per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let bits = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return None,
    };
    let bytes = num * bits / 8.0;
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64)
}

/// Parses "10ms", "1s", "500us" into nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mul = match unit {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let ns = num * mul;
    (ns.is_finite() && ns >= 0.0).then_some(ns as u64)
}

/// Address allocation within one subnet.
struct Pool {
    subnet: IpNetwork,
    used: BTreeSet<IpAddr>,
    next: u128,
}

impl Pool {
    fn new(subnet: IpNetwork) -> Pool {
        let (first, _) = subnet_bounds(subnet);
        Pool {
            subnet,
            used: BTreeSet::new(),
            next: first + 1,
        }
    }

    fn reserve(&mut self, ip: IpAddr) {
        self.used.insert(ip);
    }

    fn take(&mut self) -> Option<IpNetwork> {
        let (_, last) = subnet_bounds(self.subnet);
        // The broadcast address of an IPv4 subnet is not a host.
        let last = if self.subnet.is_ipv4() {
            last - 1
        } else {
            last
        };
        while self.next <= last {
            let ip = from_u128(self.subnet.network(), self.next);
            self.next += 1;
            if self.used.insert(ip) {
                return IpNetwork::new(ip, self.subnet.prefix()).ok();
            }
        }
        None
    }
}

/// Hands out /24 (or /64) subnets of the pool that nothing in the file uses.
struct SubnetPool {
    pool: IpNetwork,
    taken: Vec<IpNetwork>,
    next: u128,
}

impl SubnetPool {
    fn take(&mut self) -> Option<IpNetwork> {
        let child_prefix = if self.pool.is_ipv4() { 24 } else { 64 };
        if self.pool.prefix() > child_prefix {
            return None;
        }
        let (first, last) = subnet_bounds(self.pool);
        let step = 1u128 << (if self.pool.is_ipv4() { 32 } else { 128 } - child_prefix);
        let mut at = first + self.next * step;
        while at <= last {
            self.next += 1;
            let net = IpNetwork::new(from_u128(self.pool.network(), at), child_prefix).ok()?;
            if !self.taken.iter().any(|t| overlaps(*t, net)) {
                return Some(net);
            }
            at += step;
        }
        None
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

enum RawEnd {
    Node {
        node: String,
        ifname: Option<String>,
    },
    Switch(String),
}

/// Validates a topology and resolves names, interfaces and addresses.
pub fn resolve(topo: &Topology) -> Result<Plan> {
    let name = topo.name().to_string();
    validate_name("lab", &name, MAX_NAME_LEN)?;
    let mut node_names = BTreeSet::new();
    for n in &topo.nodes {
        validate_name("node", &n.name, MAX_NAME_LEN)?;
        if !node_names.insert(n.name.clone()) {
            return Err(LabError::Duplicate {
                what: "node",
                name: n.name.clone(),
            });
        }
    }
    let mut switch_names = BTreeSet::new();
    for s in &topo.switches {
        validate_name("switch", &s.name, MAX_SWITCH_NAME_LEN)?;
        if node_names.contains(&s.name) || !switch_names.insert(s.name.clone()) {
            return Err(LabError::Duplicate {
                what: "node or switch",
                name: s.name.clone(),
            });
        }
        if let Some(n) = &s.node {
            if !node_names.contains(n) {
                return Err(LabError::Unknown {
                    what: "node",
                    name: n.clone(),
                    context: format!("switch \"{}\"", s.name),
                });
            }
        } else if s.address.is_some() {
            return Err(LabError::Invalid(format!(
                "switch \"{}\": an address needs the switch to live in a node (node = ...)",
                s.name
            )));
        }
    }
    let pool_net = match topo.pool {
        Some(p) => p,
        None => IpNetwork::from_str(DEFAULT_POOL)
            .map_err(|e| LabError::Invalid(format!("default pool: {e}")))?,
    };
    let mut taken: Vec<IpNetwork> = topo
        .links
        .iter()
        .flat_map(|l| [l.subnet, l.a_ip, l.b_ip])
        .chain(topo.switches.iter().flat_map(|s| [s.subnet, s.address]))
        .flatten()
        .collect();
    for n in &topo.nodes {
        taken.extend(n.tun.iter().chain(&n.tap).filter_map(|t| t.address));
        taken.extend(n.vxlan.iter().filter_map(|v| v.address));
    }
    let mut subnets = SubnetPool {
        pool: pool_net,
        taken,
        next: 0,
    };
    let mut switches = vec![];
    let mut switch_pools: BTreeMap<String, Pool> = BTreeMap::new();
    for s in &topo.switches {
        let subnet = match s.subnet {
            Some(n) => n,
            None => subnets
                .take()
                .ok_or(LabError::PoolExhausted { pool: pool_net })?,
        };
        let mut pool = Pool::new(subnet);
        if let Some(a) = s.address {
            pool.reserve(a.ip());
        }
        switch_pools.insert(s.name.clone(), pool);
        switches.push(SwitchPlan {
            name: s.name.clone(),
            static_arp: s.static_arp,
            node: s.node.clone(),
            subnet,
            address: s.address,
        });
    }
    // Explicit addresses on switch links are reserved before any is drawn.
    for l in &topo.links {
        if let Some(pool) = switch_pools.get_mut(&l.b) {
            if let Some(a) = l.a_ip {
                pool.reserve(a.ip());
            }
        }
    }
    let parse_end = |s: &str, allow_switch: bool| -> Result<RawEnd> {
        let (node, ifname) = match s.split_once(':') {
            Some((n, i)) => (n, Some(i.to_string())),
            None => (s, None),
        };
        if node_names.contains(node) {
            if let Some(i) = &ifname {
                crate::sys::netlink::validate_ifname(i)?;
            }
            return Ok(RawEnd::Node {
                node: node.to_string(),
                ifname,
            });
        }
        if allow_switch && ifname.is_none() && switch_names.contains(node) {
            return Ok(RawEnd::Switch(node.to_string()));
        }
        Err(LabError::Unknown {
            what: if allow_switch {
                "node or switch"
            } else {
                "node"
            },
            name: node.to_string(),
            context: format!("link end \"{s}\""),
        })
    };
    let mut if_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut if_names: BTreeSet<(String, String)> = BTreeSet::new();
    let mut port_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut links = vec![];
    for (i, l) in topo.links.iter().enumerate() {
        let a = parse_end(&l.a, false)?;
        let b = parse_end(&l.b, true)?;
        let ctx = format!("link {} ({} - {})", i + 1, l.a, l.b);
        let rate_bytes = match &l.rate {
            Some(r) => Some(parse_rate(r).ok_or_else(|| {
                LabError::Invalid(format!(
                    "{ctx}: rate {r:?} is not a rate (like 20mbit, 512kbit, 1gbit)"
                ))
            })?),
            None => None,
        };
        let delay_ns = match &l.delay {
            Some(d) => Some(parse_duration(d).ok_or_else(|| {
                LabError::Invalid(format!("{ctx}: delay {d:?} is not a duration (like 10ms)"))
            })?),
            None => None,
        };
        let loss_percent = match &l.loss {
            Some(p) => Some(
                p.trim()
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .ok()
                    .filter(|v| (0.0..=100.0).contains(v))
                    .ok_or_else(|| {
                        LabError::Invalid(format!("{ctx}: loss {p:?} is not a percentage"))
                    })?,
            ),
            None => None,
        };
        let mut ifname_for = |node: &str, given: Option<String>| -> Result<String> {
            let count = if_counts.entry(node.to_string()).or_default();
            let name = given.unwrap_or_else(|| format!("eth{count}"));
            *count += 1;
            if !if_names.insert((node.to_string(), name.clone())) {
                return Err(LabError::Invalid(format!(
                    "{ctx}: node \"{node}\" already has an interface \"{name}\""
                )));
            }
            Ok(name)
        };
        let RawEnd::Node {
            node: a_node,
            ifname: a_if,
        } = a
        else {
            return Err(LabError::Invalid(format!("{ctx}: end a must be a node")));
        };
        let a_if = ifname_for(&a_node, a_if)?;
        let (a_addr, b_end) = match b {
            RawEnd::Switch(sw) => {
                if l.b_ip.is_some() || l.subnet.is_some() {
                    return Err(LabError::Invalid(format!(
                        "{ctx}: a link to a switch takes its subnet from the switch (no b_ip or subnet)"
                    )));
                }
                let pool = switch_pools
                    .get_mut(&sw)
                    .ok_or_else(|| LabError::Invalid(format!("{ctx}: unknown switch")))?;
                let addr = match l.a_ip {
                    Some(a) => a,
                    None => pool
                        .take()
                        .ok_or(LabError::PoolExhausted { pool: pool.subnet })?,
                };
                let n = port_counts.entry(sw.clone()).or_default();
                let port = format!("{sw}.{n}");
                *n += 1;
                (Some(addr), EndPlan::Switch { switch: sw, port })
            }
            RawEnd::Node { node, ifname } => {
                if node == a_node {
                    return Err(LabError::Invalid(format!(
                        "{ctx}: a node cannot link to itself"
                    )));
                }
                let b_if = ifname_for(&node, ifname)?;
                let subnet = match (l.subnet, l.a_ip, l.b_ip) {
                    (Some(s), _, _) => Some(s),
                    (None, None, None) => Some(
                        subnets
                            .take()
                            .ok_or(LabError::PoolExhausted { pool: pool_net })?,
                    ),
                    _ => None,
                };
                let mut pool = subnet.map(Pool::new);
                if let Some(p) = pool.as_mut() {
                    for ip in [l.a_ip, l.b_ip].into_iter().flatten() {
                        p.reserve(ip.ip());
                    }
                }
                let mut draw = |given: Option<IpNetwork>| -> Result<Option<IpNetwork>> {
                    match (given, pool.as_mut()) {
                        (Some(a), _) => Ok(Some(a)),
                        (None, Some(p)) => Ok(Some(
                            p.take().ok_or(LabError::PoolExhausted { pool: p.subnet })?,
                        )),
                        (None, None) => Ok(None),
                    }
                };
                let a_addr = draw(l.a_ip)?;
                let b_addr = draw(l.b_ip)?;
                (
                    a_addr,
                    EndPlan::Node {
                        node,
                        iface: IfacePlan {
                            name: b_if,
                            address: b_addr,
                        },
                    },
                )
            }
        };
        links.push(LinkPlan {
            a: EndPlan::Node {
                node: a_node,
                iface: IfacePlan {
                    name: a_if,
                    address: a_addr,
                },
            },
            b: b_end,
            rate_bytes,
            rate: l.rate.clone(),
            delay_ns,
            loss_percent,
        });
    }
    let mut plan = Plan {
        name,
        nodes: vec![],
        switches,
        links,
        checks: vec![],
    };
    // Nodes: routes, listeners, devices (routes may name gateways by node, so addresses first).
    let mut nodes = vec![];
    for n in &topo.nodes {
        let mut routes = vec![];
        for r in &n.routes {
            routes.push(parse_route(&plan, &n.name, r)?);
        }
        let mut listen = vec![];
        for l in &n.listen {
            let parsed = match l.split_once(':') {
                Some(("tcp", p)) => p.parse().ok().map(Listen::Tcp),
                Some(("udp", p)) => p.parse().ok().map(Listen::Udp),
                _ => None,
            };
            listen.push(parsed.ok_or_else(|| {
                LabError::Invalid(format!(
                    "node \"{}\": listen {l:?} is not tcp:PORT or udp:PORT",
                    n.name
                ))
            })?);
        }
        if let Some(t) = n.tap.iter().find(|t| t.echo) {
            return Err(LabError::Invalid(format!(
                "node \"{}\": tap \"{}\": echo answers IP packets, so it needs a tun device",
                n.name, t.name
            )));
        }
        for t in n
            .tun
            .iter()
            .chain(&n.tap)
            .map(|t| &t.name)
            .chain(n.vxlan.iter().map(|v| &v.name))
        {
            crate::sys::netlink::validate_ifname(t)?;
            if !if_names.insert((n.name.clone(), t.clone())) {
                return Err(LabError::Invalid(format!(
                    "node \"{}\" already has an interface \"{t}\"",
                    n.name
                )));
            }
        }
        let mut vxlan = vec![];
        for v in &n.vxlan {
            if let Some(sw) = &v.switch {
                let lives_here = plan
                    .switches
                    .iter()
                    .any(|s| &s.name == sw && s.node.as_deref() == Some(n.name.as_str()));
                if !lives_here {
                    return Err(LabError::Invalid(format!(
                        "node \"{}\": vxlan \"{}\" joins switch \"{sw}\", which does not live in this node",
                        n.name, v.name
                    )));
                }
            }
            let remote = match IpAddr::from_str(&v.remote) {
                Ok(IpAddr::V4(ip)) => ip,
                Ok(IpAddr::V6(_)) => {
                    return Err(LabError::Invalid(format!(
                        "node \"{}\": vxlan \"{}\": only IPv4 underlays are supported",
                        n.name, v.name
                    )))
                }
                Err(_) => match gateway_of(&plan, &n.name, &v.remote) {
                    Some(IpAddr::V4(ip)) => ip,
                    _ => {
                        return Err(LabError::Invalid(format!(
                            "node \"{}\": vxlan remote {:?} is neither an IPv4 address nor a node sharing a subnet",
                            n.name, v.remote
                        )))
                    }
                },
            };
            vxlan.push((v.clone(), remote));
        }
        nodes.push(NodePlan {
            name: n.name.clone(),
            router: n.router,
            routes,
            listen,
            start: n.start.clone(),
            tun: n.tun.clone(),
            tap: n.tap.clone(),
            vxlan,
        });
    }
    plan.nodes = nodes;
    let mut checks = vec![];
    for c in &topo.checks {
        checks.push(resolve_check(&plan, c)?);
    }
    plan.checks = checks;
    Ok(plan)
}

fn resolve_check(plan: &Plan, c: &CheckSpec) -> Result<CheckPlan> {
    let ctx = format!("check {} -> {}", c.from, c.to);
    if plan.node(&c.from).is_none() {
        return Err(LabError::Unknown {
            what: "node",
            name: c.from.clone(),
            context: ctx,
        });
    }
    let addr = match IpAddr::from_str(&c.to) {
        Ok(ip) => ip,
        Err(_) => target_address(plan, &c.from, &c.to).ok_or_else(|| LabError::Unknown {
            what: "node with an address",
            name: c.to.clone(),
            context: ctx.clone(),
        })?,
    };
    let probe = match (c.tcp, c.udp, c.ping) {
        (Some(p), None, false) => Probe::Tcp(p),
        (None, Some(p), false) => Probe::Udp(p),
        (None, None, true) => Probe::Ping,
        _ => {
            return Err(LabError::Invalid(format!(
                "{ctx}: give exactly one of tcp = PORT, udp = PORT, ping = true"
            )))
        }
    };
    let expect = match c.expect.as_deref() {
        None | Some("reach") => Expect::Reach,
        Some("unreachable") => Expect::Unreachable,
        Some(other) => {
            return Err(LabError::Invalid(format!(
                "{ctx}: expect {other:?} is not \"reach\" or \"unreachable\""
            )))
        }
    };
    Ok(CheckPlan {
        from: c.from.clone(),
        to: c.to.clone(),
        addr,
        probe,
        expect,
    })
}

/// The address of `target` that `from` should use: one in a subnet `from` is on, else its first.
pub fn target_address(plan: &Plan, from: &str, target: &str) -> Option<IpAddr> {
    let theirs = plan.addresses_of(target);
    let ours = plan.addresses_of(from);
    theirs
        .iter()
        .find(|(_, t)| ours.iter().any(|(_, o)| o.contains(t.ip())))
        .or(theirs.first())
        .map(|(_, t)| t.ip())
}

/// A node's address in a subnet `from` is directly on (a gateway), when there is one.
fn gateway_of(plan: &Plan, from: &str, target: &str) -> Option<IpAddr> {
    let theirs = plan.addresses_of(target);
    let ours = plan.addresses_of(from);
    theirs
        .iter()
        .find(|(_, t)| ours.iter().any(|(_, o)| o.contains(t.ip())))
        .map(|(_, t)| t.ip())
}

fn parse_route(plan: &Plan, node: &str, text: &str) -> Result<RoutePlan> {
    let bad = |why: &str| {
        LabError::Invalid(format!(
            "node \"{node}\": route {text:?}: {why} (write \"DST via GW\" or \"DST dev IFNAME\")"
        ))
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let (dst, rest) = words.split_first().ok_or_else(|| bad("empty"))?;
    let dst = if *dst == "default" {
        IpNetwork::from_str("0.0.0.0/0").map_err(|_| bad("default"))?
    } else {
        IpNetwork::from_str(dst).map_err(|_| bad("destination is not a CIDR"))?
    };
    match rest {
        ["via", gw] => {
            let via = match IpAddr::from_str(gw) {
                Ok(ip) => ip,
                Err(_) => gateway_of(plan, node, gw)
                    .ok_or_else(|| bad("gateway is neither an address nor a neighbouring node"))?,
            };
            Ok(RoutePlan {
                dst,
                via: Some(via),
                dev: None,
            })
        }
        ["dev", dev] => Ok(RoutePlan {
            dst,
            via: None,
            dev: Some(dev.to_string()),
        }),
        _ => Err(bad("unexpected words")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: &str = r#"
        name = "r1"
        [[switch]]
        name = "left"
        subnet = "10.1.0.0/24"
        [[node]]
        name = "client"
        routes = ["default via router"]
        [[node]]
        name = "router"
        router = true
        [[node]]
        name = "server"
        listen = ["tcp:80"]
        [[link]]
        a = "router"
        b = "left"
        a_ip = "10.1.0.1/24"
        [[link]]
        a = "client"
        b = "left"
        [[link]]
        a = "router"
        b = "server"
        rate = "20mbit"
        [[check]]
        from = "client"
        to = "server"
        tcp = 80
    "#;

    #[test]
    fn addresses_are_drawn_and_gateways_resolved_by_node_name() {
        let plan = resolve(&Topology::from_toml(ROUTER).expect("parses")).expect("resolves");
        let client = plan.addresses_of("client");
        assert_eq!(client[0].1.to_string(), "10.1.0.2/24");
        let route = &plan.node("client").expect("client").routes[0];
        assert_eq!(route.via, Some("10.1.0.1".parse().expect("ip")));
        assert_eq!(plan.links[2].rate_bytes, Some(2_500_000));
        // The router-server link got the pool's first /24, the server its .2.
        assert_eq!(plan.checks[0].addr.to_string(), "10.213.0.2");
    }

    #[test]
    fn bad_names_unknown_nodes_and_bad_rates_are_refused() {
        for (bad, needle) in [
            (
                ROUTER.replace("name = \"client\"", "name = \"9x\""),
                "start with a letter",
            ),
            (ROUTER.replace("b = \"server\"", "b = \"nobody\""), "nobody"),
            (ROUTER.replace("20mbit", "fast"), "not a rate"),
            (
                ROUTER.replace("tcp = 80", "tcp = 80\nping = true"),
                "exactly one",
            ),
            (
                ROUTER.replace("listen = [\"tcp:80\"]", "listen = [\"sctp:1\"]"),
                "tcp:PORT",
            ),
            (ROUTER.replace("[[check]]", "[[bogus]]"), "unknown field"),
        ] {
            let err = Topology::from_toml(&bad)
                .and_then(|t| resolve(&t))
                .expect_err("refused");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn json_files_take_the_same_keys() {
        let dir = std::env::temp_dir().join(format!("netbox-lab-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("pair-lab.json");
        std::fs::write(
            &path,
            r#"{"node": [{"name": "a"}, {"name": "b", "listen": ["tcp:80"]}],
                "link": [{"a": "a", "b": "b", "subnet": "10.9.0.0/30"}],
                "check": [{"from": "a", "to": "b", "tcp": 80}]}"#,
        )
        .expect("write");
        let topo = Topology::from_file(&path).expect("parses");
        let _ = std::fs::remove_dir_all(&dir);
        // The name comes from the file, '_' made '-'.
        assert_eq!(topo.name(), "pair-lab");
        let plan = resolve(&topo).expect("resolves");
        assert_eq!(plan.checks[0].addr.to_string(), "10.9.0.2");
    }

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("20mbit"), Some(2_500_000));
        assert_eq!(parse_rate("1gbit"), Some(125_000_000));
        assert_eq!(parse_rate("100kbps"), Some(100_000));
        assert_eq!(parse_rate("20"), None);
        assert_eq!(parse_duration("10ms"), Some(10_000_000));
        assert_eq!(parse_duration("x"), None);
    }
}
