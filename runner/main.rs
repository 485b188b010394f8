//! The `netbox` command: parses arguments and hands them to the library.

// With glibc, std's runtime start-up is replaced by `netbox::startup` (see there why). Other
// C libraries keep std's: only glibc hands the arguments to std without it.
#![cfg_attr(target_env = "gnu", no_main)]

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;

use netbox::process::{CapName, Confinement, PidMode};
use netbox::usecase::run::{self, NetMode, RunSpec};

mod completions;
mod doctor;
mod lab;
mod manual;
mod node;
mod ns;
mod progress;
mod tuntap;

/// Network sandboxes on Linux namespaces.
#[derive(Parser)]
#[command(name = "netbox", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `netbox run` alone. clap builds the whole command tree before it parses, which costs a
/// sandbox start (about 2 ms in all) a measurable share; `run` parses against this one.
#[derive(Parser)]
#[command(name = "netbox", version, propagate_version = true)]
struct RunCli {
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(Subcommand)]
enum RunOnly {
    /// Run a command in a fresh network namespace attached to a bridge network.
    Run(RunArgs),
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a command in a fresh network namespace attached to a bridge network.
    Run(RunArgs),
    /// Persistent named sandboxes (visible to `ip netns`).
    #[command(subcommand)]
    Ns(ns::NsCommand),
    /// Run a command in a named sandbox.
    Exec(ns::ExecArgs),
    /// List the sandboxes netbox owns, and leases whose owner is gone.
    Ls(ns::LsArgs),
    /// Remove what netbox made whose owner is gone (after crashes).
    Gc(ns::GcArgs),
    /// The networks netbox knows.
    #[command(subcommand)]
    Network(ns::NetworkCommand),
    /// Manage TUN/TAP devices in the current network namespace.
    #[command(subcommand)]
    Tuntap(tuntap::TuntapCommand),
    /// Routes between the nodes of a cluster (pod CIDRs, host-gw or VXLAN).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Reproducible network labs from a topology file (up, exec, check, down, test, graph).
    Lab(lab::LabArgs),
    /// Check that this machine can do what netbox does: OK / WARN / FAIL, with the fix.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(completions::CompletionsArgs),
    /// Write manual pages (netbox, each subcommand, netbox-cni) into a directory.
    #[command(hide = true)]
    Man(manual::ManArgs),
    /// The per-user network host of rootless bridge networking (started by netbox itself).
    #[command(hide = true, subcommand)]
    UserNet(UserNetCommand),
}

#[derive(Subcommand)]
enum UserNetCommand {
    /// Make and hold the network host until it is unused (detached, started on first use).
    Hold {
        /// The uplink program.
        #[arg(long)]
        pasta: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Net {
    /// A veth on the network's bridge, with an address, routes and DNS.
    Bridge,
    /// Loopback only (works without root, through a user namespace).
    None,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// Networking mode.
    #[arg(long, value_enum, default_value = "bridge")]
    net: Net,
    #[command(flatten)]
    cmd: CommandArgs,
    /// Publish a port: HOSTPORT on every host address (or HOSTIP) to the sandbox's PORT
    /// (repeatable; tcp unless /udp).
    #[arg(short = 'p', long = "publish", value_name = "[HOSTIP:]HOSTPORT:PORT[/tcp|udp]",
          value_parser = parse_publish)]
    publish: Vec<netbox::firewall::PortMapping>,
    /// Masquerade the sandbox's traffic leaving the network (off by default on the built-in
    /// network; a conflist network follows its ipMasq).
    #[arg(long, overrides_with = "no_masquerade")]
    masquerade: bool,
    /// Do not masquerade, even on a conflist network with ipMasq.
    #[arg(long, overrides_with = "masquerade")]
    no_masquerade: bool,
    /// Only the gateway is reachable on the bridge: no traffic with other sandboxes.
    #[arg(long)]
    isolate: bool,
    /// The sandbox cannot reach the host's own addresses (replies to the host still pass).
    #[arg(long)]
    block_host: bool,
    /// Name the sandbox (/run/netns/NAME, `netbox exec NAME`) while it lives.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Create a TUN device NAME inside the sandbox before CMD starts (persistent, owned by
    /// the user CMD runs as, so CMD attaches to it by name), with an address (repeatable).
    #[arg(long = "tun", value_name = "NAME[:ADDR/LEN]")]
    tuns: Vec<netbox::sys::tuntap::TunRequest>,
    /// Write the sandbox interface's packets to FILE (pcap; tcpdump -r, Wireshark).
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
}

