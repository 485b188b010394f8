//! `netbox man DIR`: manual pages. netbox.1 and one page per subcommand come from the clap
//! definitions (clap_mangen); netbox-cni.8 from the tables below, since the plugin has no
//! command line to parse: a runtime talks to it through CNI_* variables and JSON on stdin. The
//! error codes are the plugin's own constants; keys and variables follow README's netbox-cni
//! section (a test checks that every key README names is on the page).

use std::path::{Path, PathBuf};

use clap::Args;
use clap_mangen::roff::{bold, italic, roman, Roff};

use netbox::usecase::cni::code;

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    dir: PathBuf,
}

pub fn run(args: ManArgs, command: clap::Command) -> i32 {
    match write_all(&args.dir, command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "netbox: writing manual pages to {}: {e}",
                args.dir.display()
            );
            125
        }
    }
}

fn write_all(dir: &Path, command: clap::Command) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)?;
    std::fs::write(dir.join("netbox-cni.8"), cni_page())
}

/// The plugin's configuration keys: (key, meaning).
const KEYS: &[(&str, &str)] = &[
    ("type", "\"netbox-cni\" where a conflist says \"bridge\"."),
    ("bridge", "Bridge name (default cni0)."),
    ("isGateway", "The bridge carries the gateway address of each range."),
    ("isDefaultGateway", "The container gets a default route through the gateway (implies isGateway)."),
    ("mtu", "MTU of the veth pair and the bridge."),
    ("hairpinMode", "Hairpin on the bridge port: the container reaches itself through published ports."),
    ("promiscMode", "The bridge in promiscuous mode."),
    ("enabledad", "Duplicate address detection for the container's IPv6 addresses (off by default)."),
    ("forceAddress", "Replace another address of the gateway's subnet on the bridge instead of refusing (code 7)."),
    ("ipMasq", "Masquerade the container's traffic leaving its subnet (nftables)."),
    ("noMasqueradeTo", "netbox: a list of CIDRs (a cluster's pod and node CIDRs) that ipMasq leaves alone: the receiver sees the container's own address."),
    ("macspoofchk", "Drop frames from the container with another MAC or IP address."),
    ("isolate", "netbox: no traffic with other containers on the bridge; the gateway stays reachable."),
    ("isolateNetworks", "netbox: new connections from outside the bridge are dropped unless published."),
    ("blockHost", "netbox: the container cannot reach the host's own addresses."),
    ("vlan", "Refused with code 7: bridge VLAN filtering is not implemented."),
    ("logFile", "Append one line per invocation to this file (default: none; NETBOX_LOG logs to stderr)."),
    ("logLevel", "A tracing filter for logFile (default info)."),
    ("capabilities.portMappings", "Declare it to receive runtimeConfig.portMappings (hostPort, containerPort, protocol tcp/udp, hostIP), as portmap reads them; do not chain portmap too. sctp is refused with code 7."),
    ("capabilities.ipRanges", "Declare it to receive runtimeConfig.ipRanges (range sets of subnet, rangeStart, rangeEnd, gateway, as host-local reads them): the node's pod CIDR from containerd or CRI-O, in front of the ipam section's own ranges. Built-in IPAM only (a delegated IPAM plugin reads them itself); DEL, CHECK and GC work without them."),
    ("runtimeConfig.mac", "Per-container MAC address (also MAC= in CNI_ARGS)."),
    ("ipam.type", "\"netbox\" (or \"netbox-cni\"): the built-in store with host-local's keys; any other type is run from CNI_PATH (host-local, static, ...)."),
    ("ipam.ranges, ipam.subnet, ipam.rangeStart, ipam.rangeEnd, ipam.gateway, ipam.routes", "As host-local reads them."),
    ("ipam.dataDir", "Where leases live (default /var/lib/netbox/ipam)."),
    ("ipam.resolvConf", "DNS servers for the result, read from this file."),
];

/// Environment variables: (name, meaning).
const ENVIRONMENT: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD, CHECK, DEL, GC, STATUS or VERSION."),
    (
        "CNI_CONTAINERID",
        "The container's id; with CNI_IFNAME it names the attachment.",
    ),
    (
        "CNI_NETNS",
        "Path of the container's network namespace (ADD, CHECK; DEL works without it).",
    ),
    ("CNI_IFNAME", "Interface name inside the container."),
    ("CNI_ARGS", "KEY=VALUE;... (IgnoreUnknown, IP=, MAC=)."),
    ("CNI_PATH", "Where delegated IPAM plugins are looked up."),
    (
        "NETBOX_LOG",
        "A tracing filter: logs on stderr (e.g. debug).",
    ),
];

