//! The firewall: masquerade, published ports, anti-spoofing and isolation with nftables, in
//! netbox's own tables only (never another program's table or chain).
//!
//! Every rule belongs to one attachment, identified by its [`Owner`]: the attachment's rules
//! live in its own tables, `inet netbox-KEY` and `bridge netbox-KEY` (KEY: [`Owner::key`],
//! re-escaped into nft's name alphabet). So:
//! - adding is one transaction that creates the tables (see [`rules`] for their content);
//! - removing is one transaction that deletes them, by name, needing neither the namespace nor
//!   the veth; removing twice is a no-op;
//! - the owners present are found by listing table names ([`owners`]), which is how stale rules
//!   (a crash, a SIGKILLed `netbox run`) are found and removed by GC or by the next run.
//!
//! - `nft`: the driver, the only code that runs nft;
//! - `rules`: the rule model (nft JSON);
//! - `sysctl`: ip_forward and route_localnet.

pub mod nft;
pub mod rules;
pub mod sysctl;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::json;
use thiserror::Error;

use crate::model::owner::{self, Owner};

/// What every netbox table name starts with.
pub use crate::model::owner::TABLE_PREFIX;
/// The families netbox makes tables in.
const FAMILIES: [&str; 2] = ["inet", "bridge"];

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error(
        "firewall: the nft binary was not found in PATH, /usr/sbin or /sbin \
         (install the nftables package)"
    )]
    NftMissing,
    #[error("firewall: {what}: {reason}")]
    Nft { what: String, reason: String },
    #[error("firewall: {0}")]
    Config(String),
    #[error("firewall: {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Result<Protocol, FirewallError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(FirewallError::Config(format!(
                "protocol {other:?} is not supported (tcp or udp)"
            ))),
        }
    }
}

