//! Reproducible network labs: a topology file (nodes, switches, links, addresses, routes,
//! TUN/TAP and VXLAN devices, rate limits, services, checks) built into network namespaces in
//! milliseconds, and checked.
//!
//! [`Lab`] is the Rust API: built from a file or a [`Topology`] in the calling process's network
//! context (a test's private host, or the holder of `netbox lab up`, see [`holder`]) and torn
//! down on drop. Nodes are named namespaces LAB-NODE under /run/netns; switches are bridges in
//! the lab's fabric namespace LAB--fabric, or inside a node when the file says so.

pub mod build;
pub mod check;
pub mod control;
pub mod graph;
pub mod holder;
pub mod hosts;
pub mod runtime;
pub mod services;
pub mod timeline;
pub mod topology;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use thiserror::Error;

use crate::sys::netns::{self, NetNs};
pub use check::CheckResult;
pub use runtime::LinkStatus;
pub use timeline::StepReport;
pub use topology::{Action, ImpairChange, Plan, Topology};

#[derive(Debug, Error)]
pub enum LabError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("{what} \"{name}\" is defined twice")]
    Duplicate { what: &'static str, name: String },
    #[error("{context}: unknown {what} \"{name}\"")]
    Unknown {
        what: &'static str,
        name: String,
        context: String,
    },
    #[error("address pool {pool} is exhausted")]
    PoolExhausted { pool: IpNetwork },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] crate::sys::netlink::NetlinkError),
    #[error(transparent)]
    Netns(#[from] crate::sys::netns::NetnsError),
    #[error("lab \"{name}\" is not up")]
    NotUp { name: String },
    #[error("lab \"{name}\" is already up (holder pid {pid})")]
    AlreadyUp { name: String, pid: i32 },
}

impl From<crate::Error> for LabError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Netlink(n) => LabError::Netlink(n),
            crate::Error::Netns(n) => LabError::Netns(n),
            other => LabError::Invalid(other.to_string()),
        }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// How a lab is built.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Write a pcap per link into this directory.
    pub capture: Option<PathBuf>,
    /// Called with (done, total) steps while building (a progress display).
    pub progress: Option<fn(usize, usize)>,
}

/// A lab that is up. Dropping it stops its services and commands and removes its namespaces
/// (with them every veth, bridge, VXLAN and TUN device of the lab).
pub struct Lab {
    plan: Plan,
    /// Node namespaces, opened when first asked for (a lab of 10,000 nodes keeps no
    /// descriptor for a node nobody uses; the named mount keeps the namespace alive).
    nodes: BTreeMap<String, std::sync::OnceLock<NetNs>>,
    fabric: Option<NetNs>,
    services: Mutex<services::Services>,
    runtime: Mutex<runtime::Runtime>,
    /// When the lab was up: the timeline's `at` counts from here.
    up_at: Instant,
    /// Namespaces this lab created (and only those are removed: never another's).
    owned: Vec<String>,
    /// Bound over /etc/hosts for every command started in a node.
    hosts: hosts::HostsFile,
}

impl Lab {
    /// Reads, validates and builds a lab file.
    pub fn from_file(path: &Path) -> Result<Lab> {
        Self::build(&Topology::from_file(path)?, &BuildOptions::default())
    }