fn error_codes() -> Vec<(u32, &'static str)> {
    vec![
        (code::INCOMPATIBLE_VERSION, "Incompatible CNI version."),
        (code::UNKNOWN_CONTAINER, "CHECK on a network namespace that vanished."),
        (code::INVALID_ENVIRONMENT, "Missing or invalid CNI_* variable; also: CNI_IFNAME already exists in the namespace."),
        (code::IO_FAILURE, "The kernel refused an operation (netlink, nftables, files)."),
        (code::DECODE_FAILURE, "The configuration on stdin is not valid JSON."),
        (code::INVALID_CONFIG, "A bad or unsupported configuration value (vlan, sctp port mappings, a conflicting bridge address)."),
        (code::TRY_AGAIN_LATER, "The address pool is exhausted, or the requested address is taken."),
        (code::NOT_AVAILABLE, "STATUS: the plugin cannot serve ADD now."),
        (code::CHECK_MISMATCH, "CHECK found the attachment different from its prevResult."),
    ]
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(term)]);
    roff.text([roman(text)]);
}

/// The netbox-cni(8) page, in roff.
pub fn cni_page() -> String {
    let mut r = Roff::new();
    let version = env!("CARGO_PKG_VERSION");
    r.control(
        "TH",
        [
            "NETBOX-CNI",
            "8",
            "",
            &format!("netbox-cni {version}"),
            "netbox",
        ],
    );
    section(&mut r, "NAME");
    r.text([roman(
        "netbox-cni - CNI plugin: bridge, host-local IPAM and portmap in one",
    )]);
    section(&mut r, "SYNOPSIS");
    r.text([
        roman("CNI_COMMAND=ADD CNI_CONTAINERID=ID CNI_NETNS=PATH CNI_IFNAME=eth0 "),
        bold("netbox-cni"),
        roman(" < "),
        italic("conflist-entry.json"),
    ]);
    section(&mut r, "DESCRIPTION");
    r.text([roman(
        "A container runtime (podman, containerd, CRI-O) runs netbox-cni once per operation: \
         ADD, CHECK, DEL, GC, STATUS and VERSION of CNI spec 1.1.0 and the older result versions. \
         It attaches the container's network namespace to a host bridge by a veth pair, gives it \
         addresses from netbox's IPAM store and makes its firewall rules in netbox's own nftables \
         tables. The result goes to stdout as JSON; errors are CNI error objects on stdout with \
         the codes below. Install it as /usr/lib/cni/netbox-cni; containerd looks in \
         /opt/cni/bin (the Debian package links it there).",
    )]);
    r.text([roman(
        "DEL needs nothing but CNI_*: it succeeds twice, without the namespace and without \
         prevResult. The host veth is named veth + 11 hex digits of a hash of (container id, \
         ifname) and carries the alias netbox-cni:NETWORK:ID:IFNAME.",
    )]);
    section(&mut r, "CONFIGURATION KEYS");
    for (key, text) in KEYS {
        item(&mut r, key, text);
    }
    section(&mut r, "ENVIRONMENT");
    for (name, text) in ENVIRONMENT {
        item(&mut r, name, text);
    }
    section(&mut r, "ERROR CODES");
    r.text([roman(
        "A refused input changes nothing on the host. The process exits 1 with the error object \
         on stdout.",
    )]);
    for (n, text) in error_codes() {
        item(&mut r, &n.to_string(), text);
    }
    section(&mut r, "FILES");
    item(
        &mut r,
        "/var/lib/netbox/ipam/NETWORK/",
        "Leases (or ipam.dataDir).",
    );
    item(
        &mut r,
        "/run/netbox/cni/",
        "One record per attachment, written before anything is made.",
    );
    item(
        &mut r,
        "/run/netbox/lock",
        "Held shared by ADD and DEL, exclusively by netbox gc.",
    );
    item(
        &mut r,
        "/run/netbox/cni-queue",
        "The queue of ADDs and DELs: as many at work as there are cores, in arrival order.",
    );
    section(&mut r, "SEE ALSO");
    r.text([
        bold("netbox"),
        roman("(1), "),
        bold("netbox-gc"),
        roman("(1), "),
        bold("nft"),
        roman("(8)"),
    ]);
    r.render()
}
