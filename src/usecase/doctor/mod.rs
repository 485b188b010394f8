//! `netbox doctor`: whether this machine can do what netbox is asked to, each check with OK,
//! WARN or FAIL and, when not OK, the fix in one line.
//!
//! A check names what needs it ([`Purpose`]): `run` (bridge sandboxes: `netbox run`, `ns add`,
//! with their firewall options), `cni` (netbox-cni), `lab`, `rootless` (not built yet: its checks
//! never fail what exists). A FAIL blocks the purposes that need it; WARN is an option that will
//! not work (netem, VXLAN, ...) or something to know (stale objects). `netbox doctor` judges
//! run, cni and lab; `--for` narrows or widens that. What `netbox gc` would remove is a
//! check the runner adds ([`stale_objects`]): a use case does not call another.

use std::collections::BTreeMap;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::Serialize;

pub mod kernel;

/// OK, WARN or FAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// What a user may ask netbox for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Run,
    Cni,
    Lab,
    Rootless,
}

impl Purpose {
    /// What `netbox doctor` judges without `--for`.
    pub const DEFAULT: [Purpose; 3] = [Purpose::Run, Purpose::Cni, Purpose::Lab];
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// "kernel: veth", "program: nft", "privileges", ...
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// One line: what to do when not OK.
    pub fix: Option<String>,
    /// How it was decided, where that is not obvious (tried, or read from files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The purposes a FAIL blocks.
    pub needed_by: Vec<Purpose>,
    /// A FAIL that blocks one of the purposes asked for: the exit status is 1.
    pub blocking: bool,
}

impl Check {
    fn new(name: impl Into<String>, needed_by: &[Purpose]) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: String::new(),
            fix: None,
            method: None,
            needed_by: needed_by.to_vec(),
            blocking: false,
        }
    }

    fn ok(&mut self, detail: impl Into<String>) {
        self.set(Status::Ok, detail, None);
    }

    fn set(&mut self, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.status = status;
        self.detail = detail.into();
        self.fix = fix;
    }
}

/// What `netbox doctor` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The purposes judged.
    pub purposes: Vec<Purpose>,
    pub checks: Vec<Check>,
    /// No blocking FAIL.
    pub ok: bool,
}

