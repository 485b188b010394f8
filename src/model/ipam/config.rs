//! IPAM configuration with host-local's keys, so existing conflists work unchanged: `ranges`
//! (range sets of `{subnet, rangeStart, rangeEnd, gateway}`), the legacy single-range keys,
//! `routes`, `dataDir` and `resolvConf`. Everything is validated here, before any lease is
//! touched.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::range::Range;
use super::IpamError;
use crate::model::json::{opt_str, WrongType};

/// Ranges of one address family from which a sandbox gets one address (dual stack: one v4
/// set and one v6 set).
pub type RangeSet = Vec<Range>;

/// Longest network name accepted as a directory name.
const MAX_NAME: usize = 200;

/// An extra route for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// A validated IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<RouteSpec>,
    pub data_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
}

/// Where leases live unless a configuration's `dataDir` says otherwise:
/// `$NETBOX_DATA_DIR/ipam`, or `/var/lib/netbox/ipam`.
pub fn default_data_dir() -> PathBuf {
    // In a user's network host: its private state.
    if let Some(dir) = crate::sys::userns::inside_dir("lib") {
        return dir.join("ipam");
    }
    match std::env::var_os("NETBOX_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("ipam"),
        _ => PathBuf::from("/var/lib/netbox/ipam"),
    }
}

impl IpamConfig {
    /// The gateway of the first range of each set, with its subnet's prefix: what a gateway
    /// bridge carries.
    pub fn first_gateways(&self) -> Vec<IpNetwork> {
        self.range_sets
            .iter()
            .filter_map(|set| set.first())
            .filter_map(|r| {
                r.gateway
                    .and_then(|gw| IpNetwork::new(gw, r.subnet.prefix()).ok())
            })
            .collect()
    }

    /// The gateway of the first range whose subnet holds `ip`.
    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.range_sets
            .iter()
            .flatten()
            .filter(|r| r.subnet.contains(ip))
            .find_map(|r| r.gateway)
    }

    /// The lease store's directory: `dataDir`, or [`default_data_dir`].
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// One range covering `subnet`, as the built-in network uses.
    pub fn single(subnet: IpNetwork, gateway: Option<IpAddr>) -> Result<IpamConfig, IpamError> {
        IpamConfig::new(vec![vec![Range::new(subnet, None, None, gateway)?]], vec![])
    }

    /// Validates range sets: non-empty, one family per set, no overlap anywhere.
    pub fn new(range_sets: Vec<RangeSet>, routes: Vec<RouteSpec>) -> Result<IpamConfig, IpamError> {
        if range_sets.is_empty() || range_sets.iter().any(Vec::is_empty) {
            return Err(IpamError::NoRanges);
        }
        for set in &range_sets {
            let v4 = set[0].subnet.is_ipv4();
            if let Some(other) = set.iter().find(|r| r.subnet.is_ipv4() != v4) {
                return Err(IpamError::MixedFamilies {
                    range: other.describe(),
                });
            }
        }
        let all: Vec<&Range> = range_sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.overlaps(b) {
                    return Err(IpamError::Overlap {
                        a: a.describe(),
                        b: b.describe(),
                    });
                }
            }
        }
        Ok(IpamConfig {
            range_sets,
            routes,
            data_dir: None,
            resolv_conf: None,
        })
    }

    /// Reads the `ipam` object of a CNI plugin configuration.
    pub fn from_json(v: &Value) -> Result<IpamConfig, IpamError> {
        IpamConfig::from_json_with(v, vec![], true)
    }

    /// Reads the `ipam` object with the range sets a runtime passed (`runtimeConfig.ipRanges`,
    /// see [`range_sets_from_json`]) in front of its own, as host-local orders them: the
    /// runtime's sets first, then the legacy single range, then `ranges`; all of them are
    /// checked together (an overlap between the runtime's and the file's is refused).
    /// `ranges_required` false accepts a configuration without any range: DEL, CHECK and GC
    /// find leases by owner and must work when the runtime no longer passes its ranges.
    pub fn from_json_with(
        v: &Value,
        runtime_sets: Vec<RangeSet>,
        ranges_required: bool,
    ) -> Result<IpamConfig, IpamError> {
        if !v.is_object() {
            return Err(IpamError::BadField {
                field: "ipam",
                reason: "must be an object".into(),
            });
        }
        // As in host-local, the legacy single-range keys, when present, form the first range
        // set and `ranges` follow.
        let mut range_sets = runtime_sets;
        if !matches!(v.get("subnet"), None | Some(Value::Null)) {
            range_sets.push(vec![range_from_json(v)?]);
        }
        range_sets.extend(range_sets_from_json(v.get("ranges"), "ranges")?);
        let routes = match v.get("routes") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(list)) => list
                .iter()
                .map(|r| {
                    let dst = cidr(r.get("dst"), "routes[].dst")?.ok_or(IpamError::BadField {
                        field: "routes[].dst",
                        reason: "missing".into(),
                    })?;
                    let gw = addr(r.get("gw"), "routes[].gw")?;
                    if let Some(gw) = gw.filter(|gw| gw.is_ipv4() != dst.is_ipv4()) {
                        return Err(IpamError::BadField {
                            field: "routes[].gw",
                            reason: format!("{gw} is not of the family of {dst}"),
                        });
                    }
                    Ok(RouteSpec { dst, gw })
                })
                .collect::<Result<_, IpamError>>()?,
            Some(_) => {
                return Err(IpamError::BadField {
                    field: "routes",
                    reason: "must be a list".into(),
                })
            }
        };
        let mut config = if range_sets.is_empty() && !ranges_required {
            IpamConfig {
                range_sets,
                routes,
                data_dir: None,
                resolv_conf: None,
            }
        } else {
            IpamConfig::new(range_sets, routes)?
        };
        config.data_dir = string(v.get("dataDir"), "dataDir")?.map(PathBuf::from);
        config.resolv_conf = string(v.get("resolvConf"), "resolvConf")?.map(PathBuf::from);
        Ok(config)
    }

    /// The range set holding `ip`, if any.
    pub fn set_of(&self, ip: IpAddr) -> Option<usize> {
        self.range_sets
            .iter()
            .position(|set| set.iter().any(|r| r.contains(ip)))
    }

    /// Every subnet, for messages.
    pub fn describe(&self) -> String {
        self.range_sets
            .iter()
            .flatten()
            .map(Range::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A list of range sets, each a list of `{subnet, rangeStart, rangeEnd, gateway}`: the shape of
/// `ipam.ranges` and of `runtimeConfig.ipRanges` (the `ipRanges` capability). Absent or null is
/// no set; each range is checked alone here, the sets together by [`IpamConfig::new`].
pub fn range_sets_from_json(
    v: Option<&Value>,
    field: &'static str,
) -> Result<Vec<RangeSet>, IpamError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(sets)) => sets
            .iter()
            .map(|set| match set {
                Value::Array(ranges) => ranges.iter().map(range_from_json).collect(),
                _ => Err(IpamError::BadField {
                    field,
                    reason: "each range set must be a list of ranges".into(),
                }),
            })
            .collect(),
        Some(_) => Err(IpamError::BadField {
            field,
            reason: "must be a list of range sets".into(),
        }),
    }
}

