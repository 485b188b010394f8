//! Changes to a running lab: links down and up, nodes isolated and restored, partitions and
//! healing, rates, loss and delay changed, and back to the file's state.
//!
//! What the lab should look like is kept as intent (links taken down, isolated nodes, the
//! partition, each link's properties); after every change the kernel is brought to it, touching
//! only what differs ([`Runtime::sync`]). So the changes compose: healing a partition does not
//! bring up a link that was taken down on its own, restoring a node leaves the partition.
//!
//! How each is done in the kernel:
//! - a link that carries nothing: both veth ends administratively down (the peer loses its
//!   carrier at once, routes through it go away as on a pulled cable);
//! - rate: a tbf root qdisc on both ends; delay, jitter, reordering: a netem root qdisc (refused
//!   with the kernel's reason where sch_netem is missing);
//! - loss: an nftables rule on the ingress of both ends (a `netdev` table `netbox-lab` in the
//!   end's namespace) that drops the given share of packets: at random, or with a `seed`, a
//!   fixed set of every 10,000 consecutive packets drawn from it (the same packets each run).
//!   No netem needed;
//! - partition: links between nodes of different groups carry nothing, and every switch with
//!   members in several groups gets a `bridge` table `netbox-lab` in its namespace that drops
//!   frames between ports of different groups.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::topology::seed::{loss_slots, LOSS_SLOTS};
use super::topology::{format_rate, Action, EndPlan, ImpairChange, LinkPlan, Plan};
use super::{LabError, Result};
use crate::sys::netlink::{Link, NetemSpec, Netlink, TbfSpec};
use crate::sys::netns::NetNs;

/// The nftables table netbox adds to a lab's namespaces.
pub const NFT_TABLE: &str = "netbox-lab";

/// A link's shaping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Props {
    pub rate_bytes: Option<u64>,
    pub loss_percent: Option<f64>,
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub reorder_percent: Option<f64>,
}

impl Props {
    /// The file's properties of a link.
    pub fn of(link: &LinkPlan) -> Props {
        Props {
            rate_bytes: link.rate_bytes,
            loss_percent: link.loss_percent.filter(|l| *l > 0.0),
            delay: link.delay_ns.map(Duration::from_nanos),
            jitter: None,
            reorder_percent: None,
        }
    }

    /// With `change` applied.
    pub fn changed(&self, change: &ImpairChange) -> Props {
        Props {
            rate_bytes: change.rate_bytes.unwrap_or(self.rate_bytes),
            loss_percent: change
                .loss_percent
                .unwrap_or(self.loss_percent)
                .filter(|l| *l > 0.0),
            delay: change.delay.unwrap_or(self.delay),
            jitter: change.jitter.unwrap_or(self.jitter),
            reorder_percent: change.reorder_percent.unwrap_or(self.reorder_percent),
        }
    }

    fn netem(&self) -> Option<NetemSpec> {
        let spec = NetemSpec {
            delay_ns: self.delay.map(|d| d.as_nanos() as u64).unwrap_or(0),
            loss_percent: 0.0,
            jitter_ns: self.jitter.map(|d| d.as_nanos() as u64).unwrap_or(0),
            reorder_percent: self.reorder_percent.unwrap_or(0.0),
        };
        (spec != NetemSpec::default()).then_some(spec)
    }

    /// Refuses what cannot be built: one root qdisc per end, so a rate and netem do not mix;
    /// jitter and reordering shape a delay.
    pub fn check(&self, link: &str) -> Result<()> {
        if self.rate_bytes.is_some() && self.netem().is_some() {
            return Err(LabError::Invalid(format!(
                "link {link}: a rate limit together with delay, jitter or reordering is not supported"
            )));
        }
        if (self.jitter.is_some() || self.reorder_percent.is_some()) && self.delay.is_none() {
            return Err(LabError::Invalid(format!(
                "link {link}: jitter and reordering need a delay"
            )));
        }
        Ok(())
    }
}

/// What is in the kernel for a link.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    carries: bool,
    props: Props,
}