impl Report {
    /// Adds a check, judged against the purposes asked for.
    pub fn add(&mut self, mut c: Check) {
        c.blocking =
            c.status == Status::Fail && c.needed_by.iter().any(|p| self.purposes.contains(p));
        self.ok &= !c.blocking;
        self.checks.push(c);
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

pub struct Options {
    pub purposes: Vec<Purpose>,
    /// The subnet of the built-in network (NETBOX_SUBNET), checked for overlaps.
    pub subnet: Option<IpNetwork>,
    /// Kernel features as tried by a helper process in a user namespace (see
    /// [`kernel::probe_in_fresh_namespace`]); when None and privileged, they are tried here.
    pub probes: Option<BTreeMap<String, kernel::Probe>>,
}

/// Runs every check.
pub fn run(opts: Options) -> Report {
    let root = is_root();
    let mut checks = vec![privileges(root), user_namespaces(root), ping_group_range()];
    checks.extend(programs());
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = kernel::KernelConfig::read(&release);
    let probes = match opts.probes {
        Some(p) => Some(p),
        None if root => kernel::probe_in_fresh_namespace()
            .map_err(|e| tracing::debug!(%e, "trying kernel features"))
            .ok(),
        None => None,
    };
    for f in &kernel::FEATURES {
        checks.push(kernel::judge(
            f,
            probes.as_ref().and_then(|p| p.get(f.id)),
            config.as_ref(),
            &release,
        ));
    }
    checks.push(subnet_overlap(opts.subnet));
    checks.push(ip_forward(root));
    let mut purposes = opts.purposes;
    purposes.sort();
    purposes.dedup();
    let mut report = Report {
        purposes,
        checks: Vec::new(),
        ok: true,
    };
    for c in checks {
        report.add(c);
    }
    report
}

/// True when netbox runs as root of the initial user namespace with the capabilities bridge
/// networks need (`privileged` alone is also true as root of a user namespace).
pub fn is_root() -> bool {
    let full_map = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    full_map && crate::sys::privilege::privileged()
}

fn privileges(root: bool) -> Check {
    let mut c = Check::new("privileges", &[Purpose::Cni]);
    if root {
        c.ok("root with CAP_NET_ADMIN and CAP_SYS_ADMIN");
    } else {
        c.set(
            Status::Fail,
            "not root: netbox-cni needs CAP_NET_ADMIN and CAP_SYS_ADMIN on the host; netbox run \
             and ns add use your own network host (see --for rootless)",
            Some("run with sudo for netbox-cni and bridges on the host's own network".into()),
        );
    }
    c
}

/// pasta opens /dev/net/tun as the user (inside the user's namespace, where root's file
/// modes still apply): distributions ship it 0666, some hosts and containers 0600.
fn tun_for_users() -> Check {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Check::new("/dev/net/tun for users", &[Purpose::Rootless]);
    match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.permissions().mode() & 0o006 == 0o006 => {
            c.ok("mode 0666: pasta can make the rootless uplink's tap")
        }
        Ok(m) => c.set(
            Status::Fail,
            format!(
                "mode {:04o}: users cannot open it, so pasta cannot make the rootless uplink",
                m.permissions().mode() & 0o7777
            ),
            Some("sudo chmod 0666 /dev/net/tun (the mode distributions ship)".into()),
        ),
        Err(e) => c.set(
            Status::Fail,
            format!("{e}: rootless `netbox run` needs a TUN device for its uplink"),
            Some("sudo modprobe tun".into()),
        ),
    }
    c
}

/// The lowest host port a rootless `-p` may publish.
fn unprivileged_ports() -> Check {
    let mut c = Check::new("unprivileged port start", &[]);
    let start = crate::sys::userns::unprivileged_port_start();
    c.ok(format!(
        "net.ipv4.ip_unprivileged_port_start = {start}: rootless `-p HOSTPORT` needs HOSTPORT >= {start}"
    ));
    c
}

/// Tries an unprivileged user + network namespace: as the caller, or as nobody when root.
fn user_namespaces(root: bool) -> Check {
    // As root labs build on the host's privileges; without root they need this.
    let needed: &[Purpose] = if root {
        &[Purpose::Rootless]
    } else {
        &[Purpose::Lab, Purpose::Rootless]
    };
    let mut c = Check::new("unprivileged user namespaces", needed);
    c.method = Some(if root {
        "tried as user nobody".into()
    } else {
        "tried".into()
    });
    match crate::process::try_user_namespace(root) {
        Ok(()) => c.ok("an unprivileged user can create user and network namespaces"),
        Err(e) => {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .ok()
                    .map(|v| v.trim().to_string())
            };
            let fix = if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
                "sudo sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/)"
            } else if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
                "sudo sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d/)"
            } else if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
                == Some("1")
            {
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor \
                 profile allowing userns for netbox"
            } else {
                "allow unprivileged user namespaces (a container may forbid them: run on the host)"
            };
            let status = if root { Status::Warn } else { Status::Fail };
            c.set(
                status,
                format!("refused: {e} (labs without root, rootless sandboxes)"),
                Some(fix.into()),
            );
        }
    }
    c
}

