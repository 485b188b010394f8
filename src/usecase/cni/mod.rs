//! The CNI plugin (spec 1.1.0 and the versions before it), as library code the `netbox-cni`
//! binary only feeds with its environment and stdin.
//!
//! - `conf`: the environment (`CNI_*`) and the configuration on stdin, validated before anything
//!   on the host is touched, so a bad input changes nothing;
//! - `result`: the result in every version's form;
//! - `ops`: ADD, DEL, CHECK, GC and STATUS over `attach` and the IPAM store;
//! - `prior`: what an ADD finds of an earlier attachment of the same container and interface;
//! - `delegate`: running another IPAM plugin found on CNI_PATH.
//!
//! Every failure is a [`CniError`] carrying one of the spec's codes.

pub mod conf;
pub mod delegate;
pub mod ipam;
pub mod ops;
pub mod prior;
pub mod queue;
pub mod result;

use serde::Serialize;
use thiserror::Error;

pub use conf::{Command, Env, NetConf};
pub use result::CniResult;

/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
/// The version netbox answers in when the caller does not say.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Error codes from the CNI spec (and one of netbox's own, above 99 as the spec asks).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing attachments may be impaired.
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// CHECK found the attachment different from its prevResult.
    pub const CHECK_MISMATCH: u32 = 100;
}

/// A spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED_VERSIONS
            .iter()
            .position(|v| *v == s)
            .and_then(|i| Version::ALL.get(i).copied())
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }
}

