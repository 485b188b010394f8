//! Bridge networks: what a sandbox is attached to. A network is either netbox's built-in default
//! (works with no configuration at all) or read from a CNI conflist, so that `netbox run
//! --network NAME` and a runtime calling `netbox-cni` share one definition of NAME.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::model::ipam::IpamConfig;
use crate::sys::netlink::Route;
use crate::{Error, Result};

/// Name of the built-in network.
pub const DEFAULT_NETWORK: &str = "netbox";
/// Bridge of the built-in network.
pub const DEFAULT_BRIDGE: &str = "netbox0";
/// Subnet of the built-in network: a /24 that no common tool (docker 172.17/16, podman
/// 10.88/16, libvirt 192.168.122/24, lxc 10.0.3/24) claims by default.
pub const DEFAULT_SUBNET: &str = "10.117.0.0/24";
/// Where CNI conflists are looked up unless NETBOX_CNI_CONF_DIR says otherwise.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Plugin types whose configuration describes a bridge network netbox can run.
const BRIDGE_TYPES: [&str; 2] = ["netbox-cni", "bridge"];

/// A bridge network, ready to attach sandboxes to.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    /// The bridge carries the gateway address of each range set.
    pub is_gateway: bool,
    /// Sandboxes get a default route through the gateway.
    pub is_default_gateway: bool,
    pub ipam: IpamConfig,
    /// The conflist it came from (None for the built-in network).
    pub source: Option<PathBuf>,
}

impl NetworkSpec {
    /// The built-in network, optionally on another subnet.
    pub fn builtin(subnet: Option<IpNetwork>) -> Result<NetworkSpec> {
        let subnet = match subnet {
            Some(s) => s,
            None => DEFAULT_SUBNET
                .parse()
                .map_err(|e| Error::Config(format!("built-in subnet: {e}")))?,
        };
        Ok(NetworkSpec {
            name: DEFAULT_NETWORK.into(),
            bridge: DEFAULT_BRIDGE.into(),
            mtu: None,
            is_gateway: true,
            is_default_gateway: true,
            ipam: IpamConfig::single(subnet, None)?,
            source: None,
        })
    }

    /// The gateway addresses the bridge carries, with their subnet's prefix.
    pub fn gateway_addresses(&self) -> Vec<IpNetwork> {
        if !self.is_gateway {
            return vec![];
        }
        self.ipam
            .range_sets
            .iter()
            .filter_map(|set| set.first())
            .filter_map(|r| {
                r.gateway
                    .and_then(|gw| IpNetwork::new(gw, r.subnet.prefix()).ok())
            })
            .collect()
    }

    /// The subnets of the network (one per range, deduplicated).
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut out: Vec<IpNetwork> = Vec::new();
        for r in self.ipam.range_sets.iter().flatten() {
            if !out.contains(&r.subnet) {
                out.push(r.subnet);
            }
        }
        out
    }

    /// Refuses a network whose subnet overlaps a host route that is not the network's own
    /// (routes through its bridge are). Default routes overlap everything and are ignored.
    pub fn check_no_overlap(&self, routes: &[Route], bridge_index: Option<u32>) -> Result<()> {
        for subnet in self.subnets() {
            for route in routes {
                if route.dst.prefix() == 0 || (bridge_index.is_some() && route.oif == bridge_index)
                {
                    continue;
                }
                if overlaps(subnet, route.dst) {
                    let how = if self.source.is_none() {
                        "choose another subnet with --subnet CIDR (or NETBOX_SUBNET)".to_string()
                    } else {
                        format!("change the subnet in {:?}", self.source)
                    };
                    return Err(Error::Config(format!(
                        "network \"{}\": subnet {subnet} overlaps the host route to {}{}; {how}",
                        self.name,
                        route.dst,
                        route
                            .gateway
                            .map(|g| format!(" via {g}"))
                            .unwrap_or_default(),
                    )));
                }
            }
        }
        Ok(())
    }
}

/// True when two prefixes share an address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(_), IpNetwork::V4(_)) | (IpNetwork::V6(_), IpNetwork::V6(_)) => {
            a.contains(b.network()) || b.contains(a.network())
        }
        _ => false,
    }
}

/// The directories searched for conflists.
pub fn conf_dirs() -> Vec<PathBuf> {
    match std::env::var_os("NETBOX_CNI_CONF_DIR") {
        Some(dirs) => std::env::split_paths(&dirs).collect(),
        None => vec![PathBuf::from(DEFAULT_CNI_CONF_DIR)],
    }
}

