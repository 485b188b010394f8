//! The lab file as written (TOML or JSON, see README "Labs"): the serde schema and reading it.

use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::Result;
use crate::lab::LabError;

/// A lab file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Lab name (default: the file's stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Where subnets of links and switches without one come from (/24 each).
    #[serde(default)]
    pub pool: Option<IpNetwork>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, rename = "switch")]
    pub switches: Vec<SwitchSpec>,
    #[serde(default, rename = "link")]
    pub links: Vec<LinkSpec>,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
    /// Fixes every choice netbox would otherwise leave to chance: interface MACs and the
    /// packets that lossy links drop (addresses are drawn in file order either way).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The timeline `lab test` plays: changes at times, each with its checks.
    #[serde(default, rename = "step")]
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// Forwarding on (IPv4 and IPv6).
    #[serde(default)]
    pub router: bool,
    /// "DST via GW" or "DST dev IFNAME"; DST may be "default"; GW may be a node name.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Services netbox runs in the node: "tcp:PORT" (accepts and closes), "udp:PORT" (echoes).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Commands started in the node (through `sh -c`) when the lab comes up.
    #[serde(default)]
    pub start: Vec<String>,
    #[serde(default)]
    pub tun: Vec<TunSpec>,
    #[serde(default)]
    pub tap: Vec<TunSpec>,
    #[serde(default)]
    pub vxlan: Vec<VxlanNodeSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunSpec {
    pub name: String,
    #[serde(default)]
    pub address: Option<IpNetwork>,
    /// uid allowed to attach to the device.
    #[serde(default)]
    pub owner: Option<u32>,
    /// netbox answers ICMP echo requests that the kernel routes into this TUN (a user-space
    /// responder reading the device, as examples/tun_echo.rs does). TUN devices only.
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanNodeSpec {
    pub name: String,
    pub vni: u32,
    /// Underlay interface of the node.
    pub dev: String,
    /// Underlay address of the other end (or a node name: its address on the underlay).
    pub remote: String,
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// Switch (living in this node) the VXLAN device joins.
    #[serde(default)]
    pub switch: Option<String>,
    #[serde(default)]
    pub address: Option<IpNetwork>,
}

fn default_vxlan_port() -> u16 {
    4789
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    pub name: String,
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    /// The node the bridge lives in (a simulated host); default: the lab's own fabric.
    #[serde(default)]
    pub node: Option<String>,
    /// Address of the bridge itself (only for a switch inside a node).
    #[serde(default)]
    pub address: Option<IpNetwork>,
    /// Give the ports fixed MACs and the nodes permanent neighbour entries, so no ARP is
    /// needed: `true` for every pair of members that the file's checks, routes and VXLAN
    /// remotes make talk (both ways), `"all"` for every pair (n * (n - 1) entries). For large
    /// switches: the kernel's neighbour table holds 1024 learned entries for the whole host
    /// (gc_thresh3), and 50 nodes that all talk need 2450.
    #[serde(default)]
    pub static_arp: StaticArp,
}

/// Which permanent neighbour entries a static-ARP switch gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticArp {
    #[default]
    Off,
    /// Pairs the file makes talk.
    Needed,
    /// Every pair.
    All,
}

