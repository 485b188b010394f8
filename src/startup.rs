//! The entry point of both binaries, in place of std's runtime start-up.
//!
//! A CNI VERSION call is a process start and little else, and a sandbox start pays one too.
//! Before `main`, std finds the main thread's stack guard with `pthread_getattr_np`, which makes
//! glibc read and parse /proc/self/maps, and installs an alternate signal stack for its
//! stack-overflow message: about 60 µs of a 0.9 ms plugin call on the machines netbox is
//! measured on. With glibc the binaries are `#![no_main]` and call [`run`], which keeps the
//! parts of std's start-up that change behaviour (SIGPIPE ignored, fds 0-2 open, stdout flushed
//! at exit, a panic turned into an exit status) and drops the rest: a stack overflow is a
//! plain SIGSEGV. Elsewhere only std's start-up learns the arguments, so there the runner keeps
//! it and calls [`run`] from an ordinary `main` (the plugin reads no arguments and is
//! `#![no_main]` everywhere).

use std::panic::{self, AssertUnwindSafe};

/// Exit status of a panic, as with std's own runtime.
const PANIC_STATUS: i32 = 101;

/// Runs `body` as the program and exits with its status. Call it first thing in `main` (a
/// `#[no_mangle] extern "C" fn main` under `#![no_main]`), before any other thread exists.
pub fn run(body: impl FnOnce() -> i32) -> ! {
    ensure_standard_fds();
    // SAFETY: single-threaded here; SIG_IGN installs no handler code. Writes to a closed pipe
    // fail with EPIPE instead of killing netbox mid-operation; CMD gets SIGPIPE back at exec.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(PANIC_STATUS);
    // Flushes stdout, as returning from std's main does.
    std::process::exit(status)
}

/// Opens /dev/null on any of fds 0-2 that is closed, so that no socket or file netbox opens
/// later becomes its stdout (std's start-up does the same).
fn ensure_standard_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        {
            // SAFETY: a constant NUL-terminated path; open takes the lowest free fd, this one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
