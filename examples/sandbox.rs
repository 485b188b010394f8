//! The library behind `netbox run`, used directly: runs `ip -br addr` in a sandbox attached to
//! the built-in network and exits with its status.
//!
//! `cargo build --example sandbox && sudo target/debug/examples/sandbox [CMD ARGS...]`

use netbox::usecase::run::{self, NetMode, RunSpec};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (program, args): (std::ffi::OsString, Vec<std::ffi::OsString>) = match args.next() {
        Some(p) => (p, args.collect()),
        None => ("ip".into(), vec!["-br".into(), "addr".into()]),
    };
    let spec = RunSpec {
        net: if netbox::sys::privilege::privileged() {
            NetMode::Bridge {
                network: netbox::model::network::DEFAULT_NETWORK.into(),
                subnet: None,
            }
        } else {
            NetMode::None
        },
        hostname: Some("example".into()),
        ..RunSpec::command(program, args)
    };
    match run::run(spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sandbox: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
