//! The crate's error type: one enum gathering each module's errors.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] crate::sys::netlink::NetlinkError),
    #[error(transparent)]
    Netns(#[from] crate::sys::netns::NetnsError),
    #[error(transparent)]
    Ipam(#[from] crate::model::ipam::IpamError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Tuntap(#[from] crate::sys::tuntap::TuntapError),
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code a front end reports for this failure: 125 for netbox's own failures,
    /// 126/127 when the command could not be executed or found (as shells do).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Process(e) => e.exit_code(),
            _ => 125,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources on one line (`what: why: cause`), skipping a source whose text the
/// line already holds (transparent wrappers repeat it).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}
