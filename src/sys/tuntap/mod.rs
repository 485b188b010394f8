//! TUN (IP packets) and TAP (Ethernet frames) devices for user programs: a builder that makes
//! or attaches to a device through the TUN ioctls ([`ioctl`]), and queues to read and write
//! whole packets, blocking ([`Queue`]) or on tokio ([`AsyncQueue`]), with optional
//! virtio-net headers and GSO offloads ([`vnet`]).
//!
//! Everything acts in the calling thread's network namespace: to make a device inside another
//! namespace, build it in [`crate::sys::netns::NetNs::run_in`]; the descriptors stay bound to that
//! device after the thread is gone. Addresses, routes and link state go through
//! [`crate::sys::netlink`].

pub mod device;
pub mod ioctl;
pub mod packet;
pub mod vnet;

use std::io;
use std::os::fd::OwnedFd;

use ipnetwork::IpNetwork;
use thiserror::Error;

pub use device::{AsyncQueue, Queue};
pub use vnet::{Offloads, VnetHeader};

#[derive(Debug, Error)]
pub enum TuntapError {
    #[error("invalid TUN/TAP device name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot open {}{hint}: {source}", ioctl::CLONE_DEVICE)]
    CloneDevice {
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "not allowed to create or attach to {what} \"{name}\": it needs CAP_NET_ADMIN, or being \
         the device's owner or in its group"
    )]
    Permission { what: &'static str, name: String },
    #[error(
        "\"{name}\" exists but is not a {what} with these settings (another kind of link, \
         the other mode, or other multi-queue/vnet_hdr/packet-info flags)"
    )]
    NotTun { what: &'static str, name: String },
    #[error("{what} \"{name}\" is busy: another process holds its single queue")]
    Busy { what: &'static str, name: String },
    #[error("{what} \"{name}\": {action}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = TuntapError> = std::result::Result<T, E>;

/// TUN carries IP packets, TAP Ethernet frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tun,
    Tap,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tun => "tun",
            Mode::Tap => "tap",
        }
    }
}

/// How to make (or attach to) a TUN/TAP device. Defaults: TUN, a kernel-chosen name, no
/// packet-information prefix (IFF_NO_PI), not persistent, one queue, no virtio-net header.
#[derive(Debug, Clone)]
pub struct TunBuilder {
    name: Option<String>,
    mode: Mode,
    packet_info: bool,
    persist: bool,
    owner: Option<u32>,
    group: Option<u32>,
    queues: usize,
    multi_queue: bool,
    vnet_hdr: bool,
    offloads: Offloads,
}

impl TunBuilder {
    /// A TUN (layer 3) device.
    pub fn tun() -> TunBuilder {
        TunBuilder {
            name: None,
            mode: Mode::Tun,
            packet_info: false,
            persist: false,
            owner: None,
            group: None,
            queues: 1,
            multi_queue: false,
            vnet_hdr: false,
            offloads: Offloads::NONE,
        }
    }

    /// A TAP (layer 2) device.
    pub fn tap() -> TunBuilder {
        TunBuilder {
            mode: Mode::Tap,
            ..Self::tun()
        }
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The device's name; without one, the kernel picks `tunN`/`tapN`. A name with `%d` is a
    /// template the kernel fills in.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Keep the 4-byte packet-information prefix (flags + protocol) on every packet.
    pub fn packet_info(mut self, on: bool) -> Self {
        self.packet_info = on;
        self
    }

    /// The device outlives its descriptors (and this process) until deleted.
    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// The user who may attach to the device without CAP_NET_ADMIN.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// The group whose members may attach without CAP_NET_ADMIN.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// A multi-queue device opened with `queues` queues (descriptors), each its own flow of
    /// packets the kernel spreads by flow hash.
    pub fn multi_queue(mut self, queues: usize) -> Self {
        self.multi_queue = true;
        self.queues = queues;
        self
    }

    /// Put a virtio-net header ([`vnet::VnetHeader`]) in front of every packet.
    pub fn vnet_hdr(mut self, on: bool) -> Self {
        self.vnet_hdr = on;
        self
    }

    /// Offloads to accept (implies vnet_hdr): with [`Offloads::ALL_GSO`] the kernel hands over
    /// TCP and UDP superpackets of up to 64 KiB instead of segmenting them.
    pub fn offloads(mut self, offloads: Offloads) -> Self {
        self.offloads = offloads;
        if offloads != Offloads::NONE {
            self.vnet_hdr = true;
        }
        self
    }

    fn what(&self) -> &'static str {
        match self.mode {
            Mode::Tun => "TUN device",
            Mode::Tap => "TAP device",
        }
    }