/// Resolves a network name: the built-in one, or the conflist (or single-plugin conf) whose
/// `name` matches, in `dirs`, in file-name order as libcni does.
pub fn resolve(name: &str, dirs: &[PathBuf], subnet: Option<IpNetwork>) -> Result<NetworkSpec> {
    if name == DEFAULT_NETWORK {
        return NetworkSpec::builtin(subnet);
    }
    if subnet.is_some() {
        return Err(Error::Config(format!(
            "--subnet only applies to the built-in network \"{DEFAULT_NETWORK}\"; network \"{name}\" takes its subnet from its configuration"
        )));
    }
    if let Some((conf, file)) = conflists(dirs).find(|(conf, _)| conf_name(conf) == Some(name)) {
        return from_conflist(&conf, &file);
    }
    Err(Error::Config(format!(
        "unknown network \"{name}\": it is not the built-in \"{DEFAULT_NETWORK}\" and no conflist in {} names it",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// A network netbox knows of (`netbox network ls`).
#[derive(Debug)]
pub struct KnownNetwork {
    pub name: String,
    /// The conflist (None for the built-in network).
    pub source: Option<PathBuf>,
    /// The network, or why netbox cannot run it (not a bridge network, invalid).
    pub spec: Result<NetworkSpec>,
}

/// The built-in network, then every conflist in `dirs` (the first file of each name wins, as in
/// [`resolve`]).
pub fn list(dirs: &[PathBuf]) -> Vec<KnownNetwork> {
    let mut out = vec![KnownNetwork {
        name: DEFAULT_NETWORK.into(),
        source: None,
        spec: NetworkSpec::builtin(None),
    }];
    for (conf, file) in conflists(dirs) {
        let Some(name) = conf_name(&conf) else {
            continue;
        };
        if out.iter().any(|k| k.name == name) {
            continue;
        }
        out.push(KnownNetwork {
            name: name.into(),
            spec: from_conflist(&conf, &file),
            source: Some(file),
        });
    }
    out
}

/// Every readable JSON configuration in `dirs` (`*.conflist`, `*.conf`, `*.json`), directory by
/// directory, files in name order, as libcni reads them.
fn conflists(dirs: &[PathBuf]) -> impl Iterator<Item = (Value, PathBuf)> + '_ {
    dirs.iter().flat_map(|dir| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        files.into_iter().filter_map(|file| {
            let text = std::fs::read_to_string(&file).ok()?;
            let conf = serde_json::from_str::<Value>(&text).ok()?;
            Some((conf, file))
        })
    })
}

fn conf_name(conf: &Value) -> Option<&str> {
    conf.get("name").and_then(Value::as_str)
}

/// Reads the bridge plugin of a conflist (or a single-plugin conf).
pub fn from_conflist(conf: &Value, path: &Path) -> Result<NetworkSpec> {
    let name = conf
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plugins: Vec<&Value> = match conf.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![conf],
    };
    let plugin = plugins
        .into_iter()
        .find(|p| {
            p.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| BRIDGE_TYPES.contains(&t))
        })
        .ok_or_else(|| {
            Error::Config(format!(
                "network \"{name}\" in {path:?} has no bridge plugin (type netbox-cni or bridge)"
            ))
        })?;
    let ipam = plugin.get("ipam").ok_or_else(|| {
        Error::Config(format!(
            "network \"{name}\" in {path:?}: the bridge plugin has no ipam section"
        ))
    })?;
    let flag =
        |key: &str, default: bool| plugin.get(key).and_then(Value::as_bool).unwrap_or(default);
    Ok(NetworkSpec {
        name,
        bridge: plugin
            .get("bridge")
            .and_then(Value::as_str)
            .unwrap_or("cni0")
            .to_string(),
        mtu: plugin
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok()),
        is_gateway: flag("isGateway", false) || flag("isDefaultGateway", false),
        is_default_gateway: flag("isDefaultGateway", false),
        ipam: IpamConfig::from_json(ipam)?,
        source: Some(path.to_path_buf()),
    })
}

/// The first gateway of the address family of `ip`, if any.
pub fn gateway_for(spec: &NetworkSpec, ip: IpAddr) -> Option<IpAddr> {
    spec.ipam
        .range_sets
        .iter()
        .flatten()
        .filter(|r| r.subnet.contains(ip))
        .find_map(|r| r.gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().expect("cidr"),
            gateway: None,
            oif: Some(oif),
        }
    }

    #[test]
    fn builtin_network_refuses_a_subnet_overlapping_a_host_route() {
        let net = NetworkSpec::builtin(None).expect("builtin");
        let err = net
            .check_no_overlap(&[route("0.0.0.0/0", 2), route("10.0.0.0/8", 2)], None)
            .expect_err("overlap");
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.0/8") && msg.contains("--subnet"),
            "{msg}"
        );
    }

    #[test]
    fn routes_through_the_networks_own_bridge_do_not_count_as_overlap() {
        let net = NetworkSpec::builtin(None).expect("builtin");
        net.check_no_overlap(&[route("10.117.0.0/24", 7)], Some(7))
            .expect("own route");
        net.check_no_overlap(&[route("192.168.0.0/16", 2)], None)
            .expect("disjoint");
    }

    #[test]
    fn conflist_bridge_plugin_is_read_with_host_local_ipam() {
        let conf: Value = serde_json::json!({
            "cniVersion": "1.0.0", "name": "web",
            "plugins": [{"type": "bridge", "bridge": "br-web", "isGateway": true, "mtu": 1400,
                         "ipam": {"type": "host-local", "subnet": "10.42.0.0/24"}},
                        {"type": "portmap"}]
        });
        let net = from_conflist(&conf, Path::new("/x/web.conflist")).expect("parse");
        assert_eq!(net.bridge, "br-web");
        assert_eq!(net.mtu, Some(1400));
        assert!(net.is_gateway && !net.is_default_gateway);
        assert_eq!(
            net.subnets(),
            vec!["10.42.0.0/24".parse::<IpNetwork>().expect("cidr")]
        );
    }
}
