//! `netbox run`: a command in a fresh network namespace, attached to a bridge network, with its
//! own resolv.conf, hosts and hostname, cleaned up however it ends.
//!
//! Each network mode ([`NetMode`]) is a module: `bridge` (a veth on a bridge network),
//! `rootless` (the bridge path for a user without privileges, in the user's network host with
//! pasta as its uplink) and `loopback` (`--net none`: loopback only, rootless through a user
//! namespace).
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

mod bridge;
mod loopback;
mod rootless;

use crate::model::network;
use crate::process::{self, NetSetup};
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
        NetMode::None if !privileged() => loopback::run(&spec, NetSetup::NewRootless),
        // The child makes its namespace and brings loopback up itself.
        NetMode::None => {
            // Privileged: remove what killed runs left in the firewall, as every run does.
            if let Err(e) = crate::firewall::remove_dead_runs() {
                tracing::warn!(%e, "removing the rules of killed runs");
            }
            loopback::run(&spec, NetSetup::New)
        }
        NetMode::Bridge { network, subnet } => {
            if !privileged() {
                // In the user's network host, where this process becomes privileged.
                return rootless::run(&spec, network, *subnet);
            }
            let network = network::resolve(network, &network::conf_dirs(), *subnet)?;
            bridge::run(&spec, &network)
        }
    }
}
