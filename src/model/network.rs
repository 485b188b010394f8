//! Bridge networks: what a sandbox is attached to. A network is either netbox's built-in default
//! (works with no configuration at all) or read from a CNI conflist, so that `netbox run
//! --network NAME` and a runtime calling `netbox-cni` share one definition of NAME.

use std::path::PathBuf;

use ipnetwork::IpNetwork;

use crate::model::conflist::{self, BridgeConf, ConflistFile, IpamSection};
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
    /// Another address in a gateway's subnet on the bridge is replaced instead of refused.
    pub force_address: bool,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// IPv6 addresses are added with duplicate address detection.
    pub enable_dad: bool,
    /// The network's own firewall (a conflist's `ipMasq`, `macspoofchk`, `isolate`,
    /// `isolateNetworks`, `blockHost`).
    pub firewall: NetworkFirewall,
}

/// The firewall a network asks for on every attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkFirewall {
    pub ip_masq: bool,
    /// Destinations `ipMasq` leaves alone (`noMasqueradeTo`).
    pub no_masquerade_to: Vec<IpNetwork>,
    pub mac_spoof_chk: bool,
    pub isolate: bool,
    pub isolate_networks: bool,
    pub block_host: bool,
}

impl NetworkFirewall {
    /// True when attachments get rules of the network's own.
    pub fn any(&self) -> bool {
        self.ip_masq
            || self.mac_spoof_chk
            || self.isolate
            || self.isolate_networks
            || self.block_host
    }
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
            force_address: false,
            hairpin_mode: false,
            promisc_mode: false,
            enable_dad: false,
            firewall: NetworkFirewall::default(),
        })
    }

    /// The network a bridge plugin's configuration describes, its addresses from `ipam`.
    pub fn from_bridge_conf(
        conf: &BridgeConf,
        ipam: IpamConfig,
        source: Option<PathBuf>,
    ) -> NetworkSpec {
        NetworkSpec {
            name: conf.name.clone(),
            bridge: conf.bridge.clone(),
            mtu: conf.link_mtu,
            is_gateway: conf.is_gateway,
            is_default_gateway: conf.is_default_gateway,
            ipam,
            source,
            force_address: conf.force_address,
            hairpin_mode: conf.hairpin_mode,
            promisc_mode: conf.promisc_mode,
            enable_dad: conf.enable_dad,
            firewall: NetworkFirewall {
                ip_masq: conf.ip_masq,
                no_masquerade_to: conf.no_masquerade_to.clone(),
                mac_spoof_chk: conf.mac_spoof_chk,
                isolate: conf.isolate,
                isolate_networks: conf.isolate_networks,
                block_host: conf.block_host,
            },
        }
    }

    /// The gateway addresses the bridge carries, with their subnet's prefix.
    pub fn gateway_addresses(&self) -> Vec<IpNetwork> {
        if !self.is_gateway {
            return vec![];
        }
        self.ipam.first_gateways()
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
    if let Some(file) = conflist::conflists(dirs).find(|f| f.name() == Some(name)) {
        return from_conflist(&file);
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
    for file in conflist::conflists(dirs) {
        let Some(name) = file.name() else {
            continue;
        };
        if out.iter().any(|k| k.name == name) {
            continue;
        }
        out.push(KnownNetwork {
            name: name.into(),
            spec: from_conflist(&file),
            source: Some(file.path.clone()),
        });
    }
    out
}

/// The network of a conflist's bridge plugin, read as netbox-cni reads it. Its addresses come
/// from netbox's store, with the keys of its IPAM section (netbox's, or host-local's when the
/// conflist delegates to host-local or another plugin with the same keys).
pub fn from_conflist(file: &ConflistFile) -> Result<NetworkSpec> {
    let path = &file.path;
    let conf =
        BridgeConf::from_conflist(&file.json, path).map_err(|e| Error::Config(e.to_string()))?;
    let ipam = match conf.ipam() {
        IpamSection::Builtin(cfg) => cfg.clone(),
        IpamSection::Delegated { section, .. } => IpamConfig::from_json(section)?,
        IpamSection::None => {
            return Err(Error::Config(format!(
                "network \"{}\" in {path:?}: the bridge plugin has no ipam section",
                conf.name
            )))
        }
    };
    Ok(NetworkSpec::from_bridge_conf(
        &conf,
        ipam,
        Some(path.clone()),
    ))
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
        let conf: serde_json::Value = serde_json::json!({
            "cniVersion": "1.0.0", "name": "web",
            "plugins": [{"type": "bridge", "bridge": "br-web", "isGateway": true, "mtu": 1400,
                         "ipam": {"type": "host-local", "subnet": "10.42.0.0/24"}},
                        {"type": "portmap"}]
        });
        let net = from_conflist(&ConflistFile {
            json: conf,
            path: "/x/web.conflist".into(),
        })
        .expect("parse");
        assert_eq!(net.bridge, "br-web");
        assert_eq!(net.mtu, Some(1400));
        assert!(net.is_gateway && !net.is_default_gateway);
        assert_eq!(
            net.subnets(),
            vec!["10.42.0.0/24".parse::<IpNetwork>().expect("cidr")]
        );
    }
}
