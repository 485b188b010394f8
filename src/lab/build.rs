//! Building a resolved [`Plan`]: namespaces, bridges, veths, addresses, devices, routes, rate
//! limits, then the services. All netlink work runs concurrently on one connection per
//! namespace (opened inside it once), in a current-thread runtime.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::stream::{FuturesUnordered, StreamExt};

use super::services::Services;
use super::topology::{EndPlan, LinkPlan, Plan};
use super::{BuildOptions, Lab, LabError, Result};
use crate::sys::netlink::{BridgeSpec, Link, Netlink, TbfSpec, VethSpec, VxlanSpec};
use crate::sys::netns;
use crate::sys::sysctl;

/// Links being built at once (each holds its node's namespace open meanwhile).
const LINKS_AT_ONCE: usize = 256;

/// Threads creating node namespaces.
const NS_THREADS: usize = 4;

/// Name of a node's namespace under /run/netns.
pub fn node_ns_name(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// Name of the namespace holding the lab's top-level switches ('--' cannot start a node name).
pub fn fabric_ns_name(lab: &str) -> String {
    format!("{lab}--fabric")
}

/// Descriptors a lab needs besides a netlink socket per node while it is built and its
/// listeners (the runtime, stdio, the fabric, threads entering nodes).
const SPARE_FDS: u64 = 256;

/// Makes sure the lab's descriptors fit: raises the soft limit as far as the hard one allows,
/// and refuses a lab that cannot fit before anything is made.
fn ensure_descriptors(plan: &Plan) -> Result<()> {
    let listeners: u64 = plan.nodes.iter().map(|n| n.listen.len() as u64).sum();
    let want = plan.nodes.len() as u64 + 2 * listeners + LINKS_AT_ONCE as u64 + SPARE_FDS;
    let (soft, hard) = crate::process::raise_open_files(want).map_err(|source| LabError::Io {
        what: "raising the limit on open files".into(),
        source,
    })?;
    if soft < want {
        return Err(LabError::Invalid(format!(
            "lab \"{}\": {} nodes need about {want} open descriptors (a netlink socket per node \
             while building, a namespace handle and a socket per listener), but this process \
             may open at most {hard} (ulimit -Hn): raise the hard limit or split the lab",
            plan.name,
            plan.nodes.len()
        )));
    }
    Ok(())
}

/// Builds the plan; on failure everything made so far is removed.
pub fn build(plan: Plan, options: &BuildOptions) -> Result<Lab> {
    ensure_descriptors(&plan)?;
    for link in &plan.links {
        super::runtime::Props::of(link).check(&link.label())?;
    }
    let start = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(us = start.elapsed().as_micros() as u64, "{what}");
    // The Lab owns what exists from here on, so an early return tears it down.
    let mut lab = Lab {
        plan: plan.clone(),
        nodes: BTreeMap::new(),
        fabric: None,
        services: std::sync::Mutex::new(Services::default()),
        runtime: std::sync::Mutex::new(super::runtime::Runtime::new(&plan)),
        up_at: std::time::Instant::now(),
        owned: vec![],
        hosts: super::hosts::HostsFile::new(&plan)?,
    };
    let name = lab.plan.name.clone();
    let fabric = fabric_ns_name(&name);
    lab.fabric = Some(netns::create_named(&fabric)?);
    lab.owned.push(fabric);
    // Node namespaces are made by a few threads at once (creating one costs about half a
    // millisecond, mostly in the kernel, and parallelizes); /run/netns was prepared above.
    let names: Vec<(String, String)> = lab
        .plan
        .nodes
        .iter()
        .map(|n| (n.name.clone(), node_ns_name(&name, &n.name)))
        .collect();
    let chunk = names.len().div_ceil(NS_THREADS).max(1);
    let made: Vec<Vec<(String, String, netns::Result<netns::NetNs>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(node, ns)| (node.clone(), ns.clone(), netns::create_named(ns)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut first_error = None;
    for (node, ns_name, result) in made.into_iter().flatten() {
        match result {
            Ok(ns) => {
                lab.owned.push(ns_name);
                // The named mount keeps it; the lab opens it again when asked.
                drop(ns);
                lab.nodes.insert(node, std::sync::OnceLock::new());
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if lab.nodes.len() != names.len() {
        return Err(LabError::Invalid(
            "creating the node namespaces failed".into(),
        ));
    }
    phase("namespaces created");
    for node in lab
        .plan
        .nodes
        .iter()
        .filter(|n| n.router || !n.tun.is_empty() || !n.tap.is_empty())
    {
        let ns = lab.open_node(&node.name)?;
        for (dev, tap) in node
            .tun
            .iter()
            .map(|t| (t, false))
            .chain(node.tap.iter().map(|t| (t, true)))
        {
            let (devname, owner) = (dev.name.clone(), dev.owner);
            ns.run_in(move || create_tuntap(&devname, tap, owner))??;
        }
        if node.router {
            ns.run_in(enable_forwarding)??;
        }
    }
    let rt = crate::sys::runtime::current_thread()?;
    phase("devices and forwarding");
    rt.block_on(configure(&lab, options, start))?;
    drop(rt);
    phase("configured");
    // Loss and netem of the file, the way later changes are made.
    let mut runtime = super::runtime::Runtime::new(&lab.plan);
    runtime.sync(&lab.plan, &|key| lab.namespace(key))?;
    lab.runtime = std::sync::Mutex::new(runtime);
    phase("links shaped");
    lab.services = std::sync::Mutex::new(Services::start(&lab, options)?);
    phase("services started");
    lab.up_at = std::time::Instant::now();
    Ok(lab)
}

struct Conns {
    fabric: Netlink,
    nodes: BTreeMap<String, Netlink>,
}

impl Conns {
    fn node(&self, name: &str) -> Result<&Netlink> {
        self.nodes.get(name).ok_or_else(|| LabError::Unknown {
            what: "node",
            name: name.into(),
            context: "netlink".into(),
        })
    }
}

async fn configure(lab: &Lab, options: &BuildOptions, start: std::time::Instant) -> Result<()> {
    let phase = |what: &str| tracing::debug!(us = start.elapsed().as_micros() as u64, "{what}");
    let fabric_ns = lab
        .fabric()
        .ok_or_else(|| LabError::Invalid("lab without fabric".into()))?;
    let mut conns = Conns {
        fabric: Netlink::connect_in(fabric_ns)?,
        nodes: BTreeMap::new(),
    };
    for name in lab.nodes.keys() {
        let ns = lab.open_node(name)?;
        conns.nodes.insert(name.clone(), Netlink::connect_in(&ns)?);
    }
    let conns = conns;
    phase("netlink connected");
    let plan = &lab.plan;
    let mut los: FuturesUnordered<_> = conns
        .nodes
        .values()
        .chain([&conns.fabric])
        .map(|c| c.loopback_up())
        .collect();
    while let Some(r) = los.next().await {
        r?;
    }
    // Switches.
    let mut bridges: BTreeMap<String, (Netlink, Link)> = BTreeMap::new();
    for sw in &plan.switches {
        let conn = match &sw.node {
            Some(n) => conns.node(n)?.clone(),
            None => conns.fabric.clone(),
        };
        let link = conn
            .ensure_bridge(&BridgeSpec {
                name: sw.name.clone(),
                mtu: None,
            })
            .await?;
        if let Some(addr) = sw.address {
            conn.add_address(&link, addr).await?;
        }
        bridges.insert(sw.name.clone(), (conn, link));
    }
    // Links, concurrently.
    let total = plan.links.len();
    let mut pending = futures::stream::iter(
        plan.links
            .iter()
            .map(|l| build_link(lab, &conns, &bridges, l)),
    )
    .buffer_unordered(LINKS_AT_ONCE);
    let mut done = 0;
    while let Some(r) = pending.next().await {
        r?;
        done += 1;
        if let Some(progress) = options.progress {
            progress(done, total);
        }
    }
    drop(pending);
    phase("links built");
    fill_static_neighbors(lab, &conns, plan).await?;
    phase("neighbours filled");
    // Devices and routes, node by node.
    for node in &plan.nodes {
        let conn = conns.node(&node.name)?;
        for dev in node.tun.iter().chain(&node.tap) {
            let link = must_link(conn, &dev.name).await?;
            conn.set_up(link.index, &link.name).await?;
            if let Some(addr) = dev.address {
                conn.add_address(&link, addr).await?;
            }
        }
        for (vx, remote) in &node.vxlan {
            let underlay = must_link(conn, &vx.dev).await?;
            let link = conn
                .create_vxlan(&VxlanSpec {
                    name: vx.name.clone(),
                    vni: vx.vni,
                    underlay: Some(underlay.index),
                    local: None,
                    remote: Some(*remote),
                    port: vx.port,
                })
                .await?;
            if let Some(sw) = &vx.switch {
                let (_, bridge) = bridges.get(sw).ok_or_else(|| LabError::Unknown {
                    what: "switch",
                    name: sw.clone(),
                    context: format!("vxlan \"{}\"", vx.name),
                })?;
                conn.set_controller(&link, bridge.index).await?;
            }
            if let Some(addr) = vx.address {
                conn.add_address(&link, addr).await?;
            }
        }
        let addrs = if node.routes.is_empty() {
            vec![]
        } else {
            plan.addresses_of(&node.name)
        };
        for route in &node.routes {
            let dev = match (&route.dev, route.via) {
                (Some(d), _) => d.clone(),
                (None, Some(gw)) => addrs
                    .iter()
                    .find(|(_, a)| a.contains(gw))
                    .map(|(i, _)| i.clone())
                    .ok_or_else(|| {
                        LabError::Invalid(format!(
                            "node \"{}\": gateway {gw} is on none of its subnets",
                            node.name
                        ))
                    })?,
                (None, None) => {
                    return Err(LabError::Invalid(format!(
                        "node \"{}\": route {} has neither gateway nor device",
                        node.name, route.dst
                    )))
                }
            };
            let link = must_link(conn, &dev).await?;
            let dst = match (route.dst, route.via) {
                // "default" was read as IPv4; an IPv6 gateway makes it ::/0.
                (d, Some(IpAddr::V6(_))) if d.prefix() == 0 => "::/0"
                    .parse()
                    .map_err(|_| LabError::Invalid("::/0".into()))?,
                (d, _) => d,
            };
            conn.add_route(&link, dst, route.via).await?;
        }
    }
    Ok(())
}

/// Threads writing permanent neighbour entries (each enters one node at a time).
const NEIGH_THREADS: usize = 4;

/// On static-ARP switches: each member node learns the (fixed) MACs of the members it talks
/// to because of the file, and of those that talk to it ([`Plan::talkers`]), or with
/// `static_arp = "all"` of every other member. A pair the file does not make talk resolves by
/// ARP as usual: installing every pair costs n * (n - 1) kernel entries (a million at 1,000
/// nodes, several seconds under the kernel's neighbour lock) where the file needs a few per
/// node. The entries go in batches over one plain socket per node (see
/// [`crate::sys::netlink::add_permanent_neighbors_batch`]).
async fn fill_static_neighbors(lab: &Lab, conns: &Conns, plan: &Plan) -> Result<()> {
    // Per member: (node, its interface index), and every member's (address, MAC).
    type Peers = std::sync::Arc<Vec<(IpAddr, [u8; 6])>>;
    let mut jobs: Vec<(&str, u32, IpAddr, Peers)> = vec![];
    let talkers = plan.talkers();
    for sw in plan.switches.iter().filter(|s| s.static_arp) {
        let members: Vec<(&str, &str, IpAddr, [u8; 6])> = plan
            .links
            .iter()
            .filter_map(|l| match (&l.a, &l.b) {
                (EndPlan::Node { node, iface }, EndPlan::Switch { switch, .. })
                    if switch == &sw.name =>
                {
                    Some((
                        node.as_str(),
                        iface.name.as_str(),
                        iface.address?.ip(),
                        iface.mac?,
                    ))
                }
                _ => None,
            })
            .collect();
        let all: Peers = std::sync::Arc::new(
            members
                .iter()
                .map(|(_, _, ip, mac)| (*ip, *mac))
                .collect::<Vec<_>>(),
        );
        // Who talks to whom on this switch, both ways (a reply needs the asker's MAC too).
        let mut pairs: Vec<std::collections::BTreeSet<usize>> =
            vec![Default::default(); members.len()];
        if !sw.static_arp_all {
            let by_ip: BTreeMap<IpAddr, usize> =
                members.iter().enumerate().map(|(i, m)| (m.2, i)).collect();
            for (x, m) in members.iter().enumerate() {
                for t in talkers.get(m.0).into_iter().flatten() {
                    if let Some(&y) = by_ip.get(t) {
                        if y != x {
                            pairs[x].insert(y);
                            pairs[y].insert(x);
                        }
                    }
                }
            }
        }
        for (x, (node, ifname, own, _)) in members.iter().enumerate() {
            let peers = if sw.static_arp_all {
                all.clone()
            } else if pairs[x].is_empty() {
                continue;
            } else {
                std::sync::Arc::new(pairs[x].iter().map(|y| all[*y]).collect())
            };
            let link = must_link(conns.node(node)?, ifname).await?;
            jobs.push((node, link.index, *own, peers));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..NEIGH_THREADS.min(jobs.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((node, index, own, peers)) = jobs.get(i) else {
                            return Ok(());
                        };
                        let (index, own, peers) = (*index, *own, peers.clone());
                        lab.open_node(node)?.run_in(move || {
                            crate::sys::netlink::add_permanent_neighbors_batch(
                                peers.iter().filter(|(ip, _)| *ip != own).map(|(ip, mac)| {
                                    crate::sys::netlink::NeighborEntry {
                                        index,
                                        ip: *ip,
                                        mac: *mac,
                                    }
                                }),
                            )
                        })??;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(LabError::Invalid("a neighbour thread panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

async fn must_link(conn: &Netlink, name: &str) -> Result<Link> {
    conn.link_by_name(name).await?.ok_or_else(|| {
        LabError::Netlink(crate::sys::netlink::NetlinkError::LinkNotFound { name: name.into() })
    })
}

async fn build_link(
    lab: &Lab,
    conns: &Conns,
    bridges: &BTreeMap<String, (Netlink, Link)>,
    link: &LinkPlan,
) -> Result<()> {
    let EndPlan::Node {
        node: a_node,
        iface: a_if,
    } = &link.a
    else {
        return Err(LabError::Invalid("link end a is not a node".into()));
    };
    let a_conn = conns.node(a_node)?;
    // Opened for this link alone: links are built LINKS_AT_ONCE at a time, so a large lab
    // holds few such descriptors at once.
    let a_ns = &lab.open_node(a_node)?;
    // The end created "here" and the peer born in the a node.
    let (here, here_link) = match &link.b {
        EndPlan::Switch { switch, port } => {
            let (conn, bridge) = bridges.get(switch).ok_or_else(|| LabError::Unknown {
                what: "switch",
                name: switch.clone(),
                context: "link".into(),
            })?;
            let port_link = conn
                .create_veth(
                    &VethSpec {
                        host_name: port.clone(),
                        peer_name: a_if.name.clone(),
                        controller: Some(bridge.index),
                        mtu: None,
                        peer_mac: a_if.mac,
                        host_mac: None,
                        alias: Some(format!("lab {} link to {}", lab.plan.name, a_node)),
                    },
                    a_ns,
                )
                .await?;
            (conn.clone(), port_link)
        }
        EndPlan::Node {
            node: b_node,
            iface: b_if,
        } => {
            let b_conn = conns.node(b_node)?;
            let b_link = b_conn
                .create_veth(
                    &VethSpec {
                        host_name: b_if.name.clone(),
                        peer_name: a_if.name.clone(),
                        controller: None,
                        mtu: None,
                        peer_mac: a_if.mac,
                        host_mac: b_if.mac,
                        alias: None,
                    },
                    a_ns,
                )
                .await?;
            if let Some(addr) = b_if.address {
                b_conn.add_address(&b_link, addr).await?;
            }
            (b_conn.clone(), b_link.clone())
        }
    };
    let a_link = must_link(a_conn, &a_if.name).await?;
    a_conn.set_up(a_link.index, &a_link.name).await?;
    if let Some(addr) = a_if.address {
        a_conn.add_address(&a_link, addr).await?;
    }
    if let Some(rate) = link.rate_bytes {
        let spec = TbfSpec::for_rate(rate);
        a_conn.add_tbf(&a_link, &spec).await?;
        here.add_tbf(&here_link, &spec).await?;
    }
    Ok(())
}

fn enable_forwarding() -> Result<()> {
    for path in [sysctl::IPV4_FORWARD, sysctl::IPV6_FORWARD] {
        sysctl::turn_on(path).map_err(|source| LabError::Io {
            what: format!("turning forwarding on ({path})"),
            source,
        })?;
    }
    Ok(())
}

/// Creates a persistent TUN or TAP device in the calling thread's namespace (it dies with the
/// namespace); programs in the node attach to it by name.
pub fn create_tuntap(name: &str, tap: bool, owner: Option<u32>) -> Result<()> {
    let builder = if tap {
        crate::sys::tuntap::TunBuilder::tap()
    } else {
        crate::sys::tuntap::TunBuilder::tun()
    };
    let builder = builder.name(name);
    let builder = match owner {
        Some(uid) => builder.owner(uid),
        None => builder,
    };
    builder
        .create_persistent()
        .map(|_| ())
        .map_err(|e| LabError::Invalid(e.to_string()))
}
