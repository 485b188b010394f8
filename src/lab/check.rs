//! Checks: TCP connect, UDP echo, ICMP echo and round trip (netbox's own, over a raw socket: no
//! ping binary needed), TCP throughput (netbox's own sender and sink), commands (`exec`, with an
//! optional output pattern), and their "expect unreachable" forms, run from inside the source
//! node, tried again while `within` or `retries` allow. Checks from different nodes run in
//! parallel, one thread per node that enters it once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::hosts::HostsFile;
use super::topology::{CheckPlan, Expect, Plan, Probe};
use super::Result;
use crate::sys::netns::NetNs;
use crate::sys::tuntap::packet::checksum;

/// Pause between two tries of a check.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Shortest wait for an answer when `within` is nearly over.
const MIN_TIMEOUT: Duration = Duration::from_millis(200);

/// What checks need besides the check itself: the lab's plan, its nodes and its hosts file.
pub struct Env<'a> {
    pub plan: &'a Plan,
    pub node: &'a (dyn Fn(&str) -> Result<&'a NetNs> + Sync),
    pub hosts: Option<&'a HostsFile>,
}

/// How long a probe waits for an answer: long enough for one retransmission of a lost SYN or
/// ARP request (1 s each), so a reachable target never fails on a single lost packet.
pub const TIMEOUT: Duration = Duration::from_millis(2500);
/// How many source nodes probe at the same time.
pub const PARALLEL_NODES: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: String,
    pub passed: bool,
    /// What was seen ("connected", "connection refused", "timed out", ...).
    pub detail: String,
    pub millis: f64,
    /// How many times it was tried.
    pub attempts: u32,
}

/// Runs `checks`, each from inside its source node; results in the checks' order.
pub fn run_checks(env: &Env, checks: &[CheckPlan]) -> Result<Vec<CheckResult>> {
    let mut by_node: BTreeMap<&str, Vec<(usize, &CheckPlan)>> = BTreeMap::new();
    for (i, c) in checks.iter().enumerate() {
        by_node.entry(&c.from).or_default().push((i, c));
    }
    let mut groups = vec![];
    for (name, list) in by_node {
        groups.push(((env.node)(name)?, list));
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
                                .map(|(i, c)| (*i, run_one(env, c)))
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

/// Runs one check in the calling thread's namespace, again while `within`/`retries` allow.
pub fn run_one(env: &Env, c: &CheckPlan) -> CheckResult {
    let start = Instant::now();
    let deadline = c.within.map(|w| start + w);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let timeout = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .clamp(MIN_TIMEOUT, TIMEOUT),
            None => TIMEOUT,
        };
        let outcome = probe_in(env, c, timeout);
        let passed = match c.expect {
            Expect::Reach => outcome.is_ok(),
            Expect::Unreachable => outcome.is_err(),
        };
        let again = !passed
            && (attempts <= c.retries
                || deadline.is_some_and(|d| Instant::now() + RETRY_PAUSE < d));
        if !again {
            return CheckResult {
                check: c.describe(),
                passed,
                detail: match outcome {
                    Ok(s) => s,
                    Err(e) => e,
                },
                millis: start.elapsed().as_secs_f64() * 1000.0,
                attempts,
            };
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// One try of a check: Ok(what answered) or Err(why not).
fn probe_in(env: &Env, c: &CheckPlan, timeout: Duration) -> std::result::Result<String, String> {
    match &c.probe {
        Probe::Exec { command, output } => exec(env.hosts, command, output.as_deref(), timeout),
        Probe::Throughput {
            min_bytes,
            duration,
        } => {
            let target = env
                .plan
                .node(&c.to)
                .map(|n| n.name.as_str())
                .or_else(|| env.plan.node_with_address(c.addr))
                .ok_or_else(|| format!("{} is no node of the lab", c.to))?;
            let ns = (env.node)(target).map_err(|e| e.to_string())?;
            let rate = throughput(ns, c.addr, *duration, timeout)?;
            let text = format!("{}/s", super::topology::format_rate(rate));
            if rate >= *min_bytes {
                Ok(text)
            } else {
                Err(format!("only {text}"))
            }
        }
        Probe::Rtt { max } => {
            let rtt = ping(c.addr, timeout)?;
            let text = format!("round trip {:.3} ms", rtt.as_secs_f64() * 1000.0);
            if rtt <= *max {
                Ok(text)
            } else {
                Err(text)
            }
        }
        other => probe(other, c.addr, timeout),
    }
}

/// Ok(what answered) or Err(why not).
pub fn probe(
    probe: &Probe,
    addr: IpAddr,
    timeout: Duration,
) -> std::result::Result<String, String> {
    match probe {
        Probe::Tcp(port) => TcpStream::connect_timeout(&SocketAddr::new(addr, *port), timeout)
            .map(|_| "connected".to_string())
            .map_err(describe_io),
        Probe::Udp(port) => udp_echo(SocketAddr::new(addr, *port), timeout),
        Probe::Ping => ping(addr, timeout)
            .map(|rtt| format!("echo reply in {:.3} ms", rtt.as_secs_f64() * 1000.0)),
        _ => Err("this check needs the lab (use run_checks)".into()),
    }
}

/// `sh -c command` in the calling thread's namespace, killed after `timeout`.
fn exec(
    hosts: Option<&HostsFile>,
    command: &str,
    pattern: Option<&str>,
    timeout: Duration,
) -> std::result::Result<String, String> {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(h) = hosts {
        h.bind_on_exec(&mut cmd).map_err(|e| e.to_string())?;
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting sh: {e}"))?;
    // Output is read on threads, so a chatty command cannot block on a full pipe.
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut out);
            }
            out
        })
    };
    let out_t = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout.max(Duration::from_secs(10));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".into());
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
    if !status.success() {
        return Err(format!(
            "{status}{}",
            match first_line(&stderr) {
                l if l.is_empty() => String::new(),
                l => format!(": {l}"),
            }
        ));
    }
    match pattern {
        Some(p) => {
            let re = regex::Regex::new(p).map_err(|e| e.to_string())?;
            if re.is_match(&stdout) {
                Ok(format!("exit 0, output matches /{p}/"))
            } else {
                Err(format!(
                    "output does not match /{p}/: {:?}",
                    first_line(&stdout)
                ))
            }
        }
        None => Ok("exit 0".into()),
    }
}