    fn flags(&self) -> libc::c_int {
        let mut flags = match self.mode {
            Mode::Tun => libc::IFF_TUN,
            Mode::Tap => libc::IFF_TAP,
        };
        if !self.packet_info {
            flags |= libc::IFF_NO_PI;
        }
        if self.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        flags
    }

    fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if self.queues == 0 {
            return Err(TuntapError::Invalid(
                "a TUN/TAP device needs at least one queue".into(),
            ));
        }
        // The kernel answers EINVAL to these; say why instead.
        let o = self.offloads;
        if o != Offloads::NONE && !o.contains(Offloads::CSUM) {
            return Err(TuntapError::Invalid(
                "TUN offloads need Offloads::CSUM (segmentation implies checksum offload)".into(),
            ));
        }
        if o.contains(Offloads::USO4) != o.contains(Offloads::USO6) {
            return Err(TuntapError::Invalid(
                "USO4 and USO6 go together: the kernel takes UDP segmentation for both families or \
                 neither"
                    .into(),
            ));
        }
        // The kernel's limit (MAX_TAP_QUEUES).
        if self.queues > 256 {
            return Err(TuntapError::Invalid(format!(
                "{} queues requested: a TUN/TAP device has at most 256",
                self.queues
            )));
        }
        Ok(())
    }

    /// Creates the device (or attaches to an existing one of the same kind) in the calling
    /// thread's network namespace and opens its queues.
    pub fn open(&self) -> Result<Tun> {
        self.validate()?;
        let mut name = self.name.clone().unwrap_or_default();
        let mut queues = Vec::with_capacity(self.queues);
        for i in 0..self.queues {
            let fd = ioctl::open_clone_device().map_err(clone_device_error)?;
            name =
                ioctl::set_iff(&fd, &name, self.flags()).map_err(|e| self.iff_error(&name, e))?;
            if i == 0 {
                self.configure(&fd, &name)?;
            }
            queues.push(fd);
        }
        let header_len = if self.vnet_hdr { vnet::HDR_LEN } else { 0 };
        Ok(Tun {
            name,
            mode: self.mode,
            vnet_hdr: self.vnet_hdr,
            queues: queues
                .into_iter()
                .map(|fd| Queue::new(fd, header_len))
                .collect(),
        })
    }

    /// Creates a persistent device (owner and group applied) in the calling thread's network
    /// namespace, closes it and returns its name: for devices that other programs attach to by
    /// name (labs, `netbox run --tun`, `netbox tuntap add`).
    pub fn create_persistent(&self) -> Result<String> {
        let mut spec = self.clone().persist(true);
        // One queue suffices to create it; attaching programs open their own.
        spec.queues = 1;
        Ok(spec.open()?.name)
    }

    fn configure(&self, fd: &OwnedFd, name: &str) -> Result<()> {
        let failed = |action: &'static str| {
            let name = name.to_string();
            let what = self.what();
            move |source| TuntapError::Ioctl {
                what,
                name,
                action,
                source,
            }
        };
        if let Some(uid) = self.owner {
            ioctl::set_owner(fd, uid).map_err(failed("setting the owner"))?;
        }
        if let Some(gid) = self.group {
            ioctl::set_group(fd, gid).map_err(failed("setting the group"))?;
        }
        if self.vnet_hdr {
            ioctl::set_vnet_hdr_size(fd, vnet::HDR_LEN)
                .map_err(failed("setting the virtio-net header size"))?;
            ioctl::set_offload(fd, self.offloads.0).map_err(failed("setting offloads"))?;
        }
        if self.persist {
            ioctl::set_persist(fd, true).map_err(failed("making it persistent"))?;
        }
        Ok(())
    }

    fn iff_error(&self, name: &str, e: io::Error) -> TuntapError {
        let name = if name.is_empty() {
            format!("{}%d", self.mode.as_str())
        } else {
            name.to_string()
        };
        let what = self.what();
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TuntapError::Permission { what, name },
            Some(libc::EINVAL) if nix::net::if_::if_nametoindex(name.as_str()).is_ok() => {
                TuntapError::NotTun { what, name }
            }
            Some(libc::EBUSY) => TuntapError::Busy { what, name },
            _ => TuntapError::Ioctl {
                what,
                name,
                action: "TUNSETIFF",
                source: e,
            },
        }
    }
}

