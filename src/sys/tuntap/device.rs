//! One queue (descriptor) of a TUN/TAP device: every read returns one whole packet, every write
//! sends one. [`Queue`] blocks; [`AsyncQueue`] runs on tokio's reactor (epoll) through
//! [`AsyncFd`] and drains what is ready in batches, so one wake-up serves many packets.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::ioctl;

/// The largest packet a queue hands over: a 64 KiB GSO superpacket plus its headers.
pub const MAX_PACKET: usize = 65_536 + super::vnet::HDR_LEN;

/// A blocking queue.
#[derive(Debug)]
pub struct Queue {
    fd: OwnedFd,
    header_len: usize,
}

impl Queue {
    pub(crate) fn new(fd: OwnedFd, header_len: usize) -> Queue {
        Queue { fd, header_len }
    }

    /// Bytes of virtio-net header in front of each packet (0 or [`super::vnet::HDR_LEN`]).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Reads one packet into `buf`; returns its length. A too-small buffer truncates it.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(self.fd.as_raw_fd(), buf)
    }

    /// Writes one packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        write(self.fd.as_raw_fd(), packet)
    }

    /// Makes the queue usable on tokio (non-blocking, registered with the reactor).
    pub fn into_async(self) -> io::Result<AsyncQueue> {
        ioctl::set_nonblocking(&self.fd, true)?;
        // SAFETY: an OwnedFd is open and always returns the same descriptor until dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(self.fd, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(AsyncQueue {
            header_len: self.header_len,
            fd,
            fast_reads: AtomicU32::new(0),
        })
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A queue for tokio. Methods take `&self`, so one task can read while another writes.
#[derive(Debug)]
pub struct AsyncQueue {
    fd: AsyncFd<OwnedFd>,
    header_len: usize,
    /// Reads done without the reactor since the last trip through it.
    fast_reads: AtomicU32,
}

/// Direct reads allowed between two trips through the reactor.
const FAST_READS: u32 = 32;

impl AsyncQueue {
    /// Bytes of virtio-net header in front of each packet.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Reads one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // Under load a packet is usually waiting: read it directly, skipping the reactor's
        // bookkeeping, but only a bounded number of times in a row, so that the readiness path
        // (which counts against tokio's cooperative budget) lets other tasks run.
        if self.fast_reads.fetch_add(1, Ordering::Relaxed) < FAST_READS {
            match read(self.fd.as_raw_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
        self.fast_reads.store(0, Ordering::Relaxed);
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read(fd.as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads up to `bufs.len()` packets: waits for the first, then takes whatever else is
    /// already queued without waiting. `lens[i]` gets the length of packet `i`; returns how many
    /// were read. (The TUN character device has no recvmmsg: this is the batch the kernel
    /// allows, one system call per packet but one wake-up per batch, and a single EAGAIN per
    /// drained queue.)
    pub async fn recv_many(&self, bufs: &mut [Vec<u8>], lens: &mut [usize]) -> io::Result<usize> {
        let max = bufs.len().min(lens.len());
        if max == 0 {
            return Ok(0);
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let fd = guard.get_inner().as_raw_fd();
            let mut n = 0;
            while n < max {
                match read(fd, &mut bufs[n]) {
                    Ok(len) => {
                        lens[n] = len;
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Drained: wait for the reactor's next edge.
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if n == 0 => return Err(e),
                    // Report what was read; the error comes back on the next call.
                    Err(_) => break,
                }
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Writes one packet.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // A TUN queue is almost always writable (a full device queue drops, it does not block).
        match write(self.fd.as_raw_fd(), packet) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        self.fd
            .async_io(Interest::WRITABLE, |fd| write(fd.as_raw_fd(), packet))
            .await
    }

    /// Writes several packets; returns how many were written (all, unless an error came).
    pub async fn send_many(&self, packets: &[&[u8]]) -> io::Result<usize> {
        for (i, p) in packets.iter().enumerate() {
            if let Err(e) = self.send(p).await {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(packets.len())
    }
}

impl AsFd for AsyncQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
