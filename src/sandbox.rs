//! `netbox run`: a command in a fresh network namespace, attached to a bridge network, with its
//! own resolv.conf, hosts and hostname, cleaned up however it ends.
//!
//! Teardown is lazy by design. The namespace is referenced only by netbox (until the command
//! starts) and by the command; the command dies with netbox (PDEATHSIG); when the last process
//! of the namespace exits, the kernel destroys it and with it both ends of the veth. The lease
//! records netbox's pid and start time, so even after a SIGKILL it is reclaimed by the next run.
//! No synchronous veth deletion (tens of ms) is ever on the exit path.
//!
//! Firewall rules (masquerade, published ports, isolation; only when asked for) are the
//! exception the kernel does not clean up: they are tagged with the same owner as the lease,
//! removed when CMD ends by an nft transaction netbox does not wait for, and those of a run
//! killed with SIGKILL are removed by the next run that makes rules (or by GC).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use crate::attach::{self, AttachSpec, Attachment};
use crate::dns;
use crate::firewall::{self, FirewallSpec, PortMapping};
use crate::ipam::{Owner, Store};
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::network::{self, NetworkSpec};
use crate::process::{self, NetSetup, PrivateFiles, SandboxSpec, UserSpec};
use crate::tuntap::{TunBuilder, TunRequest};
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
    /// `--name`: the sandbox appears as /run/netns/NAME while it lives.
    pub name: Option<String>,
    /// TUN devices made inside the sandbox before CMD starts (`--tun NAME[:ADDR/LEN]`).
    pub tuns: Vec<TunRequest>,
    /// Published ports (`-p`).
    pub publish: Vec<PortMapping>,
    /// Masquerade traffic leaving the network; None: the network's default (off for the
    /// built-in network, the conflist's `ipMasq` otherwise).
    pub masquerade: Option<bool>,
    /// Only the gateway is reachable on the bridge.
    pub isolate: bool,
    /// The sandbox cannot reach the host's own addresses.
    pub block_host: bool,
    /// Write the sandbox interface's packets to this pcap file (bridge networking only).
    pub capture: Option<PathBuf>,
}

impl RunSpec {
    /// `program args` on the built-in network with everything else as `netbox run` defaults
    /// it; set the fields that differ.
    pub fn command(program: impl Into<OsString>, args: Vec<OsString>) -> RunSpec {
        RunSpec {
            net: NetMode::Bridge {
                network: network::DEFAULT_NETWORK.into(),
                subnet: None,
            },
            ips: vec![],
            ifname: "eth0".into(),
            mtu: None,
            mac: None,
            hostname: None,
            dns: vec![],
            program: program.into(),
            args,
            env: vec![],
            cwd: None,
            keep_caps: vec![],
            user: None,
            name: None,
            tuns: vec![],
            publish: vec![],
            masquerade: None,
            isolate: false,
            block_host: false,
            capture: None,
        }
    }
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
        NetMode::None if spec.name.is_some() => Err(Error::Config(
            "--name needs a bridge network (--net bridge)".into(),
        )),
        NetMode::None if !privileged() && !spec.tuns.is_empty() => Err(Error::Config(
            "--tun needs root: the TUN device is made by netbox in the sandbox's namespace, \
             which a rootless sandbox keeps inside its own user namespace"
                .into(),
        )),
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
    if let Some(name) = &spec.name {
        crate::netns::validate_name(name)?;
    }
    // Named sandboxes of runs that were killed: their namespace mounts would keep them alive.
    crate::gc::reap_dead_runs();
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
            owner: crate::state::alias(&network.name, &owner)?,
        };
        let attached: Attachment =
            attach::attach_to_bridge(&host, &sandbox, &ns, network, &bridge, &attach_spec).await?;
        create_tuns(spec, &sandbox, &ns).await?;
        let named = match &spec.name {
            Some(name) => Some(crate::named::publish_run(
                name,
                network,
                &owner,
                &ns,
                &attach_spec.host_ifname,
                &attached.addresses,
            )?),
            None => None,
        };
        Ok::<_, Error>((attached, named, ns))
    });
    // The runtime and its sockets are gone here: only the child holds the namespace, which
    // dies with CMD and takes the veth with it.
    let firewall = wired.and_then(|(attached, named, ns)| {
        let applied = firewall_spec(spec, network, &owner, &attached).and_then(|fw| {
            if let Some(fw) = &fw {
                for notice in firewall::apply(fw)?.notices {
                    eprintln!("netbox: {notice}");
                }
                phase("firewall applied");
            }
            Ok(fw.is_some())
        });
        match applied {
            Ok(has_rules) => Ok((attached, named, has_rules, ns)),
            Err(e) => {
                if let Some(record) = &named {
                    crate::named::unpublish_run(record);
                }
                Err(e)
            }
        }
    });
    let (attached, named, has_rules, ns) = match firewall {
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
                    if let Some(record) = &named {
                        crate::named::unpublish_run(record);
                    }
                    if has_rules {
                        let _ = firewall::remove(&owner);
                    }
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
    if let Some(record) = named {
        crate::named::unpublish_run(&record);
    }
    // Unlike the veth, rules outlive the namespace: they go now, with those of runs that died
    // without removing theirs (found by owner), in a transaction left to finish on its own.
    if has_rules {
        if let Err(e) = firewall::remove_in_background(&owner) {
            eprintln!("netbox: warning: {e}; the next run removes these rules");
        }
    }
    if let Err(e) = store.release(&owner) {
        tracing::warn!(%e, "releasing the lease failed; the next run reclaims it");
    }
    phase("lease released");
    result
}

