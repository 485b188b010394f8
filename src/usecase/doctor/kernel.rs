//! Kernel features, decided by trying them in a throwaway network namespace where netbox may
//! make one (root, or a user namespace), else read from the kernel's configuration
//! (/proc/config.gz, /boot/config-RELEASE) and module files (/proc/modules, /lib/modules). Each
//! answer says how it was reached: a configuration says what was built, only a try says what
//! works here (a module may fail to load, a container may forbid it).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Check, Purpose, Status};
use crate::sys::netlink::{BridgeSpec, Netlink, TbfSpec, VethSpec, VxlanSpec};
use crate::sys::netns::NetNs;

/// A kernel feature netbox uses.
pub struct Feature {
    pub id: &'static str,
    /// Kernel configuration options it needs (the first is the feature itself).
    pub config: &'static [&'static str],
    /// The module that provides it when it is not built in.
    pub module: &'static str,
    /// Missing: FAIL when something needs it, WARN when it only disables an option.
    pub missing: Status,
    pub needed_by: &'static [Purpose],
    pub used_for: &'static str,
}

use Purpose::{Cni, Lab, Run};

pub const FEATURES: [Feature; 8] = [
    Feature {
        id: "veth",
        config: &["CONFIG_VETH"],
        module: "veth",
        missing: Status::Fail,
        needed_by: &[Run, Cni, Lab],
        used_for: "every sandbox's link to its bridge",
    },
    Feature {
        id: "bridge",
        config: &["CONFIG_BRIDGE"],
        module: "bridge",
        missing: Status::Fail,
        needed_by: &[Run, Cni, Lab],
        used_for: "networks and lab switches",
    },
    Feature {
        id: "nftables",
        config: &[
            "CONFIG_NF_TABLES",
            "CONFIG_NF_TABLES_INET",
            "CONFIG_NF_TABLES_BRIDGE",
            "CONFIG_NFT_NAT",
            "CONFIG_NFT_MASQ",
            "CONFIG_NFT_CT",
        ],
        module: "nf_tables",
        missing: Status::Fail,
        needed_by: &[Run, Cni],
        used_for: "masquerade, published ports, anti-spoofing, isolation",
    },
    Feature {
        id: "tun",
        config: &["CONFIG_TUN"],
        module: "tun",
        missing: Status::Warn,
        needed_by: &[],
        used_for: "netbox tuntap, run --tun, lab tun/tap",
    },
    Feature {
        id: "vxlan",
        config: &["CONFIG_VXLAN"],
        module: "vxlan",
        missing: Status::Warn,
        needed_by: &[],
        used_for: "lab vxlan devices",
    },
    Feature {
        id: "tbf",
        config: &["CONFIG_NET_SCH_TBF"],
        module: "sch_tbf",
        missing: Status::Warn,
        needed_by: &[],
        used_for: "lab link rates",
    },
    Feature {
        id: "netem",
        config: &["CONFIG_NET_SCH_NETEM"],
        module: "sch_netem",
        missing: Status::Warn,
        needed_by: &[],
        used_for: "lab link delay and loss",
    },
    Feature {
        id: "bridge-vlan-filtering",
        config: &["CONFIG_BRIDGE_VLAN_FILTERING"],
        module: "bridge",
        missing: Status::Warn,
        needed_by: &[],
        used_for: "VLANs on a bridge: the CNI `vlan` key, refused by netbox-cni today",
    },
];

/// The outcome of trying one feature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "result", content = "reason")]
pub enum Probe {
    Works,
    Refused(String),
    NotTried(String),
}

fn outcome<E: std::fmt::Display>(r: std::result::Result<(), E>) -> Probe {
    match r {
        Ok(()) => Probe::Works,
        Err(e) => Probe::Refused(e.to_string()),
    }
}

