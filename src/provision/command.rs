//! A command in a sandbox: what `netbox run` and `netbox exec` start (program, private
//! resolv.conf and hosts, hostname, user, capabilities, TUN devices) and how they start it.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use crate::firewall::PortMapping;
use crate::model::dns;
use crate::model::network;
use crate::process::{self, Confinement, NetSetup, PrivateFiles, SandboxSpec, UserSpec};
use crate::sys::netlink::Netlink;
use crate::sys::netns::NetNs;
use crate::sys::tuntap::{TunBuilder, TunRequest};
use crate::Result;

/// How the sandbox is networked.
#[derive(Debug, Clone)]
pub enum NetMode {
    /// Attached to a bridge network (built-in or from a conflist).
    Bridge {
        network: String,
        subnet: Option<IpNetwork>,
    },
    /// Loopback only; works without privileges through a user namespace.
    None,
}

/// Everything `netbox run` needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub net: NetMode,
    pub ips: Vec<IpNetwork>,
    pub ifname: String,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub hostname: Option<String>,
    pub dns: Vec<IpAddr>,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Capabilities, PID namespace, seccomp, read-only root: all protections by default.
    pub confinement: Confinement,
    pub user: Option<UserSpec>,
    /// `--name`: the sandbox appears as /run/netns/NAME while it lives.
    pub name: Option<String>,
    /// TUN devices made inside the sandbox before CMD starts (`--tun NAME[:ADDR/LEN]`).
    pub tuns: Vec<TunRequest>,
    /// Published ports (`-p`).
    pub publish: Vec<PortMapping>,
    /// Masquerade traffic leaving the network; None: the network's default (off for the
    /// built-in network, the conflist's `ipMasq` otherwise).
    pub masquerade: Option<bool>,
    /// Only the gateway is reachable on the bridge.
    pub isolate: bool,
    /// The sandbox cannot reach the host's own addresses.
    pub block_host: bool,
    /// Write the sandbox interface's packets to this pcap file (bridge networking only).
    pub capture: Option<PathBuf>,
}

impl RunSpec {
    /// `program args` on the built-in network with everything else as `netbox run` defaults
    /// it; set the fields that differ.
    pub fn command(program: impl Into<OsString>, args: Vec<OsString>) -> RunSpec {
        RunSpec {
            net: NetMode::Bridge {
                network: network::DEFAULT_NETWORK.into(),
                subnet: None,
            },
            ips: vec![],
            ifname: "eth0".into(),
            mtu: None,
            mac: None,
            hostname: None,
            dns: vec![],
            program: program.into(),
            args,
            env: vec![],
            cwd: None,
            confinement: Confinement::default(),
            user: None,
            name: None,
            tuns: vec![],
            publish: vec![],
            masquerade: None,
            isolate: false,
            block_host: false,
            capture: None,
        }
    }
}

/// Runs the command in an existing namespace (`netbox exec`), with the same private files,
/// hostname, capabilities and exit codes as `netbox run`; `addrs` name the host in its hosts
/// file. Call it from the main thread before any other thread exists.
pub fn exec_in(spec: &RunSpec, ns: &NetNs, addrs: &[IpAddr]) -> Result<i32> {
    process::block_forwarded_signals()?;
    let child = process::prepare(&sandbox_spec(spec, NetSetup::Join(ns.try_clone_fd()?)))?;
    start_and_wait(child, &private_files(spec, addrs))
}

/// Makes the `--tun` devices inside the sandbox: persistent (CMD attaches by name), owned by
/// the user CMD runs as, addressed and up. They die with the namespace.
pub async fn create_tuns(spec: &RunSpec, sandbox: &Netlink, ns: &NetNs) -> Result<()> {
    // CMD runs without CAP_NET_ADMIN: only ownership lets it attach, even as root.
    let (uid, gid) = match spec.user.clone().or_else(UserSpec::from_sudo_env) {
        Some(user) => (user.uid, user.gid),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    for request in &spec.tuns {
        let builder = TunBuilder::tun().name(&request.name).owner(uid).group(gid);
        let name = ns.run_in(move || builder.create_persistent())??;
        let link = sandbox.link_by_name(&name).await?.ok_or_else(|| {
            crate::sys::netlink::NetlinkError::LinkNotFound { name: name.clone() }
        })?;
        if let Some(address) = request.address {
            sandbox.add_address(&link, address).await?;
        }
        sandbox.set_up(link.index, &name).await?;
    }
    Ok(())
}

/// Starts the prepared child unless a forwarded signal came during set-up (blocked until now):
/// then CMD never starts and netbox ends as if it had been killed by that signal.
pub fn start_and_wait(child: process::Pending, files: &PrivateFiles) -> Result<i32> {
    if let Some(sig) = process::take_pending_signal() {
        drop(child);
        return Ok(128 + sig as i32);
    }
    Ok(child.start(files)?.wait()?)
}

pub fn sandbox_spec(spec: &RunSpec, net: NetSetup) -> SandboxSpec {
    SandboxSpec {
        program: spec.program.clone(),
        args: spec.args.clone(),
        net,
        hostname: spec.hostname.clone(),
        private_files: true,
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        confinement: spec.confinement.clone(),
        user: spec.user.clone().or_else(UserSpec::from_sudo_env),
        tun_access: !spec.tuns.is_empty(),
    }
}

/// The sandbox's resolv.conf and hosts (naming it on its addresses).
pub fn private_files(spec: &RunSpec, addrs: &[IpAddr]) -> PrivateFiles {
    let resolv = match crate::sys::userns::inside() {
        Some(inside) => dns::resolv_conf_forwarded(
            &std::fs::read_to_string(dns::HOST_RESOLV_CONF).unwrap_or_default(),
            inside.dns_forward,
            &spec.dns,
        ),
        None => dns::host_resolv_conf(&spec.dns),
    };
    for warning in &resolv.warnings {
        eprintln!("netbox: warning: {warning}");
    }
    let hostname = spec.hostname.clone().unwrap_or_else(host_hostname);
    PrivateFiles {
        resolv_conf: resolv.content.into_bytes(),
        hosts: dns::hosts(&hostname, addrs).into_bytes(),
    }
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
