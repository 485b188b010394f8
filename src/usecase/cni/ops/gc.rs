//! GC: attachments of the network the runtime no longer knows.

use std::collections::HashSet;

use super::runtime;
use crate::firewall;
use crate::model::conflist::IpamSection;
use crate::model::owner::{cni_host_ifname, cni_host_mac, Owner, CNI_ALIAS_PREFIX};
use crate::provision::records;
use crate::sys::netlink::Netlink;
use crate::usecase::cni::conf::{Command, Env, NetConf};
use crate::usecase::cni::delegate;
use crate::usecase::cni::ipam::open_store;
use crate::usecase::cni::CniError;

/// GC: every attachment of this network not in the valid list loses its veth and leases.
pub(super) fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let keep: HashSet<String> = conf
        .valid_attachments
        .iter()
        .map(|(id, ifname)| cni_host_ifname(id, ifname))
        .collect();
    let prefix = format!("{CNI_ALIAS_PREFIX}{}:", conf.net.name);
    // Host ends not yet named by an alias (an ADD killed right after making them) are known by
    // their records: derived name and MAC.
    let unaliased: HashSet<(String, [u8; 6])> = records::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.kind == records::Kind::Cni && r.network == conf.net.name)
        .filter_map(|r| match r.owner {
            Owner::Cni {
                container_id,
                ifname,
            } => Some((
                cni_host_ifname(&container_id, &ifname),
                cni_host_mac(&container_id, &ifname),
            )),
            _ => None,
        })
        .collect();
    let veths = runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            let mut first_error = None;
            for link in host.links().await? {
                let ours = match (&link.alias, link.mac) {
                    (Some(a), _) => a.starts_with(&prefix),
                    (None, Some(mac)) => unaliased.contains(&(link.name.clone(), mac)),
                    (None, None) => false,
                };
                if ours && !keep.contains(&link.name) {
                    if let Err(e) = host.delete_link_index(link.index, &link.name).await {
                        first_error.get_or_insert(CniError::from(e));
                    }
                }
            }
            // Rules of attachments not kept: those of this network (by their veth's alias) and
            // those whose veth is gone (their network cannot be told, and they serve nothing).
            if firewall::nft::available() {
                let links = host.links().await?;
                for stale in firewall::owners()? {
                    let Owner::Cni {
                        container_id,
                        ifname,
                    } = &stale
                    else {
                        continue;
                    };
                    let veth = cni_host_ifname(container_id, ifname);
                    if keep.contains(&veth) {
                        continue;
                    }
                    let elsewhere = links.iter().any(|l| {
                        l.name == veth
                            && l.alias.as_deref().is_some_and(|a| !a.starts_with(&prefix))
                    });
                    if !elsewhere {
                        if let Err(e) = firewall::remove(&stale) {
                            first_error.get_or_insert(CniError::from(e));
                        }
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    });
    let leases = match conf.net.ipam() {
        IpamSection::Builtin(cfg) => {
            let valid: Vec<Owner> = conf
                .valid_attachments
                .iter()
                .map(|(id, ifname)| Owner::Cni {
                    container_id: id.clone(),
                    ifname: ifname.clone(),
                })
                .collect();
            open_store(conf, cfg)?
                .gc(&valid)
                .map(|_| ())
                .map_err(CniError::from)
        }
        IpamSection::Delegated { plugin, .. } => delegated_gc(plugin, env, conf, stdin),
        IpamSection::None => Ok(()),
    };
    // The records of the attachments the runtime no longer knows go with them.
    if veths.is_ok() && leases.is_ok() {
        for record in records::list().unwrap_or_default() {
            let valid = conf.valid_attachments.iter().any(|(id, ifname)| {
                record.owner
                    == Owner::Cni {
                        container_id: id.clone(),
                        ifname: ifname.clone(),
                    }
            });
            if record.kind == records::Kind::Cni && record.network == conf.net.name && !valid {
                if let Err(e) = record.remove() {
                    tracing::warn!(%e, "removing the record of a collected attachment");
                }
            }
        }
    }
    veths.and(leases)
}

/// GC of a delegated IPAM: forwarded to a delegate that speaks GC (1.1.0, as the spec asks of
/// plugins with delegates); an older one (host-local before 1.2) gets a DEL for each attachment
/// of this network netbox recorded and the runtime no longer lists, which releases its leases.
fn delegated_gc(plugin: &str, env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if delegate::call_if_spoken(plugin, "GC", env, stdin, conf.version)?.is_some() {
        return Ok(());
    }
    let mut first_error = None;
    for record in records::list().unwrap_or_default() {
        let Owner::Cni {
            container_id,
            ifname,
        } = &record.owner
        else {
            continue;
        };
        let valid = conf
            .valid_attachments
            .iter()
            .any(|(id, i)| id == container_id && i == ifname);
        if record.kind != records::Kind::Cni || record.network != conf.net.name || valid {
            continue;
        }
        let stale = Env {
            command: Command::Del,
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            netns: None,
            raw_args: String::new(),
            args: Default::default(),
            raw_path: env.raw_path.clone(),
        };
        if let Err(e) = delegate::call(plugin, "DEL", &stale, stdin, conf.version) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
