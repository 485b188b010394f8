//! STATUS: whether an ADD could succeed now.

use std::net::IpAddr;

use super::runtime;
use crate::firewall;
use crate::model::conflist::IpamSection;
use crate::model::ipam::Range;
use crate::sys::netlink::Netlink;
use crate::usecase::cni::conf::{Env, NetConf};
use crate::usecase::cni::delegate;
use crate::usecase::cni::ipam::open_store;
use crate::usecase::cni::{code, CniError};

/// STATUS: 50 when an ADD would fail for want of addresses or of a bridge, or when the
/// delegated IPAM plugin says it cannot serve one.
pub(super) fn status(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if let IpamSection::Delegated { plugin, .. } = conf.net.ipam() {
        // A delegate that cannot be run cannot serve an ADD either.
        let answered = delegate::call_if_spoken(plugin, "STATUS", env, stdin, conf.version);
        if let Err(e) = answered {
            let code = match e.code {
                code::NOT_AVAILABLE_DEGRADED => code::NOT_AVAILABLE_DEGRADED,
                _ => code::NOT_AVAILABLE,
            };
            return Err(CniError::new(code, e.msg).with_details(e.details));
        }
    }
    let bridge = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        Ok::<_, CniError>(host.link_by_name(&conf.net.bridge).await?)
    })?;
    if let Some(b) = bridge.filter(|b| b.kind.as_deref() != Some("bridge")) {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "bridge \"{}\" cannot be made: the name is taken by a {}",
                b.name,
                b.kind.as_deref().unwrap_or("device of unknown kind")
            ),
        ));
    }
    if conf.wants_firewall() {
        if let Err(e) = firewall::nft::binary() {
            return Err(CniError::new(code::NOT_AVAILABLE, e.to_string()));
        }
    }
    if let IpamSection::Builtin(cfg) = conf.net.ipam() {
        let leases = open_store(conf, cfg)?.leases()?;
        for (i, set) in cfg.range_sets.iter().enumerate() {
            let used = leases
                .iter()
                .filter(|l| cfg.set_of(l.ip) == Some(i))
                .count() as u128;
            if used >= capacity(set) {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!(
                        "network \"{}\": no free address left in {}",
                        conf.net.name,
                        set.iter()
                            .map(Range::describe)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Addresses a range set can hand out: its size less the reserved addresses inside it (the
/// network, broadcast and gateway addresses can only sit at its ends or be the gateway).
fn capacity(set: &[Range]) -> u128 {
    set.iter()
        .map(|r| {
            let mut reserved: Vec<IpAddr> = [Some(r.range_start), Some(r.range_end), r.gateway]
                .into_iter()
                .flatten()
                .filter(|ip| r.contains(*ip) && r.is_reserved(*ip))
                .collect();
            reserved.dedup();
            reserved.sort();
            reserved.dedup();
            r.size().saturating_sub(reserved.len() as u128)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_out_gateway_network_and_broadcast() {
        let r = Range::new("10.0.0.0/29".parse().expect("cidr"), None, None, None).expect("range");
        // .1-.6 minus the gateway .1
        assert_eq!(capacity(&[r]), 5);
    }
}
