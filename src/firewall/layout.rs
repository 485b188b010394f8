//! The layout of netbox's firewall: two shared tables, `inet netbox` and `bridge netbox`, whose
//! base chains look packets up in sets and maps, and what one attachment adds to them.
//!
//! Per packet, every look-up is one hash (or, in the NAT chains that only see a connection's
//! first packet, one interval) look-up, whatever the number of attachments. Per attachment, the
//! state is a handful of elements (its addresses, its host veth, its published ports), each
//! commented with its owner's key, and one record: a regular chain `owner-KEY` that nothing
//! jumps to, whose empty rules each name one of the owner's elements ([`Record`]). Adding or
//! removing an owner is one transaction over its elements and its record, found by name.
//!
//! The tables and their base chains (the [`SKELETON`]) are written by `nft` once per network
//! namespace; elements and records go through [`crate::sys::nfnetlink`].

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{FirewallError, FirewallSpec, Protocol};
use crate::sys::nfnetlink::{Element, Family};

/// The name of both shared tables.
pub const TABLE: &str = "netbox";
/// What the record chain of an owner is called, before the owner's escaped key.
pub const RECORD_PREFIX: &str = "owner-";
/// The set of live `netbox run` owners: a cheap look for stale ones.
pub const RUNS: &str = "runs";

/// The shared tables, their sets and base chains. Priorities: NAT at dstnat (-100) and srcnat
/// (100), routed filtering at filter (0), frames at the bridge family's filter (-200), before
/// any bridging decision. Hairpin (a neighbour reaching a published port through the host) is
/// decided in forward, where the incoming bridge is known, and carried to the NAT postrouting
/// chain, where it is not, by packet mark bit 0x02000000 on the connection's first packet.
pub fn skeleton(family: Family) -> &'static str {
    match family {
        Family::Inet => INET,
        Family::Bridge => BRIDGE,
    }
}

/// The skeleton applied over existing tables (an older netbox's): base chains flushed and
/// declared again with their rules, sets declared (added when missing, kept otherwise, with
/// their elements).
pub fn upgrade(family: Family) -> String {
    let text = skeleton(family);
    let body = text.split_once('\n').map_or(text, |(_, rest)| rest);
    let mut out = String::new();
    for line in body.lines() {
        let chain = line.trim().strip_prefix("chain ");
        if let Some(name) = chain.and_then(|c| c.strip_suffix(" {")) {
            let _ = writeln!(out, "flush chain {} {TABLE} {name}", family.as_str());
        }
    }
    out.push_str(body);
    out
}

const INET: &str = r#"create table inet netbox
table inet netbox {
	map dnat4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
	map dnat4any { type inet_proto . inet_service : ipv4_addr . inet_service; }
	map dnat6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
	map dnat6any { type inet_proto . inet_service : ipv6_addr . inet_service; }
	set masq4 { type ipv4_addr; }
	set masq6 { type ipv6_addr; }
	set nomasq4 { type ipv4_addr . ipv4_addr; flags interval; }
	set nomasq6 { type ipv6_addr . ipv6_addr; flags interval; }
	set local4 { type ipv4_addr . ifname; }
	set local6 { type ipv6_addr . ifname; }
	set hairpin4 { type ipv4_addr . ifname; }
	set hairpin6 { type ipv6_addr . ifname; }
	set published4 { type ipv4_addr; }
	set guard4 { type ipv4_addr . ifname; }
	set guard6 { type ipv6_addr . ifname; }
	set hostblock4 { type ipv4_addr . ifname; }
	set hostblock6 { type ipv6_addr . ifname; }
	set runs { type mark . mark . mark; }
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		dnat ip to ip daddr . meta l4proto . th dport map @dnat4
		fib daddr type local dnat ip to meta l4proto . th dport map @dnat4any
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6
		fib daddr type local dnat ip6 to meta l4proto . th dport map @dnat6any
	}
	chain output {
		type nat hook output priority -100; policy accept;
		dnat ip to ip daddr . meta l4proto . th dport map @dnat4
		fib daddr type local dnat ip to meta l4proto . th dport map @dnat4any
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6
		fib daddr type local dnat ip6 to meta l4proto . th dport map @dnat6any
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		ip saddr @masq4 ip daddr != 224.0.0.0/4 ip saddr . oifname != @local4 ip saddr . ip daddr != @nomasq4 masquerade
		ip6 saddr @masq6 ip6 daddr != ff00::/8 ip6 saddr . oifname != @local6 ip6 saddr . ip6 daddr != @nomasq6 masquerade
		ct status dnat meta mark & 0x02000000 == 0x02000000 masquerade
		ct status dnat ip saddr 127.0.0.0/8 ip daddr @published4 masquerade
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state != new return
		ct status dnat ip daddr . iifname @hairpin4 meta mark set meta mark | 0x02000000 return
		ct status dnat ip6 daddr . iifname @hairpin6 meta mark set meta mark | 0x02000000 return
		ct status dnat return
		ip daddr . oifname @guard4 ip daddr . iifname != @guard4 drop
		ip6 daddr . oifname @guard6 ip6 daddr . iifname != @guard6 drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ct state established,related return
		ip saddr . iifname @hostblock4 drop
		ip6 saddr . iifname @hostblock6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } return
		ip6 saddr . iifname @hostblock6 drop
	}
}
"#;

