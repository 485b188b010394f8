//! Neighbour (ARP/NDP) entries: labs pre-populate them on large switches.

use std::net::IpAddr;

use netlink_packet_route::neighbour::NeighbourState;

use super::{Link, Result};

impl super::Netlink {
    /// Adds (or replaces) a permanent neighbour entry: `ip` is at `mac` on `link`. Permanent
    /// entries are exempt from the neighbour table's garbage collection and its size limit
    /// (gc_thresh3, shared by every namespace of the host).
    pub async fn add_permanent_neighbor(
        &self,
        link: &Link,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(link.index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                super::request_error(format!("adding neighbour {ip} on \"{}\"", link.name), e)
            })
    }
}

/// A permanent neighbour entry to add: on interface `index`, `ip` is at `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborEntry {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// How many bytes of requests go to the kernel in one send.
const BATCH_BYTES: usize = 128 * 1024;

/// Adds many permanent neighbour entries in the calling thread's namespace over one plain
/// netlink socket: requests are written back to back, many per send, and only the last asks
/// for an acknowledgement (the kernel reports every failure unasked). A lab's static-ARP
/// switch needs n * (n - 1) entries; one request and one answer each, awaited through the
/// async client, made that quadratic count cost seconds and a gigabyte of pending requests.
/// Memory stays at one batch, whatever the count.
pub fn add_permanent_neighbors_batch(
    entries: impl IntoIterator<Item = NeighborEntry>,
) -> Result<usize> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
        NLM_F_REQUEST,
    };
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

    let io = |what: &str, e: std::io::Error| super::NetlinkError::Request {
        what: what.to_string(),
        source: e,
    };
    let mut socket = super::Netlink::open_socket().map_err(super::NetlinkError::Socket)?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(|e| io("connecting a netlink socket", e))?;
    let message = |e: &NeighborEntry, seq: u32, ack: bool| {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match e.ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = e.index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                e.ip,
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        let mut header = NetlinkHeader::default();
        header.flags =
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | if ack { NLM_F_ACK } else { 0 };
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::NewNeighbour(msg)),
        );
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        buf
    };
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 256);
    let mut seq = 0u32;
    let mut iter = entries.into_iter().peekable();
    let mut recv = vec![0u8; 64 * 1024];
    // Failures answered so far (the kernel answers in order; the last request's ack ends it).
    let check_answers = |socket: &mut netlink_sys::Socket,
                         recv: &mut Vec<u8>,
                         until_ack: Option<u32>|
     -> Result<()> {
        loop {
            let flags = if until_ack.is_some() {
                0
            } else {
                libc::MSG_DONTWAIT
            };
            let n = match socket.recv(&mut &mut recv[..], flags) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(io("reading netlink answers", e)),
            };
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&recv[at..n])
                    .map_err(|e| {
                        io(
                            "reading netlink answers",
                            std::io::Error::other(e.to_string()),
                        )
                    })?;
                let len = msg.header.length as usize;
                if let NetlinkPayload::Error(err) = &msg.payload {
                    if err.code.is_some() {
                        return Err(super::NetlinkError::Request {
                            what: "adding permanent neighbour entries".into(),
                            source: err.to_io(),
                        });
                    }
                    if Some(msg.header.sequence_number) == until_ack {
                        return Ok(());
                    }
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
    };
    let mut count = 0;
    while let Some(e) = iter.next() {
        seq = seq.wrapping_add(1);
        let last = iter.peek().is_none();
        batch.extend_from_slice(&message(&e, seq, last));
        count += 1;
        if batch.len() >= BATCH_BYTES || last {
            socket
                .send(&batch, 0)
                .map_err(|e| io("sending neighbour entries", e))?;
            batch.clear();
            check_answers(&mut socket, &mut recv, last.then_some(seq))?;
        }
    }
    Ok(count)
}
