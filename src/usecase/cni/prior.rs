//! What an ADD finds of an earlier attachment of the same (container id, ifname), judged before
//! anything is changed: nothing, something provably stale (cleared once every check passed), or
//! a live attachment (the ADD is refused and touches nothing).
//!
//! An attachment is live when its record is complete, it was made in this very namespace, its
//! host veth is up and the interface inside is that veth's peer. Leftovers are provably stale
//! when the ADD that made them died (record still `creating`, writer gone), when the namespace
//! they were made in is gone, when DEL began on them (host end down: DEL's first step), or when
//! both interfaces are gone. Anything else is refused: netbox never guesses.

use crate::provision::records::{Phase, Record};
use crate::sys::netlink::Link;

use super::{code, CniError};

/// An earlier attachment that may be cleared.
#[derive(Debug)]
pub struct Stale {
    pub record: Option<Record>,
    /// Its host veth, when it still exists (its peer goes with it).
    pub host: Option<Link>,
    pub why: &'static str,
}

/// What the ADD found: `Ok(None)` nothing, `Ok(Some(stale))` leftovers to clear, `Err` a
/// refusal (the earlier attachment is live, or the state is not provably stale).
pub struct Found<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub ns_path: &'a str,
    /// This ADD's namespace's inode.
    pub ns_inode: u64,
    pub record: Option<Record>,
    /// The host veth by its derived name, already known to be netbox's (see `ops::is_ours`).
    pub host: Option<Link>,
    /// The link called `ifname` in this namespace.
    pub inside: Option<Link>,
}

impl Found<'_> {
    pub fn judge(self) -> Result<Option<Stale>, CniError> {
        // The inside link is the host veth's peer: each names the other's index.
        let paired = match (&self.host, &self.inside) {
            (Some(h), Some(i)) => h.peer == Some(i.index) && i.peer == Some(h.index),
            _ => false,
        };
        if self.inside.is_some() && !paired {
            return Err(CniError::env(format!(
                "interface \"{}\" already exists in {}",
                self.ifname, self.ns_path
            )));
        }
        let live = || {
            CniError::env(format!(
                "container {} already has \"{}\" attached in {} (DEL it first)",
                self.container_id, self.ifname, self.ns_path
            ))
        };
        let host_down = self.host.as_ref().is_some_and(|h| !h.up);
        let stale = |why| Stale {
            record: self.record.clone(),
            host: self.host.clone(),
            why,
        };
        let Some(record) = &self.record else {
            return match (&self.host, paired) {
                (None, _) => Ok(None),
                _ if host_down => Ok(Some(stale("DEL began on it"))),
                (Some(_), true) => Err(live()),
                (Some(h), false) => Err(CniError::env(format!(
                    "container {} has \"{}\" attached elsewhere (host veth \"{}\"); DEL it first",
                    self.container_id, self.ifname, h.name
                ))),
            };
        };
        if record.phase == Phase::Creating {
            if record.writer.is_alive() {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "an ADD of container {} ({}) is at work ({})",
                        self.container_id, self.ifname, record.writer
                    ),
                ));
            }
            return Ok(Some(stale("the ADD that made it died")));
        }
        if record.netns_inode != Some(self.ns_inode) {
            if namespace_gone(record) {
                return Ok(Some(stale("its namespace is gone")));
            }
            return Err(CniError::env(format!(
                "container {} has \"{}\" attached in {} (DEL it first)",
                self.container_id,
                self.ifname,
                record.netns.display()
            )));
        }
        match (&self.host, &self.inside) {
            _ if host_down => Ok(Some(stale("DEL began on it"))),
            (Some(_), Some(_)) => Err(live()),
            (None, None) => Ok(Some(stale("its interfaces are gone"))),
            _ => Err(live()),
        }
    }
}

