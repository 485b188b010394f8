//! Name resolution in a lab: every command netbox starts in a node (start commands, `lab exec`,
//! exec checks, [`super::Lab::command`]) sees the lab's hosts file as /etc/hosts, so nodes
//! reach each other by name with the ordinary resolver (`getent hosts server`, `nc server 80`).
//!
//! Each such command gets a mount namespace of its own (made between fork and exec) with the
//! file bound over /etc/hosts: it is written into a fresh tmpfs mounted on /tmp for a moment,
//! bound, and the tmpfs detached again (the bind keeps the file). Nothing is written to disk,
//! nothing is left to clean, and it works the same in a private host, on the real host and for
//! a rootless lab. (A memfd cannot be bound: the kernel refuses mounts from its internal
//! filesystem.) One file for the whole lab, each name at its node's first address, keeps it
//! linear in the number of nodes.

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
        use std::os::unix::process::CommandExt;
        let content = self.content.clone();
        // SAFETY: the closure runs between fork and exec and only makes syscalls on data made
        // before the fork (the content and the C string literals).
        unsafe {
            cmd.pre_exec(move || {
                use nix::mount::{mount, umount2, MntFlags, MsFlags};
                let none = None::<&str>;
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                // Our mounts must not propagate back to the namespace we came from.
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
                mount(
                    Some(c"tmpfs"),
                    c"/tmp",
                    Some(c"tmpfs"),
                    MsFlags::MS_NOSUID,
                    Some(c"size=16m"),
                )?;
                let fd = nix::fcntl::open(
                    c"/tmp/hosts",
                    nix::fcntl::OFlag::O_CREAT
                        | nix::fcntl::OFlag::O_WRONLY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )?;
                let mut rest: &[u8] = &content;
                while !rest.is_empty() {
                    let n = nix::unistd::write(&fd, rest)?;
                    rest = &rest[n..];
                }
                drop(fd);
                mount(
                    Some(c"/tmp/hosts"),
                    c"/etc/hosts",
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
                umount2(c"/tmp", MntFlags::MNT_DETACH)?;
                Ok(())
            });
        }
        Ok(())
    }
}
