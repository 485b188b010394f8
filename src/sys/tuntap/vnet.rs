//! The virtio-net header (`struct virtio_net_hdr`) a TUN/TAP queue opened with vnet_hdr puts in
//! front of every packet. With offloads enabled, the kernel hands over GSO "superpackets" (up to
//! 64 KiB, one header describing how to cut them into wire-sized segments) and packets whose
//! checksum is still to be filled in, instead of segmenting and checksumming each one itself.

/// Size of the header netbox asks for (the legacy 10-byte layout, the kernel's default).
pub const HDR_LEN: usize = 10;

/// TUN_F_* offloads user space declares it can take (TUNSETOFFLOAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads(pub u32);

impl Offloads {
    pub const NONE: Offloads = Offloads(0);
    /// Packets may arrive with a partial checksum (required by every other offload).
    pub const CSUM: Offloads = Offloads(libc::TUN_F_CSUM);
    pub const TSO4: Offloads = Offloads(libc::TUN_F_TSO4);
    pub const TSO6: Offloads = Offloads(libc::TUN_F_TSO6);
    pub const TSO_ECN: Offloads = Offloads(libc::TUN_F_TSO_ECN);
    pub const USO4: Offloads = Offloads(libc::TUN_F_USO4);
    pub const USO6: Offloads = Offloads(libc::TUN_F_USO6);
    /// Everything a GSO-aware reader wants: checksums, TCP and UDP segmentation both families.
    pub const ALL_GSO: Offloads = Offloads(
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_USO4
            | libc::TUN_F_USO6,
    );

    pub fn contains(self, other: Offloads) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Offloads {
    type Output = Offloads;
    fn bitor(self, rhs: Offloads) -> Offloads {
        Offloads(self.0 | rhs.0)
    }
}

/// The GSO type of a packet (VIRTIO_NET_HDR_GSO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    TcpV6,
    /// UDP fragmentation offload (UFO, legacy).
    Udp,
    /// UDP segmentation (USO, UDP_SEGMENT).
    UdpL4,
    Other(u8),
}

const GSO_ECN: u8 = 0x80;
/// The checksum from `csum_start` on is still to be computed (`csum_offset` says where it goes).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// The checksum was already validated.
pub const FLAG_DATA_VALID: u8 = 2;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: GsoType,
    /// TCP/UDP ECN bit of the GSO type.
    pub ecn: bool,
    /// Length of the headers (L2..L4) repeated in front of each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (0 when not GSO).
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// A header saying "a plain packet, nothing to do" (for writes).
    pub const PLAIN: VnetHeader = VnetHeader {
        flags: 0,
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses the first [`HDR_LEN`] bytes of a packet read from a vnet_hdr queue. The kernel
    /// writes it in native byte order (legacy virtio, little-endian on every host it runs on).
    pub fn parse(buf: &[u8]) -> Option<VnetHeader> {
        let b = buf.get(..HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let raw_type = b[1] & !GSO_ECN;
        Some(VnetHeader {
            flags: b[0],
            gso_type: match raw_type {
                0 => GsoType::None,
                1 => GsoType::TcpV4,
                3 => GsoType::Udp,
                4 => GsoType::TcpV6,
                5 => GsoType::UdpL4,
                other => GsoType::Other(other),
            },
            ecn: b[1] & GSO_ECN != 0,
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header in wire form.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let gso = match self.gso_type {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Other(t) => t,
        } | if self.ecn { GSO_ECN } else { 0 };
        let mut out = [0u8; HDR_LEN];
        out[0] = self.flags;
        out[1] = gso;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        out
    }

    /// How many wire packets a packet of `len` bytes (after the virtio header) stands for.
    pub fn segments(&self, len: usize) -> usize {
        let hdr = usize::from(self.hdr_len);
        let size = usize::from(self.gso_size);
        if self.gso_type == GsoType::None || size == 0 || len <= hdr {
            return 1;
        }
        (len - hdr).div_ceil(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = VnetHeader {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            ecn: false,
            hdr_len: 28,
            gso_size: 1472,
            csum_start: 20,
            csum_offset: 6,
        };
        assert_eq!(VnetHeader::parse(&h.encode()), Some(h));
    }

    #[test]
    fn superpacket_counts_its_segments() {
        let mut h = VnetHeader::PLAIN;
        assert_eq!(h.segments(60_000), 1);
        h.gso_type = GsoType::TcpV4;
        h.hdr_len = 40;
        h.gso_size = 1448;
        assert_eq!(h.segments(40 + 1448 * 3), 3);
        assert_eq!(h.segments(40 + 1448 * 3 + 1), 4);
    }

    #[test]
    fn short_buffer_is_not_a_header() {
        assert_eq!(VnetHeader::parse(&[0u8; 9]), None);
    }
}
