//! The `netbox-cni` plugin: the CNI environment and stdin in, a result or an error object out
//! (exit status 1 with the error); all logic is in `netbox::usecase::cni`. Logs go to stderr
//! (`NETBOX_LOG=debug`), never to stdout, which belongs to the protocol.

// std's runtime start-up is replaced by `netbox::startup` (see there why). The plugin reads no
// arguments, so this holds with any C library (with musl, std learns them only in its start-up).
#![no_main]

use std::io::{IsTerminal, Read, Write};

#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    netbox::startup::run(plugin_main)
}

fn plugin_main() -> i32 {
    let stderr_log = std::env::var("NETBOX_LOG").ok();
    if let Some(filter) = &stderr_log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    if let Ok(job) = std::env::var(netbox::usecase::cni::ops::REAP_ENV) {
        // A detached helper of an earlier DEL (see `netbox::usecase::cni::ops::del`): nobody reads it.
        return match netbox::usecase::cni::ops::reap(&job) {
            Ok(()) => 0,
            Err(_) => 1,
        };
    }
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // First, so that a burst of calls is served in the order the runtime started them.
    let place = netbox::usecase::cni::queue::join(&command);
    let mut stdin = Vec::new();
    // VERSION answers in the version given on stdin (runtimes send `{"cniVersion": ...}`), but
    // someone trying the plugin at a terminal gets the answer without typing any.
    if command != "VERSION" || !std::io::stdin().is_terminal() {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            let err = netbox::usecase::cni::CniError::new(
                netbox::usecase::cni::code::IO_FAILURE,
                format!("reading the network configuration from stdin: {e}"),
            );
            print(&serde_json::to_string(&err.to_object(None)).unwrap_or_default());
            return 1;
        }
    }
    if stderr_log.is_none() {
        if let Some((path, level)) = netbox::usecase::cni::log_target(&stdin) {
            log_to_file(&path, &level);
        }
    }
    let outcome = netbox::usecase::cni::run(&|key| std::env::var(key).ok(), &stdin, place);
    // Its exit would otherwise wait for the kernel's clean-up of nf_tables deletions.
    netbox::firewall::release();
    if !outcome.stdout.is_empty() {
        print(&outcome.stdout);
    }
    i32::from(outcome.exit_code)
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Appends this invocation's log to `path`; a file that cannot be opened costs a warning on
/// stderr, never the operation.
fn log_to_file(path: &std::path::Path, level: &str) {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(file) => tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        Err(e) => eprintln!("netbox-cni: logFile {}: {e}", path.display()),
    }
}
