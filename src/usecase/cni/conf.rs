//! The two inputs of an invocation: `CNI_*` environment variables and the network configuration
//! on stdin. Both are checked completely here, before any operation touches the host, and every
//! refusal carries a spec code: 4 for the environment, 6 for undecodable input, 1 for an unknown
//! version, 7 for a configuration that decodes but cannot be served.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::result::{CniResult, Dns};
use super::{code, CniError, Version, SUPPORTED_VERSIONS};
use crate::firewall::{PortMapping, Protocol};
use crate::model::ipam::IpamConfig;
use crate::sys::netlink::{parse_mac, validate_ifname};

/// IPAM types served by netbox's own store; any other type is an IPAM plugin on CNI_PATH.
pub const BUILTIN_IPAM_TYPES: [&str; 2] = ["netbox", "netbox-cni"];
/// Longest container id accepted (runtimes use 64 hex digits); it names lease files.
pub const MAX_CONTAINER_ID: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// The `CNI_*` environment, validated for the command.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS as given (passed on to a delegated IPAM plugin).
    pub raw_args: String,
    pub args: CniArgs,
    /// CNI_PATH as given.
    pub raw_path: Option<String>,
}

/// What netbox reads from CNI_ARGS.
#[derive(Debug, Clone, Default)]
pub struct CniArgs {
    pub ips: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
}

impl Env {
    /// Reads the environment through `get`.
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => {
                return Err(CniError::env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
                )))
            }
            None => return Err(CniError::env("CNI_COMMAND is not set")),
        };
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            raw_args: get("CNI_ARGS").unwrap_or_default(),
            args: CniArgs::default(),
            raw_path: get("CNI_PATH"),
        };
        if !matches!(command, Command::Add | Command::Del | Command::Check) {
            return Ok(env);
        }
        let required = |key: &str| -> Result<String, CniError> {
            get(key)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::env(format!("{key} is not set")))
        };
        env.container_id = required("CNI_CONTAINERID")?;
        validate_container_id(&env.container_id)?;
        env.ifname = required("CNI_IFNAME")?;
        validate_ifname(&env.ifname).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))?;
        // DEL may come after the namespace is gone, from a runtime that no longer knows it.
        env.netns = match command {
            Command::Del => get("CNI_NETNS").filter(|v| !v.is_empty()),
            _ => Some(required("CNI_NETNS")?),
        }
        .map(PathBuf::from);
        env.args = parse_cni_args(&env.raw_args)?;
        Ok(env)
    }

    /// The directories of CNI_PATH.
    pub fn path_dirs(&self) -> Vec<PathBuf> {
        self.raw_path
            .as_deref()
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Container ids name lease files and host veths: the spec's alphabet, bounded.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= MAX_CONTAINER_ID
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit, hold only \
             letters, digits, '_', '.' and '-', and be at most {MAX_CONTAINER_ID} bytes"
        )))
    }
}

/// `K=V;K=V`. Known keys: IgnoreUnknown, IP (comma-separated), MAC; the Kubernetes keys are
/// tolerated. Another key is an error unless IgnoreUnknown is true, as in the reference plugins.
pub fn parse_cni_args(raw: &str) -> Result<CniArgs, CniError> {
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CniError::env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        match key {
            "IgnoreUnknown" => {
                ignore_unknown = matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
            }
            "IP" => {
                for ip in value.split(',').filter(|s| !s.is_empty()) {
                    args.ips.push(parse_ip_maybe_cidr(ip).ok_or_else(|| {
                        CniError::env(format!("CNI_ARGS: IP={ip:?} is not an IP address"))
                    })?);
                }
            }
            "MAC" => {
                args.mac = Some(parse_mac(value).ok_or_else(|| {
                    CniError::env(format!("CNI_ARGS: MAC={value:?} is not a MAC address"))
                })?)
            }
            k if k.starts_with("K8S_") => {}
            other => unknown.push(other.to_string()),
        }
    }
    if !ignore_unknown {
        if let Some(key) = unknown.first() {
            return Err(CniError::env(format!(
                "CNI_ARGS: unknown key {key:?} (set IgnoreUnknown=1 to ignore unknown keys)"
            )));
        }
    }
    Ok(args)
}

