//! netbox: network sandboxes on Linux namespaces.
//!
//! The library holds all shared logic; the `netbox` runner and the `netbox-cni` plugin are thin
//! front ends over it. Its modules are layered, each using only those below it (see
//! ARCHITECTURE.md; `tests/architecture.rs` checks it):
//!
//! - use cases: `usecase` (run, named sandboxes, gc/ls, CNI) and `lab`;
//! - `provision`: network, addresses, bridge, attach with rollback, firewall (`firewall`),
//!   records;
//! - `model`: owners, networks, IPAM configuration;
//! - `sys`: system adapters (`sys::netns`, `sys::netlink`, `sys::tuntap`, `sys::capture`) and
//!   `process` (the only fork/exec).
//!
//! `error` gathers every module's error into the crate's [`Error`].
#![deny(clippy::unwrap_used)]

pub mod error;
pub mod firewall;
pub mod lab;
pub mod model;
pub mod process;
pub mod provision;
pub mod startup;
pub mod sys;
pub mod usecase;

pub use error::{Error, Result};
