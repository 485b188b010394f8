//! Use cases: what the binaries offer. `run` (`netbox run` and `netbox exec`), `named` (named
//! sandboxes), `gc` (`netbox ls` and `netbox gc`), `cni` (the plugin's commands), `doctor`
//! (what works on this machine), `node` (routes between the nodes of a cluster). Labs
//! (`crate::lab`) are the seventh. A use case never calls another: what two of them share lives
//! in `provision` or below.

pub mod cni;
pub mod doctor;
pub mod gc;
pub mod named;
pub mod node;
pub mod run;