fn clone_device_error(source: io::Error) -> TuntapError {
    let hint = match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (no TUN/TAP support: load the tun module, or create the node: mknod /dev/net/tun c 10 200)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (no permission on the TUN/TAP clone device: run as root or make it accessible)"
        }
        _ => "",
    };
    TuntapError::CloneDevice { hint, source }
}

/// Checks a device name before it reaches the kernel (`%d` templates allowed).
pub fn validate_name(name: &str) -> Result<()> {
    match crate::sys::netlink::ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(TuntapError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// An open TUN/TAP device: its name and queues.
#[derive(Debug)]
pub struct Tun {
    name: String,
    mode: Mode,
    vnet_hdr: bool,
    queues: Vec<Queue>,
}

impl Tun {
    /// The name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// True when packets carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The queues, blocking.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The queues, for blocking use.
    pub fn into_queues(self) -> Vec<Queue> {
        self.queues
    }

    /// The queues, for tokio. Call inside a runtime with I/O enabled.
    pub fn into_async(self) -> io::Result<Vec<AsyncQueue>> {
        self.queues.into_iter().map(Queue::into_async).collect()
    }

    /// The first queue, for tokio (single-queue devices).
    pub fn into_async_queue(self) -> io::Result<AsyncQueue> {
        self.into_async()?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("no queue"))
    }
}

/// `NAME[:ADDR/LEN]`: a TUN device to make inside a sandbox (`netbox run --tun`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunRequest {
    pub name: String,
    pub address: Option<IpNetwork>,
}

impl std::str::FromStr for TunRequest {
    type Err = TuntapError;

    fn from_str(s: &str) -> Result<TunRequest> {
        let (name, address) = match s.split_once(':') {
            Some((name, addr)) => {
                let address: IpNetwork = addr.parse().map_err(|e| {
                    TuntapError::Invalid(format!("--tun {s}: bad address {addr:?}: {e}"))
                })?;
                if !addr.contains('/') {
                    return Err(TuntapError::Invalid(format!(
                        "--tun {s}: give the address with its prefix length (ADDR/LEN)"
                    )));
                }
                (name, Some(address))
            }
            None => (s, None),
        };
        validate_name(name)?;
        if name.contains('%') {
            return Err(TuntapError::Invalid(format!(
                "--tun {s}: give a fixed name (the command attaches to it by name)"
            )));
        }
        Ok(TunRequest {
            name: name.to_string(),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_over_15_bytes_are_refused() {
        let err = TunBuilder::tun().name("a".repeat(16)).open();
        assert!(
            matches!(err, Err(TuntapError::InvalidName { .. })),
            "{err:?}"
        );
        assert!(validate_name(&"a".repeat(15)).is_ok());
    }

    #[test]
    fn tun_request_parses() {
        let r: TunRequest = "tun0:10.0.0.1/24".parse().expect("parses");
        assert_eq!(r.name, "tun0");
        assert_eq!(r.address, Some("10.0.0.1/24".parse().expect("net")));
        let r: TunRequest = "tun1".parse().expect("parses");
        assert_eq!(r.address, None);
        assert!("tun1:10.0.0.1".parse::<TunRequest>().is_err());
        assert!("averyveryverylongname".parse::<TunRequest>().is_err());
        assert!("tun1:nonsense/3".parse::<TunRequest>().is_err());
    }

    #[test]
    fn offloads_the_kernel_refuses_are_refused_first() {
        let e = TunBuilder::tun().offloads(Offloads::TSO4).open();
        assert!(matches!(e, Err(TuntapError::Invalid(m)) if m.contains("CSUM")));
        let e = TunBuilder::tun()
            .offloads(Offloads::CSUM | Offloads::USO4)
            .open();
        assert!(matches!(e, Err(TuntapError::Invalid(m)) if m.contains("USO6")));
    }

    #[test]
    fn flags_default_to_no_pi() {
        let flags = TunBuilder::tun().flags();
        assert_eq!(flags, libc::IFF_TUN | libc::IFF_NO_PI);
        let flags = TunBuilder::tap()
            .multi_queue(2)
            .offloads(Offloads::CSUM)
            .flags();
        assert_eq!(
            flags,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR
        );
    }
}
