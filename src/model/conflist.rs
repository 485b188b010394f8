//! The bridge plugin's configuration (`netbox-cni` and the reference `bridge` take the same
//! keys): one serde-derived type with its validation, read by netbox-cni from its stdin and by
//! `netbox run --network`, `netbox ns add --network` and `netbox network ls/inspect` from a
//! conflist, so that a conflist means the same network, and is refused with the same message,
//! whichever front end reads it.
//!
//! A key that does not decode (a string where a flag belongs) is a [`ConfError::Decode`]; a
//! configuration that decodes but cannot be served (VLANs, a bridge name the kernel refuses)
//! is a [`ConfError::Invalid`]. Keys of the CNI invocation itself (`cniVersion`,
//! `runtimeConfig`, `prevResult`, `args`) are the plugin's business (`usecase::cni::conf`).

use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use thiserror::Error;

use crate::model::ipam::config::validate_network_name;
use crate::model::ipam::{IpamConfig, RangeSet};
use crate::model::json::{opt_str, opt_value};
use crate::sys::netlink::validate_ifname;

/// IPAM types served by netbox's own store; any other type is an IPAM plugin.
pub const BUILTIN_IPAM_TYPES: [&str; 2] = ["netbox", "netbox-cni"];
/// Plugin types whose configuration describes a bridge network netbox can run.
pub const BRIDGE_TYPES: [&str; 2] = ["netbox-cni", "bridge"];
/// The bridge when the configuration names none (as the reference plugin).
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfError {
    /// It does not decode (CNI code 6).
    #[error("{0}")]
    Decode(String),
    /// It decodes but cannot be served (CNI code 7).
    #[error("{0}")]
    Invalid(String),
}

/// Where a network's addresses come from.
#[derive(Debug, Clone, PartialEq)]
pub enum IpamSection {
    /// netbox's store (`type` netbox or netbox-cni).
    Builtin(IpamConfig),
    /// An IPAM plugin binary (`type` host-local, dhcp, ...), with its section as written.
    Delegated { plugin: String, section: Value },
    /// No `ipam` (or an empty type): layer 2 only, as the reference bridge allows.
    None,
}

/// The bridge plugin's keys, validated. Unknown keys are ignored, as the reference does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default, deserialize_with = "name")]
    pub name: String,
    #[serde(default, rename = "type", deserialize_with = "plugin_type")]
    pub plugin_type: String,
    #[serde(default = "default_bridge", deserialize_with = "bridge")]
    pub bridge: String,
    /// The bridge carries the gateway address of each range set (implied by isDefaultGateway).
    #[serde(default, deserialize_with = "is_gateway")]
    pub is_gateway: bool,
    /// Sandboxes get a default route through the gateway.
    #[serde(default, deserialize_with = "is_default_gateway")]
    pub is_default_gateway: bool,
    /// Another address on the bridge in a gateway's subnet is replaced instead of refused.
    #[serde(default, deserialize_with = "force_address")]
    pub force_address: bool,
    #[serde(default, deserialize_with = "hairpin_mode")]
    pub hairpin_mode: bool,
    #[serde(default, deserialize_with = "promisc_mode")]
    pub promisc_mode: bool,
    /// IPv6 addresses are added with duplicate address detection.
    #[serde(default, rename = "enabledad", deserialize_with = "enable_dad")]
    pub enable_dad: bool,
    /// Traffic leaving the network is masqueraded.
    #[serde(default, deserialize_with = "ip_masq")]
    pub ip_masq: bool,
    /// Frames and packets from the sandbox carry its own MAC and addresses.
    #[serde(default, rename = "macspoofchk", deserialize_with = "mac_spoof_chk")]
    pub mac_spoof_chk: bool,
    /// netbox's `isolate`: only the gateway is reachable on the bridge.
    #[serde(default, deserialize_with = "isolate")]
    pub isolate: bool,
    /// netbox's `isolateNetworks`: no new connections from other networks except to published
    /// ports.
    #[serde(default, deserialize_with = "isolate_networks")]
    pub isolate_networks: bool,
    /// netbox's `blockHost`: the sandbox cannot reach the host's own addresses.
    #[serde(default, deserialize_with = "block_host")]
    pub block_host: bool,
    /// netbox's `noMasqueradeTo`: with `ipMasq`, traffic to these CIDRs (a cluster's pod and
    /// node CIDRs) keeps the sandbox's address.
    #[serde(default, deserialize_with = "no_masquerade_to")]
    pub no_masquerade_to: Vec<IpNetwork>,
    #[serde(default, deserialize_with = "vlan")]
    vlan: Option<i64>,
    #[serde(default, deserialize_with = "any")]
    mtu: Option<Value>,
    #[serde(default, deserialize_with = "any")]
    ipam: Option<Value>,
    /// The MTU of the bridge and veths (None: the kernel's default).
    #[serde(skip)]
    pub link_mtu: Option<u32>,
    #[serde(skip)]
    pub ipam_section: Option<IpamSection>,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.into()
}

