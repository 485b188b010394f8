//! `netbox tuntap add|del|ls`: persistent TUN/TAP devices in the current network namespace.

use clap::{Args, Subcommand};

use netbox::sys::netlink::{Netlink, TunLink};
use netbox::sys::tuntap::{Offloads, TunBuilder, TuntapError};

#[derive(Subcommand)]
pub enum TuntapCommand {
    /// Create a persistent TUN (or TAP) device that programs attach to by name.
    Add(AddArgs),
    /// Delete a TUN/TAP device.
    Del {
        /// Device name.
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::completions::tun_devices))]
        name: String,
    },
    /// List TUN/TAP devices: name, mode, flags, owner, group, attached queues.
    Ls {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// Device name (at most 15 bytes; `%d` lets the kernel number it).
    name: String,
    /// A TAP device (Ethernet frames) instead of TUN (IP packets).
    #[arg(long)]
    tap: bool,
    /// Keep the device after netbox exits (always the case for `add`; accepted for clarity).
    #[arg(long)]
    persist: bool,
    /// User (name or uid) allowed to attach without CAP_NET_ADMIN.
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    /// Group (name or gid) allowed to attach without CAP_NET_ADMIN.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// A multi-queue device; N queues are opened once to check the device takes them.
    #[arg(long, value_name = "N")]
    multi_queue: Option<usize>,
    /// Packets carry a virtio-net header (attaching programs must ask for it too).
    #[arg(long)]
    vnet_hdr: bool,
    /// Keep the 4-byte packet-information prefix (attaching programs must ask for it too).
    #[arg(long)]
    packet_info: bool,
}

pub fn run(cmd: TuntapCommand) -> i32 {
    let result = match cmd {
        TuntapCommand::Add(args) => add(args),
        TuntapCommand::Del { name } => del(&name),
        TuntapCommand::Ls { json } => ls(json),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            crate::fail(&e);
            1
        }
    }
}

fn add(args: AddArgs) -> netbox::Result<()> {
    netbox::sys::tuntap::validate_name(&args.name)?;
    let mut builder = if args.tap {
        TunBuilder::tap()
    } else {
        TunBuilder::tun()
    }
    .name(&args.name)
    .persist(true)
    .packet_info(args.packet_info);
    if let Some(owner) = &args.owner {
        builder = builder.owner(lookup_user(owner)?);
    }
    if let Some(group) = &args.group {
        builder = builder.group(lookup_group(group)?);
    }
    if let Some(n) = args.multi_queue {
        builder = builder.multi_queue(n);
    }
    if args.vnet_hdr {
        builder = builder.vnet_hdr(true).offloads(Offloads::NONE);
    }
    let mode = if args.tap { "TAP" } else { "TUN" };
    if !args.name.contains('%') {
        // A clearer message than the kernel's EINVAL, and no attaching to a device by accident.
        let name = args.name.clone();
        let found = block_on(|nl| async move { Ok(nl.link_by_name(&name).await?) })?;
        if let Some(existing) = found {
            let what = match existing.kind.as_deref() {
                Some("tun") => "a TUN/TAP device already".to_string(),
                Some(kind) => format!("a {kind} device, not a TUN/TAP device"),
                None => "a device, not a TUN/TAP device".to_string(),
            };
            return Err(netbox::Error::Config(format!(
                "cannot add {mode} device \"{}\": it exists and is {what}",
                existing.name
            )));
        }
    }
    let tun = builder.open()?;
    println!("{}", tun.name());
    Ok(())
}

fn del(name: &str) -> netbox::Result<()> {
    netbox::sys::tuntap::validate_name(name)?;
    let name = name.to_string();
    block_on(|nl| async move {
        let Some(link) = nl.link_by_name(&name).await? else {
            return Err(netbox::Error::Config(format!(
                "no TUN/TAP device \"{name}\""
            )));
        };
        if link.kind.as_deref() != Some("tun") {
            return Err(netbox::Error::Config(format!(
                "\"{name}\" is a {} device, not a TUN/TAP device: not deleting it",
                link.kind.as_deref().unwrap_or("plain")
            )));
        }
        nl.delete_link_index(link.index, &name).await?;
        Ok(())
    })
}

fn ls(json: bool) -> netbox::Result<()> {
    let tuns = block_on(|nl| async move { Ok(nl.tun_links().await?) })?;
    if json {
        let rows: Vec<serde_json::Value> = tuns
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "mode": if t.tap { "tap" } else { "tun" },
                    "persist": t.persist,
                    "multi_queue": t.multi_queue,
                    "vnet_hdr": t.vnet_hdr,
                    "packet_info": t.packet_info,
                    "up": t.up,
                    "owner": t.owner,
                    "group": t.group,
                    "queues": t.num_queues,
                })
            })
            .collect();
        crate::ns::print_json(&rows);
        return Ok(());
    }
    println!(
        "{:<16} {:<5} {:<36} {:<8} {:<8} QUEUES",
        "NAME", "MODE", "FLAGS", "OWNER", "GROUP"
    );
    for t in &tuns {
        println!(
            "{:<16} {:<5} {:<36} {:<8} {:<8} {}",
            t.name,
            if t.tap { "tap" } else { "tun" },
            flags(t),
            t.owner.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            t.group.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            // Attached queues; the kernel counts them for multi-queue devices only.
            t.num_queues
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

fn flags(t: &TunLink) -> String {
    let mut out = vec![];
    if t.persist {
        out.push("persist".to_string());
    }
    if t.multi_queue {
        out.push("multi_queue".into());
    }
    if t.vnet_hdr {
        out.push("vnet_hdr".into());
    }
    if !t.packet_info {
        out.push("no_pi".into());
    }
    if t.up {
        out.push("up".into());
    }
    out.join(",")
}

fn lookup_user(spec: &str) -> netbox::Result<u32> {
    if let Ok(uid) = spec.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(TuntapError::Invalid(format!("--owner {spec}: no such user")).into()),
    }
}

fn lookup_group(spec: &str) -> netbox::Result<u32> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(TuntapError::Invalid(format!("--group {spec}: no such group")).into()),
    }
}

/// Runs one netlink conversation on a single-threaded runtime.
fn block_on<T, F, Fut>(f: F) -> netbox::Result<T>
where
    F: FnOnce(Netlink) -> Fut,
    Fut: std::future::Future<Output = netbox::Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| netbox::Error::Io {
            context: "starting the netlink runtime".into(),
            source,
        })?;
    rt.block_on(async move { f(Netlink::connect()?).await })
}