/// True when the namespace a record names is not the one it was made in any more.
fn namespace_gone(record: &Record) -> bool {
    record.netns_inode.is_none()
        || crate::sys::netns::NetNs::open(&record.netns)
            .ok()
            .and_then(|ns| ns.inode().ok())
            != record.netns_inode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::owner::Owner;
    use crate::provision::records::Kind;

    const INODE: u64 = 4026532000;

    fn link(index: u32, peer: u32, up: bool) -> Link {
        Link {
            index,
            name: format!("if{index}"),
            mac: None,
            mtu: None,
            controller: None,
            kind: Some("veth".into()),
            alias: None,
            up,
            peer: Some(peer),
        }
    }

    fn record(phase: Phase, writer: Owner, inode: u64) -> Record {
        Record {
            kind: Kind::Cni,
            name: "cni/c+eth0".into(),
            network: "net".into(),
            data_dir: "/nonexistent".into(),
            owner: Owner::Cni {
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            phase,
            writer,
            netns: "/nonexistent/netns".into(),
            netns_inode: Some(inode),
            host_ifname: "if7".into(),
            addresses: vec![],
            created: 0,
        }
    }

    fn dead() -> Owner {
        Owner::Process {
            pid: u32::MAX,
            start_time: 1,
        }
    }

    fn judge(
        record: Option<Record>,
        host: Option<Link>,
        inside: Option<Link>,
    ) -> Result<Option<Stale>, CniError> {
        Found {
            container_id: "c",
            ifname: "eth0",
            ns_path: "/run/netns/x",
            ns_inode: INODE,
            record,
            host,
            inside,
        }
        .judge()
    }

    #[test]
    fn a_live_attachment_is_refused_and_nothing_is_judged_stale_on_a_guess() {
        let ready = || record(Phase::Ready, dead(), INODE);
        // Live: complete record, this namespace, host end up, the inside link its peer.
        let e = judge(
            Some(ready()),
            Some(link(7, 2, true)),
            Some(link(2, 7, true)),
        );
        assert_eq!(e.err().map(|e| e.code), Some(code::INVALID_ENVIRONMENT));
        // Without a record too.
        let e = judge(None, Some(link(7, 2, true)), Some(link(2, 7, true)));
        assert_eq!(e.err().map(|e| e.code), Some(code::INVALID_ENVIRONMENT));
        // An interface of that name that is not the veth's peer: refused, never cleared.
        let e = judge(
            Some(ready()),
            Some(link(7, 3, true)),
            Some(link(2, 9, true)),
        );
        assert_eq!(e.err().map(|e| e.code), Some(code::INVALID_ENVIRONMENT));
        // An ADD at work (its writer alive): try again later.
        let me = Owner::current_process().expect("me");
        let e = judge(Some(record(Phase::Creating, me, INODE)), None, None);
        assert_eq!(e.err().map(|e| e.code), Some(code::TRY_AGAIN_LATER));
        // Attached in another namespace that still exists (this test's own): refused.
        let here = crate::sys::netns::NetNs::open(std::path::Path::new("/proc/self/ns/net"))
            .and_then(|ns| ns.inode())
            .expect("own netns");
        let mut elsewhere = record(Phase::Ready, dead(), here);
        elsewhere.netns = "/proc/self/ns/net".into();
        assert!(judge(Some(elsewhere), None, None).is_err());
    }

    #[test]
    fn provable_leftovers_are_stale() {
        assert!(judge(None, None, None).expect("fresh").is_none());
        let stale = |r, h, i| judge(r, h, i).expect("stale").expect("something").why;
        assert_eq!(
            stale(Some(record(Phase::Creating, dead(), INODE)), None, None),
            "the ADD that made it died"
        );
        assert_eq!(
            stale(Some(record(Phase::Ready, dead(), INODE + 1)), None, None),
            "its namespace is gone"
        );
        assert_eq!(
            stale(
                Some(record(Phase::Ready, dead(), INODE)),
                Some(link(7, 2, false)),
                Some(link(2, 7, true))
            ),
            "DEL began on it"
        );
        assert_eq!(
            stale(None, Some(link(7, 2, false)), Some(link(2, 7, true))),
            "DEL began on it"
        );
        assert_eq!(
            stale(Some(record(Phase::Ready, dead(), INODE)), None, None),
            "its interfaces are gone"
        );
    }
}
