//! The two kernel switches the firewall needs, in the current network namespace: forwarding
//! (masquerade and published ports route between the bridge and the rest) and route_localnet
//! on a bridge (so that 127.0.0.0/8 sources, rewritten by masquerade, may be routed to it).

use super::FirewallError;
use crate::sys::sysctl;

fn read(path: &str) -> Result<bool, FirewallError> {
    sysctl::is_on(path).map_err(|source| FirewallError::Sysctl {
        path: path.into(),
        source,
    })
}

fn write(path: &str) -> Result<(), FirewallError> {
    sysctl::turn_on(path).map_err(|source| FirewallError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Turns on forwarding for the families asked for; a notice for each switch that was off.
pub fn ensure_forwarding(v4: bool, v6: bool) -> Result<Vec<String>, FirewallError> {
    let mut notices = Vec::new();
    for (wanted, path, name) in [
        (v4, sysctl::IPV4_FORWARD, "net.ipv4.ip_forward"),
        (v6, sysctl::IPV6_FORWARD, "net.ipv6.conf.all.forwarding"),
    ] {
        if wanted && sysctl::exists(path) && !read(path)? {
            write(path)?;
            notices.push(format!(
                "enabled {name} (masquerade and published ports route through the host)"
            ));
        }
    }
    Ok(notices)
}

/// Sets route_localnet on `bridge`; a notice when it was off.
pub fn ensure_route_localnet(bridge: &str) -> Result<Option<String>, FirewallError> {
    let path = sysctl::route_localnet(bridge).ok_or_else(|| {
        FirewallError::Config(format!("bridge name {bridge:?} cannot name a sysctl"))
    })?;
    if read(&path)? {
        return Ok(None);
    }
    write(&path)?;
    Ok(Some(format!(
        "enabled net.ipv4.conf.{bridge}.route_localnet (published ports answer on 127.0.0.1)"
    )))
}