/// Unprivileged ICMP echo sockets (what `ping` uses without privileges) for the caller's group.
fn ping_group_range() -> Check {
    let mut c = Check::new("ping_group_range", &[]);
    let path = "/proc/sys/net/ipv4/ping_group_range";
    let range: Option<(u64, u64)> = std::fs::read_to_string(path).ok().and_then(|v| {
        let mut it = v.split_whitespace().map(|n| n.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    });
    let gid: u64 = std::env::var("SUDO_GID")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| nix::unistd::getgid().as_raw().into());
    match range {
        Some((lo, hi)) if lo <= gid && gid <= hi => c.ok(format!(
            "{lo}-{hi}: group {gid} may send ICMP echo without privileges"
        )),
        Some((lo, hi)) => c.set(
            Status::Warn,
            format!(
                "{lo} {hi}: group {gid} may not open ICMP echo sockets; `ping` without \
                 privileges (a command run as a user, rootless sandboxes) needs a ping with \
                 cap_net_raw"
            ),
            Some(
                "sudo sysctl -w net.ipv4.ping_group_range='0 2147483647' (and in /etc/sysctl.d/)"
                    .into(),
            ),
        ),
        None => c.set(
            Status::Warn,
            format!("{path} unreadable"),
            Some("mount /proc (netbox needs it)".into()),
        ),
    }
    c
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn programs() -> Vec<Check> {
    let mut out = Vec::new();
    let mut nft = Check::new("program: nft", &[Purpose::Run, Purpose::Cni]);
    match crate::firewall::nft::binary() {
        Ok(p) => nft.ok(format!("{} (the firewall's driver)", p.display())),
        Err(_) => nft.set(
            Status::Fail,
            "not found in PATH, /usr/sbin, /sbin: masquerade, published ports and isolation \
             cannot be made",
            Some("sudo apt-get install nftables".into()),
        ),
    }
    out.push(nft);

    let mut uplink = Check::new("program: pasta (rootless uplink)", &[Purpose::Rootless]);
    match crate::sys::userns::find_program("pasta") {
        Some(p) => uplink.ok(format!(
            "{} (the uplink of rootless `netbox run`'s network host)",
            p.display()
        )),
        None => uplink.set(
            Status::Fail,
            "pasta not found in PATH: `netbox run` without root has no uplink",
            Some("sudo apt-get install passt".into()),
        ),
    }
    out.push(uplink);
    out.push(tun_for_users());
    out.push(unprivileged_ports());

    let mut plugin = Check::new("program: netbox-cni", &[]);
    let dirs = ["/usr/lib/cni", "/opt/cni/bin"];
    let present: Vec<&str> = dirs
        .iter()
        .copied()
        .filter(|d| is_executable(&Path::new(d).join("netbox-cni")))
        .collect();
    match present.as_slice() {
        [_, _] => plugin.ok("in /usr/lib/cni and /opt/cni/bin (podman and containerd find it)"),
        [] => plugin.set(
            Status::Warn,
            "not in /usr/lib/cni nor /opt/cni/bin: container runtimes will not find it unless \
             their CNI path says where it is",
            Some(
                "install it as /usr/lib/cni/netbox-cni with a link in /opt/cni/bin (the Debian \
                 package does)"
                    .into(),
            ),
        ),
        [one] => {
            let other = dirs.iter().find(|d| *d != one).copied().unwrap_or_default();
            plugin.set(
                Status::Warn,
                format!("in {one} only: runtimes that look in {other} will not find it"),
                Some(format!("sudo ln -s {one}/netbox-cni {other}/netbox-cni")),
            )
        }
        _ => {}
    }
    out.push(plugin);
    out
}

/// The built-in network's subnet against the host's routes (what `netbox run` refuses).
fn subnet_overlap(subnet: Option<IpNetwork>) -> Check {
    let mut c = Check::new("subnet overlap", &[Purpose::Run]);
    let found = (|| -> crate::Result<()> {
        let network = crate::model::network::NetworkSpec::builtin(subnet)?;
        let rt = crate::sys::runtime::current_thread()?;
        let (bridge, routes) = rt.block_on(async {
            let nl = crate::sys::netlink::Netlink::connect()?;
            futures::try_join!(nl.link_by_name(&network.bridge), nl.routes())
        })?;
        network.check_no_overlap(&routes, bridge.map(|b| b.index))?;
        c.ok(format!(
            "the built-in network's subnet {} overlaps no host route",
            network
                .subnets()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    })();
    if let Err(e) = found {
        c.set(
            Status::Fail,
            crate::error::chain(&e),
            Some("choose another subnet with --subnet CIDR or NETBOX_SUBNET".into()),
        );
    }
    c
}

fn ip_forward(root: bool) -> Check {
    let mut c = Check::new("ip_forward", &[]);
    let path = "/proc/sys/net/ipv4/ip_forward";
    let on = std::fs::read_to_string(path).map(|v| v.trim() != "0");
    let writable = nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok();
    match on {
        Ok(true) => c.ok("on"),
        Ok(false) if !root || writable => c.ok(
            "off: netbox turns it on when masquerade or a published port needs it, and says so",
        ),
        Ok(false) => c.set(
            Status::Warn,
            format!(
                "off, and {path} is not writable here: masquerade and published ports will not \
                 route"
            ),
            Some("sudo sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d/)".into()),
        ),
        Err(e) => c.set(
            Status::Warn,
            format!("{path}: {e}"),
            Some("mount /proc (netbox needs it)".into()),
        ),
    }
    c
}

/// What `netbox gc --dry-run` found, as a check: the runner runs gc (a use case does not call
/// another) and hands its findings here. `found`: the kinds and names it would remove, or why
/// it could not look.
pub fn stale_objects(found: std::result::Result<(Vec<&str>, Vec<String>), String>) -> Check {
    let mut c = Check::new("stale objects", &[]);
    c.method = Some("netbox gc --dry-run".into());
    match found {
        Ok((kinds, errors)) if kinds.is_empty() && errors.is_empty() => {
            c.ok("nothing whose owner is gone")
        }
        Ok((kinds, errors)) => {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for k in &kinds {
                *counts.entry(k).or_default() += 1;
            }
            let mut parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            parts.extend(errors.iter().map(|e| format!("error: {e}")));
            c.set(
                Status::Warn,
                format!(
                    "{} objects whose owner is gone: {}",
                    kinds.len(),
                    parts.join(", ")
                ),
                Some("sudo netbox gc".into()),
            );
        }
        Err(why) => c.set(Status::Warn, why, Some("sudo netbox doctor".into())),
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_blocks_only_the_purposes_that_need_it() {
        let mut c = Check::new("x", &[Purpose::Lab]);
        c.set(Status::Fail, "gone", Some("fix".into()));
        let blocking = |purposes: &[Purpose]| {
            c.status == Status::Fail && c.needed_by.iter().any(|p| purposes.contains(p))
        };
        assert!(blocking(&Purpose::DEFAULT));
        assert!(!blocking(&[Purpose::Run, Purpose::Cni]));
    }

    #[test]
    fn a_feature_the_kernel_was_built_without_is_judged_from_its_configuration() {
        let cfg = kernel::KernelConfig::parse(
            "CONFIG_VETH=y\n# CONFIG_NET_SCH_NETEM is not set\n",
            "test".into(),
        );
        let netem = &kernel::FEATURES[6];
        assert_eq!(netem.id, "netem");
        let c = kernel::judge(netem, None, Some(&cfg), "no-such-release");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("CONFIG_NET_SCH_NETEM not set"),
            "{}",
            c.detail
        );
        assert!(c
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("CONFIG_NET_SCH_NETEM"));
        let veth = &kernel::FEATURES[0];
        let c = kernel::judge(veth, None, Some(&cfg), "no-such-release");
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        // An option of a module: the module being there says nothing about the option.
        let vlan = &kernel::FEATURES[7];
        assert_eq!(vlan.id, "bridge-vlan-filtering");
        let cfg = kernel::KernelConfig::parse("CONFIG_BRIDGE=m\n", "test".into());
        let c = kernel::judge(vlan, None, Some(&cfg), "no-such-release");
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        let refused = kernel::Probe::Refused("Operation not supported".into());
        let c = kernel::judge(veth, Some(&refused), Some(&cfg), "no-such-release");
        assert_eq!(c.status, Status::Fail);
    }
}
