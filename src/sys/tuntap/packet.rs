//! Just enough IP for user-space responders on a TUN: the Internet checksum and ICMP echo
//! replies (IPv4 and IPv6), as the examples and tests use them.

use std::net::{Ipv4Addr, Ipv6Addr};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// The Internet checksum (RFC 1071) of `data`, continuing from a partial `sum`.
pub fn checksum_with(sum: u32, data: &[u8]) -> u16 {
    let mut sum = sum;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    checksum_with(0, data)
}

/// The sum of the IPv6 pseudo-header, to start an ICMPv6/TCP/UDP checksum with.
fn ipv6_pseudo_sum(src: &[u8], dst: &[u8], len: usize, proto: u8) -> u32 {
    let mut sum = 0u32;
    for c in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(proto)
}

/// An ICMP echo request in `packet` (an IP packet as a TUN hands it over), if it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRequest {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub id: u16,
    pub seq: u16,
}

/// Parses an ICMP (v4 or v6) echo request.
pub fn parse_echo_request(packet: &[u8]) -> Option<EchoRequest> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < ihl + 8 || packet[9] != PROTO_ICMP || packet[ihl] != 8 {
                return None;
            }
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(EchoRequest {
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                id: u16::from_be_bytes([packet[ihl + 4], packet[ihl + 5]]),
                seq: u16::from_be_bytes([packet[ihl + 6], packet[ihl + 7]]),
            })
        }
        6 => {
            // Extension headers are not followed: echo requests do not carry them.
            if packet.len() < 48 || packet[6] != PROTO_ICMPV6 || packet[40] != 128 {
                return None;
            }
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(EchoRequest {
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                id: u16::from_be_bytes([packet[44], packet[45]]),
                seq: u16::from_be_bytes([packet[46], packet[47]]),
            })
        }
        _ => None,
    }
}

/// The echo reply to an ICMP (v4 or v6) echo request: addresses swapped, type changed,
/// checksums recomputed, payload kept. `None` when `packet` is no echo request.
pub fn echo_reply(packet: &[u8]) -> Option<Vec<u8>> {
    parse_echo_request(packet)?;
    let mut out = packet.to_vec();
    if out[0] >> 4 == 4 {
        let ihl = usize::from(out[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([out[2], out[3]])).min(out.len());
        out.truncate(total);
        let (src, dst) = (out[12..16].to_vec(), out[16..20].to_vec());
        out[12..16].copy_from_slice(&dst);
        out[16..20].copy_from_slice(&src);
        out[8] = 64; // TTL
        out[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&out[..ihl]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        out[ihl] = 0; // echo reply
        out[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
        let sum = checksum(&out[ihl..]);
        out[ihl + 2..ihl + 4].copy_from_slice(&sum.to_be_bytes());
    } else {
        let payload = usize::from(u16::from_be_bytes([out[4], out[5]]));
        out.truncate((40 + payload).min(out.len()));
        let (src, dst) = (out[8..24].to_vec(), out[24..40].to_vec());
        out[8..24].copy_from_slice(&dst);
        out[24..40].copy_from_slice(&src);
        out[7] = 64; // hop limit
        out[40] = 129; // echo reply
        out[42..44].copy_from_slice(&[0, 0]);
        let len = out.len() - 40;
        let sum = checksum_with(
            ipv6_pseudo_sum(&out[8..24], &out[24..40], len, PROTO_ICMPV6),
            &out[40..],
        );
        out[42..44].copy_from_slice(&sum.to_be_bytes());
    }
    Some(out)
}

/// An IPv4 UDP datagram (checksum 0, which IPv4 allows), for writing into a TUN.
pub fn ipv4_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_request_v4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 8, 0, 0, 0, 0x12,
            0x34, 0, 7, 1, 2, 3, 4,
        ];
        let s = checksum(&p[..20]);
        p[10..12].copy_from_slice(&s.to_be_bytes());
        let s = checksum(&p[20..]);
        p[22..24].copy_from_slice(&s.to_be_bytes());
        p
    }

    #[test]
    fn checksum_of_a_checksummed_header_is_zero() {
        let p = echo_request_v4();
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(checksum(&p[20..]), 0);
    }

    #[test]
    fn echo_reply_swaps_addresses_and_keeps_checksums_valid() {
        let req = echo_request_v4();
        let parsed = parse_echo_request(&req).expect("an echo request");
        assert_eq!((parsed.id, parsed.seq), (0x1234, 7));
        let reply = echo_reply(&req).expect("a reply");
        assert_eq!(&reply[12..16], &[10, 0, 0, 2]);
        assert_eq!(&reply[16..20], &[10, 0, 0, 1]);
        assert_eq!(reply[20], 0);
        assert_eq!(checksum(&reply[..20]), 0);
        assert_eq!(checksum(&reply[20..]), 0);
        assert_eq!(&reply[28..], &[1, 2, 3, 4]);
        assert!(echo_reply(&reply).is_none(), "a reply is not answered");
    }

    #[test]
    fn icmpv6_echo_reply_has_a_valid_checksum() {
        let src: Ipv6Addr = "fd00::1".parse().expect("addr");
        let dst: Ipv6Addr = "fd00::2".parse().expect("addr");
        let mut p = vec![0x60, 0, 0, 0, 0, 12, PROTO_ICMPV6, 64];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[128, 0, 0, 0, 0, 9, 0, 1, b'p', b'i', b'n', b'g']);
        let sum = checksum_with(
            ipv6_pseudo_sum(&p[8..24], &p[24..40], 12, PROTO_ICMPV6),
            &p[40..],
        );
        p[42..44].copy_from_slice(&sum.to_be_bytes());
        let req = parse_echo_request(&p).expect("an echo request");
        assert_eq!((req.id, req.seq), (9, 1));
        let reply = echo_reply(&p).expect("a reply");
        assert_eq!(reply[40], 129);
        assert_eq!(&reply[8..24], &dst.octets());
        let check = checksum_with(
            ipv6_pseudo_sum(&reply[8..24], &reply[24..40], 12, PROTO_ICMPV6),
            &reply[40..],
        );
        assert_eq!(check, 0, "valid ICMPv6 checksum");
    }

    #[test]
    fn udp_datagram_has_a_valid_header() {
        let p = ipv4_udp(
            (Ipv4Addr::new(10, 0, 0, 2), 5000),
            (Ipv4Addr::new(10, 0, 0, 1), 6000),
            b"hi",
        );
        assert_eq!(p.len(), 30);
        assert_eq!(checksum(&p[..20]), 0);
    }
}