fn parse_ip_maybe_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNetwork>().ok().map(|n| n.ip()))
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum Ipam {
    /// netbox's store.
    Builtin(IpamConfig),
    /// An IPAM plugin binary on CNI_PATH.
    Delegated { plugin: String },
    /// No `ipam` (or an empty type): layer 2 only, as the reference bridge allows.
    None,
}

/// The network configuration on stdin, validated.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub enable_dad: bool,
    pub mtu: Option<u32>,
    /// The container's MAC (CNI_ARGS MAC, `runtimeConfig.mac` or `args.cni.mac`).
    pub mac: Option<[u8; 6]>,
    /// Requested addresses (CNI_ARGS IP, `runtimeConfig.ips`, `args.cni.ips`).
    pub ips: Vec<IpAddr>,
    pub ipam: Ipam,
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
    /// `ipMasq`: traffic leaving the network is masqueraded.
    pub ip_masq: bool,
    /// `macspoofchk`: frames and packets from the container carry its own MAC and addresses.
    pub mac_spoof_chk: bool,
    /// `runtimeConfig.portMappings` (the `portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
    /// netbox's `isolate`: only the gateway is reachable on the bridge.
    pub isolate: bool,
    /// netbox's `isolateNetworks`: no new connections from other networks except to
    /// published ports.
    pub isolate_networks: bool,
    /// netbox's `blockHost`: the container cannot reach the host's own addresses.
    pub block_host: bool,
    /// GC: the attachments to keep, as (container id, ifname).
    pub valid_attachments: Vec<(String, String)>,
}

/// The version a configuration declares, when it is one netbox speaks (for error objects).
pub fn peek_version(stdin: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?)
}

fn decode(msg: impl Into<String>) -> CniError {
    CniError::new(code::DECODE_FAILURE, msg)
}

