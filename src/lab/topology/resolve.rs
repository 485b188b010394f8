//! Validation and resolution of a [`Topology`] into a [`Plan`]: names checked, interfaces named,
//! addresses drawn, gateways, checks and timeline steps bound to what they name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::names::{validate_name, MAX_NAME_LEN, MAX_SWITCH_NAME_LEN};
use super::plan::{
    gateway_of, target_address, Action, CheckPlan, EndPlan, Expect, IfacePlan, ImpairChange,
    LinkPlan, Listen, NodePlan, Plan, Probe, RoutePlan, StepPlan, SwitchPlan, When,
};
use super::pools::{Pool, SubnetPool};
use super::schema::{CheckSpec, ImpairSpec, LinkSpec, NodeSpec, StepSpec, Topology};
use super::seed::{seeded_mac, static_mac};
use super::units::{parse_duration, parse_percent, parse_rate};
use super::{Result, DEFAULT_POOL};
use crate::lab::LabError;

/// Ports a Linux bridge takes (BR_MAX_PORTS, port number 0 unused).
pub const MAX_SWITCH_PORTS: usize = 1023;

/// Validates a topology and resolves names, interfaces and addresses.
pub fn resolve(topo: &Topology) -> Result<Plan> {
    let name = topo.name().to_string();
    validate_name("lab", &name, MAX_NAME_LEN)?;
    let names = Names::of(topo)?;
    let pool = match topo.pool {
        Some(p) => p,
        None => IpNetwork::from_str(DEFAULT_POOL)
            .map_err(|e| LabError::Invalid(format!("default pool: {e}")))?,
    };
    let mut links = LinkResolver {
        names: &names,
        subnets: SubnetPool::new(pool, taken_subnets(topo)),
        switch_pools: BTreeMap::new(),
        if_counts: BTreeMap::new(),
        if_names: BTreeSet::new(),
        port_counts: BTreeMap::new(),
    };
    let switches = links.switches(topo)?;
    let mut plan = Plan {
        name,
        seed: topo.seed,
        nodes: vec![],
        switches,
        links: vec![],
        checks: vec![],
        steps: vec![],
    };
    for (i, l) in topo.links.iter().enumerate() {
        plan.links.push(links.link(i, l)?);
    }
    // Routes may name gateways by node, so nodes come after every address is known.
    for n in &topo.nodes {
        let node = resolve_node(&plan, n, &mut links.if_names)?;
        plan.nodes.push(node);
    }
    for c in &topo.checks {
        let check = resolve_check(&plan, c)?;
        plan.checks.push(check);
    }
    plan.steps = resolve_steps(&plan, &topo.steps)?;
    assign_macs(&mut plan);
    Ok(plan)
}

/// The node and switch names of a file, validated and unique.
struct Names {
    nodes: BTreeSet<String>,
    switches: BTreeSet<String>,
}

