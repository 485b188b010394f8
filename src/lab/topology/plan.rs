//! A topology resolved: what the builder creates, with every interface named and addressed,
//! every check aimed, and the timeline's changes bound to links and nodes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::schema::{TunSpec, VxlanNodeSpec};
use super::Result;
use crate::lab::LabError;

/// Which way a check expects it to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Reach,
    Unreachable,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
    /// `sh -c COMMAND` in the source node exits 0 (and its output matches the pattern).
    Exec {
        command: String,
        output: Option<String>,
    },
    /// At least `min_bytes` per second over a TCP stream of `duration`.
    Throughput {
        min_bytes: u64,
        duration: Duration,
    },
    /// An ICMP echo answered within `max`.
    Rtt {
        max: Duration,
    },
}

/// A check with its target resolved.
#[derive(Debug, Clone, Serialize)]
pub struct CheckPlan {
    pub from: String,
    /// The target as written ("" for exec checks).
    pub to: String,
    /// The target's address (unspecified for exec checks).
    pub addr: IpAddr,
    pub probe: Probe,
    pub expect: Expect,
    /// Tried again until it passes or this much time went by.
    pub within: Option<Duration>,
    /// Tried again up to this many more times.
    pub retries: u32,
}

impl CheckPlan {
    /// A check tried once.
    pub fn new(from: &str, to: &str, addr: IpAddr, probe: Probe, expect: Expect) -> CheckPlan {
        CheckPlan {
            from: from.into(),
            to: to.into(),
            addr,
            probe,
            expect,
            within: None,
            retries: 0,
        }
    }

    pub fn describe(&self) -> String {
        let what = match &self.probe {
            Probe::Tcp(p) => format!("tcp {}:{p}", self.addr),
            Probe::Udp(p) => format!("udp {}:{p}", self.addr),
            Probe::Ping => format!("ping {}", self.addr),
            Probe::Exec { command, output } => match output {
                Some(o) => format!("exec {command:?} output ~ /{o}/"),
                None => format!("exec {command:?}"),
            },
            Probe::Throughput { min_bytes, .. } => {
                format!("throughput {} >= {}", self.addr, format_rate(*min_bytes))
            }
            Probe::Rtt { max } => format!("rtt {} <= {max:?}", self.addr),
        };
        let exp = match self.expect {
            Expect::Reach => "",
            Expect::Unreachable => " (expect unreachable)",
        };
        match &self.probe {
            Probe::Exec { .. } => format!("{} {what}{exp}", self.from),
            _ => format!("{} -> {} {what}{exp}", self.from, self.to),
        }
    }
}

/// Bytes per second as the file writes rates: "2.5mbit".
pub fn format_rate(bytes: u64) -> String {
    let bits = bytes as f64 * 8.0;
    for (unit, scale) in [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
        if bits >= scale {
            return format!("{}{unit}", (bits / scale * 100.0).round() / 100.0);
        }
    }
    format!("{bits}bit")
}

/// One end of a link in a node.
#[derive(Debug, Clone, Serialize)]
pub struct IfacePlan {
    pub name: String,
    pub address: Option<IpNetwork>,
    /// Fixed MAC (static-ARP switches, or any interface when the file has a seed).
    pub mac: Option<[u8; 6]>,
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
    /// Entries for every pair of members, not only those the file makes talk.
    pub static_arp_all: bool,
    pub node: Option<String>,
    pub subnet: IpNetwork,
    pub address: Option<IpNetwork>,
}

/// A topology resolved: what the builder creates.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub seed: Option<u64>,
    pub nodes: Vec<NodePlan>,
    pub switches: Vec<SwitchPlan>,
    pub links: Vec<LinkPlan>,
    pub checks: Vec<CheckPlan>,
    pub steps: Vec<StepPlan>,
}

/// When a step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// This long after `up`.
    At(Duration),
    /// This long after the previous step ended.
    After(Duration),
}

/// A change of a link; `None` leaves a property as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImpairChange {
    pub rate_bytes: Option<Option<u64>>,
    pub loss_percent: Option<Option<f64>>,
    pub delay: Option<Option<Duration>>,
    pub jitter: Option<Option<Duration>>,
    pub reorder_percent: Option<Option<f64>>,
}

/// A change of a running lab (links by their index in [`Plan::links`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    LinkDown(usize),
    LinkUp(usize),
    Impair(usize, ImpairChange),
    Partition(Vec<Vec<String>>),
    Heal,
    Isolate(String),
    Restore(String),
    Stop(String),
    Start(String),
    Reset,
}

/// A step of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub name: String,
    pub when: When,
    pub action: Option<Action>,
    pub checks: Vec<CheckPlan>,
}