impl NetConf {
    /// Parses and checks the configuration for `env.command`.
    pub fn parse(stdin: &[u8], env: &Env) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| decode(format!("network configuration on stdin is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| decode("network configuration must be a JSON object"))?;
        let version = match obj.get("cniVersion") {
            // The spec's oldest form had no cniVersion.
            None | Some(Value::Null) => Version::V0_1_0,
            Some(Value::String(s)) => Version::parse(s).ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("cniVersion {s:?} is not supported"),
                )
                .with_details(format!(
                    "supported versions: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ))
            })?,
            Some(_) => return Err(decode("cniVersion: must be a string")),
        };
        let name = string(&v, "name")?
            .ok_or_else(|| CniError::config("name: missing"))?
            .to_string();
        // The name is a directory of the lease store: never a path.
        crate::model::ipam::config::validate_network_name(&name)
            .map_err(|e| CniError::config(format!("name: {e}")))?;
        let plugin_type = string(&v, "type")?.unwrap_or_default().to_string();
        let bridge = string(&v, "bridge")?.unwrap_or("cni0").to_string();
        validate_ifname(&bridge).map_err(|e| CniError::config(format!("bridge: {e}")))?;
        let is_default_gateway = flag(&v, "isDefaultGateway")?;
        let hairpin_mode = flag(&v, "hairpinMode")?;
        let promisc_mode = flag(&v, "promiscMode")?;
        if hairpin_mode && promisc_mode {
            return Err(CniError::config(
                "hairpinMode and promiscMode cannot both be true",
            ));
        }
        match v.get("vlan") {
            None | Some(Value::Null) => {}
            Some(n) => match n.as_i64() {
                Some(0) => {}
                Some(id) => {
                    return Err(CniError::config(format!(
                        "vlan: {id} is not supported (bridge VLAN filtering is not implemented)"
                    )))
                }
                None => return Err(decode("vlan: must be a number")),
            },
        }
        let mtu = match v.get("mtu") {
            None | Some(Value::Null) => None,
            Some(n) if !n.is_number() => return Err(decode("mtu: must be a number")),
            Some(n) => match n.as_u64() {
                Some(0) => None,
                Some(m) if (68..=65535).contains(&m) => u32::try_from(m).ok(),
                _ => {
                    return Err(CniError::config(format!(
                        "mtu: {n} is not between 68 and 65535"
                    )))
                }
            },
        };
        let mut ips = env.args.ips.clone();
        let mut mac = env.args.mac;
        let mut port_mappings = Vec::new();
        for (section, what) in [
            (v.get("runtimeConfig"), "runtimeConfig"),
            (v.get("args").and_then(|a| a.get("cni")), "args.cni"),
        ] {
            let Some(section) = section.filter(|s| !s.is_null()) else {
                continue;
            };
            if !section.is_object() {
                return Err(decode(format!("{what}: must be an object")));
            }
            if let Some(list) = section.get("ips").filter(|l| !l.is_null()) {
                let list = list
                    .as_array()
                    .ok_or_else(|| decode(format!("{what}.ips: must be a list")))?;
                for ip in list {
                    let s = ip
                        .as_str()
                        .ok_or_else(|| decode(format!("{what}.ips: must hold strings")))?;
                    let ip = parse_ip_maybe_cidr(s).ok_or_else(|| {
                        CniError::config(format!("{what}.ips: {s:?} is not an IP address"))
                    })?;
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
            if let Some(m) = section.get("mac").filter(|m| !m.is_null()) {
                let s = m
                    .as_str()
                    .ok_or_else(|| decode(format!("{what}.mac: must be a string")))?;
                mac = Some(parse_mac(s).ok_or_else(|| {
                    CniError::config(format!("{what}.mac: {s:?} is not a MAC address"))
                })?);
            }
            if what == "runtimeConfig" {
                if let Some(pm) = section.get("portMappings").filter(|l| !l.is_null()) {
                    port_mappings = parse_port_mappings(pm)?;
                }
            }
        }
        if let Some(mac) = mac {
            let problem = if mac[0] & 1 == 1 {
                Some("a multicast address cannot name an interface")
            } else if mac == [0; 6] {
                Some("the all-zero address cannot name an interface")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(CniError::config(format!(
                    "mac {}: {problem}",
                    crate::sys::netlink::format_mac(&mac)
                )));
            }
        }
        let ipam = match v.get("ipam") {
            None | Some(Value::Null) => Ipam::None,
            Some(section) => {
                if !section.is_object() {
                    return Err(decode("ipam: must be an object"));
                }
                match string(section, "type")? {
                    None | Some("") => Ipam::None,
                    Some(t) if BUILTIN_IPAM_TYPES.contains(&t) => Ipam::Builtin(
                        IpamConfig::from_json(section)
                            .map_err(|e| CniError::config(e.to_string()))?,
                    ),
                    Some(t) => {
                        if t.contains('/') || t == "." || t == ".." {
                            return Err(CniError::config(format!(
                                "ipam.type {t:?} must be a plugin name, not a path"
                            )));
                        }
                        Ipam::Delegated {
                            plugin: t.to_string(),
                        }
                    }
                }
            }
        };
        let prev_result = match v.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(r) => Some(CniResult::from_json(r)?),
        };
        let mut valid_attachments = Vec::new();
        if env.command == Command::Gc {
            for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                let Some(list) = v.get(key).filter(|l| !l.is_null()) else {
                    continue;
                };
                let list = list
                    .as_array()
                    .ok_or_else(|| decode(format!("{key}: must be a list")))?;
                for a in list {
                    let (Some(id), Some(ifname)) =
                        (string(a, "containerID")?, string(a, "ifname")?)
                    else {
                        return Err(decode(format!(
                            "{key}: each entry needs containerID and ifname"
                        )));
                    };
                    valid_attachments.push((id.to_string(), ifname.to_string()));
                }
            }
        }
        let conf = NetConf {
            version,
            name,
            plugin_type,
            bridge,
            is_gateway: flag(&v, "isGateway")? || is_default_gateway,
            is_default_gateway,
            force_address: flag(&v, "forceAddress")?,
            hairpin_mode,
            promisc_mode,
            enable_dad: flag(&v, "enabledad")?,
            mtu,
            mac,
            ips,
            ipam,
            dns: Dns::from_json(v.get("dns"), "dns")?,
            prev_result,
            ip_masq: flag(&v, "ipMasq")?,
            mac_spoof_chk: flag(&v, "macspoofchk")?,
            port_mappings,
            isolate: flag(&v, "isolate")?,
            isolate_networks: flag(&v, "isolateNetworks")?,
            block_host: flag(&v, "blockHost")?,
            valid_attachments,
        };
        conf.check_command(env.command)?;
        Ok(conf)
    }