fn any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(opt_value(Option::<Value>::deserialize(d)?.as_ref()).cloned())
}

macro_rules! flags {
    ($($f:ident = $key:literal),* $(,)?) => {$(
        fn $f<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
            match any(d)? {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(b),
                Some(_) => Err(D::Error::custom(concat!($key, ": must be true or false"))),
            }
        }
    )*};
}

flags!(
    is_gateway = "isGateway",
    is_default_gateway = "isDefaultGateway",
    force_address = "forceAddress",
    hairpin_mode = "hairpinMode",
    promisc_mode = "promiscMode",
    enable_dad = "enabledad",
    ip_masq = "ipMasq",
    mac_spoof_chk = "macspoofchk",
    isolate = "isolate",
    isolate_networks = "isolateNetworks",
    block_host = "blockHost",
);

macro_rules! strings {
    ($($f:ident = $key:literal, $default:expr);* $(;)?) => {$(
        fn $f<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
            match any(d)? {
                None => Ok($default),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(D::Error::custom(concat!($key, ": must be a string"))),
            }
        }
    )*};
}

strings!(
    name = "name", String::new();
    plugin_type = "type", String::new();
    bridge = "bridge", default_bridge();
);

fn no_masquerade_to<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
    const WHAT: &str = "noMasqueradeTo: must be a list of CIDRs";
    let Some(v) = any(d)? else {
        return Ok(vec![]);
    };
    let list = v.as_array().ok_or_else(|| D::Error::custom(WHAT))?;
    list.iter()
        .map(|c| c.as_str().ok_or_else(|| D::Error::custom(WHAT)))
        .collect::<Result<Vec<&str>, _>>()?
        .into_iter()
        .map(|s| parse_cidr_list_entry(s).map_err(D::Error::custom))
        .collect()
}

/// A CIDR of `noMasqueradeTo`: written with its prefix, without host bits.
fn parse_cidr_list_entry(s: &str) -> Result<IpNetwork, String> {
    let cidr: IpNetwork = s
        .parse()
        .map_err(|e| format!("noMasqueradeTo: {s:?} is not a CIDR: {e}"))?;
    if !s.contains('/') {
        return Err(format!("noMasqueradeTo: {s:?} is not a CIDR (no /prefix)"));
    }
    if cidr.ip() != cidr.network() {
        return Err(format!(
            "noMasqueradeTo: {s}: host bits are set (did you mean {}/{}?)",
            cidr.network(),
            cidr.prefix()
        ));
    }
    Ok(cidr)
}

fn vlan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match any(d)? {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom("vlan: must be a number")),
    }
}

impl BridgeConf {
    /// Reads and validates the configuration of one plugin (what the plugin gets on stdin).
    pub fn from_json(v: &Value) -> Result<BridgeConf, ConfError> {
        BridgeConf::decode(v)?.with_ipam()
    }

    /// [`BridgeConf::from_json`] up to the `ipam` section, which [`BridgeConf::with_ipam`]
    /// reads: the plugin checks what the runtime passes in between, as it always has.
    pub fn decode(v: &Value) -> Result<BridgeConf, ConfError> {
        if !v.is_object() {
            return Err(ConfError::Decode(
                "network configuration must be a JSON object".into(),
            ));
        }
        let mut conf = BridgeConf::deserialize(v).map_err(|e| ConfError::Decode(e.to_string()))?;
        conf.validate()?;
        Ok(conf)
    }

    /// Reads and checks the `ipam` section.
    pub fn with_ipam(self) -> Result<BridgeConf, ConfError> {
        self.with_runtime_ipam(vec![], true)
    }

