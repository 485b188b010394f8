//! `netbox run`: a command in a fresh network namespace, attached to a bridge network, with its
//! own resolv.conf, hosts and hostname, cleaned up however it ends.
//!
//! Teardown is lazy by design. The namespace is referenced only by netbox (until the command
//! starts) and by the command; the command dies with netbox (PDEATHSIG); when the last process
//! of the namespace exits, the kernel destroys it and with it both ends of the veth. The lease
//! records netbox's pid and start time, so even after a SIGKILL it is reclaimed by the next run.
//! No synchronous veth deletion (tens of ms) is ever on the exit path.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use crate::attach::{self, AttachSpec, Attachment};
use crate::dns;
use crate::ipam::{Owner, Store};
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::network::{self, NetworkSpec};
use crate::process::{self, NetSetup, PrivateFiles, SandboxSpec, UserSpec};
use crate::{Error, Result};

/// How the sandbox is networked.
#[derive(Debug, Clone)]
pub enum NetMode {
    /// Attached to a bridge network (built-in or from a conflist).
    Bridge {
        network: String,
        subnet: Option<IpNetwork>,
    },
    /// Loopback only; works without privileges through a user namespace.
    None,
}

/// Everything `netbox run` needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub net: NetMode,
    pub ips: Vec<IpNetwork>,
    pub ifname: String,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub hostname: Option<String>,
    pub dns: Vec<IpAddr>,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub keep_caps: Vec<caps::Capability>,
    pub user: Option<UserSpec>,
    /// Write the sandbox interface's packets to this pcap file (bridge networking only).
    pub capture: Option<PathBuf>,
}

/// True when netbox can build bridge networks: it needs CAP_NET_ADMIN for netlink and
/// CAP_SYS_ADMIN for namespaces, in the initial user namespace.
pub fn privileged() -> bool {
    use caps::{has_cap, CapSet, Capability};
    has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false)
        && has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false)
}

/// Runs the command and returns its shell-style exit code. Call it from the main thread before
/// any other thread exists: it blocks the forwarded signals for the whole process.
pub fn run(spec: RunSpec) -> Result<i32> {
    process::block_forwarded_signals()?;
    if spec.capture.is_some() && matches!(spec.net, NetMode::None) {
        return Err(Error::Config(
            "--capture needs bridge networking: with --net none there is no interface to capture"
                .into(),
        ));
    }
    match &spec.net {
        NetMode::None if !privileged() => exec(&spec, NetSetup::NewRootless),
        // The child makes its namespace and brings loopback up itself.
        NetMode::None => exec(&spec, NetSetup::New),
        NetMode::Bridge { network, subnet } => {
            if !privileged() {
                return Err(Error::Config(
                    "bridge networking needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN on the host); \
                     run with sudo, or use --net none for a loopback-only sandbox without privileges"
                        .into(),
                ));
            }
            let network = network::resolve(network, &network::conf_dirs(), *subnet)?;
            run_bridged(&spec, &network)
        }
    }
}