/// Tries every feature in a new network namespace, which vanishes with everything made in it.
/// Needs CAP_NET_ADMIN and CAP_SYS_ADMIN in the current user namespace.
pub fn probe_in_fresh_namespace() -> crate::Result<BTreeMap<String, Probe>> {
    let ns = NetNs::create()?;
    let rt = crate::sys::runtime::current_thread()?;
    let mut out: BTreeMap<String, Probe> = BTreeMap::new();
    rt.block_on(async {
        let nl = Netlink::connect_in(&ns)?;
        let veth = VethSpec {
            host_name: "nbdoc-a".into(),
            peer_name: "nbdoc-b".into(),
            controller: None,
            mtu: None,
            peer_mac: None,
            host_mac: None,
            alias: None,
        };
        out.insert(
            "veth".into(),
            outcome(nl.create_veth_pair(&veth, &ns).await),
        );
        let bridge = BridgeSpec {
            name: "nbdoc-br".into(),
            mtu: None,
        };
        let bridge = nl.ensure_bridge(&bridge).await;
        out.insert("bridge".into(), outcome(bridge.as_ref().map(|_| ())));
        out.insert(
            "bridge-vlan-filtering".into(),
            outcome(nl.create_vlan_filtering_bridge("nbdoc-vf").await),
        );
        let vxlan = VxlanSpec {
            name: "nbdoc-vx".into(),
            vni: 42,
            underlay: None,
            local: None,
            remote: None,
            port: 4789,
        };
        out.insert(
            "vxlan".into(),
            outcome(nl.create_vxlan(&vxlan).await.map(|_| ())),
        );
        // Qdiscs on loopback (always there) and on the bridge: two devices, two root qdiscs.
        match nl.link_by_name("lo").await? {
            Some(lo) => out.insert(
                "tbf".into(),
                outcome(nl.add_tbf(&lo, &TbfSpec::for_rate(1_000_000)).await),
            ),
            None => out.insert("tbf".into(), Probe::NotTried("no loopback device".into())),
        };
        let netem = crate::sys::netlink::NetemSpec {
            delay_ns: 1_000_000,
            ..Default::default()
        };
        match &bridge {
            Ok(br) => out.insert("netem".into(), outcome(nl.add_netem(br, &netem).await)),
            Err(_) => out.insert(
                "netem".into(),
                Probe::NotTried("no bridge to put it on".into()),
            ),
        };
        Ok::<(), crate::Error>(())
    })?;
    let tun = ns.run_in(|| {
        crate::sys::tuntap::TunBuilder::tun()
            .name("nbdoc-tun")
            .open()
            .map(|_| ())
    })?;
    out.insert(
        "tun".into(),
        match tun {
            Ok(()) => Probe::Works,
            // No access to /dev/net/tun says nothing about the kernel.
            Err(e @ crate::sys::tuntap::TuntapError::CloneDevice { .. })
                if std::path::Path::new("/dev/net/tun").exists() =>
            {
                Probe::NotTried(e.to_string())
            }
            Err(e) => Probe::Refused(e.to_string()),
        },
    );
    out.insert("nftables".into(), probe_nftables(&ns));
    Ok(out)
}

/// The rules netbox makes, in kinds: NAT with masquerade, a routed filter with conntrack, a
/// bridge filter. Loaded into the throwaway namespace by the `nft` binary (the firewall driver's
/// way to the kernel); a kernel without a piece refuses the whole batch.
const NFT_PROBE: &str = "table inet nbdoc {
  chain probe_post { type nat hook postrouting priority 100; ip saddr 10.0.0.0/8 masquerade; }
  chain probe_forward { type filter hook forward priority 0; ct state established,related accept; }
}
table bridge nbdoc {
  chain probe_pre { type filter hook prerouting priority 0; ether saddr 02:00:00:00:00:01 accept; }
}
";

fn probe_nftables(ns: &NetNs) -> Probe {
    let Ok(nft) = crate::firewall::nft::binary() else {
        return Probe::NotTried("the nft program is not installed".into());
    };
    let fd = match ns.try_clone_fd() {
        Ok(fd) => fd,
        Err(e) => return Probe::NotTried(e.to_string()),
    };
    let mut cmd = std::process::Command::new(&nft);
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    crate::process::enter_namespaces_on_exec(
        &mut cmd,
        vec![(fd, nix::sched::CloneFlags::CLONE_NEWNET)],
    );
    let child = cmd.spawn().and_then(|mut child| {
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(NFT_PROBE.as_bytes());
        }
        child.wait_with_output()
    });
    match child {
        Ok(out) if out.status.success() => Probe::Works,
        Ok(out) => Probe::Refused(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("nft failed")
                .to_string(),
        ),
        Err(e) => Probe::NotTried(format!("running {}: {e}", nft.display())),
    }
}

/// The kernel's build configuration, where the kernel or the distribution publishes it.
pub struct KernelConfig {
    pub source: String,
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    pub fn read(release: &str) -> Option<KernelConfig> {
        let mut text = String::new();
        let source = if let Ok(file) = std::fs::File::open("/proc/config.gz") {
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .ok()?;
            "/proc/config.gz".to_string()
        } else {
            let path = format!("/boot/config-{release}");
            text = std::fs::read_to_string(&path).ok()?;
            path
        };
        Some(KernelConfig::parse(&text, source))
    }

