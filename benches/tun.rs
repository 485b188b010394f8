//! Reading packets from a TUN device: netbox's async queue (tokio) against a plain blocking
//! libc read loop (the anchor: 151-159 k packets/s of 91-byte packets for a C loop), with the
//! same sender, interleaved rounds, medians and ratios.
//!
//! 1. Packets per second, 91-byte IPv4/UDP packets: target netbox/plain >= 1.0. Measured
//!    twice: draining a queue the sender filled beforehand (the readers' own cost, whatever
//!    the scheduler does with the sender: the headline figure), and with the sender running
//!    concurrently (on a shared 2-core machine this mostly measures the sender and the
//!    scheduler: the queue keeps running empty).
//! 2. Bytes per second with the same UDP GSO sender (UDP_SEGMENT, 64 KiB sends): the plain loop
//!    reads the 1500-byte packets the kernel segments for it; netbox's queue, opened with
//!    vnet_hdr and USO offloads, reads the 64 KiB superpackets. Target >= 3.0.
//!
//! Runs as root inside a private network + mount namespace. `cargo bench --bench tun [-- N]`
//! (N rounds, default 7).

mod common;

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{private_host, require_root, samples};
use netbox::sys::tuntap::{AsyncQueue, Offloads, TunBuilder};

/// How long each reader reads per round.
const WINDOW: Duration = Duration::from_millis(700);
/// UDP payload of the small packets: 20 + 8 + 63 = 91 bytes, as in the anchor.
const SMALL_PAYLOAD: usize = 63;
/// GSO sends: 44 segments of 1472 bytes (1500-byte packets), one 64 KiB superpacket.
const GSO_SEGMENT: u16 = 1472;
const GSO_SEND: usize = 44 * GSO_SEGMENT as usize;
const SMALL_BUF: usize = 2048;
/// Packets queued for the drain rounds.
const BURST: usize = 50_000;
const BIG_BUF: usize = 65_600;

fn main() {
    let rounds = samples(7);
    if !require_root("tun") {
        return;
    }
    private_host();
    let plain = plain_tun("plain0");
    address("plain0", "10.3.0.1/24");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (nb, gso) = rt.block_on(async {
        let nb = TunBuilder::tun().name("nb0").open().expect("nb0");
        let gso = TunBuilder::tun()
            .name("gso0")
            .offloads(Offloads::CSUM | Offloads::USO4 | Offloads::USO6)
            .open()
            .expect("gso0");
        (
            nb.into_async_queue().expect("async"),
            gso.into_async_queue().expect("async"),
        )
    });
    address("nb0", "10.4.0.1/24");
    address("gso0", "10.5.0.1/24");
    // Drain rounds: a queue long enough for a whole burst.
    let plain_drain_fd = plain_tun("plain1");
    address("plain1", "10.6.0.1/24");
    let nb_drain = rt.block_on(async {
        let t = TunBuilder::tun().name("nb1").open().expect("nb1");
        t.into_async_queue().expect("async")
    });
    address("nb1", "10.7.0.1/24");
    for dev in ["plain1", "nb1"] {
        sh(&format!(
            "ip link set dev {dev} txqueuelen {}",
            BURST + 1000
        ));
    }

    let (mut pps_plain, mut pps_nb, mut pps_one) = (vec![], vec![], vec![]);
    let (mut bps_plain, mut bps_gso) = (vec![], vec![]);
    // Buffers: MTU-sized for the small packets, 64 KiB where superpackets or a GSO sender's
    // traffic come; the same for both readers.
    let (mut drain_plain, mut drain_nb, mut drain_many) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate which reader goes first, so neither always follows the other.
        if round % 2 == 1 {
            drain_many.extend(drained("10.7.0.2", || rt.block_on(async_drain(&nb_drain))));
            drain_nb.extend(drained("10.7.0.2", || {
                rt.block_on(async_drain_one(&nb_drain))
            }));
        }
        drain_plain.extend(drained("10.6.0.2", || plain_drain(&plain_drain_fd)));
        if round % 2 == 0 {
            drain_nb.extend(drained("10.7.0.2", || {
                rt.block_on(async_drain_one(&nb_drain))
            }));
            drain_many.extend(drained("10.7.0.2", || rt.block_on(async_drain(&nb_drain))));
        }
    }
    for _ in 0..rounds {
        pps_plain.push(measure("10.3.0.2", false, || plain_loop(&plain, SMALL_BUF)));
        pps_nb.push(measure("10.4.0.2", false, || {
            rt.block_on(async_loop(&nb, SMALL_BUF))
        }));
        pps_one.push(measure("10.4.0.2", false, || {
            rt.block_on(async_loop_one(&nb, SMALL_BUF))
        }));
        bps_plain.push(measure("10.3.0.2", true, || plain_loop(&plain, BIG_BUF)));
        bps_gso.push(measure("10.5.0.2", true, || {
            rt.block_on(async_loop(&gso, BIG_BUF))
        }));
    }
    let pps = |v: &mut Vec<Rate>| median(v.iter().map(|r| r.packets).collect());
    let bps = |v: &mut Vec<Rate>| median(v.iter().map(|r| r.bytes).collect());
    let (p_plain, p_nb, p_one) = (pps(&mut pps_plain), pps(&mut pps_nb), pps(&mut pps_one));
    let (b_plain, b_gso) = (bps(&mut bps_plain), bps(&mut bps_gso));
    let (d_plain, d_nb, d_many) = (median(drain_plain), median(drain_nb), median(drain_many));
    println!("tun read, {rounds} rounds, interleaved, same sender");
    println!(
        "{:<52} {:>14}",
        format!("drain a queue of {BURST} 91-byte packets"),
        "median pkt/s"
    );
    println!("{:<52} {:>14.0}", "plain blocking libc read loop", d_plain);
    println!("{:<52} {:>14.0}", "netbox AsyncQueue (tokio, recv)", d_nb);
    println!(
        "{:<52} {:>14.0}",
        "netbox AsyncQueue (tokio, recv_many of 64)", d_many
    );
    println!(
        "ratio netbox/plain: {:.2} with recv (target >= 1.0), {:.2} with recv_many",
        d_nb / d_plain,
        d_many / d_plain
    );
    println!("streaming, {WINDOW:?} per reader, sender running concurrently:");
    println!("{:<52} {:>14}", "reader (91-byte packets)", "median pkt/s");
    println!("{:<52} {:>14.0}", "plain blocking libc read loop", p_plain);
    println!(
        "{:<52} {:>14.0}",
        "netbox AsyncQueue (tokio, recv_many)", p_nb
    );
    println!("{:<52} {:>14.0}", "netbox AsyncQueue (tokio, recv)", p_one);
    println!(
        "ratio netbox/plain: {:.2} with recv_many, {:.2} with recv (target >= 1.0)",
        p_nb / p_plain,
        p_one / p_plain
    );
    println!(
        "{:<52} {:>14}",
        "reader (UDP GSO sender, 64 KiB sends)", "median MB/s"
    );
    println!(
        "{:<52} {:>14.1}",
        "plain loop, 1500-byte packets",
        b_plain / 1e6
    );
    println!(
        "{:<52} {:>14.1}",
        "netbox AsyncQueue, vnet_hdr + USO superpackets",
        b_gso / 1e6
    );
    println!("ratio netbox/plain: {:.2} (target >= 3.0)", b_gso / b_plain);
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    packets: f64,
    bytes: f64,
}

