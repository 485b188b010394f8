//! `netbox node routes FILE`: this node's routes to the other nodes' pod CIDRs, from a node
//! file (`NODE_ADDRESS POD_CIDR...` per line), host-gw or VXLAN (see `netbox::usecase::node`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use netbox::usecase::node::{self, Change, NodeRoutesSpec, WatchTiming};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Make this node's routes to the other nodes' pod CIDRs match a node file.
    Routes(RoutesArgs),
}

#[derive(Args)]
pub struct RoutesArgs {
    /// The node file: `NODE_ADDRESS POD_CIDR [POD_CIDR...]` per line, `#` comments. This
    /// node's own line (one of its addresses) is skipped; a node left out loses its routes.
    file: PathBuf,
    /// Keep running and apply the file again whenever it changes.
    #[arg(long)]
    watch: bool,
    /// How often --watch looks at the file, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "watch"
    )]
    interval: f64,
    /// How often --watch applies the file even when it did not change (what someone else
    /// removed comes back), in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        requires = "watch"
    )]
    resync: f64,
    /// Every peer through the VXLAN device, also those on a shared subnet (host-gw).
    #[arg(long)]
    vxlan: bool,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..(1 << 24)))]
    vni: u32,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = 4789)]
    port: u16,
    /// Print what would change; change nothing.
    #[arg(long, conflicts_with = "watch")]
    dry_run: bool,
}

pub fn run(cmd: NodeCommand) -> i32 {
    let NodeCommand::Routes(args) = cmd;
    let spec = NodeRoutesSpec {
        force_vxlan: args.vxlan,
        vni: args.vni,
        port: args.port,
        dry_run: args.dry_run,
        ..NodeRoutesSpec::new(args.file)
    };
    if args.watch {
        for (flag, value) in [("--interval", args.interval), ("--resync", args.resync)] {
            if !(value.is_finite() && (0.1..=86_400.0).contains(&value)) {
                eprintln!("netbox: {flag} must be between 0.1 and 86400 seconds");
                return 125;
            }
        }
        let timing = WatchTiming {
            interval: Duration::from_secs_f64(args.interval),
            resync: Duration::from_secs_f64(args.resync),
        };
        node::watch(&spec, timing, &mut |r| match r {
            Ok(changes) => print_changes(changes),
            Err(e) => {
                crate::fail(e);
            }
        })
    }
    match node::apply(&spec) {
        Ok(changes) => {
            print_changes(&changes);
            0
        }
        Err(e) => crate::fail(&e),
    }
}

fn print_changes(changes: &[Change]) {
    for c in changes {
        println!("{c}");
    }
}
