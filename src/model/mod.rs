//! The model: what netbox's words mean, as plain data with its validation and encodings, and no
//! effect on the host. Owners (who made what, and how that is written down), networks, IPAM
//! configuration, the sandbox's resolver files.

pub mod conflist;
pub mod dns;
pub mod ipam;
pub mod json;
pub mod network;
pub mod nodes;
pub mod owner;