/// What a reader counted in its window.
struct Count {
    packets: u64,
    bytes: u64,
    took: Duration,
}

/// Runs the sender towards `dst` while `read` reads one window.
fn measure(dst: &'static str, gso: bool, read: impl FnOnce() -> Count) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || send(dst, gso, &stop))
    };
    let count = read();
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    let secs = count.took.as_secs_f64();
    Rate {
        packets: count.packets as f64 / secs,
        bytes: count.bytes as f64 / secs,
    }
}

/// The one sender: UDP datagrams to `dst` as fast as the kernel takes them.
fn send(dst: &str, gso: bool, stop: &AtomicBool) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let payload = if gso {
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::UdpGsoSegment,
            &i32::from(GSO_SEGMENT),
        )
        .expect("UDP_SEGMENT");
        vec![0x5a; GSO_SEND]
    } else {
        vec![0x5a; SMALL_PAYLOAD]
    };
    let target = format!("{dst}:9");
    sock.connect(&target).expect("connect");
    // sendmmsg batches, so that the sender outruns any reader and the rate measured is the
    // reader's: the TUN queue stays full (its overflow is dropped).
    const BATCH: usize = 64;
    let mut iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the headers point at live iovecs over `payload`.
        // Errors (a full queue) are the reader's problem, not the sender's.
        let _ = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
    }
}

/// The reference: blocking read(2) on a descriptor opened with plain libc calls.
fn plain_loop(fd: &OwnedFd, buf_len: usize) -> Count {
    let mut buf = vec![0u8; buf_len];
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut start = None;
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += 1;
        bytes += n as u64;
        if packets.is_multiple_of(256) && t0.elapsed() >= WINDOW {
            return Count {
                packets,
                bytes,
                took: t0.elapsed(),
            };
        }
    }
}

/// netbox: the async queue, a batch per wake-up; bytes exclude the virtio-net header.
async fn async_loop(queue: &AsyncQueue, buf_len: usize) -> Count {
    let mut bufs = vec![vec![0u8; buf_len]; 64];
    let mut lens = vec![0usize; 64];
    let header = queue.header_len() as u64;
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut start = None;
    let mut checked = 0u64;
    loop {
        let n = queue.recv_many(&mut bufs, &mut lens).await.expect("read");
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += n as u64;
        bytes += lens[..n].iter().map(|l| *l as u64 - header).sum::<u64>();
        if packets - checked >= 256 || header > 0 {
            checked = packets;
            if t0.elapsed() >= WINDOW {
                return Count {
                    packets,
                    bytes,
                    took: t0.elapsed(),
                };
            }
        }
    }
}