fn run_bridged(spec: &RunSpec, network: &NetworkSpec) -> Result<i32> {
    let start = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(us = start.elapsed().as_micros() as u64, "{what}");
    // File system work first: while the child copies the mount table (unshare(CLONE_NEWNS))
    // path lookups here stall, reading /proc/self/stat for half a millisecond.
    let store = Store::open(&data_dir(network), &network.name)?;
    let owner = Owner::current_process()?;
    // Then fork: the child creates the namespace (about half a millisecond in the kernel)
    // while this process checks the host and allocates addresses.
    let mut child = process::prepare(&sandbox_spec(spec, NetSetup::New))?;
    let wired = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let (mut bridge, routes) =
            futures::try_join!(host.link_by_name(&network.bridge), host.routes())?;
        if network
            .check_no_overlap(&routes, bridge.as_ref().map(|b| b.index))
            .is_err()
            && bridge.is_none()
        {
            // A concurrent run may have made the bridge (and its subnet route) between the two
            // answers: look again before calling its own route an overlap.
            bridge = host.link_by_name(&network.bridge).await?;
        }
        network.check_no_overlap(&routes, bridge.as_ref().map(|b| b.index))?;
        if let Err(e) = store.reclaim_dead() {
            tracing::warn!(%e, "reclaiming leases of dead sandboxes failed");
        }
        let addresses = allocate(&store, network, &owner, &spec.ips)?;
        phase("addresses allocated");
        let bridge = attach::ensure_bridge(&host, network, bridge).await?;
        let (ns, socket) = child.take_network()?;
        let ns = NetNs::from_fd(ns)?;
        let sandbox = Netlink::from_fd(socket)?;
        phase("namespace received");
        let attach_spec = AttachSpec {
            host_ifname: attach::random_host_ifname(),
            ifname: spec.ifname.clone(),
            addresses,
            routes: network.ipam.routes.iter().map(|r| (r.dst, r.gw)).collect(),
            mtu: spec.mtu,
            mac: spec.mac,
            owner: format!("netbox:{}:pid{}", network.name, std::process::id()),
        };
        let attached: Attachment =
            attach::attach_to_bridge(&host, &sandbox, &ns, network, &bridge, &attach_spec).await?;
        Ok::<_, Error>((attached, ns))
    });
    // The runtime and its sockets are gone here: only the child holds the namespace, which
    // dies with CMD and takes the veth with it.
    let (attached, ns) = match wired {
        Ok(a) => a,
        Err(e) => {
            drop(child); // kills the waiting child, and with it the namespace
            let _ = store.release(&owner);
            return Err(e);
        }
    };
    phase("attached");
    // The capture's socket keeps the namespace alive until CMD ends and the capture stops.
    let capture = match &spec.capture {
        Some(path) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            match crate::lab::capture::start(&ns, &spec.ifname, path, stop.clone()) {
                Ok(thread) => Some((stop, thread)),
                Err(e) => {
                    drop(child);
                    let _ = store.release(&owner);
                    return Err(Error::Config(e.to_string()));
                }
            }
        }
        None => None,
    };
    drop(ns);
    let ips: Vec<IpAddr> = attached.addresses.iter().map(|a| a.ip()).collect();
    let result = start_and_wait(child, &private_files(spec, &ips));
    if let Some((stop, thread)) = capture {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    phase("command ended");
    if let Err(e) = store.release(&owner) {
        tracing::warn!(%e, "releasing the lease failed; the next run reclaims it");
    }
    phase("lease released");
    result
}

fn allocate(
    store: &Store,
    network: &NetworkSpec,
    owner: &Owner,
    ips: &[IpNetwork],
) -> Result<Vec<IpNetwork>> {
    for ip in ips {
        let fits = network.subnets().iter().any(|s| {
            s.contains(ip.ip())
                && (ip.prefix() == s.prefix() || ip.prefix() == if ip.is_ipv4() { 32 } else { 128 })
        });
        if !fits {
            return Err(Error::Config(format!(
                "--ip {ip}: not in network \"{}\" ({})",
                network.name,
                network
                    .subnets()
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let requested: Vec<IpAddr> = ips.iter().map(|i| i.ip()).collect();
    let leases = store.allocate(&network.ipam, owner, &requested)?;
    Ok(leases.into_iter().map(|a| a.address).collect())
}

fn exec(spec: &RunSpec, net: NetSetup) -> Result<i32> {
    let child = process::prepare(&sandbox_spec(spec, net))?;
    start_and_wait(child, &private_files(spec, &[]))
}

/// Starts the prepared child unless a forwarded signal came during set-up (blocked until now):
/// then CMD never starts and netbox ends as if it had been killed by that signal.
fn start_and_wait(child: process::Pending, files: &PrivateFiles) -> Result<i32> {
    if let Some(sig) = process::take_pending_signal() {
        drop(child);
        return Ok(128 + sig as i32);
    }
    Ok(child.start(files)?.wait()?)
}

fn sandbox_spec(spec: &RunSpec, net: NetSetup) -> SandboxSpec {
    SandboxSpec {
        program: spec.program.clone(),
        args: spec.args.clone(),
        net,
        hostname: spec.hostname.clone(),
        private_files: true,
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        keep_caps: spec.keep_caps.clone(),
        user: spec.user.clone().or_else(UserSpec::from_sudo_env),
    }
}

/// The sandbox's resolv.conf and hosts (naming it on its addresses).
fn private_files(spec: &RunSpec, addrs: &[IpAddr]) -> PrivateFiles {
    let resolv = dns::host_resolv_conf(&spec.dns);
    for warning in &resolv.warnings {
        eprintln!("netbox: warning: {warning}");
    }
    let hostname = spec.hostname.clone().unwrap_or_else(host_hostname);
    PrivateFiles {
        resolv_conf: resolv.content.into_bytes(),
        hosts: dns::hosts(&hostname, addrs).into_bytes(),
    }
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn data_dir(network: &NetworkSpec) -> PathBuf {
    network
        .ipam
        .data_dir
        .clone()
        .unwrap_or_else(crate::ipam::store::default_data_dir)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the netlink runtime".into(),
            source,
        })
}