/// How a sandbox is attached to its network, for `run` and `ns add` alike.
#[derive(Args)]
pub struct LinkArgs {
    /// Bridge network: the built-in "netbox", or the name of a CNI conflist in
    /// NETBOX_CNI_CONF_DIR (default /etc/cni/net.d).
    #[arg(long, default_value = netbox::model::network::DEFAULT_NETWORK, value_name = "NAME",
          add = clap_complete::ArgValueCompleter::new(completions::networks))]
    network: String,
    /// Subnet of the built-in network (default 10.117.0.0/24).
    #[arg(long, env = "NETBOX_SUBNET", value_name = "CIDR")]
    subnet: Option<IpNetwork>,
    /// Address to request (repeat for dual stack); the prefix defaults to the subnet's.
    #[arg(long = "ip", value_name = "ADDR[/LEN]", value_parser = parse_ip)]
    ips: Vec<IpNetwork>,
    /// Interface name inside the sandbox.
    #[arg(long, default_value = "eth0", value_name = "NAME")]
    ifname: String,
    /// MTU of the sandbox's interface.
    #[arg(long)]
    mtu: Option<u32>,
    /// MAC address of the sandbox's interface.
    #[arg(long, value_parser = parse_mac)]
    mac: Option<Mac>,
}

/// What a command in a sandbox takes, for `run` and `exec` alike.
#[derive(Args)]
pub struct CommandArgs {
    /// Hostname inside the sandbox (its own UTS namespace).
    #[arg(long)]
    hostname: Option<String>,
    /// DNS server for the sandbox's resolv.conf (repeatable; replaces the host's servers).
    #[arg(long, value_name = "IP")]
    dns: Vec<IpAddr>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass netbox's own value).
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory of the command.
    #[arg(short = 'w', long = "cwd", value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Give the command a capability beyond the default set (NET_ADMIN, sys_ptrace,
    /// CAP_NET_RAW, ...; ALL for every one; repeatable).
    #[arg(long = "cap-add", value_name = "CAP", value_parser = parse_cap)]
    cap_add: Vec<CapName>,
    /// Take a capability from the default set (ALL: keep only those added; repeatable).
    #[arg(long = "cap-drop", value_name = "CAP", value_parser = parse_cap)]
    cap_drop: Vec<CapName>,
    /// PID namespace: the sandbox's own (CMD sees only its own processes), or the host's.
    #[arg(long, value_enum, default_value = "private")]
    pid: Pid,
    /// Seccomp: netbox's default filter, or none.
    #[arg(long, value_enum, default_value = "default")]
    seccomp: Seccomp,
    /// Mount the whole file system read-only for the command (private, writable /tmp,
    /// /var/tmp and /dev/shm).
    #[arg(long)]
    read_only: bool,
    /// Run the command as USER[:GROUP] (default: the invoking user under sudo, else yourself).
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

impl CommandArgs {
    /// The spec of this command with netbox run's defaults for the rest; on bad input, the
    /// exit code (the error is printed).
    pub fn into_spec(self) -> Result<RunSpec, i32> {
        let mut command = self.command.into_iter();
        let Some(program) = command.next() else {
            eprintln!("netbox: no command given");
            return Err(125);
        };
        let user = match self.user.as_deref().map(netbox::process::UserSpec::parse) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => return Err(fail(&netbox::Error::from(e))),
            None => None,
        };
        Ok(RunSpec {
            hostname: self.hostname,
            dns: self.dns,
            env: env_pairs(&self.env),
            cwd: self.cwd,
            confinement: Confinement {
                cap_add: self.cap_add,
                cap_drop: self.cap_drop,
                pid: match self.pid {
                    Pid::Private => PidMode::Private,
                    Pid::Host => PidMode::Host,
                },
                seccomp: matches!(self.seccomp, Seccomp::Default),
                read_only: self.read_only,
            },
            user,
            ..RunSpec::command(program, command.collect())
        })
    }
}

#[derive(Clone, Copy)]
struct Mac([u8; 6]);

#[derive(Clone, Copy, ValueEnum)]
enum Pid {
    /// Its own PID namespace, with an init that reaps and forwards signals.
    Private,
    /// The host's PID namespace.
    Host,
}

#[derive(Clone, Copy, ValueEnum)]
enum Seccomp {
    /// Refuse module loading, kexec, bpf, perf, keyrings, mounts, new namespaces, ...
    Default,
    /// No seccomp filter.
    Unconfined,
}