const BRIDGE: &str = r#"create table bridge netbox
table bridge netbox {
	set macports { type ifname; }
	set macs { type ifname . ether_addr; }
	set ip4ports { type ifname; }
	set ip4s { type ifname . ipv4_addr; }
	set ip6ports { type ifname; }
	set ip6s { type ifname . ipv6_addr; }
	set isolated { type ifname; }
	chain prerouting {
		type filter hook prerouting priority -200; policy accept;
		iifname @macports iifname . ether saddr != @macs drop
		iifname @macports iifname . arp saddr ether != @macs drop
		iifname @ip4ports iifname . ip saddr != @ip4s drop
		iifname @ip4ports iifname . arp saddr ip != @ip4s drop
		iifname @ip6ports ip6 saddr != { fe80::/10, :: } iifname . ip6 saddr != @ip6s drop
	}
	chain forward {
		type filter hook forward priority -200; policy accept;
		iifname @isolated drop
		oifname @isolated drop
	}
}
"#;

/// Key encodings, as nft lays out concatenations: each field padded to 4 bytes, addresses and
/// ports in network order, interface names NUL-padded to 16 bytes.
struct Key(Vec<u8>);

impl Key {
    fn new() -> Key {
        Key(Vec::with_capacity(32))
    }
    fn field(mut self, bytes: &[u8]) -> Key {
        self.0.extend_from_slice(bytes);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn ip(self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => self.field(&v4.octets()),
            IpAddr::V6(v6) => self.field(&v6.octets()),
        }
    }
    fn ifname(self, name: &str) -> Key {
        let mut b = [0u8; 16];
        let n = name.len().min(15);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.field(&b)
    }
    fn proto(self, p: Protocol) -> Key {
        self.field(&[match p {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }])
    }
    fn port(self, port: u16) -> Key {
        self.field(&port.to_be_bytes())
    }
}

fn v(family: bool, v4: &'static str, v6: &'static str) -> &'static str {
    if family {
        v4
    } else {
        v6
    }
}

fn element(family: Family, set: &'static str, key: Key) -> Element {
    Element {
        family,
        set,
        key: key.0,
        key_end: None,
        data: None,
    }
}

