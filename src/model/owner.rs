//! Who owns what netbox makes, and every way an owner is written down: its key (lease store
//! index, record names), the alias of its host veth, the name of its nft tables, the host veth
//! name of a CNI attachment, and whether it is still alive (/proc/PID/stat). One module, so
//! that every encoding reads back with the others and liveness means the same everywhere.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::ipam::IpamError;

type Result<T, E = IpamError> = std::result::Result<T, E>;

/// Longest file name most Linux file systems accept.
const MAX_FILE_NAME: usize = 255;
/// What every host veth alias of a run or named sandbox starts with.
pub const ALIAS_PREFIX: &str = "netbox:";
/// What every host veth alias of netbox-cni starts with.
pub const CNI_ALIAS_PREFIX: &str = "netbox-cni:";
/// Longest alias the kernel keeps (IFALIASZ - 1).
pub const MAX_ALIAS: usize = 255;
/// What every netbox nft table name starts with.
pub const TABLE_PREFIX: &str = "netbox-";
/// Longest table name the kernel accepts (NFT_TABLE_MAXNAMELEN less the terminating NUL).
const MAX_TABLE_NAME: usize = 255;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// A CNI attachment.
    Cni {
        container_id: String,
        ifname: String,
    },
    /// A `netbox run` process, told apart from a later process with the same pid by its start
    /// time.
    Process { pid: u32, start_time: u64 },
    /// A named sandbox (`netbox ns add NAME`): alive until `netbox ns del NAME`.
    Named { name: String },
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Cni {
                container_id,
                ifname,
            } => write!(f, "container {container_id} ({ifname})"),
            Owner::Process { pid, .. } => write!(f, "netbox run (pid {pid})"),
            Owner::Named { name } => write!(f, "sandbox {name}"),
        }
    }
}

impl Owner {
    /// The calling process.
    pub fn current_process() -> Result<Owner> {
        let pid = std::process::id();
        let start_time = process_start_time(pid)
            .ok_or_else(|| IpamError::BadOwner(format!("cannot read /proc/{pid}/stat")))?;
        Ok(Owner::Process { pid, start_time })
    }

    /// False once the owning process is gone (a new process with the same pid has another start
    /// time). CNI owners are alive until the runtime says otherwise (DEL or GC).
    pub fn is_alive(&self) -> bool {
        match self {
            Owner::Cni { .. } | Owner::Named { .. } => true,
            Owner::Process { pid, start_time } => process_start_time(*pid) == Some(*start_time),
        }
    }

    /// A stable string naming the owner: `cni/<container>+<ifname>`, `proc/<pid>.<start time>`
    /// or `named/<name>`. It is the owner's index in the lease store (relative to `owners/`),
    /// the name of its records and, re-encoded, of its nft tables and veth aliases;
    /// [`Owner::from_key`] reads it back. Container ids, interface and sandbox names are escaped
    /// (`%XX` for anything but `[A-Za-z0-9._-]`), so every owner gets its own file name, none is
    /// a path, and the owner can be read back from the name.
    pub fn key(&self) -> Result<String> {
        match self {
            Owner::Cni {
                container_id,
                ifname,
            } => {
                if container_id.is_empty() || ifname.is_empty() {
                    return Err(IpamError::BadOwner(format!(
                        "container id {container_id:?} and interface name {ifname:?} must not be empty"
                    )));
                }
                let mut name = String::from("cni/");
                escape(container_id, &mut name);
                name.push('+');
                escape(ifname, &mut name);
                if name.len() - "cni/".len() > MAX_FILE_NAME {
                    return Err(IpamError::BadOwner(format!(
                        "container id {container_id:?} with interface {ifname:?} is too long"
                    )));
                }
                Ok(name)
            }
            Owner::Process { pid, start_time } => Ok(format!("proc/{pid}.{start_time}")),
            Owner::Named { name } => {
                if name.is_empty() || name.len() > MAX_FILE_NAME / 3 {
                    return Err(IpamError::BadOwner(format!("sandbox name {name:?}")));
                }
                let mut index = String::from("named/");
                escape(name, &mut index);
                Ok(index)
            }
        }
    }

