//! The two kernel switches the firewall needs, in the current network namespace: forwarding
//! (masquerade and published ports route between the bridge and the rest) and route_localnet
//! on a bridge (so that 127.0.0.0/8 sources, rewritten by masquerade, may be routed to it).

use std::path::Path;

use super::FirewallError;

fn read(path: &str) -> Result<bool, FirewallError> {
    std::fs::read_to_string(path)
        .map(|v| v.trim() != "0")
        .map_err(|source| FirewallError::Sysctl {
            path: path.into(),
            source,
        })
}

fn write(path: &str) -> Result<(), FirewallError> {
    std::fs::write(path, "1").map_err(|source| FirewallError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Turns on forwarding for the families asked for; a notice for each switch that was off.
pub fn ensure_forwarding(v4: bool, v6: bool) -> Result<Vec<String>, FirewallError> {
    let mut notices = Vec::new();
    for (wanted, path, name) in [
        (v4, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            v6,
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        if wanted && Path::new(path).exists() && !read(path)? {
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
    if bridge.contains('/') || bridge.starts_with('.') {
        return Err(FirewallError::Config(format!(
            "bridge name {bridge:?} cannot name a sysctl"
        )));
    }
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    if read(&path)? {
        return Ok(None);
    }
    write(&path)?;
    Ok(Some(format!(
        "enabled net.ipv4.conf.{bridge}.route_localnet (published ports answer on 127.0.0.1)"
    )))
}
