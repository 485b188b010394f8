//! Whether this process holds the privileges bridge networking needs.

/// True when netbox can build bridge networks: it needs CAP_NET_ADMIN for netlink and
/// CAP_SYS_ADMIN for namespaces, in the initial user namespace.
pub fn privileged() -> bool {
    use caps::{has_cap, CapSet, Capability};
    has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false)
        && has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false)
}