    /// Reads and checks the `ipam` section with the range sets the runtime passed
    /// (`runtimeConfig.ipRanges`, for the built-in IPAM only: a delegated plugin reads them
    /// from its own stdin). `ranges_required` false lets DEL, CHECK and GC through without
    /// any range (they work by owner).
    pub fn with_runtime_ipam(
        mut self,
        runtime_sets: Vec<RangeSet>,
        ranges_required: bool,
    ) -> Result<BridgeConf, ConfError> {
        self.ipam_section = Some(ipam_section(
            self.ipam.as_ref(),
            runtime_sets,
            ranges_required,
        )?);
        Ok(self)
    }

    /// The bridge plugin of a conflist (or a single-plugin conf) read from `path`, as libcni
    /// hands it to the plugin: with the list's `name`.
    pub fn from_conflist(conf: &Value, path: &Path) -> Result<BridgeConf, ConfError> {
        let name = conf.get("name").and_then(Value::as_str).unwrap_or_default();
        let plugins: Vec<&Value> = match conf.get("plugins").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![conf],
        };
        let mut plugin = plugins
            .into_iter()
            .find(|p| {
                p.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| BRIDGE_TYPES.contains(&t))
            })
            .cloned()
            .ok_or_else(|| {
                ConfError::Invalid(format!(
                    "network \"{name}\" in {path:?} has no bridge plugin (type netbox-cni or bridge)"
                ))
            })?;
        if let (Some(obj), Some(list)) = (plugin.as_object_mut(), conf.as_object()) {
            for key in ["name", "cniVersion"] {
                if let Some(v) = list.get(key) {
                    obj.insert(key.into(), v.clone());
                }
            }
        }
        BridgeConf::from_json(&plugin)
    }

    fn validate(&mut self) -> Result<(), ConfError> {
        let invalid = |msg: String| Err(ConfError::Invalid(msg));
        if self.name.is_empty() {
            return invalid("name: missing".into());
        }
        // The name is a directory of the lease store: never a path.
        if let Err(e) = validate_network_name(&self.name) {
            return invalid(format!("name: {e}"));
        }
        if let Err(e) = validate_ifname(&self.bridge) {
            return invalid(format!("bridge: {e}"));
        }
        if self.hairpin_mode && self.promisc_mode {
            return invalid("hairpinMode and promiscMode cannot both be true".into());
        }
        if let Some(id) = self.vlan.filter(|id| *id != 0) {
            return invalid(format!(
                "vlan: {id} is not supported (bridge VLAN filtering is not implemented)"
            ));
        }
        self.link_mtu = match &self.mtu {
            None => None,
            Some(n) if !n.is_number() => {
                return Err(ConfError::Decode("mtu: must be a number".into()))
            }
            Some(n) => match n.as_u64() {
                Some(0) => None,
                Some(m) if (68..=65535).contains(&m) => u32::try_from(m).ok(),
                _ => return invalid(format!("mtu: {n} is not between 68 and 65535")),
            },
        };
        self.is_gateway |= self.is_default_gateway;
        Ok(())
    }

    /// Where the network's addresses come from.
    pub fn ipam(&self) -> &IpamSection {
        self.ipam_section.as_ref().unwrap_or(&IpamSection::None)
    }

    /// True when an attachment gets firewall rules of the network's own (published ports come
    /// on top).
    pub fn wants_firewall(&self) -> bool {
        self.ip_masq
            || self.mac_spoof_chk
            || self.isolate
            || self.isolate_networks
            || self.block_host
    }
}

fn ipam_section(
    section: Option<&Value>,
    runtime_sets: Vec<RangeSet>,
    ranges_required: bool,
) -> Result<IpamSection, ConfError> {
    let Some(section) = section else {
        return Ok(IpamSection::None);
    };
    if !section.is_object() {
        return Err(ConfError::Decode("ipam: must be an object".into()));
    }
    let kind = opt_str(section.get("type"))
        .map_err(|_| ConfError::Decode("type: must be a string".into()))?
        .unwrap_or_default();
    Ok(match kind {
        "" => IpamSection::None,
        t if BUILTIN_IPAM_TYPES.contains(&t) => IpamSection::Builtin(
            IpamConfig::from_json_with(section, runtime_sets, ranges_required)
                .map_err(|e| ConfError::Invalid(e.to_string()))?,
        ),
        t if t.contains('/') || t == "." || t == ".." => {
            return Err(ConfError::Invalid(format!(
                "ipam.type {t:?} must be a plugin name, not a path"
            )))
        }
        t => IpamSection::Delegated {
            plugin: t.into(),
            section: section.clone(),
        },
    })
}

