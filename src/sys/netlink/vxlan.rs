//! VXLAN devices (labs: overlays across an underlay link) and enslaving to bridges.

use std::net::Ipv4Addr;

use rtnetlink::{LinkUnspec, LinkVxlan};

use super::{validate_ifname, Link, NetlinkError, Result};

/// A VXLAN device: `vni` over the underlay device `underlay` (an index), unicast to `remote`.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub underlay: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub remote: Option<Ipv4Addr>,
    pub port: u16,
}

impl super::Netlink {
    /// Creates a VXLAN device, up; returns it.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        let mut b = LinkVxlan::new(&spec.name, spec.vni).port(spec.port);
        if let Some(dev) = spec.underlay {
            b = b.dev(dev);
        }
        if let Some(local) = spec.local {
            b = b.local(local);
        }
        if let Some(remote) = spec.remote {
            b = b.remote(remote);
        }
        match self.handle.link().add(b.up().build()).execute().await {
            Ok(()) => {}
            Err(e) if super::errno_of(&e) == Some(libc::EEXIST) => {
                return Err(NetlinkError::LinkExists {
                    name: spec.name.clone(),
                })
            }
            Err(e) => {
                return Err(super::request_error(
                    format!("creating vxlan \"{}\" (vni {})", spec.name, spec.vni),
                    e,
                ))
            }
        }
        self.link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound {
                name: spec.name.clone(),
            })
    }

    /// Makes `link` a port of the bridge `controller` (an index), up.
    pub async fn set_controller(&self, link: &Link, controller: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .controller(controller)
            .up()
            .build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            super::request_error(
                format!("adding \"{}\" to bridge {controller}", link.name),
                e,
            )
        })
    }
}
