//! `--net bridge` (the default): a veth on a bridge network, through the shared provisioning
//! path (addresses -> bridge -> attach), then the firewall, the name and the capture, each
//! undone by the rollback guard if a later step fails.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::firewall::{self, FirewallSpec};
use crate::model::network::NetworkSpec;
use crate::model::owner::{self, Owner};
use crate::process::{self, NetSetup};
use crate::provision::attach::{self, Attachment};
use crate::provision::command::{create_tuns, private_files, sandbox_spec, start_and_wait};
use crate::provision::connect::{self, Connect};
use crate::provision::ipam::{self, BuiltinIpam};
use crate::provision::publish;
use crate::provision::rollback::Rollback;
use crate::sys::netlink::Netlink;
use crate::sys::netns::NetNs;
use crate::{Error, Result};

use super::RunSpec;

pub(super) fn run(spec: &RunSpec, network: &NetworkSpec) -> Result<i32> {
    run_with(spec, network, &mut |_| Ok(()))
}

/// [`run`], calling `attached` with the sandbox's addresses once it is wired, before CMD
/// starts (the rootless mode starts its port relays there).
pub(super) fn run_with(
    spec: &RunSpec,
    network: &NetworkSpec,
    attached_hook: &mut dyn FnMut(&[IpAddr]) -> Result<()>,
) -> Result<i32> {
    let start = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!(us = start.elapsed().as_micros() as u64, "{what}");
    // File system work first: while the child copies the mount table (unshare(CLONE_NEWNS))
    // path lookups here stall, reading /proc/self/stat for half a millisecond.
    let ipam = BuiltinIpam::open(network, ipam::requested_in(network, &spec.ips)?)?;
    let owner = Owner::current_process()?;
    if let Some(name) = &spec.name {
        crate::sys::netns::validate_name(name)?;
    }
    // Named sandboxes of runs that were killed: their namespace mounts would keep them alive.
    publish::reap_dead_runs();
    // And their firewall state (one small netlink read when there is none).
    if let Err(e) = firewall::remove_dead_runs() {
        tracing::warn!(%e, "removing the rules of killed runs");
    }
    // Declared before the child: on failure the child (and with it the namespace and veth)
    // goes first, then the undos.
    let mut rollback = Rollback::new();
    // Then fork: the child creates the namespace (about half a millisecond in the kernel)
    // while this process checks the host and allocates addresses.
    let mut child = process::prepare(&sandbox_spec(spec, NetSetup::New))?;
    let (attached, ns) = crate::sys::runtime::current_thread()?.block_on(async {
        let host = Netlink::connect()?;
        let bridge = connect::lookup_bridge(&host, network).await?;
        // A dead run's firewall state goes before its address can be handed out again (a
        // published port would otherwise reach the next sandbox with that address).
        let reclaimed = ipam
            .store
            .reclaim_dead_with(|dead| match firewall::remove(dead) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(%e, %dead, "keeping the lease: its firewall state stays");
                    false
                }
            });
        if let Err(e) = reclaimed {
            tracing::warn!(%e, "reclaiming leases of dead sandboxes failed");
        }
        let (ns, socket) = child.take_network()?;
        let ns = NetNs::from_fd(ns)?;
        let sandbox = Netlink::from_fd(socket)?;
        phase("namespace received");
        let connected = connect::connect(
            Connect {
                host: &host,
                sandbox: &sandbox,
                ns: &ns,
                network,
                bridge,
                host_ifname: attach::random_host_ifname(),
                ifname: spec.ifname.clone(),
                mtu: spec.mtu,
                mac: spec.mac,
                host_mac: None,
                alias: owner::alias(&network.name, &owner)?,
                lock_port: wants_firewall(spec, network),
            },
            &ipam,
            &owner,
            &mut rollback,
        )
        .await?;
        create_tuns(spec, &sandbox, &ns).await?;
        Ok::<_, Error>((connected.attachment, ns))
    })?;
    // The runtime and its sockets are gone here: only the child holds the namespace, which
    // dies with CMD and takes the veth with it.
    let named = match &spec.name {
        Some(name) => {
            let record = publish::publish_run(
                name,
                network,
                &owner,
                &ns,
                &attached.host.name,
                &attached.addresses,
            )?;
            let undo = record.clone();
            rollback.push("unpublish the name", move || publish::unpublish_run(&undo));
            Some(record)
        }
        None => None,
    };
    let has_rules = match firewall_spec(spec, network, &owner, &attached) {
        Some(fw) => {
            for notice in firewall::apply(&fw)?.notices {
                eprintln!("netbox: {notice}");
            }
            rollback.push("remove the rules", || {
                let _ = firewall::remove(&owner);
            });
            phase("firewall applied");
            true
        }
        None => false,
    };
    phase("attached");
    // The capture's socket keeps the namespace alive until CMD ends and the capture stops.
    let capture = match &spec.capture {
        Some(path) => {
            let stop = Arc::new(AtomicBool::new(false));
            let thread = crate::sys::capture::start(&ns, &spec.ifname, path, stop.clone())
                .map_err(|e| Error::Config(e.to_string()))?;
            Some((stop, thread))
        }
        None => None,
    };
    drop(ns);
    let ips: Vec<IpAddr> = attached.addresses.iter().map(|a| a.ip()).collect();
    attached_hook(&ips)?;
    // From here on the command's end is the teardown.
    rollback.commit();
    let result = start_and_wait(child, &private_files(spec, &ips));
    if let Some((stop, thread)) = capture {
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    phase("command ended");
    if let Some(record) = named {
        publish::unpublish_run(&record);
    }
    // Unlike the veth, rules outlive the namespace: they go now (one netlink transaction).
    if has_rules {
        if let Err(e) = firewall::remove(&owner) {
            eprintln!("netbox: warning: {e}; the next run removes these rules");
        }
    }
    firewall::release();
    if let Err(e) = ipam.store.release(&owner) {
        tracing::warn!(%e, "releasing the lease failed; the next run reclaims it");
    }
    phase("lease released");
    result
}

