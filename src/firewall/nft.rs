//! The nftables driver: the only place that runs `nft`. It writes the firewall's shared tables
//! and base chains (once per network namespace: their expression encoding is nft's to get
//! right), and labs' impairment rules (`nft -j -f -`, JSON: one invocation, one transaction).
//! Per-attachment firewall state goes through [`crate::sys::nfnetlink`] instead.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::FirewallError;

/// Where `nft` is looked for besides PATH (sudo and cron often drop the sbin directories).
const EXTRA_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// The absolute path of `nft`.
pub fn binary() -> Result<PathBuf, FirewallError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .ok_or(FirewallError::NftMissing)
}

/// True when `nft` can be found (callers with nothing to add skip nft entirely without it).
pub fn available() -> bool {
    binary().is_ok()
}

/// Applies `text` (nft's own syntax, one file) as one transaction: the shared firewall tables.
pub fn apply_text(text: &str) -> Result<(), FirewallError> {
    run(false, &["-f", "-"], Some(text.as_bytes())).map(|_| ())
}

/// Runs `nft` (`-j`: JSON in and out) with `args`, feeding `input` on stdin; its JSON output,
/// if any.
fn run(json: bool, args: &[&str], input: Option<&[u8]>) -> Result<Option<Value>, FirewallError> {
    let nft = binary()?;
    let start = std::time::Instant::now();
    let mut cmd = Command::new(&nft);
    let parent = std::process::id() as libc::pid_t;
    // nft dies with its caller: a caller killed mid-way (a runtime's timeout) must not have its
    // transaction committed later, behind the back of the DEL that cleans up after it.
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            Ok(())
        });
    }
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Nft {
            what: format!("starting {}", nft.display()),
            reason: e.to_string(),
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A failed write shows up as nft's own error below.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(|e| FirewallError::Nft {
        what: format!("waiting for {}", nft.display()),
        reason: e.to_string(),
    })?;
    tracing::debug!(us = start.elapsed().as_micros() as u64, ?args, "nft");
    if !out.status.success() {
        return Err(FirewallError::Nft {
            what: format!("nft -j {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    if !json || out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| FirewallError::Nft {
            what: format!("reading the output of nft -j {}", args.join(" ")),
            reason: e.to_string(),
        })
}

/// Applies `commands` (JSON nft commands: `{"add": ...}`, `{"delete": ...}`) as one transaction.
pub fn apply(commands: Vec<Value>) -> Result<(), FirewallError> {
    if commands.is_empty() {
        return Ok(());
    }
    let batch = json!({ "nftables": commands });
    run(true, &["-f", "-"], Some(batch.to_string().as_bytes())).map(|_| ())
}