impl Names {
    fn of(topo: &Topology) -> Result<Names> {
        let mut nodes = BTreeSet::new();
        for n in &topo.nodes {
            validate_name("node", &n.name, MAX_NAME_LEN)?;
            if !nodes.insert(n.name.clone()) {
                return Err(LabError::Duplicate {
                    what: "node",
                    name: n.name.clone(),
                });
            }
        }
        let mut switches = BTreeSet::new();
        for s in &topo.switches {
            validate_name("switch", &s.name, MAX_SWITCH_NAME_LEN)?;
            if nodes.contains(&s.name) || !switches.insert(s.name.clone()) {
                return Err(LabError::Duplicate {
                    what: "node or switch",
                    name: s.name.clone(),
                });
            }
            if let Some(n) = &s.node {
                if !nodes.contains(n) {
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
        Ok(Names { nodes, switches })
    }

    fn end(&self, s: &str, allow_switch: bool) -> Result<RawEnd> {
        let (node, ifname) = match s.split_once(':') {
            Some((n, i)) => (n, Some(i.to_string())),
            None => (s, None),
        };
        if self.nodes.contains(node) {
            if let Some(i) = &ifname {
                crate::sys::netlink::validate_ifname(i)?;
            }
            return Ok(RawEnd::Node {
                node: node.to_string(),
                ifname,
            });
        }
        if allow_switch && ifname.is_none() && self.switches.contains(node) {
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
    }
}

enum RawEnd {
    Node {
        node: String,
        ifname: Option<String>,
    },
    Switch(String),
}

/// Every subnet and address the file writes down: drawn subnets avoid them.
fn taken_subnets(topo: &Topology) -> Vec<IpNetwork> {
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
    taken
}

/// What naming interfaces and drawing addresses for the links remembers.
struct LinkResolver<'a> {
    names: &'a Names,
    subnets: SubnetPool,
    switch_pools: BTreeMap<String, Pool>,
    if_counts: BTreeMap<String, usize>,
    /// (node, interface) pairs taken.
    if_names: BTreeSet<(String, String)>,
    port_counts: BTreeMap<String, usize>,
}

/// A link's limits as parsed.
struct Limits {
    rate_bytes: Option<u64>,
    delay_ns: Option<u64>,
    loss_percent: Option<f64>,
}

impl LinkResolver<'_> {
    /// The switches with their subnets; explicit addresses of links to them are reserved
    /// before any is drawn.
    fn switches(&mut self, topo: &Topology) -> Result<Vec<SwitchPlan>> {
        let mut switches = vec![];
        for s in &topo.switches {
            let subnet = match s.subnet {
                Some(n) => n,
                None => self.subnets.take().ok_or(LabError::PoolExhausted {
                    pool: self.subnets.pool(),
                })?,
            };
            let mut pool = Pool::new(subnet);
            if let Some(a) = s.address {
                pool.reserve(a.ip());
            }
            self.switch_pools.insert(s.name.clone(), pool);
            switches.push(SwitchPlan {
                name: s.name.clone(),
                static_arp: s.static_arp != super::schema::StaticArp::Off,
                static_arp_all: s.static_arp == super::schema::StaticArp::All,
                node: s.node.clone(),
                subnet,
                address: s.address,
            });
        }
        for l in &topo.links {
            if let (Some(pool), Some(a)) = (self.switch_pools.get_mut(&l.b), l.a_ip) {
                pool.reserve(a.ip());
            }
        }
        Ok(switches)
    }

    fn ifname(&mut self, ctx: &str, node: &str, given: Option<String>) -> Result<String> {
        let count = self.if_counts.entry(node.to_string()).or_default();
        let name = given.unwrap_or_else(|| format!("eth{count}"));
        *count += 1;
        if !self.if_names.insert((node.to_string(), name.clone())) {
            return Err(LabError::Invalid(format!(
                "{ctx}: node \"{node}\" already has an interface \"{name}\""
            )));
        }
        Ok(name)
    }

    fn link(&mut self, i: usize, l: &LinkSpec) -> Result<LinkPlan> {
        let a = self.names.end(&l.a, false)?;
        let b = self.names.end(&l.b, true)?;
        let ctx = format!("link {} ({} - {})", i + 1, l.a, l.b);
        let limits = limits(&ctx, l)?;
        let RawEnd::Node {
            node: a_node,
            ifname: a_if,
        } = a
        else {
            return Err(LabError::Invalid(format!("{ctx}: end a must be a node")));
        };
        let a_if = self.ifname(&ctx, &a_node, a_if)?;
        let (a_addr, b_end) = match b {
            RawEnd::Switch(sw) => self.switch_end(&ctx, l, sw)?,
            RawEnd::Node { node, ifname } => {
                if node == a_node {
                    return Err(LabError::Invalid(format!(
                        "{ctx}: a node cannot link to itself"
                    )));
                }
                let b_if = self.ifname(&ctx, &node, ifname)?;
                self.node_end(l, node, b_if)?
            }
        };
        Ok(LinkPlan {
            a: EndPlan::Node {
                node: a_node,
                iface: IfacePlan {
                    name: a_if,
                    address: a_addr,
                    mac: None,
                },
            },
            b: b_end,
            rate_bytes: limits.rate_bytes,
            rate: l.rate.clone(),
            delay_ns: limits.delay_ns,
            loss_percent: limits.loss_percent,
        })
    }

    /// The a end's address and the port of a link to a switch.
    fn switch_end(
        &mut self,
        ctx: &str,
        l: &LinkSpec,
        sw: String,
    ) -> Result<(Option<IpNetwork>, EndPlan)> {
        if l.b_ip.is_some() || l.subnet.is_some() {
            return Err(LabError::Invalid(format!(
                "{ctx}: a link to a switch takes its subnet from the switch (no b_ip or subnet)"
            )));
        }
        let pool = self
            .switch_pools
            .get_mut(&sw)
            .ok_or_else(|| LabError::Invalid(format!("{ctx}: unknown switch")))?;
        let addr = match l.a_ip {
            Some(a) => a,
            None => pool
                .take()
                .ok_or(LabError::PoolExhausted { pool: pool.subnet })?,
        };
        let n = self.port_counts.entry(sw.clone()).or_default();
        if *n >= MAX_SWITCH_PORTS {
            return Err(LabError::Invalid(format!(
                "{ctx}: switch \"{sw}\" would get more than {MAX_SWITCH_PORTS} ports, the most a \
                 Linux bridge takes (its port numbers have 10 bits): split the nodes over \
                 several switches"
            )));
        }
        let port = format!("{sw}.{n}");
        *n += 1;
        Ok((Some(addr), EndPlan::Switch { switch: sw, port }))
    }

    /// The a end's address and the b end of a node-to-node link.
    fn node_end(
        &mut self,
        l: &LinkSpec,
        node: String,
        b_if: String,
    ) -> Result<(Option<IpNetwork>, EndPlan)> {
        let subnet = match (l.subnet, l.a_ip, l.b_ip) {
            (Some(s), _, _) => Some(s),
            (None, None, None) => Some(self.subnets.take().ok_or(LabError::PoolExhausted {
                pool: self.subnets.pool(),
            })?),
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
        Ok((
            a_addr,
            EndPlan::Node {
                node,
                iface: IfacePlan {
                    name: b_if,
                    address: b_addr,
                    mac: None,
                },
            },
        ))
    }
}

fn limits(ctx: &str, l: &LinkSpec) -> Result<Limits> {
    let rate_bytes = match &l.rate {
        Some(r) => Some(parse_rate(r).map_err(|why| {
            LabError::Invalid(format!(
                "{ctx}: rate {r:?} is not a rate (like 20mbit, 512kbit, 1gbit): {why}"
            ))
        })?),
        None => None,
    };
    let delay_ns = match &l.delay {
        Some(d) => Some(
            parse_duration(d)
                .ok_or_else(|| {
                    LabError::Invalid(format!("{ctx}: delay {d:?} is not a duration (like 10ms)"))
                })?
                .as_nanos() as u64,
        ),
        None => None,
    };
    let loss_percent =
        match &l.loss {
            Some(p) => Some(parse_percent(p).ok_or_else(|| {
                LabError::Invalid(format!("{ctx}: loss {p:?} is not a percentage"))
            })?),
            None => None,
        };
    Ok(Limits {
        rate_bytes,
        delay_ns,
        loss_percent,
    })
}

/// Fixed MACs: on static-ARP switches from the address, elsewhere from the seed when there
/// is one (else the kernel picks).
fn assign_macs(plan: &mut Plan) {
    let static_arp: BTreeSet<String> = plan
        .switches
        .iter()
        .filter(|s| s.static_arp)
        .map(|s| s.name.clone())
        .collect();
    let seed = plan.seed;
    for link in &mut plan.links {
        let on_static =
            matches!(&link.b, EndPlan::Switch { switch, .. } if static_arp.contains(switch));
        for end in [&mut link.a, &mut link.b] {
            if let EndPlan::Node { node, iface } = end {
                iface.mac = match (on_static, iface.address, seed) {
                    (true, Some(a), _) if a.is_ipv4() => static_mac(a.ip()),
                    (_, _, Some(seed)) => Some(seeded_mac(seed, node, &iface.name)),
                    _ => None,
                };
            }
        }
    }
}

fn resolve_node(
    plan: &Plan,
    n: &NodeSpec,
    if_names: &mut BTreeSet<(String, String)>,
) -> Result<NodePlan> {
    let mut routes = vec![];
    for r in &n.routes {
        routes.push(parse_route(plan, &n.name, r)?);
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
        vxlan.push((v.clone(), vxlan_remote(plan, n, v)?));
    }
    Ok(NodePlan {
        name: n.name.clone(),
        router: n.router,
        routes,
        listen,
        start: n.start.clone(),
        tun: n.tun.clone(),
        tap: n.tap.clone(),
        vxlan,
    })
}

/// The underlay address of a VXLAN's other end (checking the switch it joins lives here).
fn vxlan_remote(
    plan: &Plan,
    n: &NodeSpec,
    v: &super::schema::VxlanNodeSpec,
) -> Result<std::net::Ipv4Addr> {
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
    match IpAddr::from_str(&v.remote) {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(LabError::Invalid(format!(
            "node \"{}\": vxlan \"{}\": only IPv4 underlays are supported",
            n.name, v.name
        ))),
        Err(_) => match gateway_of(plan, &n.name, &v.remote) {
            Some(IpAddr::V4(ip)) => Ok(ip),
            _ => Err(LabError::Invalid(format!(
                "node \"{}\": vxlan remote {:?} is neither an IPv4 address nor a node sharing a subnet",
                n.name, v.remote
            ))),
        },
    }
}

/// A check bound to the plan's nodes and addresses.
pub fn resolve_check(plan: &Plan, c: &CheckSpec) -> Result<CheckPlan> {
    let ctx = match &c.to {
        Some(to) => format!("check {} -> {to}", c.from),
        None => format!("check in {}", c.from),
    };
    if plan.node(&c.from).is_none() {
        return Err(LabError::Unknown {
            what: "node",
            name: c.from.clone(),
            context: ctx,
        });
    }
    let duration = |what: &str, v: &Option<String>| -> Result<Option<Duration>> {
        v.as_ref()
            .map(|d| {
                parse_duration(d).ok_or_else(|| {
                    LabError::Invalid(format!("{ctx}: {what} {d:?} is not a duration (like 2s)"))
                })
            })
            .transpose()
    };
    let probe = match (c.tcp, c.udp, c.ping, &c.exec, &c.throughput, &c.rtt) {
        (Some(p), None, false, None, None, None) => Probe::Tcp(p),
        (None, Some(p), false, None, None, None) => Probe::Udp(p),
        (None, None, true, None, None, None) => Probe::Ping,
        (None, None, false, Some(cmd), None, None) => {
            if let Some(pattern) = &c.output {
                regex::Regex::new(pattern).map_err(|e| {
                    LabError::Invalid(format!("{ctx}: output {pattern:?} is not a regex: {e}"))
                })?;
            }
            Probe::Exec {
                command: cmd.clone(),
                output: c.output.clone(),
            }
        }
        (None, None, false, None, Some(t), None) => Probe::Throughput {
            min_bytes: parse_rate(t).map_err(|why| {
                LabError::Invalid(format!("{ctx}: throughput {t:?} is not a rate: {why}"))
            })?,
            duration: duration("duration", &c.duration)?.unwrap_or(Duration::from_secs(1)),
        },
        (None, None, false, None, None, Some(_)) => Probe::Rtt {
            max: duration("rtt", &c.rtt)?.unwrap_or_default(),
        },
        _ => {
            return Err(LabError::Invalid(format!(
                "{ctx}: give exactly one of tcp = PORT, udp = PORT, ping = true, exec = CMD, \
                 throughput = RATE, rtt = DURATION"
            )))
        }
    };
    if c.output.is_some() && !matches!(probe, Probe::Exec { .. }) {
        return Err(LabError::Invalid(format!("{ctx}: output goes with exec")));
    }
    let addr = match (&probe, &c.to) {
        (Probe::Exec { .. }, None) => IpAddr::from([0, 0, 0, 0]),
        (Probe::Exec { .. }, Some(_)) => {
            return Err(LabError::Invalid(format!(
                "{ctx}: an exec check runs in `from` and takes no `to`"
            )))
        }
        (_, None) => return Err(LabError::Invalid(format!("{ctx}: `to` is missing"))),
        (_, Some(to)) => match IpAddr::from_str(to) {
            Ok(ip) => ip,
            Err(_) => target_address(plan, &c.from, to).ok_or_else(|| LabError::Unknown {
                what: "node with an address",
                name: to.clone(),
                context: ctx.clone(),
            })?,
        },
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
        to: c.to.clone().unwrap_or_default(),
        addr,
        probe,
        expect,
        within: duration("within", &c.within)?,
        retries: c.retries.unwrap_or(0),
    })
}

fn resolve_steps(plan: &Plan, steps: &[StepSpec]) -> Result<Vec<StepPlan>> {
    let mut out = vec![];
    let mut last_at = Duration::ZERO;
    for (i, s) in steps.iter().enumerate() {
        let ctx = format!("step {}", i + 1);
        let when = match (&s.at, &s.after) {
            (Some(_), Some(_)) => {
                return Err(LabError::Invalid(format!(
                    "{ctx}: give `at` or `after`, not both"
                )))
            }
            (Some(at), None) => {
                let at = parse_duration(at).ok_or_else(|| {
                    LabError::Invalid(format!("{ctx}: at {at:?} is not a duration (like 2s)"))
                })?;
                if at < last_at {
                    return Err(LabError::Invalid(format!(
                        "{ctx}: at {at:?} comes before the step before it ({last_at:?})"
                    )));
                }
                last_at = at;
                When::At(at)
            }
            (None, after) => When::After(
                after
                    .as_deref()
                    .map(|a| {
                        parse_duration(a).ok_or_else(|| {
                            LabError::Invalid(format!("{ctx}: after {a:?} is not a duration"))
                        })
                    })
                    .transpose()?
                    .unwrap_or_default(),
            ),
        };
        let action = step_action(plan, &ctx, s)?;
        let mut checks = vec![];
        for c in &s.checks {
            checks.push(resolve_check(plan, c)?);
        }
        let name = s.name.clone().unwrap_or_else(|| match &action {
            Some(a) => describe_action(plan, a),
            None => "checks".into(),
        });
        out.push(StepPlan {
            name,
            when,
            action,
            checks,
        });
    }
    Ok(out)
}

/// The change a step makes (at most one).
pub fn step_action(plan: &Plan, ctx: &str, s: &StepSpec) -> Result<Option<Action>> {
    let mut actions = vec![];
    let link = |ends: &Vec<String>| -> Result<usize> {
        match ends.as_slice() {
            [a, b] => plan.find_link(a, b),
            _ => Err(LabError::Invalid(format!(
                "{ctx}: a link is given by its two ends, [\"a\", \"b\"]"
            ))),
        }
    };
    let node = |n: &String| -> Result<String> {
        plan.node(n)
            .map(|_| n.clone())
            .ok_or_else(|| LabError::Unknown {
                what: "node",
                name: n.clone(),
                context: ctx.to_string(),
            })
    };
    if let Some(ends) = &s.link_down {
        actions.push(Action::LinkDown(link(ends)?));
    }
    if let Some(ends) = &s.link_up {
        actions.push(Action::LinkUp(link(ends)?));
    }
    if let Some(imp) = &s.impair {
        actions.push(Action::Impair(link(&imp.link)?, impair_change(ctx, imp)?));
    }
    if let Some(groups) = &s.partition {
        actions.push(Action::Partition(partition_groups(plan, ctx, groups)?));
    }
    if s.heal {
        actions.push(Action::Heal);
    }
    for (what, make) in [
        (&s.isolate, Action::Isolate as fn(String) -> Action),
        (&s.restore, Action::Restore),
        (&s.stop, Action::Stop),
        (&s.start, Action::Start),
    ] {
        if let Some(n) = what {
            actions.push(make(node(n)?));
        }
    }
    if s.reset {
        actions.push(Action::Reset);
    }
    if actions.len() > 1 {
        return Err(LabError::Invalid(format!(
            "{ctx}: one change per step (split it into steps with after = \"0s\")"
        )));
    }
    Ok(actions.pop())
}

/// The groups of a partition, checked: known nodes, each in one group at most.
pub fn partition_groups(
    plan: &Plan,
    ctx: &str,
    groups: &[Vec<String>],
) -> Result<Vec<Vec<String>>> {
    let mut seen = BTreeSet::new();
    for n in groups.iter().flatten() {
        if plan.node(n).is_none() {
            return Err(LabError::Unknown {
                what: "node",
                name: n.clone(),
                context: ctx.to_string(),
            });
        }
        if !seen.insert(n.clone()) {
            return Err(LabError::Invalid(format!(
                "{ctx}: node \"{n}\" is in two groups"
            )));
        }
    }
    if groups.is_empty() {
        return Err(LabError::Invalid(format!(
            "{ctx}: a partition needs groups"
        )));
    }
    Ok(groups.to_vec())
}

/// The change an impair spec asks for; "none" (or "0") removes a property.
pub fn impair_change(ctx: &str, imp: &ImpairSpec) -> Result<ImpairChange> {
    let off = |v: &str| v == "none" || v == "off";
    let bad = |what: &str, v: &str| LabError::Invalid(format!("{ctx}: {what} {v:?} is not valid"));
    let duration = |what: &str, v: &Option<String>| -> Result<Option<Option<Duration>>> {
        v.as_deref()
            .map(|d| {
                if off(d) {
                    Ok(None)
                } else {
                    parse_duration(d).map(Some).ok_or_else(|| bad(what, d))
                }
            })
            .transpose()
    };
    let percent = |what: &str, v: &Option<String>| -> Result<Option<Option<f64>>> {
        v.as_deref()
            .map(|p| {
                if off(p) {
                    Ok(None)
                } else {
                    parse_percent(p).map(Some).ok_or_else(|| bad(what, p))
                }
            })
            .transpose()
    };
    let rate_bytes = match imp.rate.as_deref() {
        None => None,
        Some(r) if off(r) => Some(None),
        Some(r) => Some(Some(parse_rate(r).map_err(|why| {
            LabError::Invalid(format!("{ctx}: rate {r:?} is not a rate: {why}"))
        })?)),
    };
    Ok(ImpairChange {
        rate_bytes,
        loss_percent: percent("loss", &imp.loss)?,
        delay: duration("delay", &imp.delay)?,
        jitter: duration("jitter", &imp.jitter)?,
        reorder_percent: percent("reorder", &imp.reorder)?,
    })
}

/// "link down client - left", "partition [a b] [c]", ...
pub fn describe_action(plan: &Plan, a: &Action) -> String {
    let link = |i: &usize| {
        plan.links
            .get(*i)
            .map(|l| l.label())
            .unwrap_or_else(|| format!("#{i}"))
    };
    match a {
        Action::LinkDown(i) => format!("link down {}", link(i)),
        Action::LinkUp(i) => format!("link up {}", link(i)),
        Action::Impair(i, c) => format!("impair {} {}", link(i), describe_change(c)),
        Action::Partition(g) => format!(
            "partition {}",
            g.iter()
                .map(|g| format!("[{}]", g.join(" ")))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Action::Heal => "heal".into(),
        Action::Isolate(n) => format!("isolate {n}"),
        Action::Restore(n) => format!("restore {n}"),
        Action::Stop(n) => format!("stop {n}"),
        Action::Start(n) => format!("start {n}"),
        Action::Reset => "reset".into(),
    }
}

fn describe_change(c: &ImpairChange) -> String {
    let mut out = vec![];
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    if let Some(r) = c.rate_bytes {
        out.push(format!("rate {}", opt(r.map(super::plan::format_rate))));
    }
    if let Some(l) = c.loss_percent {
        out.push(format!("loss {}", opt(l.map(|l| format!("{l}%")))));
    }
    if let Some(d) = c.delay {
        out.push(format!("delay {}", opt(d.map(|d| format!("{d:?}")))));
    }
    if let Some(d) = c.jitter {
        out.push(format!("jitter {}", opt(d.map(|d| format!("{d:?}")))));
    }
    if let Some(r) = c.reorder_percent {
        out.push(format!("reorder {}", opt(r.map(|r| format!("{r}%")))));
    }
    out.join(" ")
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
}
