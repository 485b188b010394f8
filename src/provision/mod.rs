//! Shared provisioning: the steps every front end takes to give a namespace a network, and
//! the records that make them undoable after a crash. `attach` (bridge, veth, addresses,
//! routes, with rollback), `leases` (the crash-safe lease store), `records` (the ownership
//! records and the lifecycle lock). The firewall step is `crate::firewall`.

pub mod attach;
pub mod command;
pub mod connect;
pub mod ipam;
pub mod leases;
pub mod publish;
pub mod records;
pub mod rollback;
pub mod usernet;