    /// The owner a [`Owner::key`] stands for (None for keys netbox does not write).
    pub fn from_key(name: &str) -> Option<Owner> {
        if let Some(file) = name.strip_prefix("cni/") {
            let (id, ifname) = file.split_once('+')?;
            return Some(Owner::Cni {
                container_id: unescape(id)?,
                ifname: unescape(ifname)?,
            });
        }
        if let Some(file) = name.strip_prefix("named/") {
            return Some(Owner::Named {
                name: unescape(file)?,
            });
        }
        let (pid, start_time) = name.strip_prefix("proc/")?.split_once('.')?;
        Some(Owner::Process {
            pid: pid.parse().ok()?,
            start_time: start_time.parse().ok()?,
        })
    }
}

fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Start time of a live process (field 22 of /proc/PID/stat, in clock ticks since boot); None
/// when it is gone or a zombie (it has ended: it will never release what it holds).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time in the text of /proc/PID/stat, None for a zombie or dead process.
fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace();
    // Field 3 is the state; field 22 the start time.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The alias of the host veth of a run or named sandbox: `netbox:<network>:<key>`.
pub fn alias(network: &str, owner: &Owner) -> Result<String> {
    Ok(format!("{ALIAS_PREFIX}{network}:{}", owner.key()?))
}

/// The host end's name of a CNI attachment: "veth" and 11 hex digits (44 bits) of a hash of the
/// attachment, so DEL and GC find it without state. FNV-1a is fixed by its definition: the name
/// of an attachment made by one build is the one a later build looks for.
pub fn cni_host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:011x}", h >> 20)
}

/// The host end's MAC of a CNI attachment: locally administered, derived from the attachment
/// like its name (with another seed). It is set in the request that creates the pair, so a link
/// with both this name and this MAC is netbox's from its first instant, before its alias is
/// written (the kernel ignores an alias in that request).
pub fn cni_host_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let mut h: u64 = 0x6e62_782d_636e_6921;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The owner recorded on a CNI attachment's host veth (what `ip link` shows as its alias):
/// `netbox-cni:<network>:<container>:<ifname>`.
pub fn cni_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let mut alias = format!("{CNI_ALIAS_PREFIX}{network}:{container_id}:{ifname}");
    // Everything in it is ASCII (validated), so any cut is on a character boundary.
    alias.truncate(MAX_ALIAS);
    alias
}

/// The network and owner a host veth's alias records, when netbox wrote it.
pub fn parse_alias(alias: &str) -> Option<(String, Owner)> {
    if let Some(rest) = alias.strip_prefix(CNI_ALIAS_PREFIX) {
        // netbox-cni:<network>:<container>:<ifname>; none of the three holds ':' (validated).
        let mut parts = rest.splitn(3, ':');
        let network = parts.next()?;
        let container_id = parts.next()?;
        let ifname = parts.next()?;
        if network.is_empty() || container_id.is_empty() || ifname.is_empty() {
            return None;
        }
        if ifname.contains(':') {
            return None;
        }
        return Some((
            network.into(),
            Owner::Cni {
                container_id: container_id.into(),
                ifname: ifname.into(),
            },
        ));
    }
    let (network, key) = alias.strip_prefix(ALIAS_PREFIX)?.split_once(':')?;
    if network.is_empty() {
        return None;
    }
    let owner = Owner::from_key(key)?;
    // A key that does not round-trip was not written by netbox.
    (owner.key().ok()? == key).then(|| (network.into(), owner))
}

/// An nft name for an owner: `prefix` and the owner's key, where bytes outside nft's name
/// alphabet (letters, digits, `.`, `-`, `/`) become `_XX`. Tables of older netbox versions use
/// [`TABLE_PREFIX`]; the firewall's per-owner record chains their own prefix.
pub fn nft_name(prefix: &str, owner: &Owner) -> Result<String> {
    let key = owner.key()?;
    let mut name = String::from(prefix);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"./-".contains(&b) {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "_{b:02X}");
        }
    }
    if name.len() > MAX_TABLE_NAME {
        return Err(IpamError::BadOwner(format!(
            "{owner}: its key is too long to name an nft table or chain"
        )));
    }
    Ok(name)
}

/// The owner an [`nft_name`] with `prefix` stands for (None for other names).
pub fn owner_of_nft_name(prefix: &str, name: &str) -> Option<Owner> {
    let encoded = name.strip_prefix(prefix)?;
    let mut key = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let hex = [bytes.next()?, bytes.next()?];
            key.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            key.push(b);
        }
    }
    Owner::from_key(std::str::from_utf8(&key).ok()?)
}

/// The name of an owner's per-owner nft tables (netbox before the shared firewall tables).
pub fn nft_table_name(owner: &Owner) -> Result<String> {
    nft_name(TABLE_PREFIX, owner)
}

