//! `--net none`: loopback only. The child makes its namespace (inside a user namespace when
//! rootless) and brings loopback up itself; netbox only adds the `--tun` devices.

use crate::process::{self, NetSetup};
use crate::provision::command::{create_tuns, private_files, sandbox_spec, start_and_wait};
use crate::sys::netlink::Netlink;
use crate::sys::netns::NetNs;
use crate::Result;

use super::RunSpec;

pub(super) fn run(spec: &RunSpec, net: NetSetup) -> Result<i32> {
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
