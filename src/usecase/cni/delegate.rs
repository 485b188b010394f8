//! Delegated IPAM: the plugin named by `ipam.type`, found on CNI_PATH and run as the spec says
//! (same CNI_* environment, same configuration on stdin, result or error object on stdout).
//!
//! Versions: a delegate is called at the configuration's version. One that answers 1 (an older
//! plugin: Debian's host-local 1.1.1 stops at 1.0.0) is asked its VERSION and called again at
//! the highest version both speak at or below the configuration's (its result then converts up
//! without loss), or else the lowest above it, whose result is used only if it converts down
//! without loss. The configuration and any prevResult are rewritten for that version. GC and
//! STATUS go only to delegates that speak 1.1.0 ([`speaks`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use super::conf::Env;
use super::result::CniResult;
use super::{code, CniError, Version};

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

/// The oldest version that has `command`.
fn first_version_of(command: &str) -> Version {
    match command {
        "CHECK" => Version::V0_4_0,
        "GC" | "STATUS" => Version::V1_1_0,
        _ => Version::V0_1_0,
    }
}

/// Runs `plugin` for `command` with a configuration at `version` (see the module comment for
/// delegates that do not speak it); its result for ADD. `Ok(None)` also when no version both
/// speak has `command` (CHECK of a plugin older than 0.4.0: nothing to check there).
pub fn call(
    plugin: &str,
    command: &str,
    env: &Env,
    stdin: &[u8],
    version: Version,
) -> Result<Option<CniResult>, CniError> {
    match exec(plugin, command, env, stdin) {
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
            let supported = versions(plugin, env, version)?;
            let Some(at) = pick(version, &supported, first_version_of(command)) else {
                if command == "CHECK" {
                    return Ok(None);
                }
                return Err(e.with_details(format!(
                    "{plugin:?} speaks {}; none of them has {command} for cniVersion {}",
                    list(&supported),
                    version.as_str()
                )));
            };
            call_at(plugin, command, env, stdin, version, at)
        }
        other => other,
    }
}

/// Runs `command` (GC, STATUS: 1.1.0) only if `plugin` speaks a version that has it, at the
/// version [`pick`] chooses; `Ok(None)` when it does not.
pub fn call_if_spoken(
    plugin: &str,
    command: &str,
    env: &Env,
    stdin: &[u8],
    version: Version,
) -> Result<Option<Option<CniResult>>, CniError> {
    let supported = versions(plugin, env, version)?;
    match pick(version, &supported, first_version_of(command)) {
        Some(at) => call_at(plugin, command, env, stdin, version, at).map(Some),
        None => Ok(None),
    }
}

fn call_at(
    plugin: &str,
    command: &str,
    env: &Env,
    stdin: &[u8],
    version: Version,
    at: Version,
) -> Result<Option<CniResult>, CniError> {
    let input = rewrite(stdin, at)?;
    let result = exec(plugin, command, env, &input)?;
    if let Some(r) = &result {
        // A result from a newer version than the configuration's must say nothing the
        // configuration's version cannot.
        if at > version && CniResult::from_json(&r.to_json(version)).as_ref() != Ok(r) {
            if let Err(undo) = exec(plugin, "DEL", env, &input) {
                tracing::warn!(%undo, "releasing a delegated result that does not convert");
            }
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "IPAM plugin {plugin:?} answered in cniVersion {} with what cniVersion {} \
                     cannot express",
                    at.as_str(),
                    version.as_str()
                ),
            ));
        }
    }
    Ok(result)
}

/// The version to call a delegate at: the highest common one at or below `version`, else the
/// lowest above it; never one without the command.
pub fn pick(version: Version, supported: &[Version], first: Version) -> Option<Version> {
    let usable = || supported.iter().copied().filter(|v| *v >= first);
    usable()
        .filter(|v| *v <= version)
        .max()
        .or_else(|| usable().filter(|v| *v > version).min())
}

fn list(versions: &[Version]) -> String {
    versions
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The versions `plugin` says it speaks (VERSION, asked in `version`); unknown ones are left
/// out.
pub fn versions(plugin: &str, env: &Env, version: Version) -> Result<Vec<Version>, CniError> {
    let input = serde_json::json!({ "cniVersion": version.as_str() }).to_string();
    let answer = run(plugin, "VERSION", env, input.as_bytes())?;
    let value: Value = serde_json::from_slice(&answer).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("IPAM plugin {plugin:?} answered VERSION with something not JSON: {e}"),
        )
    })?;
    let listed = value
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("IPAM plugin {plugin:?} answered VERSION without supportedVersions"),
            )
        })?;
    Ok(listed
        .iter()
        .filter_map(|v| v.as_str().and_then(Version::parse))
        .collect())
}

/// The configuration (and its prevResult) rewritten in `version`.
fn rewrite(stdin: &[u8], version: Version) -> Result<Vec<u8>, CniError> {
    let mut conf: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("configuration: {e}")))?;
    if let Some(obj) = conf.as_object_mut() {
        obj.insert("cniVersion".into(), Value::from(version.as_str()));
        if let Some(prev) = obj.get("prevResult").filter(|p| !p.is_null()) {
            let prev = CniResult::from_json(prev)?.to_json(version);
            obj.insert("prevResult".into(), prev);
        }
    }
    serde_json::to_vec(&conf).map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))
}

/// Runs `plugin` for `command` (ADD, DEL, CHECK, GC, STATUS) with `stdin` as its configuration;
/// returns its result for ADD.
fn exec(
    plugin: &str,
    command: &str,
    env: &Env,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let out = run(plugin, command, env, stdin)?;
    if command != "ADD" {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("IPAM plugin {plugin:?} answered ADD with something not JSON: {e}"),
        )
    })?;
    Ok(Some(CniResult::from_json(&value)?))
}

/// Runs `plugin` once; its stdout when it succeeded, its error object as a [`CniError`]
/// otherwise.
fn run(plugin: &str, command: &str, env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let path = find(plugin, env)?;
    let mut cmd = Process::new(&path);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_ARGS", &env.raw_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // GC, STATUS and VERSION concern no container.
    for (key, value) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_IFNAME", &env.ifname),
    ] {
        if !value.is_empty() {
            cmd.env(key, value);
        }
    }
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
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Version::*;

    #[test]
    fn the_highest_common_version_at_or_below_the_configuration_is_picked() {
        let host_local = [V0_1_0, V0_2_0, V0_3_0, V0_3_1, V0_4_0, V1_0_0];
        assert_eq!(pick(V1_1_0, &host_local, V0_1_0), Some(V1_0_0));
        assert_eq!(pick(V0_4_0, &host_local, V0_1_0), Some(V0_4_0));
        assert_eq!(
            pick(V1_1_0, &host_local, first_version_of("CHECK")),
            Some(V1_0_0)
        );
        assert_eq!(pick(V1_1_0, &host_local, first_version_of("GC")), None);
        // Only newer versions in common: the lowest of them.
        assert_eq!(pick(V0_3_1, &[V1_0_0, V1_1_0], V0_1_0), Some(V1_0_0));
        assert_eq!(
            pick(V0_3_0, &[V0_1_0, V0_2_0], first_version_of("CHECK")),
            None
        );
    }

    #[test]
    fn the_configuration_and_its_prev_result_are_rewritten() {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "n",
            "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}]}
        });
        let out: Value =
            serde_json::from_slice(&rewrite(conf.to_string().as_bytes(), V0_4_0).expect("rewrite"))
                .expect("json");
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(out["prevResult"]["ips"][0]["version"], "4");
        assert_eq!(out["name"], "n");
    }
}
