//! Name resolution in a lab: every command netbox starts in a node (start commands, `lab exec`,
//! exec checks, [`super::Lab::command`]) sees the lab's hosts file as /etc/hosts, so nodes
//! reach each other by name with the ordinary resolver (`getent hosts server`, `nc server 80`).
//!
//! Each such command gets a mount namespace of its own with the file bound over /etc/hosts
//! ([`crate::process::hosts_file_on_exec`]): nothing is written to disk, nothing is left to
//! clean, and it works the same in a private host, on the real host and for a rootless lab.
//! One file for the whole lab, each name at its node's first address, keeps it linear in the
//! number of nodes.

use std::process::Command;

use super::topology::Plan;
use super::Result;

/// The lab's hosts file, ready to be bound into commands.
#[derive(Debug, Clone)]
pub struct HostsFile {
    content: std::sync::Arc<Vec<u8>>,
}

impl HostsFile {
    pub fn new(plan: &Plan) -> Result<HostsFile> {
        Ok(HostsFile {
            content: std::sync::Arc::new(plan.hosts().into_bytes()),
        })
    }

    /// The file's text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.content).into_owned()
    }

    /// Makes `cmd` start with this file as its /etc/hosts (in a mount namespace of its own).
    pub fn bind_on_exec(&self, cmd: &mut Command) -> Result<()> {
        crate::process::hosts_file_on_exec(cmd, self.content.clone());
        Ok(())
    }
}