/// A conflist file found in a configuration directory.
#[derive(Debug, Clone)]
pub struct ConflistFile {
    pub path: PathBuf,
    pub json: Value,
}

impl ConflistFile {
    /// The network name it declares.
    pub fn name(&self) -> Option<&str> {
        self.json.get("name").and_then(Value::as_str)
    }
}

/// Every readable JSON configuration in `dirs` (`*.conflist`, `*.conf`, `*.json`), directory by
/// directory, files in name order, as libcni reads them.
pub fn conflists(dirs: &[PathBuf]) -> impl Iterator<Item = ConflistFile> + '_ {
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
        files.into_iter().filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let json = serde_json::from_str::<Value>(&text).ok()?;
            Some(ConflistFile { path, json })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: Value) -> Result<BridgeConf, ConfError> {
        let mut v = json!({"name": "n", "type": "netbox-cni",
                           "ipam": {"type": "netbox", "subnet": "10.1.0.0/24"}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        BridgeConf::from_json(&v)
    }

    #[test]
    fn every_bridge_key_is_read() {
        let c = conf(
            json!({"bridge": "br9", "isDefaultGateway": true, "forceAddress": true,
            "hairpinMode": true, "enabledad": true, "ipMasq": true, "macspoofchk": true,
            "mtu": 1400, "vlan": 0, "isolate": true, "isolateNetworks": true, "blockHost": true}),
        )
        .expect("valid");
        assert_eq!(c.bridge, "br9");
        assert!(c.is_gateway && c.is_default_gateway && c.force_address && c.hairpin_mode);
        assert!(c.enable_dad && c.ip_masq && c.mac_spoof_chk && c.isolate);
        assert!(c.isolate_networks && c.block_host && !c.promisc_mode);
        assert_eq!(c.link_mtu, Some(1400));
        assert!(matches!(c.ipam(), IpamSection::Builtin(_)));
    }

    #[test]
    fn refusals_say_which_key_and_whether_it_decodes() {
        for (extra, want) in [
            (
                json!({"vlan": 100}),
                ConfError::Invalid(
                    "vlan: 100 is not supported (bridge VLAN filtering is not implemented)".into(),
                ),
            ),
            (
                json!({"vlan": "x"}),
                ConfError::Decode("vlan: must be a number".into()),
            ),
            (
                json!({"hairpinMode": 1}),
                ConfError::Decode("hairpinMode: must be true or false".into()),
            ),
            (
                json!({"hairpinMode": true, "promiscMode": true}),
                ConfError::Invalid("hairpinMode and promiscMode cannot both be true".into()),
            ),
            (
                json!({"mtu": 20}),
                ConfError::Invalid("mtu: 20 is not between 68 and 65535".into()),
            ),
            (
                json!({"ipam": {"type": "../x"}}),
                ConfError::Invalid("ipam.type \"../x\" must be a plugin name, not a path".into()),
            ),
            (
                json!({"ipam": 3}),
                ConfError::Decode("ipam: must be an object".into()),
            ),
            (
                json!({"name": null}),
                ConfError::Invalid("name: missing".into()),
            ),
        ] {
            assert_eq!(conf(extra.clone()).expect_err("refused"), want, "{extra}");
        }
    }

    #[test]
    fn a_conflist_hands_its_name_to_the_bridge_plugin() {
        let list = json!({"cniVersion": "1.0.0", "name": "web", "plugins": [
            {"type": "bridge", "bridge": "br-web", "ipam": {"type": "host-local", "subnet": "10.42.0.0/24"}},
            {"type": "portmap"}]});
        let c = BridgeConf::from_conflist(&list, Path::new("/x.conflist")).expect("valid");
        assert_eq!((c.name.as_str(), c.bridge.as_str()), ("web", "br-web"));
        assert!(
            matches!(c.ipam(), IpamSection::Delegated { plugin, .. } if plugin == "host-local")
        );
    }
}
