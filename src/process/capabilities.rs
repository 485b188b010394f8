//! The capabilities CMD keeps: the container runtimes' default set, changed by `--cap-add` and
//! `--cap-drop` as podman changes it, computed before the fork as two masks; and the child's
//! side, which applies them with raw prctl/capset calls (the `caps` crate allocates, and the
//! child must not).

use std::str::FromStr;

use caps::Capability;

use super::{ProcessError, Result};

/// The set podman and docker give a container (`containers.conf` default_capabilities).
pub const DEFAULT_CAPS: [Capability; 11] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_CHROOT,
];

/// A `--cap-add`/`--cap-drop` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    All,
    One(Capability),
}

impl FromStr for CapName {
    type Err = ProcessError;

    /// `NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN` or `ALL`, in any case.
    fn from_str(s: &str) -> Result<CapName> {
        let upper = s.trim().to_ascii_uppercase();
        if upper == "ALL" {
            return Ok(CapName::All);
        }
        let name = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        Capability::from_str(&name)
            .map(CapName::One)
            .map_err(|_| ProcessError::Invalid {
                what: "capability",
                value: s.into(),
                reason: "not a capability name (see capabilities(7); ALL means every one)".into(),
            })
    }
}

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapMask(pub u64);

impl CapMask {
    pub fn of(caps: &[Capability]) -> CapMask {
        CapMask(caps.iter().fold(0, |m, c| m | c.bitmask()))
    }

    /// Every capability this build knows.
    pub fn all() -> CapMask {
        CapMask(caps::all().iter().fold(0, |m, c| m | c.bitmask()))
    }

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bitmask() != 0
    }
}

/// What CMD may hold: `bounding` is every set's ceiling (bounding, permitted, effective);
/// `added` are the capabilities named by `--cap-add`, which a CMD that is not root keeps as
/// ambient (and inheritable) ones, as podman gives them to a non-root container user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: CapMask,
    pub added: CapMask,
}

/// Podman's merge (containers/common `MergeCapabilities`): `--cap-drop ALL` keeps only what is
/// added; `--cap-add ALL` keeps everything not dropped; otherwise the default set plus the
/// added minus the dropped. Naming a capability in both, or ALL in both, is an error.
pub fn merge(add: &[CapName], drop: &[CapName]) -> Result<CapSets> {
    let conflict = |reason: String| ProcessError::Invalid {
        what: "capabilities",
        value: format!("--cap-add {add:?} --cap-drop {drop:?}"),
        reason,
    };
    let mask = |names: &[CapName]| {
        names.iter().fold(CapMask::default(), |m, n| match n {
            CapName::All => CapMask::all(),
            CapName::One(c) => CapMask(m.0 | c.bitmask()),
        })
    };
    let (add_all, drop_all) = (add.contains(&CapName::All), drop.contains(&CapName::All));
    if add_all && drop_all {
        return Err(conflict("ALL cannot be both added and dropped".into()));
    }
    for name in add {
        if let CapName::One(cap) = name {
            if drop.contains(name) {
                return Err(conflict(format!("{cap} cannot be both added and dropped")));
            }
        }
    }
    let (added, dropped) = (mask(add), mask(drop));
    let bounding = if drop_all {
        added
    } else if add_all {
        CapMask(CapMask::all().0 & !dropped.0)
    } else {
        CapMask((CapMask::of(&DEFAULT_CAPS).0 | added.0) & !dropped.0)
    };
    Ok(CapSets { bounding, added })
}

/// The kernel's capset(2) header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability outside `sets.bounding` from the bounding set. Needs CAP_SETPCAP,
/// which the child holds until [`set_capabilities`].
pub(crate) fn limit_bounding_set(bounding: CapMask) -> std::io::Result<()> {
    for cap in 0..64u64 {
        if bounding.0 & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: plain prctl; EINVAL marks the end of the kernel's capabilities.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Every capability the running kernel knows (from /proc/sys/kernel/cap_last_cap).
pub fn kernel_caps() -> CapMask {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(40)
        .min(63);
    CapMask(u64::MAX >> (63 - last))
}

/// Keeps `caps` (all held) across exec as ambient capabilities: a process that joined a user
/// namespace under a uid other than 0 has them all, but the tools it runs there (nft) would
/// lose them at exec. Makes only syscalls: usable between fork and exec.
pub fn keep_across_exec(caps: CapMask) -> std::io::Result<()> {
    set_capabilities(caps, caps)
}

/// Sets the permitted, effective and inheritable sets, and the ambient set to `ambient`
/// (which must be within `permitted` and is also made inheritable, as ambient requires).
pub(crate) fn set_capabilities(permitted: CapMask, ambient: CapMask) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |m: u64, i: u32| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(permitted.0, i),
        permitted: word(permitted.0, i),
        inheritable: word(ambient.0, i),
    });
    // SAFETY: header and two data words, as capset(2) with version 3 reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain prctl calls.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for cap in 0..64u64 {
            if ambient.0 & (1 << cap) != 0
                && libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<CapName> {
        list.iter().map(|s| s.parse().expect("name")).collect()
    }

    #[test]
    fn names_take_any_case_with_or_without_the_prefix() {
        for s in ["net_admin", "NET_ADMIN", "cap_net_admin", "Cap_Net_Admin"] {
            assert_eq!(
                s.parse::<CapName>().expect("parse"),
                CapName::One(Capability::CAP_NET_ADMIN)
            );
        }
        assert_eq!("all".parse::<CapName>().expect("all"), CapName::All);
        assert!("NET_ADMINX".parse::<CapName>().is_err());
        assert!("".parse::<CapName>().is_err());
    }

    #[test]
    fn merging_follows_podman() {
        let default = CapMask::of(&DEFAULT_CAPS);
        assert_eq!(merge(&[], &[]).expect("merge").bounding, default);
        let sets = merge(&names(&["NET_ADMIN"]), &names(&["chown"])).expect("merge");
        assert!(sets.bounding.contains(Capability::CAP_NET_ADMIN));
        assert!(!sets.bounding.contains(Capability::CAP_CHOWN));
        assert_eq!(sets.added, CapMask::of(&[Capability::CAP_NET_ADMIN]));
        let only = merge(&names(&["NET_RAW"]), &names(&["ALL"])).expect("merge");
        assert_eq!(only.bounding, CapMask::of(&[Capability::CAP_NET_RAW]));
        let all = merge(&names(&["ALL"]), &names(&["SYS_ADMIN"])).expect("merge");
        assert!(all.bounding.contains(Capability::CAP_SYS_MODULE));
        assert!(!all.bounding.contains(Capability::CAP_SYS_ADMIN));
        assert!(merge(&names(&["ALL"]), &names(&["ALL"])).is_err());
        assert!(merge(&names(&["KILL"]), &names(&["kill"])).is_err());
    }
}
