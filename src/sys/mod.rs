//! System adapters: the only code that talks to the kernel or the host's tools. Nothing here
//! knows of owners, networks or sandboxes; every layer above uses these.
//!
//! - `netns`: network namespaces (the only setns/unshare outside child set-up);
//! - `netlink`: links, addresses, routes (the only rtnetlink user);
//! - `tuntap`: TUN/TAP devices and the packets they carry;
//! - `capture`: packet capture into pcap files (raw packet sockets);
//! - `runtime`: the single-threaded tokio runtime netlink work runs on;
//! - `admission`: a first-come, first-served gate shared by processes (bursts of plugin calls);
//! - `dirfd`: files under a directory descriptor, never through a link (the stores' I/O).
//!
//! `crate::process` (fork/exec of the sandbox child) belongs here too.

pub mod admission;
pub mod capture;
pub mod dirfd;
pub mod netlink;
pub mod netns;
pub mod nfnetlink;
pub mod private_host;
pub mod privilege;
pub mod relay;
pub mod runtime;
pub mod sysctl;
pub mod tuntap;
pub mod userns;
