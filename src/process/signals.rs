//! Signals and exit codes: netbox forwards signals to the sandbox and waits for it; inside its
//! PID namespace, the sandbox's pid 1 (netbox's child, see [`run_init`]) forwards them on to
//! CMD, reaps orphans, and ends with CMD's status.
//!
//! Both block the forwarded signals (netbox before any thread exists, so every thread inherits
//! the mask) and collect them with `sigtimedwait`, which also reports SIGCHLD: no signal
//! handler, no self-pipe, no race between the child's exit and a signal. Blocking is also what
//! makes pid 1 receive them at all: the kernel drops a signal sent to a namespace's init that
//! has no handler, unless it is blocked.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{ProcessError, Result};

/// Signals netbox passes on to CMD.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set
}

fn waited_set() -> SigSet {
    let mut set = forwarded_set();
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the forwarded signals and SIGCHLD in the calling thread, to be collected by
/// [`Sandboxed::wait`]. Call it on the main thread before any other thread starts.
pub fn block_forwarded_signals() -> Result<()> {
    waited_set()
        .thread_block()
        .map_err(|source| ProcessError::Sys {
            what: "blocking signals",
            source,
        })
}

/// Takes a forwarded signal that arrived (blocked) before CMD started, if any: netbox then
/// stops instead of starting CMD.
pub fn take_pending_signal() -> Option<Signal> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set is a valid sigset; a null siginfo is allowed.
    let n = unsafe { libc::sigtimedwait(forwarded_set().as_ref(), std::ptr::null_mut(), &zero) };
    Signal::try_from(n).ok()
}

/// A started sandboxed command.
#[derive(Debug)]
pub struct Sandboxed {
    pub(crate) pid: Pid,
}

/// The shell's code for a wait status: the exit code, or 128+N for a death by signal N.
fn shell_code(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// True when a signal should not be passed on to `target`: the terminal sent it (SI_KERNEL) to
/// the whole foreground process group, which `target` shares with us, so it has it already.
fn came_from_our_terminal(info: &libc::siginfo_t, target: libc::pid_t) -> bool {
    // SAFETY: getpgid and getpgrp only read.
    info.si_code == libc::SI_KERNEL && unsafe { libc::getpgid(target) == libc::getpgrp() }
}

impl Sandboxed {
    /// Waits for CMD, forwarding signals to it, and returns its exit code (128+N when signal N
    /// killed it). Signals a terminal sent to the whole foreground process group already reached
    /// CMD when it shares netbox's group, so those are not sent twice.
    pub fn wait(self) -> Result<i32> {
        let set = waited_set();
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(ProcessError::Sys {
                        what: "waiting for the command",
                        source,
                    })
                }
            }
            // SAFETY: siginfo_t is plain data filled in by the kernel.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // A SIGCHLD can be lost when another thread of the process does not block it (a
            // library caller's threads): the timeout bounds the wait for the next waitpid.
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            // SAFETY: set, info and timeout are valid.
            let n = unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &timeout) };
            if n < 0 || n == libc::SIGCHLD {
                continue; // EAGAIN (timeout), EINTR, or a child to look at
            }
            if came_from_our_terminal(&info, self.pid.as_raw()) {
                continue;
            }
            // SAFETY: kill with a valid signal number.
            unsafe { libc::kill(self.pid.as_raw(), n) };
        }
    }
}

/// The sandbox's pid 1 once CMD (`cmd`, its child) runs: forwards the signals netbox passes
/// on, reaps every process that ends up its child (orphans are re-parented to it), and exits
/// with CMD's shell code as soon as CMD ends; the kernel then kills whatever is left in the
/// namespace, as when a container's main process ends. Runs in the forked child: syscalls
/// only, no allocation. The signals are still blocked (inherited from netbox).
pub(crate) fn run_init(cmd: libc::pid_t) -> ! {
    let set = waited_set();
    loop {
        // SAFETY: siginfo_t is plain data filled in by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: set and info are valid; no timeout: pid 1 has one thread, which blocks all
        // the signals it waits for.
        let n = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if n == libc::SIGCHLD {
            reap(cmd);
        } else if n > 0 && !came_from_our_terminal(&info, cmd) {
            // SAFETY: kill with a valid signal number.
            unsafe { libc::kill(cmd, n) };
        }
    }
}

/// Reaps every child that ended; exits with CMD's code when CMD is among them.
fn reap(cmd: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return; // none left that ended (0), or no children at all (ECHILD)
        }
        if pid == cmd {
            if let Some(code) = shell_code(status) {
                // SAFETY: ends pid 1 and with it the namespace.
                unsafe { libc::_exit(code) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_become_shell_codes() {
        // Encoded as the kernel does: exit code in the second byte, signal in the low bits.
        assert_eq!(shell_code(7 << 8), Some(7));
        assert_eq!(shell_code(libc::SIGKILL), Some(137));
        assert_eq!(shell_code(libc::SIGHUP | 0x80), Some(129)); // with a core dump
        assert_eq!(shell_code(0x7f | (libc::SIGSTOP << 8)), None); // stopped
    }
}
