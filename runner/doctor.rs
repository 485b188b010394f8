//! `netbox doctor`: can this machine do what netbox is asked to (see netbox::usecase::doctor).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use clap::{Args, ValueEnum};
use ipnetwork::IpNetwork;

use netbox::usecase::doctor::{self, kernel::Probe, Purpose, Status};

#[derive(Args)]
pub struct DoctorArgs {
    /// Judge only what these need (repeatable or comma-separated); default: run, cni, lab.
    /// The exit status is 1 when a FAIL blocks one of them.
    #[arg(
        long = "for",
        value_enum,
        value_delimiter = ',',
        value_name = "PURPOSE"
    )]
    purposes: Vec<For>,
    /// Subnet of the built-in network to check for overlapping routes (default 10.117.0.0/24).
    #[arg(long, env = "NETBOX_SUBNET", value_name = "CIDR")]
    subnet: Option<IpNetwork>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// (internal) Try the kernel features in this process's namespaces; print them as JSON.
    #[arg(long, hide = true)]
    probe_kernel: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum For {
    /// Bridge sandboxes: netbox run, ns add, exec, with their firewall options.
    Run,
    /// The netbox-cni plugin.
    Cni,
    /// Network labs.
    Lab,
    /// Rootless `netbox run` (user namespaces, pasta, /dev/net/tun, unprivileged ports).
    Rootless,
}

pub fn run(args: DoctorArgs) -> i32 {
    if args.probe_kernel {
        return match doctor::kernel::probe_in_fresh_namespace() {
            Ok(probes) => super::ns::print_json(&probes),
            Err(e) => super::fail(&e),
        };
    }
    let purposes = if args.purposes.is_empty() {
        Purpose::DEFAULT.to_vec()
    } else {
        args.purposes
            .iter()
            .map(|p| match p {
                For::Run => Purpose::Run,
                For::Cni => Purpose::Cni,
                For::Lab => Purpose::Lab,
                For::Rootless => Purpose::Rootless,
            })
            .collect()
    };
    let probes = if netbox::sys::privilege::privileged() && !in_user_namespace() {
        None
    } else {
        probe_in_user_namespace()
    };
    let mut report = doctor::run(doctor::Options {
        purposes,
        subnet: args.subnet,
        probes,
    });
    report.add(doctor::stale_objects(stale_objects()));
    let code = if report.ok { 0 } else { 1 };
    if args.json {
        super::ns::print_json(&report);
        return code;
    }
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        println!("{:<4}  {:<width$}  {}", c.status.label(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let judged: Vec<String> = report
        .purposes
        .iter()
        .map(|p| format!("{p:?}").to_lowercase())
        .collect();
    let blocking = report.checks.iter().filter(|c| c.blocking).count();
    println!(
        "{} ok, {} warnings, {} failed; {} blocking (judged for {})",
        report.count(Status::Ok),
        report.count(Status::Warn),
        report.count(Status::Fail),
        blocking,
        judged.join(", ")
    );
    code
}

/// True inside a user namespace other than the initial one.
fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(true)
}

/// Without privileges: the kernel features are tried by a copy of netbox in its own user and
/// network namespaces (it has CAP_NET_ADMIN over those only). None when that is refused.
fn probe_in_user_namespace() -> Option<BTreeMap<String, Probe>> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Command::new(exe);
    cmd.args(["doctor", "--probe-kernel"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    netbox::process::private_host_on_exec(&mut cmd, !netbox::sys::privilege::privileged(), &[]);
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// What `netbox gc --dry-run` would remove: kinds, and errors on the way.
fn stale_objects() -> Result<(Vec<&'static str>, Vec<String>), String> {
    if !doctor::is_root() {
        return Err("not checked: reading netbox's records and taking its lock needs root".into());
    }
    match netbox::usecase::gc::gc(true) {
        Ok(report) => Ok((
            report.removed.iter().map(|r| r.kind).collect(),
            report.errors,
        )),
        Err(e) => Err(format!("gc's dry run failed: {}", netbox::error::chain(&e))),
    }
}
