//! DEL and its detached reaper.

use std::os::unix::process::CommandExt;

use super::{is_ours, owner, runtime};
use crate::firewall;
use crate::model::owner::cni_host_ifname;
use crate::model::owner::CNI_ALIAS_PREFIX;
use crate::provision::ipam::IpamBackend;
use crate::provision::records;
use crate::sys::netlink::{Link, Netlink};
use crate::usecase::cni::conf::{Env, NetConf};
use crate::usecase::cni::ipam::CniIpam;
use crate::usecase::cni::CniError;

/// DEL: best effort, idempotent, independent of the namespace and of prevResult. Both the veth
/// and the addresses are released even when one of them fails; the first failure is reported.
///
/// Deleting a veth costs the kernel 15-30 ms (it waits for RCU grace periods), most of a DEL.
/// So the host end is first brought down, which cuts the container off the bridge at once and
/// makes its address safe to hand out again, and the deletion itself is left to a detached
/// helper process (see [`REAP_ENV`]) that the runtime does not wait for. When the helper
/// cannot be started, the veth is deleted here.
pub(super) fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let name = cni_host_ifname(&env.container_id, &env.ifname);
    // DEL must succeed whatever the state directory's condition: the lock only keeps gc from
    // judging this attachment mid-way, and gc removing it too is harmless.
    let _lock = records::Lock::shared()
        .map_err(|e| tracing::warn!(%e, "DEL without the lifecycle lock"))
        .ok();
    let veth = runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            if let Some(link) = host.link_by_name(&name).await? {
                if is_ours(&link, env) {
                    host.set_down(&link).await?;
                    if !spawn_reaper(&link) {
                        // Removing the host end removes the pair, addresses and routes inside.
                        host.delete_link_index(link.index, &link.name).await?;
                    }
                }
            }
            Ok::<_, CniError>(())
        })
    });
    let addresses = CniIpam::new(env, conf, stdin).and_then(|ipam| ipam.release(&owner(env)));
    // A DEL gets the ADD's configuration: rules exist only if it asks for some (GC removes those
    // of attachments whose configuration changed in between). Networks without any firewall
    // option pay nothing for it.
    let rules = if conf.wants_firewall() {
        firewall::remove(&owner(env)).map_err(CniError::from)
    } else {
        Ok(())
    };
    let result = veth.and(addresses).and(rules);
    if result.is_ok() {
        // Once the attachment is gone; a DEL that failed is retried by the runtime, or the
        // record lets gc finish it.
        if let Ok(key) = owner(env).key() {
            if let Err(e) = std::fs::remove_file(records::record_path(records::Kind::Cni, &key)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%e, "removing the attachment's record");
                }
            }
        }
    }
    result
}

/// Environment variable that makes `netbox-cni` a reaper: `INDEX:NAME:MAC` (MAC in plain hex)
/// of a host veth to delete, once, if it is still that netbox-cni link.
pub const REAP_ENV: &str = "NETBOX_CNI_REAP";

fn hex(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a detached reaper for `link`: the plugin binary itself, in its own process group,
/// with no stdio (a runtime waits for the plugin's stdout to close, so none may be inherited).
fn spawn_reaper(link: &Link) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    std::process::Command::new(exe)
        .env_clear()
        .env(
            REAP_ENV,
            format!(
                "{}:{}:{}",
                link.index,
                link.name,
                link.mac.map(|m| hex(&m)).unwrap_or_default()
            ),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .is_ok()
}

/// The reaper's work (see [`REAP_ENV`]). Index, name and MAC are checked again, and the alias
/// when there is one, so a link made since under the same name is never touched.
pub fn reap(job: &str) -> Result<(), CniError> {
    let mut parts = job.splitn(3, ':');
    let (Some(index), Some(name), mac) = (
        parts.next().and_then(|i| i.parse::<u32>().ok()),
        parts.next(),
        parts.next().unwrap_or_default(),
    ) else {
        return Err(CniError::env(format!(
            "{REAP_ENV}: {job:?} is not INDEX:NAME:MAC"
        )));
    };
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        if let Some(link) = host.link_by_index(index).await? {
            let ours = link
                .alias
                .as_deref()
                .is_none_or(|a| a.starts_with(CNI_ALIAS_PREFIX));
            let same = link.name == name && link.mac.map(|m| hex(&m)).unwrap_or_default() == mac;
            if ours && same {
                host.delete_link_index(link.index, &link.name).await?;
            }
        }
        Ok(())
    })
}
