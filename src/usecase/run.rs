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

use std::net::IpAddr;

use crate::firewall::{self, FirewallSpec};
use crate::model::network::{self, NetworkSpec};
use crate::model::owner::Owner;
use crate::process::{self, NetSetup};
use crate::provision::address::allocate;
use crate::provision::attach::{self, AttachSpec, Attachment};
use crate::provision::command::{create_tuns, private_files, sandbox_spec, start_and_wait};
use crate::provision::leases::Store;
use crate::provision::publish;
use crate::sys::netlink::Netlink;
use crate::sys::netns::NetNs;
use crate::sys::privilege::privileged;
use crate::{Error, Result};

pub use crate::provision::command::{exec_in, NetMode, RunSpec};

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
    let store = Store::open(&network.ipam.data_dir(), &network.name)?;
    let owner = Owner::current_process()?;
    if let Some(name) = &spec.name {
        crate::sys::netns::validate_name(name)?;
    }
    // Named sandboxes of runs that were killed: their namespace mounts would keep them alive.
    publish::reap_dead_runs();
    // Then fork: the child creates the namespace (about half a millisecond in the kernel)
    // while this process checks the host and allocates addresses.
    let mut child = process::prepare(&sandbox_spec(spec, NetSetup::New))?;
    let wired = crate::sys::runtime::current_thread()?.block_on(async {
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
            host_mac: None,
            owner: crate::model::owner::alias(&network.name, &owner)?,
        };
        let attached: Attachment =
            attach::attach_to_bridge(&host, &sandbox, &ns, network, &bridge, &attach_spec).await?;
        create_tuns(spec, &sandbox, &ns).await?;
        let named = match &spec.name {
            Some(name) => Some(publish::publish_run(
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
                    publish::unpublish_run(record);
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
            match crate::sys::capture::start(&ns, &spec.ifname, path, stop.clone()) {
                Ok(thread) => Some((stop, thread)),
                Err(e) => {
                    drop(child);
                    if let Some(record) = &named {
                        publish::unpublish_run(record);
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
        publish::unpublish_run(&record);
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

fn exec(spec: &RunSpec, net: NetSetup) -> Result<i32> {
    let mut child = process::prepare(&sandbox_spec(spec, net))?;
    if !spec.tuns.is_empty() {
        let (ns, socket) = child.take_network()?;
        crate::sys::runtime::current_thread()?.block_on(async {
            let ns = NetNs::from_fd(ns)?;
            let sandbox = Netlink::from_fd(socket)?;
            create_tuns(spec, &sandbox, &ns).await
        })?;
    }
    start_and_wait(child, &private_files(spec, &[]))
}
