//! One integration-test binary (see README): each module is a feature area.
mod harness;
/// The rootless test world (shared with benches/rootless.rs).
mod world;

mod agree;
mod architecture;

mod cni;
mod confine;
mod containerd;
mod firewall;
mod fits;
mod ipam;
mod lab;
mod lab_runtime;
mod lifecycle;
mod multinode;
mod netlink;
mod rootless;
mod rootless_core;
mod run;
mod tuntap;