fn range_from_json(v: &Value) -> Result<Range, IpamError> {
    if !v.is_object() {
        return Err(IpamError::BadField {
            field: "range",
            reason: "must be an object with a subnet".into(),
        });
    }
    let subnet = cidr(v.get("subnet"), "subnet")?.ok_or(IpamError::BadField {
        field: "subnet",
        reason: "missing".into(),
    })?;
    // The host bits of a subnet written as "10.1.2.3/24" are dropped (Range::new normalizes):
    // the conflists that older host-local versions accepted keep working.
    Range::new(
        subnet,
        addr(v.get("rangeStart"), "rangeStart")?,
        addr(v.get("rangeEnd"), "rangeEnd")?,
        addr(v.get("gateway"), "gateway")?,
    )
}

fn string(v: Option<&Value>, field: &'static str) -> Result<Option<String>, IpamError> {
    match opt_str(v) {
        Ok(s) => Ok(s.filter(|s| !s.is_empty()).map(str::to_string)),
        Err(WrongType(other)) => Err(IpamError::BadField {
            field,
            reason: format!("expected a string, got {other}"),
        }),
    }
}

fn cidr(v: Option<&Value>, field: &'static str) -> Result<Option<IpNetwork>, IpamError> {
    string(v, field)?
        .map(|s| {
            s.parse::<IpNetwork>().map_err(|e| IpamError::BadCidr {
                value: s.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

fn addr(v: Option<&Value>, field: &'static str) -> Result<Option<IpAddr>, IpamError> {
    string(v, field)?
        .map(|s| {
            s.parse::<IpAddr>().map_err(|_| IpamError::BadAddress {
                field,
                value: s.clone(),
            })
        })
        .transpose()
}

/// Refuses network names that are not plain, bounded file names.
pub fn validate_network_name(name: &str) -> Result<(), IpamError> {
    let bad = |reason| {
        Err(IpamError::BadName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unsafe_network_names_are_refused() {
        for name in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a\0b",
            "x y",
            &"n".repeat(201),
        ] {
            assert!(validate_network_name(name).is_err(), "{name:?}");
        }
        for name in ["netbox", "my-net_1.v2", &"n".repeat(200)] {
            validate_network_name(name).expect(name);
        }
    }
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        IpamConfig::from_json(&v)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn legacy_keys_and_ranges_are_both_read() {
        let legacy = IpamConfig::from_json(&json!({"type": "host-local", "subnet": "10.1.2.3/24",
            "rangeStart": "10.1.2.100", "rangeEnd": "10.1.2.200", "gateway": "10.1.2.254",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.1"}],
            "dataDir": "/tmp/x"}))
        .expect("legacy");
        let r = &legacy.range_sets[0][0];
        assert_eq!(r.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(r.range_start.to_string(), "10.1.2.100");
        assert_eq!(
            r.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.1.2.254")
        );
        assert_eq!(legacy.routes.len(), 2);
        assert_eq!(legacy.data_dir, Some(PathBuf::from("/tmp/x")));
        let dual = IpamConfig::from_json(&json!({"ranges": [
            [{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}],
            [{"subnet": "fd00:1::/64"}]]}))
        .expect("dual");
        assert_eq!(dual.range_sets.len(), 2);
        assert_eq!(
            dual.range_sets[1][0]
                .gateway
                .map(|g| g.to_string())
                .as_deref(),
            Some("fd00:1::1")
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_offending_value() {
        assert!(err(json!({"subnet": "10.1.2.0/33"})).contains("10.1.2.0/33"));
        assert!(err(json!({"subnet": "banana"})).contains("banana"));
        assert!(
            err(json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"})).contains("10.1.3.1")
        );
        let e =
            err(json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.3"}));
        assert!(e.contains("10.1.2.9") && e.contains("10.1.2.3"), "{e}");
        assert!(err(json!({"subnet": "10.1.2.0/24", "gateway": "10.9.9.9"})).contains("10.9.9.9"));
        assert!(err(json!({"subnet": "10.1.2.0/24", "gateway": "nope"})).contains("nope"));
        assert!(
            err(json!({"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "10.1.2.0/24"}]]}))
                .contains("overlap")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}))
                .contains("family")
        );
        assert!(err(json!({"type": "host-local"})).contains("no range"));
        assert!(err(json!({"ranges": [[]]})).contains("no range"));
        assert!(err(json!({"ranges": "10.0.0.0/8"})).contains("ranges"));
        assert!(err(json!("host-local")).contains("ipam"));
    }

    #[test]
    fn defaults_follow_host_local() {
        let v4 = IpamConfig::single("10.5.0.0/24".parse().expect("cidr"), None).expect("v4");
        let r = &v4.range_sets[0][0];
        assert_eq!(
            (r.range_start.to_string(), r.range_end.to_string()),
            ("10.5.0.1".into(), "10.5.0.254".into())
        );
        assert_eq!(
            r.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.5.0.1")
        );
        let v6 = IpamConfig::from_json(&json!({"subnet": "fd00:5::/120"})).expect("v6");
        let r = &v6.range_sets[0][0];
        assert_eq!(r.range_end.to_string(), "fd00:5::ff");
        let gw = IpamConfig::single(
            "10.5.0.0/24".parse().expect("cidr"),
            Some("10.5.0.9".parse().expect("ip")),
        )
        .expect("gateway");
        assert_eq!(
            gw.range_sets[0][0]
                .gateway
                .map(|g| g.to_string())
                .as_deref(),
            Some("10.5.0.9")
        );
    }

    #[test]
    fn legacy_keys_come_first_when_ranges_are_also_given() {
        let both = IpamConfig::from_json(&json!({"subnet": "10.1.0.0/24",
            "ranges": [[{"subnet": "fd00:1::/64"}]]}))
        .expect("both");
        assert_eq!(both.range_sets.len(), 2);
        assert_eq!(both.range_sets[0][0].subnet.to_string(), "10.1.0.0/24");
        assert!(
            err(json!({"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.1.0.128/25"}]]}))
                .contains("overlap")
        );
    }

    #[test]
    fn subnets_too_small_and_mismatched_route_gateways_are_refused() {
        for small in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127"] {
            let e = err(json!({"subnet": small}));
            assert!(e.contains("too small"), "{e}");
        }
        let e = err(
            json!({"subnet": "10.1.2.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}),
        );
        assert!(e.contains("fd00::1"), "{e}");
        let e = err(json!({"subnet": "10.1.2.0/24", "routes": [{"dst": "300.0.0.0/8"}]}));
        assert!(e.contains("300.0.0.0/8"), "{e}");
        let e = err(
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"},
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20", "rangeEnd": "10.1.0.30"}]]}),
        );
        assert!(e.contains("overlap") && e.contains("10.1.0.20"), "{e}");
    }
}
