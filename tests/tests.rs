//! One integration-test binary (see README): each module is a feature area.
mod harness;

mod cni;
mod ipam;
mod lab;
mod netlink;
mod run;
