//! `netbox ns`, `exec`, `ls`, `gc` and `network`: named sandboxes and their lifecycle.

use clap::{Args, Subcommand};

use netbox::model::network;
use netbox::usecase::gc;
use netbox::usecase::named::{self, AddSpec};
use netbox::usecase::run::{NetMode, RunSpec};

use super::{fail, CommandArgs, LinkArgs};

#[derive(Subcommand)]
pub enum NsCommand {
    /// Create a persistent sandbox: a named namespace (/run/netns/NAME) attached to a network.
    Add(NsAddArgs),
    /// Remove sandboxes made by `netbox ns add` (a name that does not exist is not an error).
    Del {
        #[arg(required = true, value_name = "NAME",
              add = clap_complete::ArgValueCompleter::new(crate::completions::sandboxes))]
        names: Vec<String>,
    },
}

#[derive(Args)]
pub struct NsAddArgs {
    /// Name of the sandbox (also its name for `ip netns`).
    name: String,
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Args)]
pub struct ExecArgs {
    /// The sandbox (any name under /run/netns).
    #[arg(add = clap_complete::ArgValueCompleter::new(crate::completions::namespaces))]
    name: String,
    #[command(flatten)]
    cmd: CommandArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// The networks netbox knows: the built-in one and the CNI conflists.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One network's bridge, subnets, gateway and source.
    Inspect {
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::completions::networks))]
        name: String,
    },
}

pub fn ns(cmd: NsCommand) -> i32 {
    let start = matches!(cmd, NsCommand::Add(_));
    let _user_net = match super::enter_user_network(start) {
        Ok(Some(u)) => u,
        // Unprivileged, no network host: no sandbox to remove.
        Ok(None) => return 0,
        Err(code) => return code,
    };
    match cmd {
        NsCommand::Add(a) => {
            let spec = AddSpec {
                name: a.name,
                network: a.link.network,
                subnet: a.link.subnet,
                ips: a.link.ips,
                ifname: a.link.ifname,
                mtu: a.link.mtu,
                mac: a.link.mac.map(|m| m.0),
            };
            match named::add(&spec) {
                Ok(record) => {
                    println!("{} {}", record.name, record.addresses.join(" "));
                    0
                }
                Err(e) => fail(&e),
            }
        }
        NsCommand::Del { names } => {
            let mut code = 0;
            for name in names {
                if let Err(e) = named::del(&name) {
                    code = fail(&e);
                }
            }
            code
        }
    }
}

