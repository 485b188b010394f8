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