/// A failure as the runtime sees it: a spec code, a message naming the object, details.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_CONFIG, msg)
    }

    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_ENVIRONMENT, msg)
    }

    /// The error object, in the configuration's version when it is known.
    pub fn to_object(&self, version: Option<Version>) -> ErrorObject {
        ErrorObject {
            cni_version: version.map_or(CURRENT_VERSION, Version::as_str).into(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<crate::Error> for CniError {
    fn from(e: crate::Error) -> CniError {
        use crate::model::ipam::IpamError as I;
        use crate::sys::netlink::NetlinkError as N;
        let code = match &e {
            crate::Error::Netlink(N::InvalidIfname { .. }) => code::INVALID_ENVIRONMENT,
            crate::Error::Netlink(N::NotABridge { .. }) => code::INVALID_CONFIG,
            crate::Error::Netlink(N::AddressInUse { .. } | N::LinkExists { .. }) => {
                code::TRY_AGAIN_LATER
            }
            crate::Error::Netlink(N::PeerExists { .. }) => code::INVALID_ENVIRONMENT,
            crate::Error::Netlink(_) => code::IO_FAILURE,
            crate::Error::Netns(crate::sys::netns::NetnsError::Open { .. }) => {
                code::INVALID_ENVIRONMENT
            }
            crate::Error::Netns(_) => code::IO_FAILURE,
            crate::Error::Ipam(i) => match i {
                I::Io { .. } => code::IO_FAILURE,
                I::BadOwner(_) => code::INVALID_ENVIRONMENT,
                // Addresses come back when other attachments go.
                I::Exhausted { .. } | I::RequestedTaken { .. } => code::TRY_AGAIN_LATER,
                _ => code::INVALID_CONFIG,
            },
            crate::Error::Config(_) => code::INVALID_CONFIG,
            // A host port (or an address) another live attachment holds: the runtime config
            // asks for what cannot be had, like a taken requested address.
            crate::Error::Firewall(
                crate::firewall::FirewallError::Config(_)
                | crate::firewall::FirewallError::PortTaken { .. }
                | crate::firewall::FirewallError::Taken { .. },
            ) => code::INVALID_CONFIG,
            crate::Error::Firewall(_) => code::IO_FAILURE,
            crate::Error::Io { .. } | crate::Error::Process(_) | crate::Error::Tuntap(_) => {
                code::IO_FAILURE
            }
        };
        CniError::new(code, e.to_string())
    }
}

impl From<crate::sys::netlink::NetlinkError> for CniError {
    fn from(e: crate::sys::netlink::NetlinkError) -> CniError {
        crate::Error::from(e).into()
    }
}

impl From<crate::model::ipam::IpamError> for CniError {
    fn from(e: crate::model::ipam::IpamError) -> CniError {
        crate::Error::from(e).into()
    }
}

impl From<crate::firewall::FirewallError> for CniError {
    fn from(e: crate::firewall::FirewallError) -> CniError {
        crate::Error::from(e).into()
    }
}

impl From<crate::sys::netns::NetnsError> for CniError {
    fn from(e: crate::sys::netns::NetnsError) -> CniError {
        crate::Error::from(e).into()
    }
}

/// What the binary prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    /// JSON for stdout (empty for a successful DEL, GC or STATUS).
    pub stdout: String,
    /// Process exit status: 0 on success, 1 with an error object.
    pub exit_code: u8,
}

/// Runs one plugin invocation. `env` yields environment variables by name; `stdin` is the
/// configuration; `place` the invocation's place in the host's queue ([`queue::join`], taken
/// before stdin was read).
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], place: queue::Place) -> Outcome {
    let start = std::time::Instant::now();
    let (version, result) = run_inner(env, stdin, place);
    // One line per invocation, for the log file a configuration may name (`logFile`).
    let var = |k: &str| env(k).unwrap_or_default();
    match &result {
        Ok(_) => tracing::info!(
            command = %var("CNI_COMMAND"),
            container = %var("CNI_CONTAINERID"),
            ifname = %var("CNI_IFNAME"),
            us = start.elapsed().as_micros() as u64,
            "ok"
        ),
        Err(e) => tracing::warn!(
            command = %var("CNI_COMMAND"),
            container = %var("CNI_CONTAINERID"),
            ifname = %var("CNI_IFNAME"),
            code = e.code,
            us = start.elapsed().as_micros() as u64,
            "failed: {}",
            e.msg
        ),
    }
    match result {
        Ok(Some(value)) => Outcome {
            stdout: value.to_string(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: serde_json::to_string(&e.to_object(version)).unwrap_or_default(),
            exit_code: 1,
        },
    }
}

/// The log file a configuration names (`"logFile": "/abs/path"`) and its level (`"logLevel"`,
/// a tracing filter such as `info` or `debug`; default `info`). Read before anything else so
/// the whole invocation is logged; an unreadable configuration names none (the operation itself
/// reports why).
pub fn log_target(stdin: &[u8]) -> Option<(std::path::PathBuf, String)> {
    let conf: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let path = std::path::PathBuf::from(conf.get("logFile")?.as_str()?);
    if !path.is_absolute() {
        return None;
    }
    let level = conf
        .get("logLevel")
        .and_then(|l| l.as_str())
        .unwrap_or("info")
        .to_string();
    Some((path, level))
}

fn run_inner(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    place: queue::Place,
) -> (Option<Version>, Result<Option<serde_json::Value>, CniError>) {
    let parsed = match Env::parse(env) {
        Ok(e) => e,
        Err(e) => return (conf::peek_version(stdin), Err(e)),
    };
    // VERSION reads no configuration: answered before any is parsed.
    if parsed.command == Command::Version {
        return (None, ops::version(stdin).map(Some));
    }
    let conf = match NetConf::parse(stdin, &parsed) {
        Ok(c) => c,
        Err(e) => return (conf::peek_version(stdin), Err(e)),
    };
    let version = Some(conf.version);
    (version, ops::execute(&parsed, &conf, stdin, place))
}

/// The VERSION result.
#[derive(Debug, Serialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The answer to a VERSION whose input is `stdin`: its `cniVersion` is the one given there
    /// (SPEC.md, "VERSION Success"), the current version when none is.
    pub fn answering(stdin: &[u8]) -> Self {
        let given = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|v| !v.is_empty());
        VersionResult {
            cni_version: given.unwrap_or_else(|| CURRENT_VERSION.into()),
            ..VersionResult::new()
        }
    }

    pub fn new() -> Self {
        VersionResult {
            cni_version: CURRENT_VERSION.into(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

impl Default for VersionResult {
    fn default() -> Self {
        Self::new()
    }
}

/// The error object a plugin prints on stdout when it fails.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}
