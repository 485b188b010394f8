//! The host's queue of plugin calls (`sys::admission`): ADDs and DELs with the built-in store
//! work at most as many at once as there are cores, in the order they started.
//!
//! A burst (a node starting or stopping many pods) then runs as a line instead of a crowd: the
//! slowest call of a burst of 100 with 20 in flight waits about as long as the median one
//! instead of three times as long (benches/cni.rs). The place is taken first thing in the
//! process, before stdin is read, so the order is the order the runtime started the calls; it
//! is given up at once by calls that may wait on something else than the CPU (a delegated IPAM
//! plugin such as dhcp): those must not hold up the others. The queue only orders: a call that
//! cannot use it (no run directory yet, not root) goes on without it, and a stuck call delays
//! the one behind it by at most a second.

use std::time::Duration;

use crate::model::conflist::IpamSection;
use crate::provision::records;
use crate::sys::admission::{self, Ticket};
use crate::sys::dirfd::{ensure_dir_all, Dir};
use crate::usecase::cni::conf::NetConf;

/// The queue's file in netbox's run directory.
const QUEUE_FILE: &str = "cni-queue";
/// The longest a call waits for the one ahead of it.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A place in the queue, or none.
#[derive(Debug, Default)]
pub struct Place(Option<Ticket>);

/// Joins the queue when `command` (CNI_COMMAND) is one that queues.
pub fn join(command: &str) -> Place {
    if !matches!(command, "ADD" | "DEL") {
        return Place(None);
    }
    let dir = records::run_dir();
    let joined = ensure_dir_all(&dir, 0o755)
        .and_then(|()| Dir::open(&dir))
        .and_then(|d| admission::join(&d, QUEUE_FILE));
    match joined {
        Ok(ticket) => Place(Some(ticket)),
        Err(e) => {
            tracing::debug!(%e, "no place in the plugin queue");
            Place(None)
        }
    }
}

impl Place {
    /// Waits for this call's turn when its work is the CPU's (built-in IPAM), or leaves the
    /// queue at once. Keep the result alive until the work is done.
    pub(super) fn turn(self, conf: &NetConf) -> Place {
        let Some(ticket) = self.0 else {
            return Place(None);
        };
        if !matches!(conf.net.ipam(), IpamSection::Builtin(_)) {
            return Place(None);
        }
        let width = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        if let Err(e) = ticket.wait(width, MAX_WAIT) {
            tracing::debug!(%e, "waiting in the plugin queue");
        }
        Place(Some(ticket))
    }
}