    /// Validates and builds a topology.
    pub fn build(topo: &Topology, options: &BuildOptions) -> Result<Lab> {
        let plan = topology::resolve(topo)?;
        build::build(plan, options)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The namespace of a node.
    pub fn node(&self, name: &str) -> Result<&NetNs> {
        let cell = self.nodes.get(name).ok_or_else(|| LabError::Unknown {
            what: "node",
            name: name.to_string(),
            context: format!("lab \"{}\"", self.plan.name),
        })?;
        if let Some(ns) = cell.get() {
            return Ok(ns);
        }
        let _ = cell.set(self.open_node(name)?);
        cell.get()
            .ok_or_else(|| LabError::Invalid(format!("opening node \"{name}\"")))
    }

    /// A node's namespace, opened for the caller alone (not kept by the lab).
    fn open_node(&self, name: &str) -> Result<NetNs> {
        if !self.nodes.contains_key(name) {
            return Err(LabError::Unknown {
                what: "node",
                name: name.to_string(),
                context: format!("lab \"{}\"", self.plan.name),
            });
        }
        let path = netns::named_path(&build::node_ns_name(&self.plan.name, name));
        Ok(NetNs::open(&path)?)
    }

    /// The fabric namespace holding the lab's top-level switches.
    pub fn fabric(&self) -> Option<&NetNs> {
        self.fabric.as_ref()
    }

    /// The address `from` should use to reach `to` (see [`topology::target_address`]).
    pub fn address(&self, from: &str, to: &str) -> Option<IpAddr> {
        topology::target_address(&self.plan, from, to)
    }

    /// Runs a command in a node and collects its output.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        node: &str,
        program: S,
        args: &[S],
    ) -> Result<std::process::Output> {
        let mut cmd = self.command(node, program)?;
        cmd.args(args);
        cmd.output().map_err(|source| LabError::Io {
            what: format!("running a command in node \"{node}\""),
            source,
        })
    }

    /// Starts a command in a node.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        node: &str,
        program: S,
        args: &[S],
    ) -> Result<std::process::Child> {
        let mut cmd = self.command(node, program)?;
        cmd.args(args);
        cmd.spawn().map_err(|source| LabError::Io {
            what: format!("starting a command in node \"{node}\""),
            source,
        })
    }

    /// A command that will start inside a node.
    pub fn command<S: AsRef<OsStr>>(
        &self,
        node: &str,
        program: S,
    ) -> Result<std::process::Command> {
        command_in(self.node(node)?, Some(&self.hosts), program)
    }

    /// The lab's hosts file (every node's name at its address).
    pub fn hosts(&self) -> &hosts::HostsFile {
        &self.hosts
    }

    /// A TCP connection made from inside `from` (the socket stays in that namespace).
    pub fn connect(&self, from: &str, to: SocketAddr) -> Result<TcpStream> {
        self.node(from)?
            .run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))?
            .map_err(|source| LabError::Io {
                what: format!("connecting from \"{from}\" to {to}"),
                source,
            })
    }

    /// A TCP listener bound inside `node`.
    pub fn listen(&self, node: &str, addr: SocketAddr) -> Result<TcpListener> {
        self.node(node)?
            .run_in(move || TcpListener::bind(addr))?
            .map_err(|source| LabError::Io {
                what: format!("listening on {addr} in \"{node}\""),
                source,
            })
    }

    /// Runs the file's checks.
    pub fn check(&self) -> Result<Vec<CheckResult>> {
        self.run_checks(&self.plan.checks)
    }

    /// Runs the given checks (resolved against this lab's plan).
    pub fn run_checks(&self, checks: &[topology::CheckPlan]) -> Result<Vec<CheckResult>> {
        let node = |n: &str| self.node(n);
        let env = check::Env {
            plan: &self.plan,
            node: &node,
            hosts: Some(&self.hosts),
        };
        check::run_checks(&env, checks)
    }
}

/// A lock that survives a panic of its last holder (the data is plain state).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Changes while the lab runs (see [`runtime`]). Call them from one long-lived thread: start
/// commands die with the thread that started them (PR_SET_PDEATHSIG).
impl Lab {
    /// Makes a change; a refused change changes nothing.
    pub fn apply(&self, action: &Action) -> Result<()> {
        match action {
            Action::Stop(n) => {
                self.node(n)?;
                lock(&self.services).stop_node(n);
                return Ok(());
            }
            Action::Start(n) => {
                self.node(n)?;
                return lock(&self.services).start_node(self, n);
            }
            _ => {}
        }
        let mut rt = lock(&self.runtime);
        let before = rt.intent();
        rt.change(&self.plan, action)?;
        if let Err(e) = rt.sync(&self.plan, &|key| self.namespace(key)) {
            // The kernel refused: back to what was, as far as it goes.
            rt.set_intent(before);
            if let Err(again) = rt.sync(&self.plan, &|key| self.namespace(key)) {
                tracing::warn!(%again, "restoring the lab after a refused change");
            }
            return Err(e);
        }
        drop(rt);
        if matches!(action, Action::Reset) {
            let mut services = lock(&self.services);
            for n in &self.plan.nodes {
                services.start_node(self, &n.name)?;
            }
        }
        Ok(())
    }

