//! Bridges with VLAN filtering (IFLA_BR_VLAN_FILTERING). Kernels built without
//! CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute with EOPNOTSUPP.

use netlink_packet_route::link::InfoBridge;
use rtnetlink::LinkBridge;

use super::{validate_ifname, Result};

impl super::Netlink {
    /// Creates a bridge with VLAN filtering on.
    pub async fn create_vlan_filtering_bridge(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let msg = LinkBridge::new(name)
            .append_info_data(InfoBridge::VlanFiltering(true))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            super::request_error(format!("creating bridge \"{name}\" with VLAN filtering"), e)
        })
    }
}