/// netbox: the async queue, one packet per call.
async fn async_loop_one(queue: &AsyncQueue, buf_len: usize) -> Count {
    let mut buf = vec![0u8; buf_len];
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let mut start = None;
    loop {
        let n = queue.recv(&mut buf).await.expect("read");
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += 1;
        bytes += n as u64;
        if packets.is_multiple_of(256) && t0.elapsed() >= WINDOW {
            return Count {
                packets,
                bytes,
                took: t0.elapsed(),
            };
        }
    }
}

/// One drain round: fill the queue, read it. A watchdog re-sends the sentinel should the
/// kernel have dropped it (a full queue drops silently); such a round is left out.
fn drained(dst: &'static str, read: impl FnOnce() -> f64) -> Option<f64> {
    burst(dst);
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, fired) = (done.clone(), fired.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if start.elapsed() > Duration::from_secs(2) {
                    fired.store(true, Ordering::Relaxed);
                    let _ = sock.send_to(b"end", format!("{dst}:10"));
                }
            }
        })
    };
    let rate = read();
    done.store(true, Ordering::Relaxed);
    watchdog.join().expect("watchdog");
    if fired.load(Ordering::Relaxed) {
        eprintln!("tun bench: a drain round to {dst} lost its sentinel; left out");
        return None;
    }
    Some(rate)
}

/// Fills a TUN's queue: BURST small packets to `dst`, then a sentinel to port 10 (sendmmsg).
fn burst(dst: &str) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect(format!("{dst}:9")).expect("connect");
    let payload = [0x5au8; SMALL_PAYLOAD];
    const BATCH: usize = 64;
    let mut iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain old data; zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0;
    while sent < BURST {
        let n = (BURST - sent).min(BATCH) as u32;
        // SAFETY: the headers point at live iovecs over `payload`.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
        assert!(r > 0, "sendmmsg: {}", std::io::Error::last_os_error());
        sent += r as usize;
    }
    sock.connect(format!("{dst}:10")).expect("connect");
    sock.send(b"end").expect("sentinel");
}

/// The end-of-burst packet. A sentinel read first is a late one from a previous watchdog.
fn is_sentinel(p: &[u8], packets: u64) -> bool {
    packets > 1 && p.len() >= 24 && p[22..24] == [0, 10]
}

/// Reads a queue filled by [`burst`] up to the sentinel; packets per second.
fn plain_drain(fd: &OwnedFd) -> f64 {
    let mut buf = vec![0u8; SMALL_BUF];
    let mut packets = 0u64;
    let mut start = None;
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += 1;
        if is_sentinel(&buf[..n as usize], packets) {
            return packets as f64 / t0.elapsed().as_secs_f64();
        }
    }
}

/// The same with netbox's async queue, one packet per call.
async fn async_drain_one(queue: &AsyncQueue) -> f64 {
    let mut buf = vec![0u8; SMALL_BUF];
    let mut packets = 0u64;
    let mut start = None;
    loop {
        let n = queue.recv(&mut buf).await.expect("read");
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += 1;
        if is_sentinel(&buf[..n], packets) {
            return packets as f64 / t0.elapsed().as_secs_f64();
        }
    }
}

/// The same with netbox's async queue, in batches.
async fn async_drain(queue: &AsyncQueue) -> f64 {
    let mut bufs = vec![vec![0u8; SMALL_BUF]; 64];
    let mut lens = vec![0usize; 64];
    let mut packets = 0u64;
    let mut start = None;
    loop {
        let n = queue.recv_many(&mut bufs, &mut lens).await.expect("read");
        let t0 = *start.get_or_insert_with(Instant::now);
        packets += n as u64;
        if bufs[..n]
            .iter()
            .zip(&lens)
            .any(|(b, l)| is_sentinel(&b[..*l], packets))
        {
            return packets as f64 / t0.elapsed().as_secs_f64();
        }
    }
}

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .expect("sh");
    assert!(ok.success(), "{cmd}");
}

/// A TUN opened the plain way: open(2) and ioctl(TUNSETIFF), IFF_TUN | IFF_NO_PI, blocking.
fn plain_tun(name: &str) -> OwnedFd {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: plain syscalls with valid arguments; the descriptor is owned from here.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "open /dev/net/tun");
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        assert_eq!(libc::ioctl(fd, TUNSETIFF, &mut req), 0, "TUNSETIFF");
        OwnedFd::from_raw_fd(fd)
    }
}

fn address(dev: &str, cidr: &str) {
    let ok = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("ip addr add {cidr} dev {dev} && ip link set {dev} up"),
        ])
        .status()
        .expect("ip");
    assert!(ok.success(), "addressing {dev}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