    /// The link between two ends ("NODE", "NODE:IFNAME" or a switch, in either order).
    pub fn link(&self, a: &str, b: &str) -> Result<usize> {
        self.plan.find_link(a, b)
    }

    /// Takes a link down: it carries nothing until [`Lab::link_up`] (or a reset).
    pub fn link_down(&self, a: &str, b: &str) -> Result<()> {
        self.apply(&Action::LinkDown(self.link(a, b)?))
    }

    pub fn link_up(&self, a: &str, b: &str) -> Result<()> {
        self.apply(&Action::LinkUp(self.link(a, b)?))
    }

    /// Changes a link's rate, loss, delay, jitter or reordering (see [`ImpairChange`]).
    pub fn impair(&self, a: &str, b: &str, change: ImpairChange) -> Result<()> {
        self.apply(&Action::Impair(self.link(a, b)?, change))
    }

    /// Cuts every link of a node (and of switches living in it).
    pub fn isolate(&self, node: &str) -> Result<()> {
        self.apply(&Action::Isolate(node.into()))
    }

    pub fn restore(&self, node: &str) -> Result<()> {
        self.apply(&Action::Restore(node.into()))
    }

    /// Splits the lab into groups that cannot reach each other (nodes not named: one more
    /// group).
    pub fn partition(&self, groups: &[&[&str]]) -> Result<()> {
        self.apply(&Action::Partition(
            groups
                .iter()
                .map(|g| g.iter().map(|n| n.to_string()).collect())
                .collect(),
        ))
    }

    pub fn heal(&self) -> Result<()> {
        self.apply(&Action::Heal)
    }

    /// Stops a node's start commands.
    pub fn stop_node(&self, node: &str) -> Result<()> {
        self.apply(&Action::Stop(node.into()))
    }

    /// Starts a node's start commands again.
    pub fn start_node(&self, node: &str) -> Result<()> {
        self.apply(&Action::Start(node.into()))
    }

    /// Back to the file's state: every link up with its own properties, no partition, every
    /// start command running.
    pub fn reset(&self) -> Result<()> {
        self.apply(&Action::Reset)
    }

    /// The state of every link.
    pub fn links(&self) -> Vec<LinkStatus> {
        lock(&self.runtime).status(&self.plan)
    }

    /// Plays the file's timeline (see [`timeline`]), calling `on_step` after each step.
    pub fn play(&self, on_step: &mut dyn FnMut(&StepReport)) -> Vec<StepReport> {
        timeline::play(self, &self.plan.steps, on_step)
    }

    /// When the lab came up.
    pub fn up_at(&self) -> Instant {
        self.up_at
    }

    /// A namespace by runtime key: "" is the fabric, else a node.
    fn namespace(&self, key: &str) -> Result<&NetNs> {
        if key.is_empty() {
            return self
                .fabric
                .as_ref()
                .ok_or_else(|| LabError::Invalid("lab without fabric".into()));
        }
        self.node(key)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        lock(&self.services).stop();
        // Teardown goes on past failures: every namespace gets its chance.
        for name in &self.owned {
            if let Err(e) = netns::delete_named(name) {
                tracing::warn!(%e, namespace = %name, "removing a lab namespace");
            }
        }
    }
}

/// A command that starts inside `ns`, with `hosts` as its /etc/hosts when given.
pub fn command_in<S: AsRef<OsStr>>(
    ns: &NetNs,
    hosts: Option<&hosts::HostsFile>,
    program: S,
) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(program);
    if let Some(h) = hosts {
        h.bind_on_exec(&mut cmd)?;
    }
    let fd = ns.try_clone_fd()?;
    crate::process::enter_namespaces_on_exec(
        &mut cmd,
        vec![(fd, nix::sched::CloneFlags::CLONE_NEWNET)],
    );
    Ok(cmd)
}
