//! The TUN ioctls on /dev/net/tun: the only place that issues them. TUN/TAP devices cannot be
//! created over netlink; a device is made (or attached to) by TUNSETIFF on an open
//! /dev/net/tun descriptor, which then carries its packets.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The clone device every TUN/TAP queue is opened from.
pub const CLONE_DEVICE: &str = "/dev/net/tun";

// The TUN ioctls take their argument either as a pointer (declared `int` in if_tun.h even where
// a struct ifreq is passed) or as a plain integer: nix's "bad" macros build exactly that.
// TUNSETIFF writes the chosen name back into the ifreq.
nix::ioctl_readwrite_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetowner,
    nix::request_code_write!(b'T', 204, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetgroup,
    nix::request_code_write!(b'T', 206, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetoffload,
    nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>())
);
nix::ioctl_write_ptr_bad!(
    tunsetvnethdrsz,
    nix::request_code_write!(b'T', 216, std::mem::size_of::<libc::c_int>()),
    libc::c_int
);

/// Opens /dev/net/tun (close-on-exec; blocking until [`set_nonblocking`]).
pub fn open_clone_device() -> io::Result<OwnedFd> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(CLONE_DEVICE)?;
    Ok(file.into())
}

/// TUNSETIFF: creates the device `name` (or attaches to it); an empty name lets the kernel pick
/// one from `tun%d`/`tap%d`. Returns the name the kernel used.
pub fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<String> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the descriptor is open and `req` a valid ifreq the kernel reads and writes.
    unsafe { tunsetiff(fd.as_raw_fd(), &mut req) }.map_err(io::Error::from)?;
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// TUNSETPERSIST: a persistent device outlives its descriptors.
pub fn set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: integer argument on an open descriptor.
    unsafe { tunsetpersist(fd.as_raw_fd(), libc::c_int::from(on)) }
        .map(drop)
        .map_err(io::Error::from)
}

/// TUNSETOWNER: the user allowed to attach without CAP_NET_ADMIN.
pub fn set_owner(fd: &OwnedFd, uid: u32) -> io::Result<()> {
    // SAFETY: integer argument on an open descriptor.
    unsafe { tunsetowner(fd.as_raw_fd(), uid as libc::c_int) }
        .map(drop)
        .map_err(io::Error::from)
}

/// TUNSETGROUP: the group allowed to attach without CAP_NET_ADMIN.
pub fn set_group(fd: &OwnedFd, gid: u32) -> io::Result<()> {
    // SAFETY: integer argument on an open descriptor.
    unsafe { tunsetgroup(fd.as_raw_fd(), gid as libc::c_int) }
        .map(drop)
        .map_err(io::Error::from)
}

/// TUNSETOFFLOAD: the TUN_F_* offloads user space accepts (needs IFF_VNET_HDR).
pub fn set_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: integer argument on an open descriptor.
    unsafe { tunsetoffload(fd.as_raw_fd(), flags as libc::c_int) }
        .map(drop)
        .map_err(io::Error::from)
}

/// TUNSETVNETHDRSZ: the size of the virtio-net header in front of each packet.
pub fn set_vnet_hdr_size(fd: &OwnedFd, size: usize) -> io::Result<()> {
    let size = size as libc::c_int;
    // SAFETY: pointer to a live int on an open descriptor.
    unsafe { tunsetvnethdrsz(fd.as_raw_fd(), &size) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Switches a queue between blocking and non-blocking reads.
pub fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map(drop)
        .map_err(io::Error::from)
}