/// One link as `lab links` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub link: String,
    /// Carries traffic.
    pub up: bool,
    /// Why not: "down", "isolated NODE", "partition".
    pub cut: Option<String>,
    pub rate: Option<String>,
    pub loss: Option<String>,
    pub delay: Option<String>,
    pub jitter: Option<String>,
    pub reorder: Option<String>,
}

/// The lab's intended state and what the kernel has.
#[derive(Debug)]
pub struct Runtime {
    props: Vec<Props>,
    down: BTreeSet<usize>,
    isolated: BTreeSet<String>,
    partition: Option<Vec<Vec<String>>>,
    /// What the kernel has per link; None after a failure left it unknown (made again).
    applied: Vec<Option<Applied>>,
    /// Switches holding partition rules now.
    partitioned: BTreeSet<String>,
}

/// What the lab should look like (saved around a change).
#[derive(Debug, Clone)]
pub struct Intent {
    props: Vec<Props>,
    down: BTreeSet<usize>,
    isolated: BTreeSet<String>,
    partition: Option<Vec<Vec<String>>>,
}

/// Where a link end lives: (namespace key, interface). The key is "" for the fabric, else
/// the node's name.
type End = (String, String);

impl Runtime {
    /// The state right after the build: carrying, rates in place (loss and netem follow in
    /// the first [`Runtime::sync`]).
    pub fn new(plan: &Plan) -> Runtime {
        Runtime {
            props: plan.links.iter().map(Props::of).collect(),
            down: BTreeSet::new(),
            isolated: BTreeSet::new(),
            partition: None,
            applied: plan
                .links
                .iter()
                .map(|l| {
                    Some(Applied {
                        carries: true,
                        props: Props {
                            rate_bytes: l.rate_bytes,
                            ..Props::default()
                        },
                    })
                })
                .collect(),
            partitioned: BTreeSet::new(),
        }
    }

    /// The intent, to go back to when a change fails in the kernel.
    pub fn intent(&self) -> Intent {
        Intent {
            props: self.props.clone(),
            down: self.down.clone(),
            isolated: self.isolated.clone(),
            partition: self.partition.clone(),
        }
    }

    pub fn set_intent(&mut self, intent: Intent) {
        self.props = intent.props;
        self.down = intent.down;
        self.isolated = intent.isolated;
        self.partition = intent.partition;
    }

    /// Records a change (checked first: a refused change changes nothing).
    pub fn change(&mut self, plan: &Plan, action: &Action) -> Result<()> {
        let link = |i: &usize| {
            plan.links.get(*i).ok_or_else(|| LabError::Unknown {
                what: "link",
                name: format!("#{i}"),
                context: format!("lab \"{}\"", plan.name),
            })
        };
        let node = |n: &String| {
            plan.node(n).ok_or_else(|| LabError::Unknown {
                what: "node",
                name: n.clone(),
                context: format!("lab \"{}\"", plan.name),
            })
        };
        match action {
            Action::LinkDown(i) => {
                link(i)?;
                self.down.insert(*i);
            }
            Action::LinkUp(i) => {
                link(i)?;
                self.down.remove(i);
            }
            Action::Impair(i, change) => {
                let l = link(i)?;
                let props = self.props[*i].changed(change);
                props.check(&l.label())?;
                self.props[*i] = props;
            }
            Action::Partition(groups) => {
                let groups = super::topology::partition_groups(plan, "partition", groups)?;
                self.partition = Some(groups);
            }
            Action::Heal => self.partition = None,
            Action::Isolate(n) => {
                node(n)?;
                self.isolated.insert(n.clone());
            }
            Action::Restore(n) => {
                node(n)?;
                self.isolated.remove(n);
            }
            Action::Reset => {
                self.props = plan.links.iter().map(Props::of).collect();
                self.down.clear();
                self.isolated.clear();
                self.partition = None;
            }
            // Start commands are the services' business.
            Action::Stop(n) | Action::Start(n) => {
                node(n)?;
            }
        }
        Ok(())
    }

