//! Kernel switches under /proc/sys, in the calling thread's network namespace: the one place
//! that reads and writes them.

use std::io;
use std::path::Path;

/// IPv4 forwarding.
pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// IPv6 forwarding on every interface.
pub const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// True when the switch at `path` is on (anything but "0").
pub fn is_on(path: &str) -> io::Result<bool> {
    std::fs::read_to_string(path).map(|v| v.trim() != "0")
}

/// Turns the switch at `path` on.
pub fn turn_on(path: &str) -> io::Result<()> {
    std::fs::write(path, b"1")
}

/// True when the switch exists (IPv6 may be disabled in the kernel).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// route_localnet of interface `ifname`, None when the name cannot name a sysctl.
pub fn route_localnet(ifname: &str) -> Option<String> {
    (!ifname.contains('/') && !ifname.starts_with('.') && !ifname.is_empty())
        .then(|| format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet"))
}
