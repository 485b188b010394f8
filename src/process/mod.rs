//! The only fork/exec in netbox: start a command inside a sandbox, confine it, forward signals
//! to it and turn its end into a shell-style exit code.
//!
//! - `spawn`: the parent's side: prepares everything before the fork, talks to the child.
//! - `child`: the forked child's set-up stages up to the exec, without allocating.
//! - `capabilities`, `seccomp`, `mounts`: what confines CMD (see [`Confinement`]).
//! - `signals`: forwarding, waiting, and the PID namespace's init.
//! - `user`: `--user` resolution; `on_exec`: `pre_exec` helpers the labs use.
//! - `fdpass`: receiving descriptors a forked child sends back.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use thiserror::Error;

mod bpf;
pub mod capabilities;
mod child;
mod fdpass;
mod mounts;
mod on_exec;
pub mod seccomp;
mod signals;
mod spawn;
mod user;
pub mod usernet;

pub use capabilities::{CapName, DEFAULT_CAPS};
pub use on_exec::{
    enter_namespaces_on_exec, hosts_file_on_exec, new_session_on_exec, private_host_on_exec,
    raise_open_files, try_user_namespace,
};
pub use signals::{block_forwarded_signals, take_pending_signal, Sandboxed, FORWARDED};
pub use spawn::{prepare, Pending, PrivateFiles};
pub use user::UserSpec;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("sandbox set-up for {program:?} failed while {stage}: {source}")]
    Setup {
        program: String,
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program:?}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    #[error("user {0:?}: no such user")]
    UnknownUser(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

impl ProcessError {
    /// The exit code a shell would give: 127 command not found, 126 not executable, else 125
    /// (netbox's own failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            ProcessError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            ProcessError::Exec { .. } => 126,
            _ => 125,
        }
    }
}

type Result<T, E = ProcessError> = std::result::Result<T, E>;

/// How the child gets its network namespace.
#[derive(Debug)]
pub enum NetSetup {
    /// Join an existing namespace.
    Join(OwnedFd),
    /// The child creates a network namespace and hands it back ([`Pending::take_network`]) to
    /// be wired before the start: the namespace lives exactly as long as CMD.
    New,
    /// Create user + network namespaces in the child: loopback only, no privileges needed.
    NewRootless,
}

/// Which PID namespace CMD runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidMode {
    /// Its own, with netbox's child as its init: CMD sees, signals and traces only the
    /// sandbox's processes.
    #[default]
    Private,
    /// The host's (`--pid host`).
    Host,
}

/// What confines CMD beyond its network namespace. The default is everything on; each field
/// is one documented opt-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// `--cap-add`: capabilities beyond the default set ([`DEFAULT_CAPS`]).
    pub cap_add: Vec<CapName>,
    /// `--cap-drop`: capabilities taken from it.
    pub cap_drop: Vec<CapName>,
    pub pid: PidMode,
    /// The default seccomp filter (`--seccomp unconfined` turns it off).
    pub seccomp: bool,
    /// `--read-only`: the whole file system read-only, with private writable /tmp, /var/tmp
    /// and /dev/shm.
    pub read_only: bool,
}

impl Default for Confinement {
    fn default() -> Confinement {
        Confinement {
            cap_add: vec![],
            cap_drop: vec![],
            pid: PidMode::Private,
            seccomp: true,
            read_only: false,
        }
    }
}

/// What to start.
#[derive(Debug)]
pub struct SandboxSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub net: NetSetup,
    pub hostname: Option<String>,
    /// Give the sandbox private /etc/resolv.conf and /etc/hosts, whose content is sent with
    /// [`Pending::start`].
    pub private_files: bool,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub confinement: Confinement,
    pub user: Option<UserSpec>,
    /// CMD may open /dev/net/tun to attach to the TUN devices it owns (`--tun`): the sandbox
    /// gets its own device node, usable by anyone, in its mount namespace. Creating devices
    /// still takes CAP_NET_ADMIN, which CMD does not have.
    pub tun_access: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let nf = ProcessError::Exec {
            program: "x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(nf.exit_code(), 127);
        let denied = ProcessError::Exec {
            program: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(denied.exit_code(), 126);
    }
}
