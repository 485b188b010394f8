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
//! The lab's record ([`crate::provision::records::LabRecord`], beside the ownership records of runs and named
//! sandboxes, so `netbox ls` lists labs and `netbox gc` cleans up after a dead holder) names the
//! holder (pid and start time, so a recycled pid is never mistaken for it), the mode and the
//! namespaces. It is claimed atomically before the holder starts and replaced by rename, under
//! the lab's own lock. Changes to the running lab go to the holder over its control socket
//! ([`super::control`]); `exec` and `check` in private mode re-execute themselves inside the
//! holder's namespaces ([`enter_command`]); `lab down` signals the holder and removes the record.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use super::topology::{self, Plan, Topology};
use super::{build, BuildOptions, Lab, LabError, Result};
use crate::model::owner::Owner;
use crate::provision::records::{LabLock, Phase};
pub use crate::provision::records::{LabMode as Mode, LabRecord};

/// Set in a command re-executed inside a lab's private host.
pub const INSIDE_VAR: &str = "NETBOX_LAB_INSIDE";
/// The caller's working directory, restored inside (entering a mount namespace resets it).
pub const CWD_VAR: &str = "NETBOX_LAB_CWD";

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
        let book = plan.address_book();
        Summary {
            name: plan.name.clone(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeSummary {
                    name: n.name.clone(),
                    router: n.router,
                    addresses: book
                        .get(n.name.as_str())
                        .into_iter()
                        .flatten()
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

/// Where lab records, logs and control sockets live.
pub fn state_dir() -> PathBuf {
    crate::provision::records::lab_dir()
}

/// The lab name of a file (validated).
pub fn lab_name(file: &Path) -> Result<(Topology, Plan)> {
    let topo = Topology::from_file(file)?;
    let plan = topology::resolve(&topo)?;
    Ok((topo, plan))
}

/// The record of a lab whose holder is alive; a stale record is cleaned up (under the lab's
/// lock) and None returned.
pub fn load_state(name: &str) -> Result<Option<LabRecord>> {
    let Some(record) = crate::provision::records::load_lab(name)? else {
        return Ok(None);
    };
    if !record.is_stale() {
        return Ok(Some(record));
    }
    let lock = LabLock::take(name)?;
    match crate::provision::records::load_lab(name)? {
        Some(r) if r.is_stale() => {
            remove_leftovers(&r);
            lock.remove(name);
            Ok(None)
        }
        other => Ok(other),
    }
}

/// What a gone lab leaves: host namespaces (host mode), its record, socket and log.
pub fn remove_leftovers(record: &LabRecord) {
    cleanup_host_namespaces(record);
    let _ = record.remove();
}

fn cleanup_host_namespaces(state: &LabRecord) {
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
) -> Result<(LabRecord, Summary)> {
    let file = std::fs::canonicalize(file).map_err(|source| LabError::Io {
        what: format!("lab file {}", file.display()),
        source,
    })?;
    let (_, plan) = lab_name(&file)?;
    let root = crate_is_root();
    if mode == Mode::Host && !root {
        return Err(LabError::Invalid(
            "--host needs root; without it a lab runs in a private host".into(),
        ));
    }
    if let Some(state) = load_state(&plan.name)? {
        return Err(already_up(&state));
    }
    let lock = LabLock::take(&plan.name)?;
    let mut record = LabRecord {
        name: plan.name.clone(),
        phase: Phase::Creating,
        holder: None,
        writer: Owner::current_process().map_err(|e| LabError::Invalid(e.to_string()))?,
        mode,
        file: file.clone(),
        namespaces: namespaces_of(&plan),
        created: crate::provision::records::now(),
    };
    if !record.claim()? {
        // Another `up` got there first (or a record that is not stale appeared).
        return match crate::provision::records::load_lab(&plan.name)? {
            Some(other) => Err(already_up(&other)),
            None => Err(LabError::Invalid(format!(
                "lab \"{}\": its record came and went; try again",
                plan.name
            ))),
        };
    }
    match start_holder(exe, &file, &plan, mode, root, capture, progress) {
        Ok((pid, summary)) => {
            record.holder = Some(Owner::Process {
                pid,
                start_time: crate::model::owner::process_start_time(pid).unwrap_or(0),
            });
            record.phase = Phase::Ready;
            if let Err(e) = record.save() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
                remove_leftovers(&record);
                return Err(LabError::Invalid(e.to_string()));
            }
            Ok((record, summary))
        }
        Err(e) => {
            remove_leftovers(&record);
            lock.remove(&plan.name);
            Err(e)
        }
    }
}

fn already_up(state: &LabRecord) -> LabError {
    LabError::AlreadyUp {
        name: state.name.clone(),
        pid: match &state.holder {
            Some(Owner::Process { pid, .. }) => *pid as i32,
            _ => 0,
        },
    }
}

/// Spawns the holder with the control socket and waits for its report: its pid and summary.
fn start_holder(
    exe: &Path,
    file: &Path,
    plan: &Plan,
    mode: Mode,
    root: bool,
    capture: Option<&Path>,
    progress: Option<&dyn Fn(usize, usize)>,
) -> Result<(u32, Summary)> {
    let dir = state_dir();
    let log_path = dir.join(format!("{}.log", plan.name));
    let log = std::fs::File::create(&log_path).map_err(|source| LabError::Io {
        what: format!("creating {}", log_path.display()),
        source,
    })?;
    let listener = super::control::bind(&super::control::socket_path(&plan.name))?;
    // The holder inherits the listening socket (this process is single-threaded here, so no
    // other fork sees it without close-on-exec).
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| LabError::Io {
        what: "handing the control socket to the holder".into(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "hold"])
        .arg(file)
        .arg("--control-fd")
        .arg(listener.as_raw_fd().to_string());
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
    let spawned = cmd.spawn();
    drop(listener);
    let mut child = spawned.map_err(|source| LabError::Io {
        what: "starting the lab holder".into(),
        source,
    })?;
    let pid = child.id();
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
            // The holder lives on, detached; `lab test` reaps it in `down`.
            std::mem::forget(child);
            Ok((pid, summary))
        }
        Some(HolderReport::Failed { error }) => {
            let _ = child.wait();
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
pub fn hold(file: &Path, capture: Option<PathBuf>, control_fd: Option<i32>) -> i32 {
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
    let listener = control_fd.map(|fd| {
        // SAFETY: `lab up` passed this descriptor, a listening Unix socket, to us alone.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        std::os::unix::net::UnixListener::from(owned)
    });
    std::thread::scope(|s| {
        let served = listener
            .as_ref()
            .map(|l| s.spawn(|| super::control::serve(&lab, l)));
        let _ = set.wait();
        if let Some(l) = &listener {
            // Wakes the control thread out of accept.
            // SAFETY: shutdown on a socket this process owns; it stays open until the scope ends.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(t) = served {
            let _ = t.join();
        }
    });
    drop(lab);
    0
}

/// Stops a lab: signals its holder, waits for it to go, removes leftovers and the record.
/// Returns false when the lab was not up.
pub fn down(name: &str) -> Result<bool> {
    let Some(state) = load_state(name)? else {
        return Ok(false);
    };
    let lock = LabLock::take(name)?;
    if let Some(Owner::Process { pid, start_time }) = state.holder {
        stop_holder(pid, start_time);
    }
    remove_leftovers(&state);
    lock.remove(name);
    Ok(true)
}

/// SIGTERM, then SIGKILL after 5 s; returns once the process is gone.
fn stop_holder(pid: u32, start: u64) {
    let pid_t = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid_t, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The holder is our child after `lab test`: reap it, or it lingers as a zombie.
        let _ = nix::sys::wait::waitpid(pid_t, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if crate::model::owner::process_start_time(pid) != Some(start) {
            break;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid_t, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// For a private lab: a command re-executing this program, with `args`, inside the holder's
/// namespaces (user first when it is another one, then mount and network).
pub fn enter_command(state: &LabRecord, args: &[std::ffi::OsString]) -> Result<Command> {
    let pid = match &state.holder {
        Some(Owner::Process { pid, .. }) => *pid,
        _ => {
            return Err(LabError::NotUp {
                name: state.name.clone(),
            })
        }
    };
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        what: "finding the netbox binary".into(),
        source,
    })?;
    let open = |kind: &str| -> Result<OwnedFd> {
        let path = format!("/proc/{pid}/ns/{kind}");
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
    if ino(&format!("/proc/{pid}/ns/user")) != ino("/proc/self/ns/user") {
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