fn parse_ip(s: &str) -> Result<IpNetwork, String> {
    if s.contains('/') {
        IpNetwork::from_str(s).map_err(|e| format!("{s:?}: {e}"))
    } else {
        // A bare address: the prefix is filled in from the network's subnet later.
        let ip = IpAddr::from_str(s).map_err(|e| format!("{s:?}: {e}"))?;
        let full = if ip.is_ipv4() { 32 } else { 128 };
        IpNetwork::new(ip, full).map_err(|e| e.to_string())
    }
}

fn parse_publish(s: &str) -> Result<netbox::firewall::PortMapping, String> {
    netbox::firewall::PortMapping::parse(s).map_err(|e| e.to_string())
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    netbox::sys::netlink::parse_mac(s)
        .map(Mac)
        .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

fn parse_cap(s: &str) -> Result<CapName, String> {
    s.parse()
        .map_err(|e: netbox::process::ProcessError| e.to_string())
}

fn env_pairs(items: &[String]) -> Vec<(OsString, OsString)> {
    items
        .iter()
        .filter_map(|item| match item.split_once('=') {
            Some((k, v)) => Some((k.into(), v.into())),
            None => std::env::var_os(item).map(|v| (item.into(), v)),
        })
        .collect()
}

#[cfg(target_env = "gnu")]
#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    netbox::startup::run(netbox_main)
}

#[cfg(not(target_env = "gnu"))]
fn main() {
    netbox::startup::run(netbox_main)
}

fn netbox_main() -> i32 {
    init_logging();
    let parsed = if std::env::args_os().nth(1).as_deref() == Some("run".as_ref()) {
        RunCli::try_parse().map(|parsed| {
            let RunOnly::Run(args) = parsed.command;
            Cli {
                command: Command::Run(args),
            }
        })
    } else {
        completions::answer_if_asked(Cli::command);
        Cli::try_parse()
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 125 } else { 0 };
        }
    };
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Ns(cmd) => ns::ns(cmd),
        Command::Exec(args) => ns::exec(args),
        Command::Ls(args) => ns::ls(args),
        Command::Gc(args) => ns::gc(args),
        Command::UserNet(UserNetCommand::Hold { pasta }) => {
            netbox::provision::usernet::hold(&pasta)
        }
        Command::Network(cmd) => ns::network(cmd),
        Command::Tuntap(cmd) => tuntap::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Lab(args) => lab::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => manual::run(args, Cli::command()),
    };
    // Statuses are 0-255; anything else would wrap.
    if (0..=255).contains(&code) {
        code
    } else {
        125
    }
}

fn run(args: RunArgs) -> i32 {
    let base = match args.cmd.into_spec() {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    let spec = RunSpec {
        net: match args.net {
            Net::Bridge => NetMode::Bridge {
                network: args.link.network,
                subnet: args.link.subnet,
            },
            Net::None => NetMode::None,
        },
        ips: args.link.ips,
        ifname: args.link.ifname,
        mtu: args.link.mtu,
        mac: args.link.mac.map(|m| m.0),
        name: args.name,
        tuns: args.tuns,
        publish: args.publish,
        masquerade: match (args.masquerade, args.no_masquerade) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        isolate: args.isolate,
        block_host: args.block_host,
        capture: args.capture,
        ..base
    };
    match run::run(spec) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Without privileges, `ns`, `exec`, `ls` and `gc` work on the user's own network host: this
/// process enters it (starting it when `start`). Ok(None) when unprivileged and none runs;
/// Err is the exit code (the error printed). Call it before any thread exists.
pub fn enter_user_network(start: bool) -> Result<Option<UserNetUse>, i32> {
    if netbox::sys::privilege::privileged() {
        return Ok(Some(UserNetUse(None)));
    }
    match netbox::provision::usernet::enter(start) {
        Ok(Some(session)) => Ok(Some(UserNetUse(Some(session)))),
        Ok(None) => Ok(None),
        Err(e) => Err(fail(&e)),
    }
}

/// The use of the user's network host (None as root), kept until the command ends.
pub struct UserNetUse(#[allow(dead_code)] Option<netbox::provision::usernet::Session>);

/// Prints the error chain on one line and picks the exit code.
fn fail(e: &netbox::Error) -> i32 {
    eprintln!("netbox: {}", netbox::error::chain(e));
    e.exit_code()
}

fn init_logging() {
    // EnvFilter costs a visible share of a 2 ms start: build it only when asked to.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time();
    match std::env::var("NETBOX_LOG") {
        Ok(spec) if !spec.is_empty() => builder
            .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
            .init(),
        _ => builder
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .init(),
    }
}
