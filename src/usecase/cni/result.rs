//! The CNI result, held once in a version-neutral form and written in whichever version the
//! configuration asks for: 0.1.0/0.2.0 (`ip4`/`ip6`), 0.3.x/0.4.0 (`ips[].version`), 1.0.0
//! (no `version`), 1.1.0 (interface `mtu`, `socketPath`, `pciID`; route `mtu`, `advmss`,
//! `priority`, `table`, `scope`). Any of these forms is read back (prevResult, delegated IPAM).

use crate::model::json::opt_str;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use super::{code, CniError, Version};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The netns path, for interfaces inside the container.
    pub sandbox: Option<String>,
    pub socket_path: Option<String>,
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its subnet's prefix ("10.1.0.5/24").
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl RouteEntry {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> RouteEntry {
        RouteEntry {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            m.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }

    /// Reads a `dns` object (of a config or a result). Unknown keys are ignored.
    pub fn from_json(v: Option<&Value>, what: &str) -> Result<Dns, CniError> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Dns::default());
        };
        let obj = v
            .as_object()
            .ok_or_else(|| decode(format!("{what}: must be an object")))?;
        let list = |key: &str| -> Result<Vec<String>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| decode(format!("{what}.{key}: must hold strings")))
                    })
                    .collect(),
                Some(_) => Err(decode(format!("{what}.{key}: must be a list"))),
            }
        };
        Ok(Dns {
            nameservers: list("nameservers")?,
            domain: match obj.get("domain") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(decode(format!("{what}.domain: must be a string"))),
            },
            search: list("search")?,
            options: list("options")?,
        })
    }

    /// Reads a resolv.conf (host-local's `resolvConf`): nameserver, domain, search, options.
    pub fn from_resolv_conf(text: &str) -> Dns {
        let mut dns = Dns::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
                Some("domain") => dns.domain = words.next().map(str::to_string),
                Some("search") => dns.search = words.map(str::to_string).collect(),
                Some("options") => dns.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        dns
    }
}

/// A result in the version-neutral form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteEntry>,
    pub dns: Dns,
}

fn decode(msg: String) -> CniError {
    CniError::new(code::DECODE_FAILURE, msg)
}

impl CniResult {
    /// The result as `version` writes it.
    pub fn to_json(&self, version: Version) -> Value {
        if version < Version::V0_3_0 {
            return self.to_legacy_json(version);
        }
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    m.insert("mac".into(), json!(mac));
                }
                if let Some(sandbox) = &i.sandbox {
                    m.insert("sandbox".into(), json!(sandbox));
                }
                if version >= Version::V1_1_0 {
                    if let Some(mtu) = i.mtu {
                        m.insert("mtu".into(), json!(mtu));
                    }
                    if let Some(p) = &i.socket_path {
                        m.insert("socketPath".into(), json!(p));
                    }
                    if let Some(p) = &i.pci_id {
                        m.insert("pciID".into(), json!(p));
                    }
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version < Version::V1_0_0 {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), json!(family));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| route_json(r, version >= Version::V1_1_0))
            .collect();
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            m.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            m.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            m.insert("routes".into(), Value::Array(routes));
        }
        m.insert("dns".into(), self.dns.to_json());
        Value::Object(m)
    }

    /// 0.1.0 and 0.2.0: one `ip4` and one `ip6` block, each with the routes of its family.
    fn to_legacy_json(&self, version: Version) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version.as_str()));
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|ip| ip.address.is_ipv4() == v4) else {
                continue;
            };
            let mut block = Map::new();
            block.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                block.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == v4)
                .map(|r| route_json(r, false))
                .collect();
            if !routes.is_empty() {
                block.insert("routes".into(), Value::Array(routes));
            }
            m.insert(key.into(), Value::Object(block));
        }
        m.insert("dns".into(), self.dns.to_json());
        Value::Object(m)
    }

    /// Reads a result of any supported version (a prevResult, an IPAM plugin's answer).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| decode("result: must be an object".into()))?;
        let mut out = CniResult {
            dns: Dns::from_json(obj.get("dns"), "result.dns")?,
            ..CniResult::default()
        };
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            for key in ["ip4", "ip6"] {
                let Some(block) = obj.get(key).filter(|b| !b.is_null()) else {
                    continue;
                };
                let address = cidr_field(block, "ip", key)?
                    .ok_or_else(|| decode(format!("result.{key}.ip: missing")))?;
                out.ips.push(IpConfig {
                    address,
                    gateway: ip_field(block, "gateway", key)?,
                    interface: None,
                });
                out.routes.extend(routes_from(block.get("routes"), key)?);
            }
            return Ok(out);
        }
        if let Some(list) = obj.get("interfaces").filter(|l| !l.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| decode("result.interfaces: must be a list".into()))?;
            for i in list {
                let text = |key: &str| -> Result<Option<String>, CniError> {
                    match i.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(_) => Err(decode(format!(
                            "result.interfaces[].{key}: must be a string"
                        ))),
                    }
                };
                out.interfaces.push(Interface {
                    name: text("name")?.unwrap_or_default(),
                    mac: text("mac")?,
                    mtu: u32_field(i, "mtu", "interfaces[]")?,
                    sandbox: text("sandbox")?,
                    socket_path: text("socketPath")?,
                    pci_id: text("pciID")?,
                });
            }
        }
        if let Some(list) = obj.get("ips").filter(|l| !l.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| decode("result.ips: must be a list".into()))?;
            for ip in list {
                let address = cidr_field(ip, "address", "ips[]")?
                    .ok_or_else(|| decode("result.ips[].address: missing".into()))?;
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .and_then(|i| usize::try_from(i).ok())
                            .filter(|i| *i < out.interfaces.len())
                            .ok_or_else(|| {
                                decode(
                                    "result.ips[].interface: not an index into interfaces".into(),
                                )
                            })?,
                    ),
                };
                out.ips.push(IpConfig {
                    address,
                    gateway: ip_field(ip, "gateway", "ips[]")?,
                    interface,
                });
            }
        }
        out.routes = routes_from(obj.get("routes"), "result")?;
        Ok(out)
    }
}

