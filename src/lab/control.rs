//! The holder's control socket: how `netbox lab link-down`, `impair`, `partition`, `links`,
//! `play`... reach the [`Lab`] a holder keeps, so the CLI and the Rust API make changes with
//! the very same code and the lab's state lives in one place.
//!
//! `lab up` binds a Unix socket beside the lab's record (`labs/NAME.sock`) and hands the
//! listening descriptor to the holder, which serves it from one long-lived thread (start
//! commands it starts die with the thread that started them). The socket file is reachable
//! from the host whichever namespaces the holder lives in; only its owner (mode 0600) may
//! connect. One request per connection, a JSON line; answers are JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::runtime::LinkStatus;
use super::timeline::StepReport;
use super::topology::{resolve::step_action, StepSpec};
use super::{Lab, LabError, Result};

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// A change, written as a timeline step (its checks run too).
    Apply(Box<StepSpec>),
    /// The state of every link.
    Links,
    /// Play the file's timeline.
    Play,
}

/// What the holder answers (one or more lines; the last is `Links`, `Done` or `Error`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Links(Vec<LinkStatus>),
    Step(StepReport),
    Done { passed: bool },
    Error(String),
}

/// The control socket of lab `name`.
pub fn socket_path(name: &str) -> PathBuf {
    crate::provision::records::lab_dir().join(format!("{name}.sock"))
}

/// Binds the control socket (replacing a dead lab's), owner-only.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let io = |source| LabError::Io {
        what: format!("binding the lab's control socket {}", path.display()),
        source,
    };
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    Ok(listener)
}

/// Serves requests until the listener is shut down.
pub fn serve(lab: &Lab, listener: &UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            break;
        };
        if let Err(e) = handle(lab, conn) {
            tracing::warn!(%e, "lab control request");
        }
    }
}

fn handle(lab: &Lab, conn: UnixStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut out = std::io::BufWriter::new(&conn);
    let mut send = |r: &Reply| -> std::io::Result<()> {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
        out.flush()
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&Reply::Error(format!("bad request: {e}"))),
    };
    match request {
        Request::Links => send(&Reply::Links(lab.links())),
        Request::Apply(spec) => match apply(lab, &spec) {
            Ok(Some(step)) => {
                send(&Reply::Step(step))?;
                send(&Reply::Links(lab.links()))
            }
            Ok(None) => send(&Reply::Links(lab.links())),
            Err(e) => send(&Reply::Error(crate::error::chain(&e))),
        },
        Request::Play => {
            let mut result = Ok(());
            let reports = lab.play(&mut |r| {
                if result.is_ok() {
                    result = send(&Reply::Step(r.clone()));
                }
            });
            result?;
            send(&Reply::Done {
                passed: reports.iter().all(|r| r.passed),
            })
        }
    }
}

/// A change written as a step; a step report when it carried checks.
fn apply(lab: &Lab, spec: &StepSpec) -> Result<Option<StepReport>> {
    let action = step_action(lab.plan(), "change", spec)?;
    if let Some(a) = &action {
        lab.apply(a)?;
    }
    if spec.checks.is_empty() {
        return Ok(None);
    }
    let checks = spec
        .checks
        .iter()
        .map(|c| super::topology::resolve::resolve_check(lab.plan(), c))
        .collect::<Result<Vec<_>>>()?;
    let results = lab.run_checks(&checks)?;
    Ok(Some(StepReport {
        step: "checks".into(),
        at_ms: lab.up_at().elapsed().as_secs_f64() * 1000.0,
        error: None,
        passed: results.iter().all(|r| r.passed),
        checks: results,
    }))
}

/// Sends `request` to the holder of lab `name`, calling `on_reply` for each answer line;
/// returns the last.
pub fn request(name: &str, request: &Request, on_reply: &mut dyn FnMut(&Reply)) -> Result<Reply> {
    let path = socket_path(name);
    let io = |source| LabError::Io {
        what: format!(
            "talking to the holder of lab \"{name}\" ({})",
            path.display()
        ),
        source,
    };
    let mut conn = UnixStream::connect(&path).map_err(io)?;
    let mut text = serde_json::to_string(request).map_err(|e| LabError::Invalid(e.to_string()))?;
    text.push('\n');
    conn.write_all(text.as_bytes()).map_err(io)?;
    let mut last = None;
    for line in BufReader::new(&conn).lines() {
        let line = line.map_err(io)?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| LabError::Invalid(format!("the holder answered {line:?}: {e}")))?;
        on_reply(&reply);
        last = Some(reply);
    }
    match last {
        Some(Reply::Error(e)) => Err(LabError::Invalid(e)),
        Some(r) => Ok(r),
        None => Err(LabError::Invalid(format!(
            "the holder of lab \"{name}\" hung up without an answer"
        ))),
    }
}