/// The sandbox's firewall, or None when it needs no rule. Masquerade is asked for with
/// `--masquerade`, or by a conflist's `ipMasq`; the built-in network does not masquerade by
/// default, because rules cost `netbox run` an nft transaction at start (a 2 ms sandbox would
/// take 20). Once any rule is made, anti-spoofing and isolation from other networks come with it.
fn firewall_spec(
    spec: &RunSpec,
    network: &NetworkSpec,
    owner: &Owner,
    attached: &Attachment,
) -> Result<Option<FirewallSpec>> {
    let masquerade = spec
        .masquerade
        .unwrap_or_else(|| network.source.as_deref().is_some_and(conflist_ip_masq));
    if !(masquerade || !spec.publish.is_empty() || spec.isolate || spec.block_host) {
        return Ok(None);
    }
    let mut fw = FirewallSpec::new(owner.clone(), &attached.bridge.name, &attached.host.name);
    fw.mac = attached.sandbox.mac;
    fw.addresses = attached.addresses.clone();
    fw.masquerade = masquerade;
    fw.ports = spec.publish.clone();
    fw.spoof_check = true;
    fw.isolate = spec.isolate;
    fw.isolate_networks = true;
    fw.block_host = spec.block_host;
    Ok(Some(fw))
}

/// The `ipMasq` of the bridge plugin in a conflist.
fn conflist_ip_masq(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(conf) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let plugins = match conf.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.clone(),
        None => vec![conf],
    };
    plugins.iter().any(|p| {
        p.get("ipMasq")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    })
}

pub(crate) fn allocate(
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

/// Runs the command in an existing namespace (`netbox exec`), with the same private files,
/// hostname, capabilities and exit codes as `netbox run`; `addrs` name the host in its hosts
/// file. Call it from the main thread before any other thread exists.
pub fn exec_in(spec: &RunSpec, ns: &NetNs, addrs: &[IpAddr]) -> Result<i32> {
    process::block_forwarded_signals()?;
    let child = process::prepare(&sandbox_spec(spec, NetSetup::Join(ns.try_clone_fd()?)))?;
    start_and_wait(child, &private_files(spec, addrs))
}

fn exec(spec: &RunSpec, net: NetSetup) -> Result<i32> {
    let mut child = process::prepare(&sandbox_spec(spec, net))?;
    if !spec.tuns.is_empty() {
        let (ns, socket) = child.take_network()?;
        runtime()?.block_on(async {
            let ns = NetNs::from_fd(ns)?;
            let sandbox = Netlink::from_fd(socket)?;
            create_tuns(spec, &sandbox, &ns).await
        })?;
    }
    start_and_wait(child, &private_files(spec, &[]))
}

/// Makes the `--tun` devices inside the sandbox: persistent (CMD attaches by name), owned by
/// the user CMD runs as, addressed and up. They die with the namespace.
async fn create_tuns(spec: &RunSpec, sandbox: &Netlink, ns: &NetNs) -> Result<()> {
    // CMD runs without CAP_NET_ADMIN: only ownership lets it attach, even as root.
    let (uid, gid) = match spec.user.clone().or_else(UserSpec::from_sudo_env) {
        Some(user) => (user.uid, user.gid),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    for request in &spec.tuns {
        let builder = TunBuilder::tun().name(&request.name).owner(uid).group(gid);
        let name = ns.run_in(move || builder.create_persistent())??;
        let link = sandbox
            .link_by_name(&name)
            .await?
            .ok_or_else(|| crate::netlink::NetlinkError::LinkNotFound { name: name.clone() })?;
        if let Some(address) = request.address {
            sandbox.add_address(&link, address).await?;
        }
        sandbox.set_up(link.index, &name).await?;
    }
    Ok(())
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
        tun_access: !spec.tuns.is_empty(),
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

pub fn data_dir(network: &NetworkSpec) -> PathBuf {
    network
        .ipam
        .data_dir
        .clone()
        .unwrap_or_else(crate::ipam::store::default_data_dir)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the netlink runtime".into(),
            source,
        })
}
