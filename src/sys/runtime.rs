//! The runtime netlink work runs on: single-threaded, I/O only, made per operation (a sandbox
//! start or a plugin call is short; a thread pool would cost more than it saves).

/// A current-thread runtime with I/O enabled.
pub fn current_thread() -> crate::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| crate::Error::Io {
            context: "starting the netlink runtime".into(),
            source,
        })
}