fn route_json(r: &RouteEntry, extended: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    if extended {
        for (key, v) in [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope),
        ] {
            if let Some(v) = v {
                m.insert(key.into(), json!(v));
            }
        }
    }
    Value::Object(m)
}

fn routes_from(v: Option<&Value>, what: &str) -> Result<Vec<RouteEntry>, CniError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    let list = v
        .as_array()
        .ok_or_else(|| decode(format!("{what}.routes: must be a list")))?;
    list.iter()
        .map(|r| {
            let dst = cidr_field(r, "dst", "routes[]")?
                .ok_or_else(|| decode(format!("{what}.routes[].dst: missing")))?;
            Ok(RouteEntry {
                dst,
                gw: ip_field(r, "gw", "routes[]")?,
                mtu: u32_field(r, "mtu", "routes[]")?,
                advmss: u32_field(r, "advmss", "routes[]")?,
                priority: u32_field(r, "priority", "routes[]")?,
                table: u32_field(r, "table", "routes[]")?,
                scope: u32_field(r, "scope", "routes[]")?,
            })
        })
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<Option<&'a str>, CniError> {
    opt_str(v.get(key)).map_err(|_| decode(format!("{what}.{key}: must be a string")))
}

fn cidr_field(v: &Value, key: &str, what: &str) -> Result<Option<IpNetwork>, CniError> {
    str_field(v, key, what)?
        .map(|s| {
            s.parse::<IpNetwork>()
                .map_err(|e| decode(format!("{what}.{key}: {s:?} is not a CIDR: {e}")))
        })
        .transpose()
}

fn ip_field(v: &Value, key: &str, what: &str) -> Result<Option<IpAddr>, CniError> {
    str_field(v, key, what)?
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| decode(format!("{what}.{key}: {s:?} is not an IP address")))
        })
        .transpose()
}

fn u32_field(v: &Value, key: &str, what: &str) -> Result<Option<u32>, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| decode(format!("{what}.{key}: must be a 32-bit unsigned number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/x".into()),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().expect("cidr"),
                gateway: Some("10.1.0.1".parse().expect("ip")),
                interface: Some(1),
            }],
            routes: vec![RouteEntry::new(
                "0.0.0.0/0".parse().expect("cidr"),
                Some("10.1.0.1".parse().expect("ip")),
            )],
            dns: Dns::default(),
        }
    }

    #[test]
    fn every_version_round_trips_what_it_can_express() {
        let r = sample();
        for v in Version::ALL {
            let back = CniResult::from_json(&r.to_json(v)).expect("reads back");
            assert_eq!(back.ips[0].address, r.ips[0].address, "{v:?}");
            assert_eq!(back.routes, r.routes, "{v:?}");
            if v >= Version::V0_3_0 {
                assert_eq!(back.ips, r.ips, "{v:?}");
            }
            if v >= Version::V1_1_0 {
                assert_eq!(back, r, "{v:?}");
            }
        }
    }

    #[test]
    fn version_field_only_below_1_0_0_and_mtu_only_from_1_1_0() {
        let r = sample();
        let v04 = r.to_json(Version::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v10 = r.to_json(Version::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][0].get("mtu").is_none());
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        let v02 = r.to_json(Version::V0_2_0);
        assert_eq!(v02["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(v02["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
    }
}