/// True when the run makes rules (and with them anti-spoofing, its port locked to its MAC).
fn wants_firewall(spec: &RunSpec, network: &NetworkSpec) -> bool {
    let wanted = &network.firewall;
    spec.masquerade.unwrap_or(wanted.ip_masq)
        || !spec.publish.is_empty()
        || spec.isolate
        || spec.block_host
        || wanted.any()
}

/// The sandbox's firewall, or None when it needs no rule. Masquerade is asked for with
/// `--masquerade`, or by a conflist's `ipMasq`; the built-in network does not masquerade by
/// default (traffic leaving the machine under its address is the user's choice). The
/// conflist's other firewall keys (`macspoofchk`, `isolate`, `isolateNetworks`, `blockHost`)
/// apply as they do for netbox-cni. Once any rule is made, anti-spoofing and isolation from
/// other networks come with it.
fn firewall_spec(
    spec: &RunSpec,
    network: &NetworkSpec,
    owner: &Owner,
    attached: &Attachment,
) -> Option<FirewallSpec> {
    if !wants_firewall(spec, network) {
        return None;
    }
    let wanted = &network.firewall;
    let masquerade = spec.masquerade.unwrap_or(wanted.ip_masq);
    let mut fw = FirewallSpec::new(owner.clone(), &attached.bridge.name, &attached.host.name);
    fw.mac = attached.sandbox.mac;
    fw.addresses = attached.addresses.clone();
    fw.masquerade = masquerade;
    fw.no_masquerade_to = wanted.no_masquerade_to.clone();
    fw.ports = spec.publish.clone();
    fw.spoof_check = true;
    fw.isolate = spec.isolate || wanted.isolate;
    fw.isolate_networks = true;
    fw.block_host = spec.block_host || wanted.block_host;
    Some(fw)
}
