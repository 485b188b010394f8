//! The rule model: what one attachment's tables hold, as nft JSON commands. Pure functions, so
//! the whole ruleset of an attachment is unit-tested without privileges.
//!
//! An attachment owns two tables named after its owner, `inet netbox-KEY` (NAT and routed
//! filtering) and `bridge netbox-KEY` (frames leaving its veth), each with only the base chains
//! its options need. Removing the attachment is deleting its tables: no rule handles, nothing
//! shared with other attachments, and a crash leaves whole tables that GC finds by name.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::FirewallSpec;

/// Priorities: NAT at the usual dstnat/srcnat points; filtering at `filter`; frames are checked
/// at the bridge family's `filter` priority (-200), before any bridging decision.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;
const BRIDGE_FILTER: i32 = -200;

/// One base chain and its rules.
struct Chain {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    prio: i32,
    rules: Vec<Vec<Value>>,
}

impl Chain {
    fn new(name: &'static str, kind: &'static str, hook: &'static str, prio: i32) -> Chain {
        Chain {
            name,
            kind,
            hook,
            prio,
            rules: vec![],
        }
    }
}

fn matches(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}

fn prefix(net: IpNetwork) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix()}})
}

fn family(ip: IpAddr) -> (&'static str, &'static str) {
    if ip.is_ipv4() {
        ("ip", "ipv4")
    } else {
        ("ip6", "ipv6")
    }
}

fn mac_string(mac: &[u8; 6]) -> String {
    crate::sys::netlink::format_mac(mac)
}

