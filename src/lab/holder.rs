//! Labs that outlive the command that built them (`netbox lab up` ... `netbox lab down`).
//!
//! `lab up` starts a small detached *holder* process (`netbox lab hold FILE`) that builds the
//! lab, runs its services, reports on a pipe and then waits for SIGTERM.
//!
//! - Private host (the default, and the only mode without root): the holder starts in new
//!   network + mount namespaces (plus a user namespace mapping only the caller when not root),
//!   with a private tmpfs on /run/netns. The whole lab lives in there; nothing reaches the real
//!   host, and when the holder dies, for whatever reason, everything vanishes with it.
//! - Real host (`--host`, root only): the holder stays in the host's namespaces; nodes are
//!   named namespaces LAB-NODE under /run/netns, removed by the holder on SIGTERM (and by
//!   `lab down` again, in case the holder was killed).
//!
//! A state file records the holder (pid and start time, so a recycled pid is never mistaken for
//! it), the mode and the namespaces: /run/netbox/labs/NAME.json as root, else
//! $XDG_RUNTIME_DIR/netbox/labs (or /tmp/netbox-UID/labs); NETBOX_LAB_DIR overrides. Later
//! commands in private mode re-execute themselves inside the holder's namespaces
//! ([`enter_command`]); `lab down` signals the holder and removes the file.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use super::topology::{self, Plan, Topology};
use super::{build, BuildOptions, Lab, LabError, Result};

/// Set in a command re-executed inside a lab's private host.
pub const INSIDE_VAR: &str = "NETBOX_LAB_INSIDE";
/// The caller's working directory, restored inside (entering a mount namespace resets it).
pub const CWD_VAR: &str = "NETBOX_LAB_CWD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Private,
    Host,
}

/// What the state file records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    pub mode: Mode,
    pub file: PathBuf,
    pub namespaces: Vec<String>,
}

/// The lab as `lab up` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub nodes: Vec<NodeSummary>,
    pub switches: Vec<String>,
    pub links: usize,
    pub build_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSummary {
    pub name: String,
    pub router: bool,
    pub addresses: Vec<String>,
}

impl Summary {
    pub fn of(plan: &Plan, build_ms: f64) -> Summary {
        Summary {
            name: plan.name.clone(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeSummary {
                    name: n.name.clone(),
                    router: n.router,
                    addresses: plan
                        .addresses_of(&n.name)
                        .into_iter()
                        .map(|(i, a)| format!("{i} {a}"))
                        .collect(),
                })
                .collect(),
            switches: plan
                .switches
                .iter()
                .map(|s| format!("{} {}", s.name, s.subnet))
                .collect(),
            links: plan.links.len(),
            build_ms,
        }
    }

    /// A table, one row per node.
    pub fn table(&self) -> String {
        let width = self
            .nodes
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:<width$}  ADDRESSES\n", "NODE");
        for n in &self.nodes {
            let mut name = n.name.clone();
            if n.router {
                name.push('*');
            }
            out.push_str(&format!("{name:<width$}  {}\n", n.addresses.join(", ")));
        }
        for s in &self.switches {
            out.push_str(&format!("switch {s}\n"));
        }
        out.push_str(&format!(
            "lab \"{}\" up: {} nodes, {} links in {:.1} ms (* = router)\n",
            self.name,
            self.nodes.len(),
            self.links,
            self.build_ms
        ));
        out
    }
}

/// Where state files live.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETBOX_LAB_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/netbox/labs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => Path::new(&d).join("netbox/labs"),
        None => PathBuf::from(format!("/tmp/netbox-{}/labs", nix::unistd::getuid())),
    }
}

fn state_path(name: &str) -> PathBuf {
    state_dir().join(format!("{name}.json"))
}

/// The lab name of a file (validated).
pub fn lab_name(file: &Path) -> Result<(Topology, Plan)> {
    let topo = Topology::from_file(file)?;
    let plan = topology::resolve(&topo)?;
    Ok((topo, plan))
}

/// The start time of a process (clock ticks since boot), None when it is gone.
fn start_time(pid: i32) -> Option<u64> {
    crate::model::owner::process_start_time(u32::try_from(pid).ok()?)
}