    /// True when the attachment gets firewall rules.
    pub fn wants_firewall(&self) -> bool {
        self.ip_masq
            || self.mac_spoof_chk
            || !self.port_mappings.is_empty()
            || self.isolate
            || self.isolate_networks
            || self.block_host
    }

    /// Operations the configuration's version does not have.
    fn check_command(&self, command: Command) -> Result<(), CniError> {
        let (min, what) = match command {
            Command::Check => (Version::V0_4_0, "CHECK"),
            Command::Gc => (Version::V1_1_0, "GC"),
            Command::Status => (Version::V1_1_0, "STATUS"),
            _ => return Ok(()),
        };
        if self.version < min {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{what} needs cniVersion {} or later; the configuration says {}",
                    min.as_str(),
                    self.version.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// `runtimeConfig.portMappings` as the reference portmap plugin reads it: `hostPort`,
/// `containerPort`, `protocol` (tcp, udp; default tcp) and `hostIP` (empty: every address).
fn parse_port_mappings(list: &Value) -> Result<Vec<PortMapping>, CniError> {
    let what = "runtimeConfig.portMappings";
    let list = list
        .as_array()
        .ok_or_else(|| decode(format!("{what}: must be a list")))?;
    let mut out = Vec::new();
    for entry in list {
        let port = |key: &str| -> Result<u16, CniError> {
            let n = entry
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| decode(format!("{what}: {key} must be a number")))?;
            u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                CniError::config(format!("{what}: {key} {n} is not between 1 and 65535"))
            })
        };
        let protocol = match string(entry, "protocol")? {
            None => Protocol::Tcp,
            Some(p) => Protocol::parse(p).map_err(|e| CniError::config(format!("{what}: {e}")))?,
        };
        let host_ip = match string(entry, "hostIP")? {
            None | Some("") => None,
            Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
                CniError::config(format!("{what}: hostIP {ip:?} is not an IP address"))
            })?),
        };
        out.push(PortMapping {
            host_ip,
            host_port: port("hostPort")?,
            container_port: port("containerPort")?,
            protocol,
        });
    }
    Ok(out)
}

fn string<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(decode(format!("{key}: must be a string"))),
    }
}

fn flag(v: &Value, key: &str) -> Result<bool, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(decode(format!("{key}: must be true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_known_keys_and_ignore_unknown() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5;MAC=02:00:00:00:00:09;Foo=bar",
        )
        .expect("parse");
        assert_eq!(a.ips, vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
        assert!(a.mac.is_some());
        assert_eq!(parse_cni_args("Foo=bar").expect_err("unknown").code, 4);
        assert_eq!(parse_cni_args("IP=nope").expect_err("bad ip").code, 4);
        assert_eq!(parse_cni_args("novalue").expect_err("bad pair").code, 4);
    }

    #[test]
    fn container_ids_outside_the_alphabet_are_refused() {
        for bad in ["", "-a", "a/b", "../x", "a b", &"a".repeat(129)] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        validate_container_id(&"f".repeat(64)).expect("podman-style id");
    }
}