/// The chains of the `inet` table.
fn inet_chains(spec: &FirewallSpec) -> Vec<Chain> {
    let mut dnat = Vec::new();
    for port in &spec.ports {
        for addr in &spec.addresses {
            if port.host_ip.is_some_and(|h| h.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            let (fam, nfproto) = family(addr.ip());
            let mut rule = vec![matches(meta("nfproto"), "==", json!(nfproto))];
            rule.push(match port.host_ip {
                Some(h) => matches(payload(fam, "daddr"), "==", json!(h.to_string())),
                None => matches(
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    "==",
                    json!("local"),
                ),
            });
            rule.push(matches(
                payload(port.protocol.as_str(), "dport"),
                "==",
                json!(port.host_port),
            ));
            rule.push(json!({"dnat": {
                "family": fam, "addr": addr.ip().to_string(), "port": port.container_port
            }}));
            dnat.push(rule);
        }
    }
    let mut post = Vec::new();
    for addr in &spec.addresses {
        let (fam, nfproto) = family(addr.ip());
        let multicast = if addr.is_ipv4() {
            json!({"prefix": {"addr": "224.0.0.0", "len": 4}})
        } else {
            json!({"prefix": {"addr": "ff00::", "len": 8}})
        };
        if spec.masquerade {
            post.push(vec![
                matches(meta("nfproto"), "==", json!(nfproto)),
                matches(payload(fam, "saddr"), "==", json!(addr.ip().to_string())),
                matches(payload(fam, "daddr"), "!=", prefix(*addr)),
                matches(payload(fam, "daddr"), "!=", multicast),
                json!({"masquerade": null}),
            ]);
        }
        if !spec.ports.is_empty() {
            // Hairpin (a neighbour on the bridge reaching the published port through the host)
            // and localhost (127.0.0.0/8 sources, routable thanks to route_localnet): the reply
            // must come back through the host, so the source becomes the host's.
            let mut sources = vec![prefix(*addr)];
            if addr.is_ipv4() {
                sources.push(json!({"prefix": {"addr": "127.0.0.0", "len": 8}}));
            }
            post.push(vec![
                matches(meta("nfproto"), "==", json!(nfproto)),
                matches(ct("status"), "in", json!("dnat")),
                matches(payload(fam, "daddr"), "==", json!(addr.ip().to_string())),
                matches(payload(fam, "saddr"), "==", json!({"set": sources})),
                json!({"masquerade": null}),
            ]);
        }
    }
    let mut forward = Vec::new();
    if spec.isolate_networks {
        for addr in &spec.addresses {
            let (fam, nfproto) = family(addr.ip());
            let head = || {
                vec![
                    matches(meta("nfproto"), "==", json!(nfproto)),
                    matches(meta("oifname"), "==", json!(spec.bridge)),
                    matches(payload(fam, "daddr"), "==", json!(addr.ip().to_string())),
                    matches(meta("iifname"), "!=", json!(spec.bridge)),
                ]
            };
            // New connections from outside the bridge arrive only through published ports.
            let mut published = head();
            published.push(matches(ct("status"), "in", json!("dnat")));
            published.push(json!({"accept": null}));
            let mut others = head();
            others.push(matches(ct("state"), "in", json!("new")));
            others.push(json!({"drop": null}));
            forward.push(published);
            forward.push(others);
        }
    }
    let mut input = Vec::new();
    if spec.block_host {
        for addr in &spec.addresses {
            let (fam, nfproto) = family(addr.ip());
            let head = || {
                vec![
                    matches(meta("nfproto"), "==", json!(nfproto)),
                    matches(meta("iifname"), "==", json!(spec.bridge)),
                    matches(payload(fam, "saddr"), "==", json!(addr.ip().to_string())),
                ]
            };
            let mut replies = head();
            replies.push(matches(
                ct("state"),
                "in",
                json!(["established", "related"]),
            ));
            replies.push(json!({"accept": null}));
            input.push(replies);
            if addr.is_ipv6() {
                // Neighbour discovery with the gateway must go on.
                let mut nd = head();
                nd.push(matches(
                    payload("icmpv6", "type"),
                    "==",
                    json!({"set": ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit"]}),
                ));
                nd.push(json!({"accept": null}));
                input.push(nd);
            }
            let mut rest = head();
            rest.push(json!({"drop": null}));
            input.push(rest);
        }
    }
    let mut chains = Vec::new();
    if !dnat.is_empty() {
        let mut pre = Chain::new("prerouting", "nat", "prerouting", DSTNAT);
        pre.rules = dnat.clone();
        let mut out = Chain::new("output", "nat", "output", DSTNAT);
        out.rules = dnat;
        chains.push(pre);
        chains.push(out);
    }
    for (rules, chain) in [
        (
            post,
            Chain::new("postrouting", "nat", "postrouting", SRCNAT),
        ),
        (forward, Chain::new("forward", "filter", "forward", FILTER)),
        (input, Chain::new("input", "filter", "input", FILTER)),
    ] {
        if !rules.is_empty() {
            chains.push(Chain { rules, ..chain });
        }
    }
    chains
}

/// The chains of the `bridge` table.
fn bridge_chains(spec: &FirewallSpec) -> Vec<Chain> {
    let iif = || matches(meta("iifname"), "==", json!(spec.host_veth));
    let mut pre = Vec::new();
    if spec.spoof_check {
        if let Some(mac) = &spec.mac {
            pre.push(vec![
                iif(),
                matches(payload("ether", "saddr"), "!=", json!(mac_string(mac))),
                json!({"drop": null}),
            ]);
        }
        let v4: Vec<Value> = spec
            .addresses
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| json!(a.ip().to_string()))
            .collect();
        let mut v6: Vec<Value> = spec
            .addresses
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| json!(a.ip().to_string()))
            .collect();
        if !v4.is_empty() {
            pre.push(vec![
                iif(),
                matches(payload("ip", "saddr"), "!=", json!({"set": v4.clone()})),
                json!({"drop": null}),
            ]);
            pre.push(vec![
                iif(),
                matches(payload("arp", "saddr ip"), "!=", json!({"set": v4})),
                json!({"drop": null}),
            ]);
            if let Some(mac) = &spec.mac {
                pre.push(vec![
                    iif(),
                    matches(payload("arp", "saddr ether"), "!=", json!(mac_string(mac))),
                    json!({"drop": null}),
                ]);
            }
        }
        if !v6.is_empty() {
            // Link-local sources (neighbour discovery) and the unspecified one (DAD) stay allowed.
            v6.push(json!({"prefix": {"addr": "fe80::", "len": 10}}));
            v6.push(json!("::"));
            pre.push(vec![
                iif(),
                matches(payload("ip6", "saddr"), "!=", json!({"set": v6})),
                json!({"drop": null}),
            ]);
        }
    }
    let mut chains = Vec::new();
    if !pre.is_empty() {
        let mut chain = Chain::new("prerouting", "filter", "prerouting", BRIDGE_FILTER);
        chain.rules = pre;
        chains.push(chain);
    }
    if spec.isolate {
        // Bridged frames only: what goes to the host (the gateway) takes the input path, and
        // what the host routes to the sandbox the output path.
        let mut chain = Chain::new("forward", "filter", "forward", BRIDGE_FILTER);
        chain.rules = vec![
            vec![iif(), json!({"drop": null})],
            vec![
                matches(meta("oifname"), "==", json!(spec.host_veth)),
                json!({"drop": null}),
            ],
        ];
        chains.push(chain);
    }
    chains
}

/// The families and chain names (with their rule counts) an attachment's tables hold.
pub fn expected(spec: &FirewallSpec) -> Vec<(&'static str, Vec<(String, usize)>)> {
    [("inet", inet_chains(spec)), ("bridge", bridge_chains(spec))]
        .into_iter()
        .filter(|(_, chains)| !chains.is_empty())
        .map(|(family, chains)| {
            (
                family,
                chains
                    .iter()
                    .map(|c| (c.name.to_string(), c.rules.len()))
                    .collect(),
            )
        })
        .collect()
}

/// The commands that create the attachment's tables. The tables are made with `create`, so a
/// table left over from a crash makes the batch fail instead of doubling rules.
pub fn add_commands(spec: &FirewallSpec, table: &str) -> Vec<Value> {
    let mut commands = Vec::new();
    for (family, chains) in [("inet", inet_chains(spec)), ("bridge", bridge_chains(spec))] {
        if chains.is_empty() {
            continue;
        }
        commands.push(json!({"create": {"table": {"family": family, "name": table}}}));
        for chain in &chains {
            commands.push(json!({"add": {"chain": {
                "family": family, "table": table, "name": chain.name, "type": chain.kind,
                "hook": chain.hook, "prio": chain.prio, "policy": "accept"
            }}}));
            for expr in &chain.rules {
                commands.push(json!({"add": {"rule": {
                    "family": family, "table": table, "chain": chain.name, "expr": expr
                }}}));
            }
        }
    }
    commands
}