/// The state of a lab whose holder is alive; a stale file is removed.
pub fn load_state(name: &str) -> Result<Option<LabState>> {
    let path = state_path(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LabError::Io {
                what: format!("reading {}", path.display()),
                source,
            })
        }
    };
    let state: LabState = serde_json::from_str(&text).map_err(|e| LabError::Parse {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    if start_time(state.pid) == Some(state.start_time) {
        return Ok(Some(state));
    }
    // The holder died: a private lab went with it; a host lab's namespaces may be left.
    cleanup_host_namespaces(&state);
    let _ = std::fs::remove_file(&path);
    Ok(None)
}

fn cleanup_host_namespaces(state: &LabState) {
    if state.mode == Mode::Host {
        for ns in &state.namespaces {
            let _ = crate::sys::netns::delete_named(ns);
        }
    }
}

/// Starts the holder for `file` and waits until the lab is up. `exe` is the netbox binary.
pub fn up(
    exe: &Path,
    file: &Path,
    mode: Mode,
    capture: Option<&Path>,
    progress: Option<&dyn Fn(usize, usize)>,
) -> Result<(LabState, Summary)> {
    let file = std::fs::canonicalize(file).map_err(|source| LabError::Io {
        what: format!("lab file {}", file.display()),
        source,
    })?;
    let (_, plan) = lab_name(&file)?;
    if let Some(state) = load_state(&plan.name)? {
        return Err(LabError::AlreadyUp {
            name: plan.name,
            pid: state.pid,
        });
    }
    let root = crate_is_root();
    if mode == Mode::Host && !root {
        return Err(LabError::Invalid(
            "--host needs root; without it a lab runs in a private host".into(),
        ));
    }
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let log_path = dir.join(format!("{}.log", plan.name));
    let log = std::fs::File::create(&log_path).map_err(|source| LabError::Io {
        what: format!("creating {}", log_path.display()),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "hold"]).arg(&file);
    if let Some(c) = capture {
        let c = std::fs::canonicalize(c).map_err(|source| LabError::Io {
            what: format!("capture directory {}", c.display()),
            source,
        })?;
        cmd.arg("--capture").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .env_remove(INSIDE_VAR);
    match mode {
        Mode::Private => {
            let mut dirs = vec![];
            if root {
                let _ = std::fs::create_dir_all(crate::sys::netns::NETNS_RUN_DIR);
            }
            if Path::new(crate::sys::netns::NETNS_RUN_DIR).is_dir() {
                dirs.push(crate::sys::netns::NETNS_RUN_DIR);
            } else {
                // Rootless without /run/netns: a private /run holds it.
                dirs.push("/run");
            }
            crate::process::private_host_on_exec(&mut cmd, !root, &dirs);
        }
        Mode::Host => {
            crate::process::new_session_on_exec(&mut cmd);
        }
    }
    let mut child = cmd.spawn().map_err(|source| LabError::Io {
        what: "starting the lab holder".into(),
        source,
    })?;
    let pid = child.id() as i32;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LabError::Invalid("holder without stdout".into()))?;
    let mut report: Option<HolderReport> = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<HolderReport>(&line) {
            Ok(HolderReport::Progress { done, total }) => {
                if let Some(p) = progress {
                    p(done, total);
                }
            }
            Ok(r) => {
                report = Some(r);
                break;
            }
            Err(_) => {}
        }
    }
    match report {
        Some(HolderReport::Ready { summary }) => {
            let state = LabState {
                name: plan.name.clone(),
                pid,
                start_time: start_time(pid).unwrap_or(0),
                mode,
                file: file.clone(),
                namespaces: namespaces_of(&plan),
            };
            let path = state_path(&plan.name);
            let text = serde_json::to_string_pretty(&state)
                .map_err(|e| LabError::Invalid(e.to_string()))?;
            if let Err(source) = std::fs::write(&path, text) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
                return Err(LabError::Io {
                    what: format!("writing {}", path.display()),
                    source,
                });
            }
            // The holder lives on, detached; `lab test` reaps it in `down`.
            std::mem::forget(child);
            Ok((state, summary))
        }
        Some(HolderReport::Failed { error }) => {
            let _ = child.wait();
            let _ = std::fs::remove_file(&log_path);
            Err(LabError::Invalid(error))
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(LabError::Invalid(format!(
                "the lab holder stopped without a report{}",
                if log.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", log.trim())
                }
            )))
        }
    }
}

fn crate_is_root() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .map(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false)
}

