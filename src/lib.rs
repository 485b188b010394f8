//! netbox: network sandboxes on Linux namespaces.
//!
//! The library holds all shared logic; the `netbox` runner and the `netbox-cni` plugin are thin
//! front ends over it. Each module owns one concern, and privileged syscalls live in few places:
//! `netns` (the only setns/unshare outside child set-up), `netlink` (the only rtnetlink user),
//! `process` (the only fork/exec).
#![deny(clippy::unwrap_used)]

pub mod attach;
pub mod cni;
pub mod dns;
pub mod error;
pub mod firewall;
pub mod gc;
pub mod ipam;
pub mod lab;
pub mod named;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod process;
pub mod sandbox;
pub mod startup;
pub mod state;
pub mod tuntap;

pub use error::{Error, Result};
