//! The operations: ADD, DEL, CHECK, GC, STATUS (one module each), over the same provisioning
//! path and lease store as `netbox run`.
//!
//! State lives in two places only, both found again from (container id, ifname) without any file
//! of the plugin's own: the lease store (owner `Cni { container_id, ifname }`) and the host veth,
//! whose name is a hash of the pair and whose alias records the owner. So DEL needs neither the
//! namespace nor a prevResult, and GC finds every attachment of a network by listing links.

mod add;
mod check;
mod del;
mod gc;
mod status;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::conf::{Command, Env, NetConf};
use super::{code, CniError, VersionResult};
use crate::firewall::FirewallSpec;
use crate::model::owner::{cni_host_ifname, cni_host_mac, Owner, CNI_ALIAS_PREFIX};
use crate::sys::netlink::Link;
use crate::sys::netns::NetNs;
use crate::usecase::cni::queue::Place;

pub use del::{reap, REAP_ENV};

/// Runs the operation `env.command` asks for; the JSON to print, if any.
pub fn execute(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    place: Place,
) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => {
            let _turn = place.turn(conf);
            add::add(env, conf, stdin).map(|r| Some(r.to_json(conf.version)))
        }
        Command::Del => {
            let _turn = place.turn(conf);
            del::del(env, conf, stdin).map(|()| None)
        }
        Command::Check => check::check(env, conf, stdin).map(|()| None),
        Command::Gc => gc::gc(env, conf, stdin).map(|()| None),
        Command::Status => status::status(env, conf, stdin).map(|()| None),
        Command::Version => version(stdin).map(Some),
    }
}

/// VERSION: the versions netbox-cni speaks, answering in the input's `cniVersion`.
pub fn version(stdin: &[u8]) -> Result<Value, CniError> {
    serde_json::to_value(VersionResult::answering(stdin))
        .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))
}

/// True when `link` is the host end netbox made for this attachment: its alias says so, or it
/// carries the attachment's derived name and MAC.
pub(super) fn is_ours(link: &Link, env: &Env) -> bool {
    if let Some(alias) = &link.alias {
        return alias.starts_with(CNI_ALIAS_PREFIX);
    }
    link.name == cni_host_ifname(&env.container_id, &env.ifname)
        && link.mac == Some(cni_host_mac(&env.container_id, &env.ifname))
}

pub(super) fn owner(env: &Env) -> Owner {
    Owner::Cni {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// The attachment's firewall as the configuration asks for it.
pub(super) fn firewall_spec(
    env: &Env,
    conf: &NetConf,
    mac: Option<[u8; 6]>,
    addresses: Vec<IpNetwork>,
) -> FirewallSpec {
    let mut spec = FirewallSpec::new(
        owner(env),
        &conf.net.bridge,
        &cni_host_ifname(&env.container_id, &env.ifname),
    );
    spec.mac = mac;
    spec.addresses = addresses;
    spec.masquerade = conf.net.ip_masq;
    spec.no_masquerade_to = conf.net.no_masquerade_to.clone();
    spec.ports = conf.port_mappings.clone();
    spec.spoof_check = conf.net.mac_spoof_chk;
    spec.isolate = conf.net.isolate;
    spec.isolate_networks = conf.net.isolate_networks;
    spec.block_host = conf.net.block_host;
    spec
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    Ok(crate::sys::runtime::current_thread()?)
}

pub(super) fn netns_of(env: &Env, missing_code: u32) -> Result<(NetNs, String), CniError> {
    let path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
    let ns =
        NetNs::open(path).map_err(|e| CniError::new(missing_code, format!("CNI_NETNS: {e}")))?;
    Ok((ns, path.display().to_string()))
}

pub(super) fn io_failure(e: crate::Error) -> CniError {
    CniError::new(code::IO_FAILURE, e.to_string())
}