fn namespaces_of(plan: &Plan) -> Vec<String> {
    plan.nodes
        .iter()
        .map(|n| build::node_ns_name(&plan.name, &n.name))
        .chain([build::fabric_ns_name(&plan.name)])
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum HolderReport {
    Progress { done: usize, total: usize },
    Ready { summary: Summary },
    Failed { error: String },
}

fn report(r: &HolderReport) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
    let _ = out.flush();
}

fn report_progress(done: usize, total: usize) {
    report(&HolderReport::Progress { done, total });
}

/// The holder's main: builds the lab, reports, and keeps it until SIGTERM/SIGINT/SIGHUP.
/// Returns the exit code.
pub fn hold(file: &Path, capture: Option<PathBuf>) -> i32 {
    // Block the stop signals before any thread starts, so every thread inherits the mask and
    // the main thread collects them with sigwait.
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_block();
    let start = Instant::now();
    let built = Topology::from_file(file).and_then(|topo| {
        Lab::build(
            &topo,
            &BuildOptions {
                capture,
                progress: Some(report_progress),
            },
        )
    });
    let lab = match built {
        Ok(lab) => lab,
        Err(e) => {
            report(&HolderReport::Failed {
                error: crate::error::chain(&e),
            });
            return 1;
        }
    };
    report(&HolderReport::Ready {
        summary: Summary::of(lab.plan(), start.elapsed().as_secs_f64() * 1000.0),
    });
    // Nobody reads stdout any more.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let _ = set.wait();
    drop(lab);
    0
}

/// Stops a lab: signals its holder, waits for it to go, removes leftovers and the state file.
/// Returns false when the lab was not up.
pub fn down(name: &str) -> Result<bool> {
    let Some(state) = load_state(name)? else {
        return Ok(false);
    };
    let pid = nix::unistd::Pid::from_raw(state.pid);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The holder is our child after `lab test`: reap it, or it lingers as a zombie.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if start_time(state.pid) != Some(state.start_time) {
            break;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cleanup_host_namespaces(&state);
    let _ = std::fs::remove_file(state_path(name));
    let _ = std::fs::remove_file(state_dir().join(format!("{name}.log")));
    Ok(true)
}

/// For a private lab: a command re-executing this program, with `args`, inside the holder's
/// namespaces (user first when it is another one, then mount and network).
pub fn enter_command(state: &LabState, args: &[std::ffi::OsString]) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        what: "finding the netbox binary".into(),
        source,
    })?;
    let open = |kind: &str| -> Result<OwnedFd> {
        let path = format!("/proc/{}/ns/{kind}", state.pid);
        std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| match source.kind() {
                // The holder is dying right now.
                std::io::ErrorKind::NotFound => LabError::NotUp {
                    name: state.name.clone(),
                },
                _ => LabError::Io {
                    what: format!("opening {path}"),
                    source,
                },
            })
    };
    let mut fds = vec![];
    let ino = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    if ino(&format!("/proc/{}/ns/user", state.pid)) != ino("/proc/self/ns/user") {
        fds.push((open("user")?, CloneFlags::CLONE_NEWUSER));
    }
    fds.push((open("mnt")?, CloneFlags::CLONE_NEWNS));
    fds.push((open("net")?, CloneFlags::CLONE_NEWNET));
    let mut cmd = Command::new(exe);
    cmd.args(args).env(INSIDE_VAR, &state.name);
    if let Ok(cwd) = std::env::current_dir() {
        cmd.env(CWD_VAR, cwd);
    }
    crate::process::enter_namespaces_on_exec(&mut cmd, fds);
    Ok(cmd)
}

/// Inside a re-executed command: back to the caller's directory.
pub fn restore_cwd() {
    if let Some(cwd) = std::env::var_os(CWD_VAR) {
        let _ = std::env::set_current_dir(cwd);
    }
}

/// Opens the namespaces of a running lab's nodes (in the current mount namespace: call it on
/// the host for `--host` labs, inside for private ones).
pub fn open_nodes(
    plan: &Plan,
) -> Result<std::collections::BTreeMap<String, crate::sys::netns::NetNs>> {
    let mut out = std::collections::BTreeMap::new();
    for n in &plan.nodes {
        let path = crate::sys::netns::named_path(&build::node_ns_name(&plan.name, &n.name));
        out.insert(n.name.clone(), crate::sys::netns::NetNs::open(&path)?);
    }
    Ok(out)
}