/// The owner a per-owner netbox table name stands for (None for other tables).
pub fn owner_of_nft_table(name: &str) -> Option<Owner> {
    owner_of_nft_name(TABLE_PREFIX, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_and_dead_processes_have_no_start_time() {
        let live = "12 (a (b) c) S 1 12 12 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 0";
        assert_eq!(parse_start_time(live), Some(4242));
        assert_eq!(parse_start_time(&live.replace(") S ", ") Z ")), None);
        assert_eq!(parse_start_time(&live.replace(") S ", ") X ")), None);
        assert_eq!(parse_start_time("12 (x"), None);
    }

    #[test]
    fn start_time_of_this_process_is_readable_and_stable() {
        let a = process_start_time(std::process::id()).expect("start time");
        let b = process_start_time(std::process::id()).expect("start time");
        assert_eq!(a, b);
        assert!(Owner::current_process().expect("owner").is_alive());
        assert!(!Owner::Process {
            pid: std::process::id(),
            start_time: a + 1
        }
        .is_alive());
    }

    #[test]
    fn owner_index_names_are_distinct_plain_file_names() {
        let cni = |c: &str, i: &str| {
            Owner::Cni {
                container_id: c.into(),
                ifname: i.into(),
            }
            .key()
            .expect("valid owner")
        };
        // Without escaping these pairs would share a name.
        assert_ne!(cni("a+b", "c"), cni("a", "b+c"));
        assert_ne!(cni("a.b", "c"), cni("a", "b.c"));
        for name in [cni("../..", "eth0"), cni("x/y", "a b"), cni(".", ".")] {
            let file = name.strip_prefix("cni/").expect("cni dir");
            assert!(!file.contains('/') && file != "." && file != "..", "{name}");
        }
        assert!(Owner::Cni {
            container_id: "x".repeat(300),
            ifname: "eth0".into()
        }
        .key()
        .is_err());
        assert!(Owner::Cni {
            container_id: String::new(),
            ifname: "eth0".into()
        }
        .key()
        .is_err());
    }

    proptest::proptest! {
        #[test]
        fn owners_are_read_back_from_their_index_names(
            container_id in "\\PC{1,40}",
            ifname in "\\PC{1,15}",
            pid in proptest::prelude::any::<u32>(),
            start_time in proptest::prelude::any::<u64>(),
        ) {
            for owner in [Owner::Cni { container_id, ifname }, Owner::Process { pid, start_time }] {
                // Only length can make a non-empty owner unindexable.
                let Ok(name) = owner.key() else {
                    continue;
                };
                let file = name.split_once('/').expect("kind/file").1;
                proptest::prop_assert!(!file.contains('/') && file != "." && file != "..");
                proptest::prop_assert_eq!(Owner::from_key(&name), Some(owner));
            }
        }
    }

    #[test]
    fn aliases_round_trip_and_foreign_ones_do_not_parse() {
        for owner in [
            Owner::Process {
                pid: 12,
                start_time: 345,
            },
            Owner::Named {
                name: "web-1".into(),
            },
        ] {
            let a = alias("netbox", &owner).expect("alias");
            assert_eq!(parse_alias(&a), Some(("netbox".into(), owner)));
        }
        assert_eq!(
            parse_alias("netbox-cni:net1:abc:eth0"),
            Some((
                "net1".into(),
                Owner::Cni {
                    container_id: "abc".into(),
                    ifname: "eth0".into()
                }
            ))
        );
        for foreign in [
            "",
            "netbox",
            "netbox:",
            "netbox:net",
            "netbox:net:proc/12",
            "netbox:net:proc/x.1",
            "netbox:net:other/1",
            "docker0 bridge",
            "netbox-cni:net:abc",
        ] {
            assert_eq!(parse_alias(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = cni_host_ifname("abc", "eth0");
        assert_eq!(a, cni_host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, cni_host_ifname("abc", "eth1"));
        assert_ne!(a, cni_host_ifname("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(cni_host_ifname("ab", "ceth0"), a);
        crate::sys::netlink::validate_ifname(&a).expect("valid name");
    }

    #[test]
    fn aliases_fit_the_kernel_limit() {
        let long = cni_alias(&"n".repeat(200), &"c".repeat(128), "eth0");
        assert_eq!(long.len(), MAX_ALIAS);
        assert!(long.starts_with(&format!("{CNI_ALIAS_PREFIX}{}:", "n".repeat(200))));
    }
}