impl<'de> Deserialize<'de> for StaticArp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(false) => Ok(StaticArp::Off),
            Raw::Flag(true) => Ok(StaticArp::Needed),
            Raw::Word(w) => match w.as_str() {
                "off" => Ok(StaticArp::Off),
                "needed" => Ok(StaticArp::Needed),
                "all" => Ok(StaticArp::All),
                other => Err(serde::de::Error::custom(format!(
                    "static_arp {other:?} is not true, false, \"needed\" or \"all\""
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// "NODE" or "NODE:IFNAME".
    pub a: String,
    /// "NODE", "NODE:IFNAME" or a switch name.
    pub b: String,
    #[serde(default)]
    pub a_ip: Option<IpNetwork>,
    #[serde(default)]
    pub b_ip: Option<IpNetwork>,
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    /// Egress rate limit of both ends: "20mbit", "512kbit", "1gbit", "100kbps" (bytes).
    #[serde(default)]
    pub rate: Option<String>,
    /// Added delay: "10ms" (needs sch_netem).
    #[serde(default)]
    pub delay: Option<String>,
    /// Packet loss: "1%" (nftables drops at random at both ends: no sch_netem needed).
    #[serde(default)]
    pub loss: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub from: String,
    /// A node name or an address (not for `exec` checks).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub tcp: Option<u16>,
    #[serde(default)]
    pub udp: Option<u16>,
    #[serde(default)]
    pub ping: bool,
    /// A command run with `sh -c` in `from`: it must exit 0.
    #[serde(default)]
    pub exec: Option<String>,
    /// A regular expression the `exec` command's output must match.
    #[serde(default)]
    pub output: Option<String>,
    /// At least this rate from `from` to `to` ("5mbit"), measured by netbox over TCP.
    #[serde(default)]
    pub throughput: Option<String>,
    /// How long the throughput is measured (default 1s).
    #[serde(default)]
    pub duration: Option<String>,
    /// At most this ICMP echo round trip ("20ms").
    #[serde(default)]
    pub rtt: Option<String>,
    /// "reach" (default) or "unreachable".
    #[serde(default)]
    pub expect: Option<String>,
    /// Try again until the check passes or this much time went by ("2s").
    #[serde(default)]
    pub within: Option<String>,
    /// Try again up to this many more times.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// One step of the timeline: at most one change, then its checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Shown in reports (default: the change).
    #[serde(default)]
    pub name: Option<String>,
    /// When, counted from `up` ("1.5s").
    #[serde(default)]
    pub at: Option<String>,
    /// When, counted from the end of the previous step ("500ms"; default 0).
    #[serde(default)]
    pub after: Option<String>,
    /// Take a link down: its two ends, ["client", "left"] or ["r:eth1", "server"].
    #[serde(default)]
    pub link_down: Option<Vec<String>>,
    #[serde(default)]
    pub link_up: Option<Vec<String>>,
    /// Change a link's rate, loss, delay.
    #[serde(default)]
    pub impair: Option<ImpairSpec>,
    /// Cut the lab into groups of nodes (nodes not named form one more group).
    #[serde(default)]
    pub partition: Option<Vec<Vec<String>>>,
    #[serde(default)]
    pub heal: bool,
    /// Take every link of a node down.
    #[serde(default)]
    pub isolate: Option<String>,
    #[serde(default)]
    pub restore: Option<String>,
    /// Stop a node's start commands.
    #[serde(default)]
    pub stop: Option<String>,
    /// Start a node's start commands (again).
    #[serde(default)]
    pub start: Option<String>,
    /// Back to the file's state.
    #[serde(default)]
    pub reset: bool,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
}

/// A change of a link's properties; what is not given stays as it is ("none" removes it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairSpec {
    /// The link's two ends.
    pub link: Vec<String>,
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default)]
    pub loss: Option<String>,
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub jitter: Option<String>,
    #[serde(default)]
    pub reorder: Option<String>,
}

impl Topology {
    /// Reads a lab file: TOML, or JSON when it ends in .json.
    pub fn from_file(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
            what: format!("reading lab file {}", path.display()),
            source,
        })?;
        let mut topo = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<Topology>(&text).map_err(|e| LabError::Parse {
                file: path.display().to_string(),
                message: e.to_string(),
            })?
        } else {
            Topology::from_toml(&text).map_err(|e| match e {
                LabError::Parse { message, .. } => LabError::Parse {
                    file: path.display().to_string(),
                    message,
                },
                other => other,
            })?
        };
        if topo.name.is_none() {
            topo.name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| s.replace('_', "-"));
        }
        Ok(topo)
    }

    pub fn from_toml(text: &str) -> Result<Topology> {
        toml::from_str(text).map_err(|e| LabError::Parse {
            file: "(text)".into(),
            message: e.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("lab")
    }
}
