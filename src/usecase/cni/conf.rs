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
use crate::model::conflist::{BridgeConf, ConfError};
use crate::model::ipam::{range_sets_from_json, IpamError, RangeSet};
use crate::model::json::opt_str;
use crate::sys::netlink::{parse_mac, validate_ifname};

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

/// The network configuration on stdin, validated: the bridge plugin's keys (the model every
/// front end shares) and those of this invocation.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    /// The bridge plugin's keys.
    pub net: BridgeConf,
    /// The container's MAC (CNI_ARGS MAC, `runtimeConfig.mac` or `args.cni.mac`).
    pub mac: Option<[u8; 6]>,
    /// Requested addresses (CNI_ARGS IP, `runtimeConfig.ips`, `args.cni.ips`).
    pub ips: Vec<IpAddr>,
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
    /// `runtimeConfig.portMappings` (the `portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
    /// GC: the attachments to keep, as (container id, ifname).
    pub valid_attachments: Vec<(String, String)>,
}

/// What the runtime passes for this container (`runtimeConfig`, `args.cni`, CNI_ARGS).
#[derive(Debug, Default)]
struct RuntimeArgs {
    ips: Vec<IpAddr>,
    mac: Option<[u8; 6]>,
    port_mappings: Vec<PortMapping>,
    /// `runtimeConfig.ipRanges`: range sets in front of the configuration's own.
    ip_ranges: Vec<RangeSet>,
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
        if !v.is_object() {
            return Err(decode("network configuration must be a JSON object"));
        }
        let version = parse_version(v.get("cniVersion"))?;
        let refused = |e: ConfError| match e {
            ConfError::Decode(msg) => decode(msg),
            ConfError::Invalid(msg) => CniError::config(msg),
        };
        let net = BridgeConf::decode(&v).map_err(refused)?;
        let runtime = RuntimeArgs::parse(&v, env)?;
        // DEL, CHECK and GC work by owner: a runtime that no longer passes its ranges (or a
        // cleanup process that never knew them) must not make them fail; STATUS without
        // ranges has no pool to judge, and must not report a ready plugin as broken.
        let ranges_required = env.command == Command::Add;
        let net = net
            .with_runtime_ipam(runtime.ip_ranges.clone(), ranges_required)
            .map_err(refused)?;
        let prev_result = match v.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(r) => Some(CniResult::from_json(r)?),
        };
        let valid_attachments = match env.command {
            Command::Gc => parse_valid_attachments(&v)?,
            _ => vec![],
        };
        let conf = NetConf {
            version,
            net,
            mac: runtime.mac,
            ips: runtime.ips,
            dns: Dns::from_json(v.get("dns"), "dns")?,
            prev_result,
            port_mappings: runtime.port_mappings,
            valid_attachments,
        };
        conf.check_command(env.command)?;
        Ok(conf)
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// True when the attachment gets firewall rules.
    pub fn wants_firewall(&self) -> bool {
        self.net.wants_firewall() || !self.port_mappings.is_empty()
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

/// The declared `cniVersion`; the spec's oldest form had none.
fn parse_version(v: Option<&Value>) -> Result<Version, CniError> {
    match v {
        None | Some(Value::Null) => Ok(Version::V0_1_0),
        Some(Value::String(s)) => Version::parse(s).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {s:?} is not supported"),
            )
            .with_details(format!(
                "supported versions: {}",
                SUPPORTED_VERSIONS.join(", ")
            ))
        }),
        Some(_) => Err(decode("cniVersion: must be a string")),
    }
}

impl RuntimeArgs {
    /// CNI_ARGS, then `runtimeConfig` and `args.cni` (`ips`, `mac`; `portMappings` only in
    /// `runtimeConfig`).
    fn parse(v: &Value, env: &Env) -> Result<RuntimeArgs, CniError> {
        let mut out = RuntimeArgs {
            ips: env.args.ips.clone(),
            mac: env.args.mac,
            port_mappings: vec![],
            ip_ranges: vec![],
        };
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
            out.read_section(section, what)?;
        }
        if let Some(mac) = out.mac {
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
        Ok(out)
    }

    fn read_section(&mut self, section: &Value, what: &str) -> Result<(), CniError> {
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
                if !self.ips.contains(&ip) {
                    self.ips.push(ip);
                }
            }
        }
        if let Some(m) = section.get("mac").filter(|m| !m.is_null()) {
            let s = m
                .as_str()
                .ok_or_else(|| decode(format!("{what}.mac: must be a string")))?;
            self.mac = Some(parse_mac(s).ok_or_else(|| {
                CniError::config(format!("{what}.mac: {s:?} is not a MAC address"))
            })?);
        }
        if what == "runtimeConfig" {
            if let Some(pm) = section.get("portMappings").filter(|l| !l.is_null()) {
                self.port_mappings = parse_port_mappings(pm)?;
            }
            // Read as host-local reads it; a shape error does not decode (6), a bad subnet
            // or range cannot be served (7).
            self.ip_ranges =
                range_sets_from_json(section.get("ipRanges"), "ipRanges").map_err(|e| match e {
                    IpamError::BadField { .. } => decode(format!("runtimeConfig.ipRanges: {e}")),
                    e => CniError::config(format!("runtimeConfig.ipRanges: {e}")),
                })?;
        }
        Ok(())
    }
}

/// GC's `cni.dev/valid-attachments` (and the older `cni.dev/attachments`).
fn parse_valid_attachments(v: &Value) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let Some(list) = v.get(key).filter(|l| !l.is_null()) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| decode(format!("{key}: must be a list")))?;
        for a in list {
            let (Some(id), Some(ifname)) = (string(a, "containerID")?, string(a, "ifname")?) else {
                return Err(decode(format!(
                    "{key}: each entry needs containerID and ifname"
                )));
            };
            out.push((id.to_string(), ifname.to_string()));
        }
    }
    Ok(out)
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
    opt_str(v.get(key)).map_err(|_| decode(format!("{key}: must be a string")))
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
