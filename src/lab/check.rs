//! Checks: TCP connect, UDP echo, ICMP echo (netbox's own, over a raw socket: no ping binary
//! needed) and their "expect unreachable" forms, run from inside the source node. Checks from
//! different nodes run in parallel, one thread per node that enters it once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::topology::{CheckPlan, Expect, Plan, Probe};
use super::Result;
use crate::sys::netns::NetNs;
use crate::sys::tuntap::packet::checksum;

/// How long a probe waits for an answer: long enough for one retransmission of a lost SYN or
/// ARP request (1 s each), so a reachable target never fails on a single lost packet.
pub const TIMEOUT: Duration = Duration::from_millis(2500);
/// How many source nodes probe at the same time.
pub const PARALLEL_NODES: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub passed: bool,
    /// What was seen ("connected", "connection refused", "timed out", ...).
    pub detail: String,
    pub millis: f64,
}

/// Runs `checks`, each from inside its source node; results in the checks' order.
pub fn run_checks<'a>(
    _plan: &Plan,
    checks: &[CheckPlan],
    node: impl Fn(&str) -> Result<&'a NetNs>,
) -> Result<Vec<CheckResult>> {
    let mut by_node: BTreeMap<&str, Vec<(usize, &CheckPlan)>> = BTreeMap::new();
    for (i, c) in checks.iter().enumerate() {
        by_node.entry(&c.from).or_default().push((i, c));
    }
    let mut groups = vec![];
    for (name, list) in by_node {
        groups.push((node(name)?, list));
    }
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    // A bounded number of nodes probe at once: fifty nodes ARPing each other all at once flood
    // the bridge past the kernel's backlog, and a lost ARP costs a one-second retry.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = groups.len().clamp(1, PARALLEL_NODES);
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((ns, list)) = groups.get(i) else {
                            break;
                        };
                        let r = ns.run_in(|| {
                            list.iter()
                                .map(|(i, c)| (*i, run_one(c)))
                                .collect::<Vec<_>>()
                        });
                        done.push(r);
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    for outcome in outcomes {
        let lists =
            outcome.map_err(|_| super::LabError::Invalid("a check thread panicked".into()))?;
        for list in lists {
            for (i, r) in list? {
                results[i] = Some(r);
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Runs one check in the calling thread's namespace.
pub fn run_one(c: &CheckPlan) -> CheckResult {
    let start = Instant::now();
    let outcome = probe(c.probe, c.addr);
    let passed = match c.expect {
        Expect::Reach => outcome.is_ok(),
        Expect::Unreachable => outcome.is_err(),
    };
    CheckResult {
        check: c.describe(),
        passed,
        detail: match outcome {
            Ok(s) => s,
            Err(e) => e,
        },
        millis: start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Ok(what answered) or Err(why not).
pub fn probe(probe: Probe, addr: IpAddr) -> std::result::Result<String, String> {
    match probe {
        Probe::Tcp(port) => TcpStream::connect_timeout(&SocketAddr::new(addr, port), TIMEOUT)
            .map(|_| "connected".to_string())
            .map_err(describe_io),
        Probe::Udp(port) => udp_echo(SocketAddr::new(addr, port)),
        Probe::Ping => ping(addr),
    }
}

fn describe_io(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

fn udp_echo(to: SocketAddr) -> std::result::Result<String, String> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| "bad bind address".to_string())?
    } else {
        "[::]:0"
            .parse()
            .map_err(|_| "bad bind address".to_string())?
    };
    let sock = UdpSocket::bind(bind).map_err(describe_io)?;
    sock.connect(to).map_err(describe_io)?;
    sock.set_read_timeout(Some(TIMEOUT)).map_err(describe_io)?;
    let token = b"netbox-lab-check";
    sock.send(token).map_err(describe_io)?;
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).map_err(describe_io)?;
    if &buf[..n] == token {
        Ok("echoed".into())
    } else {
        Err("unexpected reply".into())
    }
}

/// An ICMP echo request: type 8, id, seq 1, a payload.
pub fn echo_request(id: u16) -> Vec<u8> {
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"netbox-lab-ping!");
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// One ICMP echo over a raw socket (IPv4).
fn ping(addr: IpAddr) -> std::result::Result<String, String> {
    let IpAddr::V4(v4) = addr else {
        return Err("ping checks support IPv4 only".into());
    };
    // SAFETY: plain socket creation; closed below on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(format!(
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is fresh and owned here.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ (nix::unistd::gettid().as_raw() as u16);
    let pkt = echo_request(id);
    // SAFETY: a zeroed sockaddr_in is valid to fill in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_addr.s_addr = u32::from(v4).to_be();
    // SAFETY: sends the packet to a properly sized sockaddr_in.
    let sent = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            std::ptr::addr_of!(sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if sent < 0 {
        return Err(describe_io(std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        // The field types differ between C libraries (musl deprecates the aliases).
        let tv = libc::timeval {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX as _),
            tv_usec: left.subsec_micros() as _,
        };
        // SAFETY: sets a receive timeout from a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: receives into a buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(describe_io(std::io::Error::last_os_error()));
        }
        let got = &buf[..n as usize];
        let ihl = usize::from(got.first().copied().unwrap_or(0) & 0x0f) * 4;
        let (Some(src), Some(icmp)) = (got.get(12..16), got.get(ihl..)) else {
            continue;
        };
        let from = std::net::Ipv4Addr::new(src[0], src[1], src[2], src[3]);
        if icmp.len() >= 8 && from == v4 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            drop(owned);
            return Ok("echo reply".into());
        }
        if icmp.len() >= 8 && icmp[0] == 3 {
            // Destination unreachable about our request.
            return Err(format!("destination unreachable from {from}"));
        }
    }
}

/// The summary line: "N passed, M failed".
pub fn summary(results: &[CheckResult]) -> String {
    let passed = results.iter().filter(|r| r.passed).count();
    format!("{passed} passed, {} failed", results.len() - passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let pkt = echo_request(0x1234);
        assert_eq!(checksum(&pkt), 0);
        assert_eq!(pkt[0], 8);
    }
}