    /// The group of each node under the partition (nodes not named: one more group).
    fn groups(&self, plan: &Plan) -> Option<BTreeMap<String, usize>> {
        let groups = self.partition.as_ref()?;
        let mut of = BTreeMap::new();
        for n in &plan.nodes {
            of.insert(n.name.clone(), groups.len());
        }
        for (g, members) in groups.iter().enumerate() {
            for m in members {
                of.insert(m.clone(), g);
            }
        }
        Some(of)
    }

    /// Why a link carries nothing, if it does not.
    fn cut(
        &self,
        plan: &Plan,
        i: usize,
        groups: Option<&BTreeMap<String, usize>>,
    ) -> Option<String> {
        if self.down.contains(&i) {
            return Some("down".into());
        }
        let link = &plan.links[i];
        let mut nodes: Vec<&str> = link.node_names().collect();
        // A switch living in a node is part of it.
        if let EndPlan::Switch { switch, .. } = &link.b {
            if let Some(n) = plan
                .switches
                .iter()
                .find(|s| &s.name == switch)
                .and_then(|s| s.node.as_deref())
            {
                nodes.push(n);
            }
        }
        if let Some(n) = nodes.iter().find(|n| self.isolated.contains(**n)) {
            return Some(format!("isolated {n}"));
        }
        if let Some(groups) = groups {
            let of: BTreeSet<Option<&usize>> = nodes.iter().map(|n| groups.get(*n)).collect();
            if of.len() > 1 {
                return Some("partition".into());
            }
        }
        None
    }

    /// Every link's state.
    pub fn status(&self, plan: &Plan) -> Vec<LinkStatus> {
        let groups = self.groups(plan);
        plan.links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let p = &self.props[i];
                let cut = self.cut(plan, i, groups.as_ref());
                LinkStatus {
                    link: l.label(),
                    up: cut.is_none(),
                    cut,
                    rate: p.rate_bytes.map(format_rate),
                    loss: p.loss_percent.map(|l| format!("{l}%")),
                    delay: p.delay.map(|d| format!("{d:?}")),
                    jitter: p.jitter.map(|d| format!("{d:?}")),
                    reorder: p.reorder_percent.map(|r| format!("{r}%")),
                }
            })
            .collect()
    }

    /// Brings the kernel to the intended state. `ns` opens a namespace by key ("" = fabric).
    pub fn sync<'a>(&mut self, plan: &Plan, ns: &dyn Fn(&str) -> Result<&'a NetNs>) -> Result<()> {
        let groups = self.groups(plan);
        let mut work: Vec<(usize, Applied)> = vec![];
        for i in 0..plan.links.len() {
            let want = Applied {
                carries: self.cut(plan, i, groups.as_ref()).is_none(),
                props: self.props[i].clone(),
            };
            if Some(&want) != self.applied[i].as_ref() {
                work.push((i, want));
            }
        }
        let rules = partition_rules(plan, groups.as_ref());
        let switches: BTreeSet<String> = rules.keys().cloned().collect();
        let stale: Vec<String> = self.partitioned.difference(&switches).cloned().collect();
        let mut conns = Conns::default();
        let rt = crate::sys::runtime::current_thread()?;
        // Connections register with the runtime's reactor when made.
        let _entered = rt.enter();
        // Netlink first (links and qdiscs), one connection per namespace touched.
        for (i, want) in &work {
            let have = self.applied[*i].take();
            for end in ends(plan, &plan.links[*i]) {
                let conn = conns.get(&end.0, ns)?;
                rt.block_on(apply_link_end(&conn, &end.1, have.as_ref(), want))?;
            }
            // Loss is still as it was (nftables comes next).
            self.applied[*i] = Some(Applied {
                carries: want.carries,
                props: Props {
                    loss_percent: have.and_then(|h| h.props.loss_percent),
                    ..want.props.clone()
                },
            });
        }
        // Then nftables: loss per end, partitions per switch, one transaction per namespace.
        let mut nft: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (i, want) in &work {
            let have = self.applied[*i].as_ref().and_then(|a| a.props.loss_percent);
            if want.props.loss_percent == have {
                continue;
            }
            for end in ends(plan, &plan.links[*i]) {
                let label = format!("{}:{}", end.0, end.1);
                nft.entry(end.0.clone()).or_default().extend(loss_commands(
                    &end.1,
                    want.props.loss_percent,
                    plan.seed,
                    &label,
                ));
            }
        }
        for (key, rules) in &rules {
            nft.entry(key.clone())
                .or_default()
                .extend(partition_commands(Some(rules)));
        }
        for key in &stale {
            nft.entry(key.clone())
                .or_default()
                .extend(partition_commands(None));
        }
        for (key, commands) in nft {
            let done = ns(&key).and_then(|target| {
                target
                    .run_in(move || crate::firewall::nft::apply(commands))?
                    .map_err(|e| LabError::Invalid(format!("nftables in the lab: {e}")))
            });
            if let Err(e) = done {
                for (i, _) in &work {
                    self.applied[*i] = None;
                }
                return Err(e);
            }
        }
        for (i, want) in work {
            self.applied[i] = Some(want);
        }
        self.partitioned = switches;
        Ok(())
    }
}