/// A published port: host port (on `host_ip`, or every local address) to sandbox port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// `[HOSTIP:]HOSTPORT:PORT[/tcp|udp]`, an IPv6 host address in brackets (`[::1]:8080:80`).
    pub fn parse(s: &str) -> Result<PortMapping, FirewallError> {
        let bad = |why: &str| {
            FirewallError::Config(format!(
                "port mapping {s:?}: {why} (expected [HOSTIP:]HOSTPORT:PORT[/tcp|udp])"
            ))
        };
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, proto)) => (
                spec,
                Protocol::parse(proto).map_err(|e| bad(&e.to_string()))?,
            ),
            None => (s, Protocol::Tcp),
        };
        let (host, container) = spec.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        let (host_ip, host_port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
                (Some(ip), port)
            }
            None => (None, host),
        };
        let port = |p: &str| -> Result<u16, FirewallError> {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port between 1 and 65535")))
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// One attachment's firewall.
#[derive(Debug, Clone)]
pub struct FirewallSpec {
    pub owner: Owner,
    /// The bridge the sandbox is a port of.
    pub bridge: String,
    /// The host end of the sandbox's veth.
    pub host_veth: String,
    /// The sandbox interface's MAC (anti-spoofing).
    pub mac: Option<[u8; 6]>,
    /// The sandbox's addresses, with their subnets' prefixes.
    pub addresses: Vec<IpNetwork>,
    /// Traffic leaving the network gets the host's address as source.
    pub masquerade: bool,
    pub ports: Vec<PortMapping>,
    /// Frames and packets from the sandbox must carry its own MAC and addresses.
    pub spoof_check: bool,
    /// Only the gateway is reachable on the bridge (no sandbox-to-sandbox frames).
    pub isolate: bool,
    /// New connections from outside the bridge (other networks) only through published ports.
    pub isolate_networks: bool,
    /// The sandbox cannot reach the host's own addresses (replies excepted).
    pub block_host: bool,
}

impl FirewallSpec {
    /// A spec with nothing enabled.
    pub fn new(owner: Owner, bridge: &str, host_veth: &str) -> FirewallSpec {
        FirewallSpec {
            owner,
            bridge: bridge.into(),
            host_veth: host_veth.into(),
            mac: None,
            addresses: vec![],
            masquerade: false,
            ports: vec![],
            spoof_check: false,
            isolate: false,
            isolate_networks: false,
            block_host: false,
        }
    }

    /// True when the spec makes no rule at all.
    pub fn is_empty(&self) -> bool {
        rules::expected(self).is_empty()
    }

    fn validate(&self) -> Result<(), FirewallError> {
        if (self.masquerade || !self.ports.is_empty()) && self.addresses.is_empty() {
            return Err(FirewallError::Config(
                "masquerade and published ports need the sandbox to have an address".into(),
            ));
        }
        for p in &self.ports {
            if let Some(h) = p.host_ip {
                if !self.addresses.iter().any(|a| a.is_ipv4() == h.is_ipv4()) {
                    return Err(FirewallError::Config(format!(
                        "port mapping {p}: the sandbox has no {} address",
                        if h.is_ipv4() { "IPv4" } else { "IPv6" }
                    )));
                }
            }
        }
        let mut seen = HashSet::new();
        for p in &self.ports {
            if !seen.insert((p.host_ip, p.host_port, p.protocol)) {
                return Err(FirewallError::Config(format!(
                    "host port {}/{} is published twice",
                    p.host_port,
                    p.protocol.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// What applying a spec changed on the host besides the tables.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Kernel switches turned on (ip_forward, route_localnet), one sentence each.
    pub notices: Vec<String>,
}

/// The table name of an owner's tables (see [`owner::nft_table_name`]).
pub fn table_name(owner: &Owner) -> Result<String, FirewallError> {
    owner::nft_table_name(owner).map_err(|e| FirewallError::Config(e.to_string()))
}

/// The owner a netbox table name stands for (None for other tables).
pub fn owner_of_table(name: &str) -> Option<Owner> {
    owner::owner_of_nft_table(name)
}

/// Installs the attachment's rules in one transaction, after turning on the kernel switches
/// they need. Tables of the same owner left from a crash are replaced.
pub fn apply(spec: &FirewallSpec) -> Result<Applied, FirewallError> {
    spec.validate()?;
    let table = table_name(&spec.owner)?;
    let commands = rules::add_commands(spec, &table);
    let mut applied = Applied::default();
    if commands.is_empty() {
        return Ok(applied);
    }
    if spec.masquerade || !spec.ports.is_empty() {
        let v4 = spec.addresses.iter().any(|a| a.is_ipv4());
        let v6 = spec.addresses.iter().any(|a| a.is_ipv6());
        applied.notices = sysctl::ensure_forwarding(v4, v6)?;
    }
    if !spec.ports.is_empty() && spec.addresses.iter().any(|a| a.is_ipv4()) {
        applied
            .notices
            .extend(sysctl::ensure_route_localnet(&spec.bridge)?);
    }
    match nft::apply(commands.clone()) {
        Ok(()) => Ok(applied),
        Err(FirewallError::Nft { reason, .. }) if reason.contains("File exists") => {
            // A table of this owner is left over: replace it, in one transaction.
            let mut batch = delete_commands(&table, &existing(&table)?);
            batch.extend(commands);
            nft::apply(batch)?;
            Ok(applied)
        }
        Err(e) => Err(e),
    }
}

/// The families in which a netbox table named `table` exists now.
fn existing(table: &str) -> Result<Vec<String>, FirewallError> {
    Ok(nft::tables()?
        .into_iter()
        .filter(|t| t.name == table && FAMILIES.contains(&t.family.as_str()))
        .map(|t| t.family)
        .collect())
}

fn delete_commands(table: &str, families: &[String]) -> Vec<serde_json::Value> {
    families
        .iter()
        .map(|family| json!({"delete": {"table": {"family": family, "name": table}}}))
        .collect()
}

/// Deleting `table` in every family whether it exists or not: adding an existing table is a
/// no-op, so "add, delete" is an idempotent delete in one transaction, without listing first
/// and without racing a concurrent remover.
fn destroy_commands(table: &str) -> Vec<serde_json::Value> {
    FAMILIES
        .iter()
        .flat_map(|family| {
            [
                json!({"add": {"table": {"family": family, "name": table}}}),
                json!({"delete": {"table": {"family": family, "name": table}}}),
            ]
        })
        .collect()
}

/// Removes every rule of `owner`, in one transaction; nothing to remove is success.
pub fn remove(owner: &Owner) -> Result<(), FirewallError> {
    nft::apply(destroy_commands(&table_name(owner)?))
}

/// Removes the rules of `owner` and of every dead `netbox run` owner in one transaction that
/// completes in the background (deleting hooked chains waits for RCU grace periods, tens of
/// milliseconds that would otherwise sit on `netbox run`'s exit path).
pub fn remove_in_background(owner: &Owner) -> Result<(), FirewallError> {
    let mut commands = destroy_commands(&table_name(owner)?);
    for dead in owners()?
        .into_iter()
        .filter(|o| o != owner && matches!(o, Owner::Process { .. }) && !o.is_alive())
    {
        commands.extend(destroy_commands(&table_name(&dead)?));
    }
    nft::apply_detached(commands)
}

/// Owners that have rules in the current network namespace.
pub fn owners() -> Result<Vec<Owner>, FirewallError> {
    let mut seen = HashSet::new();
    Ok(nft::tables()?
        .into_iter()
        .filter(|t| FAMILIES.contains(&t.family.as_str()))
        .filter_map(|t| owner_of_table(&t.name))
        .filter(|o| seen.insert(o.clone()))
        .collect())
}

/// Removes the rules of every `netbox run` owner whose process is gone; how many owners.
pub fn reclaim_dead() -> Result<usize, FirewallError> {
    let dead: Vec<Owner> = owners()?
        .into_iter()
        .filter(|o| matches!(o, Owner::Process { .. }) && !o.is_alive())
        .collect();
    for owner in &dead {
        remove(owner)?;
    }
    Ok(dead.len())
}

/// Checks that the attachment's tables hold the chains and rule counts `spec` makes.
pub fn check(spec: &FirewallSpec) -> Result<(), String> {
    let table = table_name(&spec.owner).map_err(|e| e.to_string())?;
    for (family, want) in rules::expected(spec) {
        let have = nft::chain_rule_counts(&nft::Table {
            family: family.into(),
            name: table.clone(),
        })
        .map_err(|e| e.to_string())?;
        for (chain, count) in &want {
            match have.iter().find(|(c, _)| c == chain) {
                None => {
                    return Err(format!(
                        "chain {chain} of table {family} {table} is missing"
                    ))
                }
                Some((_, n)) if n != count => {
                    return Err(format!(
                        "chain {chain} of table {family} {table} has {n} rules, {count} expected"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_round_trip_to_owners() {
        for owner in [
            Owner::Cni {
                container_id: "f".repeat(64),
                ifname: "eth0".into(),
            },
            Owner::Cni {
                container_id: "a_b.c-d".into(),
                ifname: "e+t h".into(),
            },
            Owner::Process {
                pid: 42,
                start_time: 123456,
            },
        ] {
            let name = table_name(&owner).expect("name");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./-_".contains(&b)));
            assert_eq!(owner_of_table(&name), Some(owner));
        }
        assert_eq!(owner_of_table("filter"), None);
        assert_eq!(owner_of_table("netbox-garbage"), None);
    }

    #[test]
    fn port_mappings_parse() {
        let p = PortMapping::parse("8080:80").expect("parse");
        assert_eq!((p.host_ip, p.host_port, p.container_port), (None, 8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        let p = PortMapping::parse("127.0.0.1:53:5353/udp").expect("parse");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(p.protocol, Protocol::Udp);
        let p = PortMapping::parse("[::1]:8080:80/tcp").expect("parse");
        assert_eq!(p.host_ip, Some("::1".parse().expect("ip")));
        assert_eq!(p.to_string(), "[::1]:8080:80/tcp");
        for bad in ["80", "0:80", "8080:70000", "x:80:80", "80:80/sctp", ":80"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec() -> FirewallSpec {
        let mut s = FirewallSpec::new(
            Owner::Process {
                pid: 1,
                start_time: 2,
            },
            "br0",
            "veth0",
        );
        s.addresses = vec!["10.0.0.2/24".parse().expect("cidr")];
        s
    }

    #[test]
    fn only_the_chains_options_need_are_made() {
        let mut s = spec();
        assert!(s.is_empty());
        s.masquerade = true;
        assert_eq!(
            rules::expected(&s),
            vec![("inet", vec![("postrouting".to_string(), 1)])]
        );
        s.ports = vec![PortMapping::parse("8080:80").expect("parse")];
        s.spoof_check = true;
        s.mac = Some([2, 0, 0, 0, 0, 1]);
        let e = rules::expected(&s);
        let inet: Vec<&str> = e[0].1.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(inet, ["prerouting", "output", "postrouting"]);
        assert_eq!(e[1].0, "bridge");
        // ether saddr, ip saddr, arp saddr ip, arp saddr ether
        assert_eq!(e[1].1, vec![("prerouting".to_string(), 4)]);
    }

    #[test]
    fn bad_specs_are_refused_before_nft_runs() {
        let mut s = spec();
        s.addresses.clear();
        s.masquerade = true;
        assert!(apply(&s).is_err());
        let mut s = spec();
        s.ports = vec![PortMapping::parse("[::1]:80:80").expect("parse")];
        assert!(apply(&s).is_err());
        let mut s = spec();
        s.ports = vec![PortMapping::parse("80:80").expect("parse"); 2];
        assert!(apply(&s).is_err());
    }
}
