//! Delegated IPAM: the plugin named by `ipam.type`, found on CNI_PATH and run as the spec says
//! (same CNI_* environment, same configuration on stdin, result or error object on stdout).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use super::conf::Env;
use super::result::CniResult;
use super::{code, CniError};

/// Finds `plugin` in the CNI_PATH directories.
pub fn find(plugin: &str, env: &Env) -> Result<PathBuf, CniError> {
    let dirs = env.path_dirs();
    if dirs.is_empty() {
        return Err(CniError::env(format!(
            "CNI_PATH is not set; it is needed to find the IPAM plugin {plugin:?}"
        )));
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::config(format!(
                "IPAM plugin {plugin:?} not found in CNI_PATH ({})",
                env.raw_path.as_deref().unwrap_or_default()
            ))
        })
}

/// Runs `plugin` for `command` (ADD, DEL, CHECK, GC, STATUS) with `stdin` as its configuration;
/// returns its result for ADD.
pub fn exec(
    plugin: &str,
    command: &str,
    env: &Env,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let path = find(plugin, env)?;
    let mut cmd = Process::new(&path);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_ARGS", &env.raw_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match &env.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    if let Some(p) = &env.raw_path {
        cmd.env("CNI_PATH", p);
    }
    let failed = |e: std::io::Error| {
        CniError::new(
            code::IO_FAILURE,
            format!("running IPAM plugin {}: {e}", path.display()),
        )
    };
    let mut child = cmd.spawn().map_err(failed)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its input is not an error of ours.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(failed)?;
    if !out.status.success() {
        let answer: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let code = answer
            .as_ref()
            .and_then(|a| a.get("code"))
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(code::IO_FAILURE);
        let msg = answer
            .as_ref()
            .and_then(|a| a.get("msg"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
        let details = answer
            .as_ref()
            .and_then(|a| a.get("details"))
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        return Err(CniError::new(
            code,
            format!(
                "IPAM plugin {plugin:?} {command} failed ({}): {msg}",
                out.status
            ),
        )
        .with_details(details));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("IPAM plugin {plugin:?} answered ADD with something not JSON: {e}"),
        )
    })?;
    Ok(Some(CniResult::from_json(&value)?))
}