impl Plan {
    /// Every interface address of the lab as (node, interface, address): links in order,
    /// then switches living in nodes, then VXLAN, TUN and TAP devices.
    fn address_entries(&self) -> impl Iterator<Item = (&str, &str, IpNetwork)> {
        let links = self
            .links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter_map(|e| match e {
                EndPlan::Node { node, iface } => {
                    Some((node.as_str(), iface.name.as_str(), iface.address?))
                }
                EndPlan::Switch { .. } => None,
            });
        let bridges = self
            .switches
            .iter()
            .filter_map(|s| Some((s.node.as_deref()?, s.name.as_str(), s.address?)));
        let devices = self.nodes.iter().flat_map(|n| {
            let vx = n
                .vxlan
                .iter()
                .filter_map(|v| Some((v.0.name.as_str(), v.0.address?)));
            let tun = n
                .tun
                .iter()
                .chain(&n.tap)
                .filter_map(|t| Some((t.name.as_str(), t.address?)));
            vx.chain(tun).map(|(i, a)| (n.name.as_str(), i, a))
        });
        links.chain(bridges).chain(devices)
    }

    /// Every node's addresses as [`Plan::addresses_of`] gives them, in one pass (asking node by
    /// node costs a pass per node: quadratic in large labs).
    pub fn address_book(&self) -> std::collections::BTreeMap<&str, Vec<(String, IpNetwork)>> {
        let mut book: std::collections::BTreeMap<&str, Vec<(String, IpNetwork)>> = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), vec![]))
            .collect();
        for (node, iface, a) in self.address_entries() {
            if let Some(list) = book.get_mut(node) {
                list.push((iface.to_string(), a));
            }
        }
        book
    }

    /// Addresses of a node, per interface, in link order.
    pub fn addresses_of(&self, node: &str) -> Vec<(String, IpNetwork)> {
        self.address_entries()
            .filter(|(n, _, _)| *n == node)
            .map(|(_, i, a)| (i.to_string(), a))
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The link between two ends, each "NODE", "NODE:IFNAME" or a switch name, in either
    /// order; an error names the candidates when more than one link matches.
    pub fn find_link(&self, x: &str, y: &str) -> Result<usize> {
        let matches = |end: &EndPlan, s: &str| match end {
            EndPlan::Node { node, iface } => match s.split_once(':') {
                Some((n, i)) => n == node && i == iface.name,
                None => s == node,
            },
            EndPlan::Switch { switch, .. } => s == switch,
        };
        let found: Vec<usize> = self
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                (matches(&l.a, x) && matches(&l.b, y)) || (matches(&l.a, y) && matches(&l.b, x))
            })
            .map(|(i, _)| i)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(LabError::Unknown {
                what: "link",
                name: format!("{x} - {y}"),
                context: format!("lab \"{}\"", self.name),
            }),
            many => Err(LabError::Invalid(format!(
                "{x} - {y} names {} links ({}): name the interfaces, NODE:IFNAME",
                many.len(),
                many.iter()
                    .map(|i| self.links[*i].label())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The addresses each node sends to because of the file: its checks' targets (the file's
    /// and the timeline's), its gateways and its VXLAN remotes.
    pub fn talkers(&self) -> std::collections::BTreeMap<&str, std::collections::BTreeSet<IpAddr>> {
        let mut out: std::collections::BTreeMap<&str, std::collections::BTreeSet<IpAddr>> =
            Default::default();
        let checks = self
            .checks
            .iter()
            .chain(self.steps.iter().flat_map(|s| s.checks.iter()));
        for c in checks.filter(|c| !matches!(c.probe, Probe::Exec { .. })) {
            out.entry(c.from.as_str()).or_default().insert(c.addr);
        }
        for n in &self.nodes {
            let set = out.entry(n.name.as_str()).or_default();
            set.extend(n.routes.iter().filter_map(|r| r.via));
            set.extend(n.vxlan.iter().map(|(_, remote)| IpAddr::V4(*remote)));
        }
        out
    }

    /// The node holding `ip` on one of its interfaces.
    pub fn node_with_address(&self, ip: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| self.addresses_of(&n.name).iter().any(|(_, a)| a.ip() == ip))
            .map(|n| n.name.as_str())
    }

    /// The links with an end in `node`.
    pub fn links_of(&self, node: &str) -> Vec<usize> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.node_names().any(|n| n == node))
            .map(|(i, _)| i)
            .collect()
    }

    /// /etc/hosts for every node of the lab: each node's name (and NAME.LAB) at its first
    /// address.
    pub fn hosts(&self) -> String {
        let mut out =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let book = self.address_book();
        for n in &self.nodes {
            if let Some((_, a)) = book.get(n.name.as_str()).and_then(|l| l.first()) {
                out.push_str(&format!(
                    "{}\t{}\t{}.{}\n",
                    a.ip(),
                    n.name,
                    n.name,
                    self.name
                ));
            }
        }
        out
    }
}

impl LinkPlan {
    /// "a - b" as the ends are written.
    pub fn label(&self) -> String {
        format!("{} - {}", self.a.label(), self.b.label())
    }

    /// The nodes the link touches (one for a link to a switch).
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        [&self.a, &self.b].into_iter().filter_map(|e| match e {
            EndPlan::Node { node, .. } => Some(node.as_str()),
            EndPlan::Switch { .. } => None,
        })
    }
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
pub fn gateway_of(plan: &Plan, from: &str, target: &str) -> Option<IpAddr> {
    let theirs = plan.addresses_of(target);
    let ours = plan.addresses_of(from);
    theirs
        .iter()
        .find(|(_, t)| ours.iter().any(|(_, o)| o.contains(t.ip())))
        .map(|(_, t)| t.ip())
}