/// Netlink connections by namespace key, opened when first needed.
#[derive(Default)]
struct Conns(BTreeMap<String, Netlink>);

impl Conns {
    fn get<'a>(&mut self, key: &str, ns: &dyn Fn(&str) -> Result<&'a NetNs>) -> Result<Netlink> {
        if let Some(c) = self.0.get(key) {
            return Ok(c.clone());
        }
        let conn = Netlink::connect_in(ns(key)?)?;
        self.0.insert(key.to_string(), conn.clone());
        Ok(conn)
    }
}

/// The namespace key of a switch: its node, or "" for the fabric.
fn switch_key(plan: &Plan, switch: &str) -> String {
    plan.switches
        .iter()
        .find(|s| s.name == switch)
        .and_then(|s| s.node.clone())
        .unwrap_or_default()
}

/// Both ends of a link.
fn ends(plan: &Plan, link: &LinkPlan) -> Vec<End> {
    [&link.a, &link.b]
        .into_iter()
        .map(|e| match e {
            EndPlan::Node { node, iface } => (node.clone(), iface.name.clone()),
            EndPlan::Switch { switch, port } => (switch_key(plan, switch), port.clone()),
        })
        .collect()
}

async fn apply_link_end(
    conn: &Netlink,
    ifname: &str,
    have: Option<&Applied>,
    want: &Applied,
) -> Result<()> {
    let link: Link = conn.link_by_name(ifname).await?.ok_or_else(|| {
        LabError::Netlink(crate::sys::netlink::NetlinkError::LinkNotFound {
            name: ifname.into(),
        })
    })?;
    let shaping = |p: &Props| (p.rate_bytes, p.netem());
    if have.map(|h| shaping(&h.props)) != Some(shaping(&want.props)) {
        conn.delete_root_qdisc(&link).await?;
        if let Some(rate) = want.props.rate_bytes {
            conn.add_tbf(&link, &TbfSpec::for_rate(rate)).await?;
        } else if let Some(spec) = want.props.netem() {
            conn.add_netem(&link, &spec).await?;
        }
    }
    if have.map(|h| h.carries) != Some(want.carries) {
        if want.carries {
            conn.set_up(link.index, &link.name).await?;
        } else {
            conn.set_down(&link).await?;
        }
    }
    Ok(())
}

