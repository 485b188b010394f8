//! IP address management, the model: host-local's configuration and address arithmetic.
//!
//! `config` validates what a conflist or the command line asks for, `range` is the pure
//! arithmetic of which addresses may be handed out. The leases themselves are kept by
//! `provision::leases`.

pub mod config;
pub mod range;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use thiserror::Error;

pub use config::{default_data_dir, range_sets_from_json, IpamConfig, RangeSet, RouteSpec};
pub use range::Range;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error("ipam: bad CIDR {value:?}: {reason}")]
    BadCidr { value: String, reason: String },
    #[error("ipam: {field}: {value:?} is not an IP address")]
    BadAddress { field: &'static str, value: String },
    #[error("ipam: {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("ipam: {field} {ip} is outside subnet {subnet}")]
    OutsideSubnet {
        field: &'static str,
        ip: IpAddr,
        subnet: IpNetwork,
    },
    #[error(
        "ipam: subnet {subnet} is too small to allocate from (at most /30 for IPv4, /126 for IPv6)"
    )]
    SubnetTooSmall { subnet: IpNetwork },
    #[error("ipam: subnet {subnet} covers every address; give a real subnet")]
    SubnetEverything { subnet: IpNetwork },
    #[error("ipam: rangeStart {start} is after rangeEnd {end}")]
    StartAfterEnd { start: IpAddr, end: IpAddr },
    #[error("ipam: range {range} mixes address families with the rest of its range set (one family per set)")]
    MixedFamilies { range: String },
    #[error("ipam: ranges {a} and {b} overlap")]
    Overlap { a: String, b: String },
    #[error("ipam: no range configured (set \"ranges\" or \"subnet\", or have the runtime pass runtimeConfig.ipRanges)")]
    NoRanges,
    #[error("network name {name:?} cannot name a lease directory: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("network \"{network}\": requested address {ip} is in none of its ranges ({ranges})")]
    RequestedOutside {
        network: String,
        ip: IpAddr,
        ranges: String,
    },
    #[error(
        "network \"{network}\": requested address {ip} is reserved (network, broadcast or gateway)"
    )]
    RequestedReserved { network: String, ip: IpAddr },
    #[error("network \"{network}\": requested addresses {a} and {b} fall in the same range set")]
    RequestedTwice {
        network: String,
        a: IpAddr,
        b: IpAddr,
    },
    #[error("network \"{network}\": requested address {ip} is already taken by {owner}")]
    RequestedTaken {
        network: String,
        ip: IpAddr,
        owner: String,
    },
    #[error("network \"{network}\": no free address left in {ranges}")]
    Exhausted { network: String, ranges: String },
    #[error("ipam: invalid owner: {0}")]
    BadOwner(String),
    #[error("ipam store {path:?}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}