/// Every element `spec` adds to the shared tables.
pub fn elements(spec: &FirewallSpec) -> Result<Vec<Element>, FirewallError> {
    let mut out = Vec::new();
    let inet = Family::Inet;
    for addr in &spec.addresses {
        let (ip, v4) = (addr.ip(), addr.is_ipv4());
        // Hash keys only: an interval set (pipapo) costs O(elements) per deletion.
        let on_bridge = || Key::new().ip(ip).ifname(&spec.bridge);
        if spec.masquerade {
            // Traffic leaving through its own bridge stays on its network: not masqueraded.
            out.push(element(inet, v(v4, "masq4", "masq6"), Key::new().ip(ip)));
            out.push(element(inet, v(v4, "local4", "local6"), on_bridge()));
            // Destinations left alone (`noMasqueradeTo`): one interval per address and CIDR
            // of its family. The only interval set, and empty unless a network asks: its
            // deletions cost O(elements) (pipapo), a price only those networks pay.
            for cidr in spec.no_masquerade_to.iter().filter(|c| c.is_ipv4() == v4) {
                out.push(Element {
                    family: inet,
                    set: v(v4, "nomasq4", "nomasq6"),
                    key: Key::new().ip(ip).ip(cidr.network()).0,
                    key_end: Some(Key::new().ip(ip).ip(last_address(cidr)).0),
                    data: None,
                });
            }
        }
        if !spec.ports.is_empty() {
            // Hairpin (a neighbour on the bridge reaching the published port through the host)
            // and, for IPv4, localhost sources (routable thanks to route_localnet): the reply
            // must come back through the host, so the source becomes the host's.
            out.push(element(inet, v(v4, "hairpin4", "hairpin6"), on_bridge()));
            if v4 {
                out.push(element(inet, "published4", Key::new().ip(ip)));
            }
        }
        if spec.isolate_networks {
            let key = Key::new().ip(ip).ifname(&spec.bridge);
            out.push(element(inet, v(v4, "guard4", "guard6"), key));
        }
        if spec.block_host {
            let key = Key::new().ip(ip).ifname(&spec.bridge);
            out.push(element(inet, v(v4, "hostblock4", "hostblock6"), key));
        }
    }
    for port in &spec.ports {
        for v4 in [true, false] {
            if port.host_ip.is_some_and(|h| h.is_ipv4() != v4) {
                continue;
            }
            // The first address of the family: a map has one target per host port.
            let Some(addr) = spec.addresses.iter().find(|a| a.is_ipv4() == v4) else {
                continue;
            };
            let (set, key) = match port.host_ip {
                Some(h) => (
                    v(v4, "dnat4", "dnat6"),
                    Key::new().ip(h).proto(port.protocol).port(port.host_port),
                ),
                None => (
                    v(v4, "dnat4any", "dnat6any"),
                    Key::new().proto(port.protocol).port(port.host_port),
                ),
            };
            let mut e = element(inet, set, key);
            e.data = Some(Key::new().ip(addr.ip()).port(port.container_port).0);
            out.push(e);
        }
    }
    let bridge = Family::Bridge;
    let veth = || Key::new().ifname(&spec.host_veth);
    if spec.spoof_check {
        if let Some(mac) = &spec.mac {
            out.push(element(bridge, "macports", veth()));
            out.push(element(bridge, "macs", veth().field(mac)));
        }
        for (v4, ports, set) in [(true, "ip4ports", "ip4s"), (false, "ip6ports", "ip6s")] {
            let addrs: Vec<&IpNetwork> = spec
                .addresses
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .collect();
            if !addrs.is_empty() {
                out.push(element(bridge, ports, veth()));
            }
            for a in addrs {
                out.push(element(bridge, set, veth().ip(a.ip())));
            }
        }
    }
    if spec.isolate {
        out.push(element(bridge, "isolated", veth()));
    }
    if let (false, crate::model::owner::Owner::Process { pid, start_time }) =
        (out.is_empty(), &spec.owner)
    {
        let key = Key::new()
            .field(&pid.to_ne_bytes())
            .field(&((start_time >> 32) as u32).to_ne_bytes())
            .field(&(*start_time as u32).to_ne_bytes());
        out.push(element(inet, RUNS, key));
    }
    Ok(out)
}

