//! A first-come, first-served queue shared by processes: at most `width` of them at work at
//! once, the others asleep in the kernel in the order they joined.
//!
//! Why: a burst of short CPU-bound processes on a few cores (a node starting many pods: one
//! plugin process per ADD) is not served in arrival order. The scheduler shares the cores among
//! all of them, so every call is slowed by all the others, and some are passed over again and
//! again by newer ones: one call takes 3 ms, another 80. A queue in arrival order turns that
//! spread into a line: a call waits for the ones before it, then works without sharing its core
//! with the ones after it.
//!
//! How: one file. Bytes 0..8 hold the next ticket, guarded by an OFD lock on byte 0. A process
//! takes ticket T and, before it lets go of the guard, locks its own slot byte (T mod SLOTS);
//! when it is ready to work it waits for the slot of ticket T - width, which is free once that
//! process has dropped its [`Ticket`] or died. Locks vanish with their holder, so a killed
//! process never blocks the queue, and a stuck one delays its successor by at most the
//! caller's `max_wait`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::dirfd::Dir;

/// Slots in the file: far more than the processes ever in the queue at once.
const SLOTS: u64 = 4096;
/// Where the slot bytes start (the ticket counter is bytes 0..8).
const SLOT_BASE: i64 = 64;

/// A place in the queue; dropping it (or exiting) lets the successor in.
#[derive(Debug)]
pub struct Ticket {
    file: File,
    number: u64,
}

/// Joins the queue kept in the file `name` under `dir` (created 0600 when missing, never
/// through a link).
pub fn join(dir: &Dir, name: &str) -> io::Result<Ticket> {
    let file = dir.open_file(name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?;
    lock(&file, 0, true)?;
    let taken = next_ticket(&file).inspect(|&number| {
        // Held by a process SLOTS tickets earlier that is still alive: no slot, so the
        // successor will not wait for this one; the queue stays correct, only looser.
        let _ = lock(&file, slot(number), false);
    });
    let released = unlock(&file, 0);
    let number = taken?;
    released?;
    Ok(Ticket { file, number })
}

fn next_ticket(file: &File) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let got = file.read_at(&mut bytes, 0)?;
    // A new (or cut short) file counts from 0.
    let number = if got == 8 {
        u64::from_le_bytes(bytes)
    } else {
        0
    };
    file.write_at(&number.wrapping_add(1).to_le_bytes(), 0)?;
    Ok(number)
}

impl Ticket {
    /// Waits until at most `width - 1` of the processes ahead are still at work, at most
    /// `max_wait`.
    pub fn wait(&self, width: u64, max_wait: Duration) -> io::Result<()> {
        let width = width.max(1);
        if self.number < width {
            return Ok(());
        }
        // On a thread of its own, so that the wait can end at `max_wait` without signals. The
        // clone shares the open file description, hence the locks: the thread's lock on the
        // predecessor's slot never conflicts with this process's own.
        let waiter = self.file.try_clone()?;
        let offset = slot(self.number - width);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("queue".into())
            .spawn(move || {
                let _ = tx.send(lock(&waiter, offset, true).and_then(|()| unlock(&waiter, offset)));
            })?;
        match rx.recv_timeout(max_wait) {
            Ok(waited) => waited,
            // The predecessor is stuck: waiting longer would only make a convoy behind it.
            Err(_) => Ok(()),
        }
    }

    pub fn number(&self) -> u64 {
        self.number
    }
}

fn slot(ticket: u64) -> i64 {
    SLOT_BASE + (ticket % SLOTS) as i64
}

fn byte(kind: libc::c_int, offset: i64) -> libc::flock {
    // SAFETY: a plain C struct for which all-zero is valid; OFD locks need l_pid 0.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    fl
}

/// A write lock on one byte, owned by the open file description (released when the last
/// descriptor of it closes, so at the latest when the process dies).
fn lock(file: &File, offset: i64, wait: bool) -> io::Result<()> {
    let fl = byte(libc::F_WRLCK, offset);
    loop {
        let arg = if wait {
            FcntlArg::F_OFD_SETLKW(&fl)
        } else {
            FcntlArg::F_OFD_SETLK(&fl)
        };
        match fcntl(file, arg) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn unlock(file: &File, offset: i64) -> io::Result<()> {
    let fl = byte(libc::F_UNLCK, offset);
    fcntl(file, FcntlArg::F_OFD_SETLK(&fl))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn queue() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Dir::open(tmp.path()).expect("dir");
        (tmp, dir)
    }

    #[test]
    fn tickets_count_up_from_zero() {
        let (_tmp, dir) = queue();
        let numbers: Vec<u64> = (0..3)
            .map(|_| join(&dir, "q").expect("join").number())
            .collect();
        assert_eq!(numbers, [0, 1, 2]);
    }

    #[test]
    fn the_first_width_go_at_once() {
        let (_tmp, dir) = queue();
        let a = join(&dir, "q").expect("join");
        let b = join(&dir, "q").expect("join");
        let start = Instant::now();
        a.wait(2, Duration::from_secs(5)).expect("wait");
        b.wait(2, Duration::from_secs(5)).expect("wait");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_ticket_waits_for_the_one_width_ahead_until_it_is_dropped() {
        let (_tmp, dir) = queue();
        let first = join(&dir, "q").expect("join");
        // Separate open file descriptions, as separate processes have.
        let second = join(&dir, "q").expect("join");
        let order = Arc::new(Mutex::new(Vec::new()));
        let seen = order.clone();
        let waiter = std::thread::spawn(move || {
            second.wait(1, Duration::from_secs(10)).expect("wait");
            seen.lock().expect("order").push("second");
        });
        std::thread::sleep(Duration::from_millis(100));
        order.lock().expect("order").push("first done");
        drop(first);
        waiter.join().expect("waiter");
        assert_eq!(*order.lock().expect("order"), ["first done", "second"]);
    }

    #[test]
    fn a_stuck_predecessor_delays_only_up_to_max_wait() {
        let (_tmp, dir) = queue();
        let _stuck = join(&dir, "q").expect("join");
        let next = join(&dir, "q").expect("join");
        let start = Instant::now();
        next.wait(1, Duration::from_millis(200)).expect("wait");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let (tmp, dir) = queue();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").expect("target");
        std::os::unix::fs::symlink(&target, tmp.path().join("q")).expect("link");
        join(&dir, "q").expect_err("a link is refused");
        assert_eq!(std::fs::read(&target).expect("target"), b"keep");
    }
}