/// Bytes per second from the calling thread's namespace to a sink netbox runs in `sink_ns`,
/// measured by the sink (from its first byte to the end of the stream).
fn throughput(
    sink_ns: &NetNs,
    addr: IpAddr,
    duration: Duration,
    timeout: Duration,
) -> std::result::Result<u64, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let listener = sink_ns
        .run_in(move || TcpListener::bind(bind))
        .map_err(|e| e.to_string())?
        .map_err(describe_io)?;
    let port = listener.local_addr().map_err(describe_io)?.port();
    let sink = std::thread::spawn(move || -> std::result::Result<u64, String> {
        let (mut conn, _) = listener.accept().map_err(describe_io)?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut first = None;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
                Err(e) => return Err(describe_io(e)),
            }
        }
        let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
        Ok(if secs > 0.0 {
            (total as f64 / secs) as u64
        } else {
            0
        })
    });
    let send = || -> std::result::Result<(), String> {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout)
            .map_err(describe_io)?;
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let buf = vec![0x5au8; 64 * 1024];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            conn.write_all(&buf).map_err(describe_io)?;
        }
        Ok(())
    };
    let sent = send();
    if let Err(e) = sent {
        // Wake the sink still waiting in accept.
        let _ =
            TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_millis(100));
        let _ = sink.join();
        return Err(e);
    }
    sink.join().map_err(|_| "the sink panicked".to_string())?
}

fn describe_io(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

fn udp_echo(to: SocketAddr, timeout: Duration) -> std::result::Result<String, String> {
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
    sock.set_read_timeout(Some(timeout)).map_err(describe_io)?;
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

/// One ICMP echo over a raw socket (IPv4): its round trip.
fn ping(addr: IpAddr, timeout: Duration) -> std::result::Result<Duration, String> {
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
    let sent_at = Instant::now();
    let deadline = sent_at + timeout;
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
            return Ok(sent_at.elapsed());
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
