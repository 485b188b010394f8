//! Packet capture: a classic pcap file (LINKTYPE_ETHERNET), read by tcpdump and Wireshark,
//! written from an AF_PACKET socket bound to one interface inside a namespace. Each record is
//! written whole, so the file is readable while the capture runs. Used by `netbox run
//! --capture` and by labs (one file per link).

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::sys::netns::{NetNs, NetnsError};

const LINKTYPE_ETHERNET: u32 = 1;
pub const SNAPLEN: u32 = 262_144;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// The 24-byte pcap file header.
pub fn file_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// One record: header and frame.
pub fn record(ts: Duration, frame: &[u8], orig_len: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + frame.len());
    r.extend_from_slice(&(ts.as_secs() as u32).to_le_bytes());
    r.extend_from_slice(&ts.subsec_micros().to_le_bytes());
    r.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    r.extend_from_slice(&(orig_len as u32).to_le_bytes());
    r.extend_from_slice(frame);
    r
}

/// Opens a packet socket on `ifname` inside `ns`.
pub fn open_socket(ns: &NetNs, ifname: &str) -> Result<OwnedFd> {
    let name = ifname.to_string();
    ns.run_in(move || -> std::io::Result<OwnedFd> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the descriptor is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let index = nix::net::if_::if_nametoindex(name.as_str()).map_err(std::io::Error::from)?;
        // SAFETY: zeroed sockaddr_ll is a valid value to fill in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: binds the socket to a properly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                raw,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: sets a receive timeout from a timeval of the right size.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(fd)
    })?
    .map_err(|source| CaptureError::Io {
        what: format!("opening a capture socket on \"{ifname}\""),
        source,
    })
}

/// Starts capturing `ifname` in `ns` into `path` until `stop` is set.
pub fn start(
    ns: &NetNs,
    ifname: &str,
    path: &Path,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let fd = open_socket(ns, ifname)?;
    let mut file = File::create(path).map_err(|source| CaptureError::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    file.write_all(&file_header())
        .map_err(|source| CaptureError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    Ok(std::thread::spawn(move || {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut buf = vec![0u8; SNAPLEN as usize];
        loop {
            // After the stop, what is queued still gets written (without waiting for more).
            let stopping = stop.load(Ordering::Relaxed);
            let flags = libc::MSG_TRUNC | if stopping { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: receives into a buffer of the given length; MSG_TRUNC returns the real size.
            let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n <= 0 {
                if stopping {
                    break;
                }
                continue;
            }
            let orig = n as usize;
            let kept = orig.min(buf.len());
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if file.write_all(&record(ts, &buf[..kept], orig)).is_err() {
                break;
            }
        }
    }))
}

/// A parsed record: (timestamp, frame).
pub type Packet = (Duration, Vec<u8>);

/// Reads a classic little-endian pcap file (what [`start`] writes).
pub fn read_pcap(bytes: &[u8]) -> Option<Vec<Packet>> {
    if bytes.len() < 24 || bytes[0..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return None;
    }
    let mut out = vec![];
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let word = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                bytes.get(at + o..at + o + 4)?.try_into().ok()?,
            ))
        };
        let (secs, micros, incl) = (word(0)?, word(4)?, word(8)? as usize);
        let frame = bytes.get(at + 16..at + 16 + incl)?.to_vec();
        out.push((Duration::new(u64::from(secs), micros * 1000), frame));
        at += 16 + incl;
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_records_read_back() {
        let mut file = file_header().to_vec();
        file.extend(record(Duration::from_micros(1_500_000), &[1, 2, 3], 3));
        file.extend(record(Duration::from_secs(2), &[4; 60], 60));
        let packets = read_pcap(&file).expect("parses");
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].1, vec![1, 2, 3]);
        assert_eq!(packets[0].0, Duration::from_micros(1_500_000));
        assert!(read_pcap(&file[..file.len() - 1]).is_none());
    }
}