/// The comment of the record rule standing for `e`: `FAMILY SET KEY[-KEYEND]` in hex.
pub fn record(e: &Element) -> String {
    let mut s = format!("{} {} ", e.family.as_str(), e.set);
    hex(&mut s, &e.key);
    if let Some(end) = &e.key_end {
        s.push('-');
        hex(&mut s, end);
    }
    s
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The element a record comment stands for (its key; the value of a map is not needed to
/// delete or find it). The set name must be one of the layout's.
pub fn parse_record(comment: &str) -> Option<Element> {
    let mut parts = comment.split(' ');
    let family = Family::parse(parts.next()?)?;
    let name = parts.next()?;
    let set = SETS
        .iter()
        .find(|(f, s)| *f == family && *s == name)
        .map(|(_, s)| *s)?;
    let keys = parts.next()?;
    let (key, key_end) = match keys.split_once('-') {
        Some((k, e)) => (unhex(k)?, Some(unhex(e)?)),
        None => (unhex(keys)?, None),
    };
    if parts.next().is_some() || key.is_empty() {
        return None;
    }
    Some(Element {
        family,
        set,
        key,
        key_end,
        data: None,
    })
}

/// The last address of `cidr` (its broadcast address for IPv4).
fn last_address(cidr: &IpNetwork) -> IpAddr {
    match cidr {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
            IpAddr::V6((u128::from(n.network()) | if host_bits == 0 { 0 } else { mask }).into())
        }
    }
}

/// Every set of the layout, by family.
const SETS: [(Family, &str); 25] = [
    (Family::Inet, "dnat4"),
    (Family::Inet, "dnat4any"),
    (Family::Inet, "dnat6"),
    (Family::Inet, "dnat6any"),
    (Family::Inet, "masq4"),
    (Family::Inet, "masq6"),
    (Family::Inet, "nomasq4"),
    (Family::Inet, "nomasq6"),
    (Family::Inet, "local4"),
    (Family::Inet, "local6"),
    (Family::Inet, "hairpin4"),
    (Family::Inet, "hairpin6"),
    (Family::Inet, "published4"),
    (Family::Inet, "guard4"),
    (Family::Inet, "guard6"),
    (Family::Inet, "hostblock4"),
    (Family::Inet, "hostblock6"),
    (Family::Inet, "runs"),
    (Family::Bridge, "macports"),
    (Family::Bridge, "macs"),
    (Family::Bridge, "ip4ports"),
    (Family::Bridge, "ip4s"),
    (Family::Bridge, "ip6ports"),
    (Family::Bridge, "ip6s"),
    (Family::Bridge, "isolated"),
];

/// An element in words, for messages: `0.0.0.0:8080/tcp`, `address 10.0.0.2 (masq4)`, ...
pub fn describe(e: &Element) -> String {
    let k = &e.key;
    let ip4 = |b: &[u8]| -> String {
        b.get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or("?".into(), |b| std::net::Ipv4Addr::from(b).to_string())
    };
    let ip6 = |b: &[u8]| -> String {
        b.get(..16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map_or("?".into(), |b| format!("[{}]", std::net::Ipv6Addr::from(b)))
    };
    let port = |b: &[u8]| -> String {
        let proto = match b.first() {
            Some(6) => "tcp",
            Some(17) => "udp",
            _ => "?",
        };
        let p = b.get(4..6).map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
        format!("{p}/{proto}")
    };
    let ifname = |b: &[u8]| -> String {
        let b = b.get(..16).unwrap_or(b);
        String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or(b)).into_owned()
    };
    match e.set {
        "dnat4any" => format!("0.0.0.0:{}", port(k)),
        "dnat6any" => format!("[::]:{}", port(k)),
        "dnat4" => format!("{}:{}", ip4(k), port(k.get(4..).unwrap_or(&[]))),
        "dnat6" => format!("{}:{}", ip6(k), port(k.get(16..).unwrap_or(&[]))),
        "masq4" | "local4" | "hairpin4" | "published4" | "guard4" | "hostblock4" => {
            format!("address {} ({})", ip4(k), e.set)
        }
        "nomasq4" => format!(
            "address {} to {}-{} (nomasq4)",
            ip4(k),
            ip4(k.get(4..).unwrap_or(&[])),
            ip4(e.key_end.as_deref().and_then(|k| k.get(4..)).unwrap_or(&[]))
        ),
        "nomasq6" => format!(
            "address {} to {}-{} (nomasq6)",
            ip6(k),
            ip6(k.get(16..).unwrap_or(&[])),
            ip6(e
                .key_end
                .as_deref()
                .and_then(|k| k.get(16..))
                .unwrap_or(&[]))
        ),
        "masq6" | "local6" | "hairpin6" | "guard6" | "hostblock6" => {
            format!("address {} ({})", ip6(k), e.set)
        }
        "runs" => "the netbox run record".into(),
        set => format!("interface {} ({set})", ifname(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::PortMapping;
    use crate::model::owner::Owner;

    fn spec() -> FirewallSpec {
        let mut s = FirewallSpec::new(
            Owner::Process {
                pid: 7,
                start_time: 9,
            },
            "br0",
            "veth0",
        );
        s.addresses = vec![
            "10.0.0.2/24".parse().expect("cidr"),
            "fd00::2/64".parse().expect("cidr"),
        ];
        s
    }

    #[test]
    fn only_what_the_options_need_is_added() {
        let mut s = spec();
        assert!(elements(&s).expect("elements").is_empty());
        s.masquerade = true;
        let sets: Vec<&str> = elements(&s).expect("e").iter().map(|e| e.set).collect();
        assert_eq!(sets, ["masq4", "local4", "masq6", "local6", "runs"]);
        s.masquerade = false;
        s.ports = vec![PortMapping::parse("8080:80").expect("parse")];
        s.spoof_check = true;
        s.mac = Some([2, 0, 0, 0, 0, 1]);
        s.isolate = true;
        let sets: Vec<&str> = elements(&s).expect("e").iter().map(|e| e.set).collect();
        assert_eq!(
            sets,
            [
                "hairpin4",
                "published4",
                "hairpin6",
                "dnat4any",
                "dnat6any",
                "macports",
                "macs",
                "ip4ports",
                "ip4s",
                "ip6ports",
                "ip6s",
                "isolated",
                "runs"
            ]
        );
    }

    #[test]
    fn exceptions_to_masquerade_are_intervals_per_address_and_family() {
        let mut s = spec();
        s.masquerade = true;
        s.no_masquerade_to = vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:244::/48".parse().expect("cidr"),
        ];
        let e = elements(&s).expect("e");
        let v4 = e.iter().find(|e| e.set == "nomasq4").expect("nomasq4");
        assert_eq!(v4.key, [10, 0, 0, 2, 10, 244, 0, 0]);
        assert_eq!(
            v4.key_end.as_deref(),
            Some(&[10, 0, 0, 2, 10, 244, 255, 255][..])
        );
        assert_eq!(
            describe(v4),
            "address 10.0.0.2 to 10.244.0.0-10.244.255.255 (nomasq4)"
        );
        let v6 = e.iter().find(|e| e.set == "nomasq6").expect("nomasq6");
        let end = v6.key_end.as_deref().expect("end");
        assert_eq!(&end[16..22], &[0xfd, 0, 0x02, 0x44, 0, 0]);
        assert!(end[22..].iter().all(|b| *b == 0xff));
        assert_eq!(e.iter().filter(|e| e.set.starts_with("nomasq")).count(), 2);
        let back = parse_record(&record(v4)).expect("parse");
        assert_eq!(back.key_end, v4.key_end);
    }

    #[test]
    fn the_upgrade_flushes_every_base_chain_and_keeps_the_table() {
        let text = upgrade(Family::Inet);
        for chain in ["prerouting", "output", "postrouting", "forward", "input"] {
            assert!(
                text.contains(&format!("flush chain inet netbox {chain}\n")),
                "{text}"
            );
        }
        assert!(!text.contains("create table"));
        assert!(text.contains("set nomasq4"));
        assert!(upgrade(Family::Bridge).contains("flush chain bridge netbox forward\n"));
    }

    #[test]
    fn keys_are_laid_out_as_nft_concatenations() {
        let mut s = spec();
        s.ports = vec![PortMapping::parse("127.0.0.1:8080:80/udp").expect("parse")];
        let e = elements(&s).expect("e");
        let dnat = e.iter().find(|e| e.set == "dnat4").expect("dnat4");
        assert_eq!(dnat.key, [127, 0, 0, 1, 17, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(dnat.data.as_deref(), Some(&[10, 0, 0, 2, 0, 80, 0, 0][..]));
        assert_eq!(describe(dnat), "127.0.0.1:8080/udp");
        let hairpin = e.iter().find(|e| e.set == "hairpin4").expect("hairpin");
        assert_eq!(&hairpin.key[..7], &[10, 0, 0, 2, b'b', b'r', b'0']);
        assert_eq!(hairpin.key.len(), 20);
    }

    #[test]
    fn records_round_trip_to_elements() {
        let mut s = spec();
        s.masquerade = true;
        s.spoof_check = true;
        s.mac = Some([2, 0, 0, 0, 0, 1]);
        for e in elements(&s).expect("e") {
            let back = parse_record(&record(&e)).expect("parse");
            assert_eq!(
                (back.family, back.set, &back.key),
                (e.family, e.set, &e.key)
            );
            assert_eq!(back.key_end, e.key_end);
        }
        assert!(parse_record("inet nosuchset 00").is_none());
        assert!(parse_record("inet masq4 0g").is_none());
    }
}