pub fn exec(args: ExecArgs) -> i32 {
    let spec = match args.cmd.into_spec() {
        Ok(spec) => RunSpec {
            net: NetMode::None,
            ifname: String::new(),
            ..spec
        },
        Err(code) => return code,
    };
    let _user_net = match super::enter_user_network(false) {
        Ok(Some(u)) => u,
        Ok(None) => {
            eprintln!(
                "netbox: no sandbox named \"{}\" (netbox ls lists them)",
                args.name
            );
            return 125;
        }
        Err(code) => return code,
    };
    match named::exec(&args.name, &spec) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

pub fn ls(args: LsArgs) -> i32 {
    let user_net = match super::enter_user_network(false) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let listing = match user_net.as_ref().map(|_| gc::ls()) {
        Some(Ok(l)) => l,
        Some(Err(e)) => return fail(&e),
        // Unprivileged, no network host: nothing of the user's.
        None => gc::Listing::default(),
    };
    if args.json {
        return print_json(&listing);
    }
    println!(
        "{:<20} {:<4} {:<10} {:<28} {:<14} {:<8} {:>7}  STATE",
        "NAME", "KIND", "NETWORK", "ADDRESSES", "HOST VETH", "PID", "AGE"
    );
    for e in &listing.sandboxes {
        println!(
            "{:<20} {:<4} {:<10} {:<28} {:<14} {:<8} {:>7}  {}",
            e.name.as_deref().unwrap_or(&e.owner),
            e.kind,
            e.network,
            e.addresses.join(","),
            e.host_veth.as_deref().unwrap_or("-"),
            e.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            e.age_secs
                .map(|a| format!("{a}s"))
                .unwrap_or_else(|| "-".into()),
            e.state
        );
    }
    for l in &listing.stale_leases {
        println!(
            "stale lease: {} in network {} held by {}",
            l.ip, l.network, l.owner
        );
    }
    for r in &listing.stale_rules {
        println!("stale firewall rules: table {} of {}", r.table, r.owner);
    }
    for g in &listing.garbage {
        println!("unreadable store entry (skipped; gc removes it once unowned): {g}");
    }
    0
}

pub fn gc(args: GcArgs) -> i32 {
    let _user_net = match super::enter_user_network(false) {
        Ok(Some(u)) => u,
        Ok(None) => return 0,
        Err(code) => return code,
    };
    let bar = crate::progress::Progress::new("removing veths", 20, args.json || args.dry_run);
    let report = match gc::gc_with_progress(args.dry_run, &|done, total| bar.update(done, total)) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if args.json {
        print_json(&report);
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for r in &report.removed {
            match &r.owner {
                Some(o) => println!("{verb} {} {} (owner {o})", r.kind, r.name),
                None => println!("{verb} {} {}", r.kind, r.name),
            }
        }
    }
    for e in &report.errors {
        eprintln!("netbox: gc: {e}");
    }
    if report.errors.is_empty() {
        0
    } else {
        1
    }
}

pub fn network(cmd: NetworkCommand) -> i32 {
    let known = network::list(&network::conf_dirs());
    match cmd {
        NetworkCommand::Ls { json } => {
            let rows: Vec<serde_json::Value> = known.iter().map(describe).collect();
            if json {
                return print_json(&rows);
            }
            println!("{:<20} {:<12} {:<30} SOURCE", "NAME", "BRIDGE", "SUBNETS");
            for k in &known {
                let (bridge, subnets) = match &k.spec {
                    Ok(s) => (
                        s.bridge.clone(),
                        s.subnets()
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    Err(e) => ("-".into(), format!("(unusable: {e})")),
                };
                println!(
                    "{:<20} {:<12} {:<30} {}",
                    k.name,
                    bridge,
                    subnets,
                    k.source
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "built-in".into())
                );
            }
            0
        }
        NetworkCommand::Inspect { name } => match known.iter().find(|k| k.name == name) {
            Some(k) => print_json(&describe(k)),
            None => {
                eprintln!("netbox: unknown network \"{name}\" (netbox network ls lists them)");
                125
            }
        },
    }
}

fn describe(k: &network::KnownNetwork) -> serde_json::Value {
    let source = k.source.as_ref().map(|p| p.display().to_string());
    match &k.spec {
        Ok(s) => serde_json::json!({
            "name": k.name,
            "source": source,
            "bridge": s.bridge,
            "mtu": s.mtu,
            "isGateway": s.is_gateway,
            "isDefaultGateway": s.is_default_gateway,
            "subnets": s.subnets().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "gateways": s.gateway_addresses().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "dataDir": s.ipam.data_dir(),
            "forceAddress": s.force_address,
            "hairpinMode": s.hairpin_mode,
            "promiscMode": s.promisc_mode,
            "enabledad": s.enable_dad,
            "ipMasq": s.firewall.ip_masq,
            "noMasqueradeTo": s.firewall.no_masquerade_to.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "macspoofchk": s.firewall.mac_spoof_chk,
            "isolate": s.firewall.isolate,
            "isolateNetworks": s.firewall.isolate_networks,
            "blockHost": s.firewall.block_host,
        }),
        Err(e) => serde_json::json!({ "name": k.name, "source": source, "error": e.to_string() }),
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> i32 {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("netbox: {e}");
            125
        }
    }
}
