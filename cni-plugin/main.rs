//! The `netbox-cni` plugin: CNI on stdin/stdout, logic in the library.
//! For now it answers VERSION; other operations report "unsupported" as a CNI error object.

use std::io::Write;
use std::process::ExitCode;

use netbox::cni::{code, ErrorObject, VersionResult, CURRENT_VERSION};

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let out = match command.as_str() {
        "VERSION" => serde_json::to_string(&VersionResult::new()),
        other => {
            let err = ErrorObject {
                cni_version: CURRENT_VERSION.into(),
                code: code::INVALID_ENVIRONMENT,
                msg: if other.is_empty() {
                    "CNI_COMMAND is not set".into()
                } else {
                    format!("CNI_COMMAND {other:?} is not supported by this build")
                },
                details: String::new(),
            };
            let text = serde_json::to_string(&err).unwrap_or_default();
            let _ = writeln!(std::io::stdout(), "{text}");
            return ExitCode::FAILURE;
        }
    };
    match out {
        Ok(text) => {
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}
