//! The nftables driver: the only place that runs `nft`.
//!
//! netbox drives nft the way netavark does, through the `nft` binary with JSON on stdin
//! (`nft -j -f -`): one invocation is one kernel transaction, so an attachment's rules appear
//! and vanish all at once, and the JSON schema is stable across nft releases where the netlink
//! expression encoding is not (a hand-written netlink encoder would be a second nft to maintain).

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

/// Runs `nft -j` with `args`, feeding `input` on stdin; its JSON output, if any.
fn run(args: &[&str], input: Option<&[u8]>) -> Result<Option<Value>, FirewallError> {
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
    let mut child = cmd
        .arg("-j")
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
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
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
    run(&["-f", "-"], Some(batch.to_string().as_bytes())).map(|_| ())
}

/// Starts `nft -j -f -` on `commands` without waiting for it: the transaction completes on its
/// own (in its own process group, so a terminal's signals do not reach it). For work off a
/// critical path whose commands are idempotent.
pub fn apply_detached(commands: Vec<Value>) -> Result<(), FirewallError> {
    use std::os::unix::process::CommandExt;
    if commands.is_empty() {
        return Ok(());
    }
    let nft = binary()?;
    let batch = json!({ "nftables": commands }).to_string();
    let mut child = Command::new(&nft)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| FirewallError::Nft {
            what: format!("starting {}", nft.display()),
            reason: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few kilobytes: the pipe takes them without nft having to read first.
        stdin
            .write_all(batch.as_bytes())
            .map_err(|e| FirewallError::Nft {
                what: "writing the batch to nft".into(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// A table: family and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    pub family: String,
    pub name: String,
}

/// Every table of the current network namespace (other programs' too: only read).
pub fn tables() -> Result<Vec<Table>, FirewallError> {
    let out = run(&["list", "tables"], None)?;
    Ok(objects(out.as_ref(), "table")
        .filter_map(|t| {
            Some(Table {
                family: t.get("family")?.as_str()?.to_string(),
                name: t.get("name")?.as_str()?.to_string(),
            })
        })
        .collect())
}

/// The chains of one table, with the number of rules in each (empty when there is no table).
pub fn chain_rule_counts(table: &Table) -> Result<Vec<(String, usize)>, FirewallError> {
    let out = match run(&["list", "table", &table.family, &table.name], None) {
        Ok(out) => out,
        Err(FirewallError::Nft { reason, .. }) if reason.contains("No such file") => {
            return Ok(vec![])
        }
        Err(e) => return Err(e),
    };
    let mut chains: Vec<(String, usize)> = objects(out.as_ref(), "chain")
        .filter_map(|c| Some((c.get("name")?.as_str()?.to_string(), 0)))
        .collect();
    for rule in objects(out.as_ref(), "rule") {
        let Some(chain) = rule.get("chain").and_then(Value::as_str) else {
            continue;
        };
        if let Some(entry) = chains.iter_mut().find(|(name, _)| name == chain) {
            entry.1 += 1;
        }
    }
    Ok(chains)
}

/// The objects of one kind (`table`, `chain`, `rule`) in an `nft -j list` answer.
fn objects<'a>(out: Option<&'a Value>, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    out.and_then(|v| v.get("nftables"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |item| item.get(kind))
}