    pub fn parse(text: &str, source: String) -> KernelConfig {
        let values = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        KernelConfig { source, values }
    }

    /// "y", "m", or None when not set.
    pub fn get(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }
}

/// Whether a module is loaded, or could be.
#[derive(Debug, PartialEq, Eq)]
enum Module {
    Loaded,
    OnDisk,
    Absent,
}

fn module_state(name: &str, release: &str) -> Module {
    let loaded = std::fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.split(' ').next() == Some(name)))
        .unwrap_or(false);
    if loaded || Path::new("/sys/module").join(name).exists() {
        return Module::Loaded;
    }
    let dep = Path::new("/lib/modules").join(release).join("modules.dep");
    let file = format!("/{name}.ko");
    let on_disk = std::fs::read_to_string(dep)
        .map(|d| {
            d.lines().any(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|m| m.contains(&file) || m.ends_with(&format!("{name}.ko")))
            })
        })
        .unwrap_or(false);
    if on_disk {
        Module::OnDisk
    } else {
        Module::Absent
    }
}

/// The check of one feature from what was tried and what the configuration says.
pub fn judge(
    f: &Feature,
    probe: Option<&Probe>,
    config: Option<&KernelConfig>,
    release: &str,
) -> Check {
    let missing_options: Option<Vec<&str>> = config.map(|c| {
        f.config
            .iter()
            .copied()
            .filter(|o| c.get(o).is_none())
            .collect()
    });
    let module = module_state(f.module, release);
    let from_config = || -> Option<String> {
        let c = config?;
        Some(match missing_options.as_deref() {
            Some([]) => format!(
                "{}={} in {}",
                f.config[0],
                c.get(f.config[0]).unwrap_or("?"),
                c.source
            ),
            Some(m) => format!("{} not set in {}", m.join(", "), c.source),
            None => String::new(),
        })
    };
    let built_without = missing_options.as_ref().is_some_and(|m| !m.is_empty());
    let option_value = config.and_then(|c| c.get(f.config[0]));
    let fix_missing = || {
        if built_without {
            format!(
                "use a kernel built with {} (Debian's stock kernels have it)",
                missing_options.as_deref().unwrap_or_default().join(", ")
            )
        } else if option_value == Some("y") {
            "it is built in yet refused: a container or a security policy forbids it; run netbox \
             on the host"
                .to_string()
        } else {
            format!(
                "sudo modprobe {} (and list it in /etc/modules-load.d/netbox.conf)",
                f.module
            )
        }
    };
    let mut check = Check::new(format!("kernel: {}", f.id), f.needed_by);
    check.method = Some(
        match probe {
            Some(Probe::Works | Probe::Refused(_)) => "tried in a throwaway network namespace",
            _ if config.is_some() => "kernel configuration and module files",
            _ => "module files",
        }
        .into(),
    );
    match probe {
        Some(Probe::Works) => check.ok(format!("works ({})", f.used_for)),
        Some(Probe::Refused(reason)) => {
            let why = from_config().map(|c| format!("; {c}")).unwrap_or_default();
            check.set(
                f.missing,
                format!("refused: {reason}{why}; needed for {}", f.used_for),
                Some(fix_missing()),
            )
        }
        Some(Probe::NotTried(_)) | None => {
            let not_tried = match probe {
                Some(Probe::NotTried(why)) => format!("not tried: {why}"),
                _ => "not tried: needs root or a user namespace".to_string(),
            };
            // A configuration that lists the options is the answer: a loaded module does not
            // tell about an option built into it (VLAN filtering is part of `bridge`).
            match (config, built_without) {
                (Some(_), false) => check.ok(format!(
                    "{}; {not_tried}",
                    from_config().unwrap_or_default()
                )),
                (Some(_), true) => check.set(
                    f.missing,
                    format!(
                        "{}, needed for {}; {not_tried}",
                        from_config().unwrap_or_default(),
                        f.used_for
                    ),
                    Some(fix_missing()),
                ),
                (None, _) if module != Module::Absent => {
                    check.ok(format!("module {} present; {not_tried}", f.module))
                }
                (None, _) => check.set(
                    Status::Warn,
                    format!(
                        "unknown: {not_tried}, and no kernel configuration or module file tells"
                    ),
                    Some("run `sudo netbox doctor` to try it".into()),
                ),
            }
        }
    }
    check
}