/// nft commands that make `ifname`'s ingress drop `percent` of packets (none: drop nothing).
fn loss_commands(ifname: &str, percent: Option<f64>, seed: Option<u64>, label: &str) -> Vec<Value> {
    let chain = json!({"family": "netdev", "table": NFT_TABLE, "name": format!("loss-{ifname}")});
    let mut out = vec![
        json!({"add": {"table": {"family": "netdev", "name": NFT_TABLE}}}),
        json!({"add": {"chain": {
            "family": "netdev", "table": NFT_TABLE, "name": format!("loss-{ifname}"),
            "type": "filter", "hook": "ingress", "dev": ifname, "prio": 0, "policy": "accept"
        }}}),
        json!({"flush": {"chain": chain}}),
    ];
    let Some(percent) = percent else {
        return out;
    };
    let test = match seed {
        Some(seed) => json!({"match": {"op": "==",
            "left": {"numgen": {"mode": "inc", "mod": LOSS_SLOTS, "offset": 0}},
            "right": {"set": loss_slots(seed, label, percent)}}}),
        None => json!({"match": {"op": "<",
            "left": {"numgen": {"mode": "random", "mod": LOSS_SLOTS, "offset": 0}},
            "right": ((percent / 100.0) * f64::from(LOSS_SLOTS)).round() as u32}}),
    };
    if percent >= 100.0 {
        out.push(
            json!({"add": {"rule": {"family": "netdev", "table": NFT_TABLE,
            "chain": format!("loss-{ifname}"), "expr": [{"drop": null}]}}}),
        );
    } else if percent > 0.0 {
        out.push(
            json!({"add": {"rule": {"family": "netdev", "table": NFT_TABLE,
            "chain": format!("loss-{ifname}"), "expr": [test, {"drop": null}]}}}),
        );
    }
    out
}

/// Per switch namespace key: per switch, the ports of each group (only switches whose members
/// are in more than one group).
type SwitchRules = BTreeMap<String, Vec<Vec<String>>>;

fn partition_rules(
    plan: &Plan,
    groups: Option<&BTreeMap<String, usize>>,
) -> BTreeMap<String, SwitchRules> {
    let mut out: BTreeMap<String, SwitchRules> = BTreeMap::new();
    let Some(groups) = groups else {
        return out;
    };
    for sw in &plan.switches {
        let mut ports: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for l in &plan.links {
            if let (EndPlan::Node { node, .. }, EndPlan::Switch { switch, port }) = (&l.a, &l.b) {
                if switch == &sw.name {
                    if let Some(g) = groups.get(node) {
                        ports.entry(*g).or_default().push(port.clone());
                    }
                }
            }
        }
        if ports.len() > 1 {
            out.entry(sw.node.clone().unwrap_or_default())
                .or_default()
                .insert(sw.name.clone(), ports.into_values().collect());
        }
    }
    out
}

/// nft commands that put (or, with None, clear) the partition rules of the switches in one
/// namespace.
fn partition_commands(switches: Option<&SwitchRules>) -> Vec<Value> {
    let chain = json!({"family": "bridge", "table": NFT_TABLE, "name": "partition"});
    let mut out = vec![
        json!({"add": {"table": {"family": "bridge", "name": NFT_TABLE}}}),
        json!({"add": {"chain": {
            "family": "bridge", "table": NFT_TABLE, "name": "partition",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"
        }}}),
        json!({"flush": {"chain": chain}}),
    ];
    for groups in switches.into_iter().flat_map(|s| s.values()) {
        for (g, from) in groups.iter().enumerate() {
            for (h, to) in groups.iter().enumerate() {
                if g == h {
                    continue;
                }
                out.push(json!({"add": {"rule": {
                    "family": "bridge", "table": NFT_TABLE, "chain": "partition",
                    "expr": [
                        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": from}}},
                        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": to}}},
                        {"drop": null}
                    ]
                }}}));
            }
        }
    }
    out
}

/// `lab links` as a table.
pub fn table(links: &[LinkStatus]) -> String {
    let width = links.iter().map(|l| l.link.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  STATE       SHAPING\n", "LINK");
    for l in links {
        let state = match &l.cut {
            None => "up".to_string(),
            Some(why) => why.clone(),
        };
        let mut shaping = vec![];
        for (what, v) in [
            ("rate", &l.rate),
            ("loss", &l.loss),
            ("delay", &l.delay),
            ("jitter", &l.jitter),
            ("reorder", &l.reorder),
        ] {
            if let Some(v) = v {
                shaping.push(format!("{what} {v}"));
            }
        }
        out.push_str(&format!(
            "{:<width$}  {state:<10}  {}\n",
            l.link,
            shaping.join(" ")
        ));
    }
    out
}
