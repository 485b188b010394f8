//! The `netbox-cni` binary end to end, in private hosts: the table of specs/cni/ cases, then the
//! stateful rules (CHECK, DEL, GC, STATUS, rollback, concurrency, traffic, delegated IPAM), and
//! property tests of the parsers. The binary always runs with a cleared environment plus the
//! case's CNI_* variables: nothing may depend on anything else.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::harness::{
    cni_bin, eventually, files_under, ip_json, link_names, private_host, sh, skip,
};
use netbox::sys::netns::{self, NetNs};
use netbox::usecase::cni::conf::{Env, NetConf};

const LEASES: &str = "/var/lib/netbox/ipam";
const REFERENCE_HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// What one invocation printed and how it ended.
struct Answer {
    json: Option<Value>,
    stdout: String,
    stderr: String,
    ok: bool,
}

impl Answer {
    fn code(&self) -> u64 {
        self.json
            .as_ref()
            .and_then(|j| j["code"].as_u64())
            .unwrap_or_else(|| panic!("no error object: {}{}", self.stdout, self.stderr))
    }

    fn result(&self) -> &Value {
        assert!(self.ok, "plugin failed: {}{}", self.stdout, self.stderr);
        self.json.as_ref().expect("a result")
    }
}

/// Runs the plugin with exactly `env` and `stdin`.
fn cni(env: &[(&str, &str)], stdin: &str) -> Answer {
    let mut child = Command::new(cni_bin())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start netbox-cni");
    let mut input = child.stdin.take().expect("stdin");
    // VERSION does not read its input: a closed pipe is fine.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = child.wait_with_output().expect("wait netbox-cni");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}")))
    };
    let ok = out.status.success();
    if !ok {
        assert_eq!(out.status.code(), Some(1), "{stdout}");
    }
    Answer {
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok,
    }
}

/// The usual environment of one attachment.
pub(crate) fn env_of<'a>(command: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn conf(version: &str, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": version, "name": "testnet", "type": "netbox-cni", "bridge": "nbt0",
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "netbox", "subnet": "10.89.0.0/24"}
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c.to_string()
}

/// Every lease file (network/leases/ip) under the default data dir.
fn leases() -> BTreeSet<String> {
    files_under(Path::new(LEASES))
        .into_iter()
        .filter(|f| f.contains("/leases/"))
        .collect()
}

/// Polls `cond` for up to 5 s; whether it came true.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn host_veths() -> Vec<String> {
    link_names()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect()
}

fn links_in(ns: &str) -> Vec<String> {
    ip_json(&format!("-n {ns} link show"))
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

// ---------------------------------------------------------------------------------------------
// specs/cni/: the table.

/// `want` is a subset of `have`: objects by key, arrays element by element (same length),
/// "*" matches any present value.
fn matches(want: &Value, have: &Value, path: &str) -> Result<(), String> {
    match (want, have) {
        (Value::String(s), h) if s == "*" => {
            if h.is_null() {
                Err(format!("{path}: missing"))
            } else {
                Ok(())
            }
        }
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                matches(v, h.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(h)) => {
            if w.len() != h.len() {
                return Err(format!("{path}: {} entries, expected {}", h.len(), w.len()));
            }
            for (i, (w, h)) in w.iter().zip(h).enumerate() {
                matches(w, h, &format!("{path}.{i}"))?;
            }
            Ok(())
        }
        (w, h) if w == h => Ok(()),
        (w, h) => Err(format!("{path}: {h} instead of {w}")),
    }
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        })
}

fn substitute(v: &Value, vars: &[(&str, &str)]) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, val) in vars {
                s = s.replace(k, val);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Host links, links of the case's namespace and leases: what a refused input must not change.
fn snapshot(ns: &str) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    (link_names(), links_in(ns), leases())
}

fn run_case(file: &Path) -> Result<(), String> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("file name")?
        .to_string();
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(file).map_err(|e| e.to_string())?)
            .map_err(|e| format!("bad case file: {e}"))?;
    let ns_name = format!("spec-{}", stem.replace('_', "-"));
    let ns_path = netns_path(&ns_name);
    let id = format!("id-{}", stem.replace('_', "-"));
    netns::create_named(&ns_name).map_err(|e| e.to_string())?;
    let vars = [
        ("$NETNS", ns_path.as_str()),
        ("$NS", ns_name.as_str()),
        ("$ID", id.as_str()),
    ];
    for cmd in substitute(&case["setup"], &vars)
        .as_array()
        .into_iter()
        .flatten()
    {
        sh(cmd.as_str().ok_or("setup")?);
    }
    let env_json = substitute(&case["env"], &vars);
    let env: Vec<(String, String)> = env_json
        .as_object()
        .ok_or("env")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stdin = match &case["config"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let expect = substitute(&case["expect"], &vars);
    let before = snapshot(&ns_name);
    let answer = cni(&env_ref, &stdin);
    let mut outcome = (|| {
        if let Some(code) = expect.get("code") {
            if answer.ok {
                return Err(format!(
                    "succeeded, expected code {code}: {}",
                    answer.stdout
                ));
            }
            let obj = answer.json.as_ref().ok_or("no error object")?;
            if &obj["code"] != code {
                return Err(format!(
                    "code {} instead of {code}: {}",
                    obj["code"], answer.stdout
                ));
            }
            if obj["msg"].as_str().is_none_or(str::is_empty) {
                return Err("error object without msg".into());
            }
            let version = expect
                .get("cniVersion")
                .and_then(Value::as_str)
                .unwrap_or("1.1.0");
            if obj["cniVersion"] != version {
                return Err(format!("error object in version {}", obj["cniVersion"]));
            }
            if let Some(part) = expect.get("msg_contains").and_then(Value::as_str) {
                if !obj["msg"].as_str().unwrap_or_default().contains(part) {
                    return Err(format!("msg does not name {part:?}: {}", obj["msg"]));
                }
            }
            let after = snapshot(&ns_name);
            if after != before {
                return Err(format!(
                    "a refused input changed the host: {before:?} -> {after:?}"
                ));
            }
            return Ok(());
        }
        if !answer.ok {
            return Err(format!("failed: {}{}", answer.stdout, answer.stderr));
        }
        if expect.get("empty").is_some() {
            return match &answer.json {
                None => Ok(()),
                Some(j) => Err(format!("expected no output, got {j}")),
            };
        }
        let result = answer.json.as_ref().ok_or("no result")?;
        matches(&expect["result"], result, "result")?;
        for path in expect["absent"].as_array().into_iter().flatten() {
            let path = path.as_str().unwrap_or_default();
            if lookup(result, path).is_some() {
                return Err(format!("{path} present in {result}"));
            }
        }
        let host_veth = result["interfaces"][1]["name"].as_str().unwrap_or_default();
        let mut check_vars = vars.to_vec();
        check_vars.push(("$HOSTVETH", host_veth));
        for check in substitute(&case["checks"], &check_vars)
            .as_array()
            .into_iter()
            .flatten()
        {
            behaviour_holds(check)?;
        }
        Ok(())
    })();
    // A successful ADD is undone by DEL, which must leave nothing behind.
    let is_add = env.iter().any(|(k, v)| k == "CNI_COMMAND" && v == "ADD");
    if answer.ok && is_add {
        let mut del_env: Vec<(&str, &str)> = env_ref
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        del_env.retain(|(k, _)| *k != "CNI_COMMAND");
        del_env.push(("CNI_COMMAND", "DEL"));
        let del = cni(&del_env, &stdin);
        if !del.ok && outcome.is_ok() {
            outcome = Err(format!("DEL failed: {}", del.stdout));
        }
        // The veth is deleted by a detached helper a few milliseconds after DEL returns.
        let gone = wait_for(|| host_veths().is_empty());
        if (!gone || !leases().is_empty()) && outcome.is_ok() {
            outcome = Err(format!("DEL left {:?} {:?}", host_veths(), leases()));
        }
        let tables = crate::firewall::netbox_state();
        if !tables.is_empty() && outcome.is_ok() {
            outcome = Err(format!("DEL left nft tables {tables:?}"));
        }
    }
    for cmd in substitute(&case["cleanup"], &vars)
        .as_array()
        .into_iter()
        .flatten()
    {
        sh(cmd.as_str().unwrap_or("true"));
    }
    netns::delete_named(&ns_name).map_err(|e| e.to_string())?;
    // The next case starts from a fresh store and a fresh bridge (its MTU, its addresses).
    let _ = std::fs::remove_dir_all(LEASES);
    let _ = Command::new("ip").args(["link", "del", "nbspec0"]).status();
    outcome
}

/// One behaviour check of a case (`checks`, see specs/cni/README.md): a shell command run on
/// the host after the ADD, which must succeed (or fail, with `"fails": true`) and whose output
/// must contain every `contains` and none of `lacks`.
fn behaviour_holds(check: &Value) -> Result<(), String> {
    let cmd = check["run"].as_str().ok_or("check without run")?;
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let what = check["what"].as_str().unwrap_or(cmd);
    let fails = check["fails"].as_bool().unwrap_or(false);
    if out.status.success() == fails {
        return Err(format!(
            "{what}: `{cmd}` {} ({}): {text}",
            if fails { "succeeded" } else { "failed" },
            out.status
        ));
    }
    let strings = |key: &str| -> Vec<String> {
        match &check[key] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        }
    };
    for part in strings("contains") {
        if !text.contains(&part) {
            return Err(format!("{what}: `{cmd}` does not say {part:?}: {text}"));
        }
    }
    for part in strings("lacks") {
        if text.contains(&part) {
            return Err(format!("{what}: `{cmd}` says {part:?}: {text}"));
        }
    }
    Ok(())
}

#[test]
fn specs_cases_hold() {
    if !private_host("cni::specs_cases_hold") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("specs/cni");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("specs/cni")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} cases", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run_case(f).err().map(|e| {
                format!(
                    "{}: {e}",
                    f.file_name().unwrap_or_default().to_string_lossy()
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Stateful rules.

fn add(id: &str, ns: &str, config: &str) -> Value {
    let path = netns_path(ns);
    cni(&env_of("ADD", id, &path), config).result().clone()
}

fn address_of(result: &Value) -> IpAddr {
    let cidr = result["ips"][0]["address"].as_str().expect("address");
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("ip")
}

fn with_prev(config: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(config).expect("config");
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn check_passes_after_add_and_fails_once_something_is_gone() {
    if !private_host("cni::check_passes_after_add_and_fails_once_something_is_gone") {
        return;
    }
    netns::create_named("c1").expect("netns");
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let config = conf(version, json!({}));
        let result = add("c1", "c1", &config);
        let check = with_prev(&config, &result);
        let ok = cni(&env_of("CHECK", "c1", "/run/netns/c1"), &check);
        assert!(ok.ok, "{version}: {}", ok.stdout);
        // The address removed behind the plugin's back: CHECK says so.
        let addr = result["ips"][0]["address"].as_str().expect("address");
        sh(&format!("ip -n c1 addr del {addr} dev eth0"));
        let bad = cni(&env_of("CHECK", "c1", "/run/netns/c1"), &check);
        assert!(!bad.ok && bad.code() == 100, "{}", bad.stdout);
        assert!(bad.stdout.contains(addr), "{}", bad.stdout);
        assert!(cni(&env_of("DEL", "c1", "/run/netns/c1"), &check).ok);
        let gone = cni(&env_of("CHECK", "c1", "/run/netns/c1"), &check);
        assert!(!gone.ok, "CHECK after DEL passed");
    }
    // A namespace that is gone: the container is unknown.
    let config = conf("1.0.0", json!({}));
    let check = with_prev(&config, &json!({"cniVersion": "1.0.0"}));
    let missing = cni(&env_of("CHECK", "c9", "/run/netns/c9"), &check);
    assert_eq!(missing.code(), 3, "{}", missing.stdout);
}

#[test]
fn add_refuses_an_existing_interface_without_touching_ipam() {
    if !private_host("cni::add_refuses_an_existing_interface_without_touching_ipam") {
        return;
    }
    netns::create_named("c1").expect("netns");
    sh("ip -n c1 link add eth0 type veth peer name other");
    let answer = cni(
        &env_of("ADD", "c1", "/run/netns/c1"),
        &conf("1.0.0", json!({})),
    );
    assert_eq!(answer.code(), 4, "{}", answer.stdout);
    assert!(answer.stdout.contains("eth0"), "{}", answer.stdout);
    assert!(leases().is_empty(), "{:?}", leases());
    assert!(host_veths().is_empty());
}

#[test]
fn force_address_replaces_a_foreign_bridge_address_and_its_absence_refuses() {
    if !private_host("cni::force_address_replaces_a_foreign_bridge_address_and_its_absence_refuses")
    {
        return;
    }
    netns::create_named("c1").expect("netns");
    sh("ip link add nbt0 type bridge && ip addr add 10.89.0.200/24 dev nbt0");
    let bridge_addrs = || {
        let v = ip_json("-4 addr show dev nbt0");
        v[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect::<Vec<_>>()
    };
    // Without forceAddress: refused, with a reason, and nothing changed.
    let refused = cni(
        &env_of("ADD", "c1", "/run/netns/c1"),
        &conf("1.0.0", json!({})),
    );
    assert_eq!(refused.code(), 7, "{}", refused.stdout);
    assert!(
        refused.stdout.contains("forceAddress"),
        "{}",
        refused.stdout
    );
    assert_eq!(bridge_addrs(), vec!["10.89.0.200/24".to_string()]);
    assert!(leases().is_empty(), "{:?}", leases());
    assert!(host_veths().is_empty(), "{:?}", host_veths());
    assert_eq!(links_in("c1"), vec!["lo".to_string()]);
    // With it: the gateway replaces the other address.
    let config = conf("1.0.0", json!({"forceAddress": true}));
    add("c1", "c1", &config);
    assert_eq!(bridge_addrs(), vec!["10.89.0.1/24".to_string()]);
    assert!(cni(&env_of("DEL", "c1", "/run/netns/c1"), &config).ok);
}

#[test]
fn log_file_named_in_the_config_gets_a_line_per_invocation() {
    if !private_host("cni::log_file_named_in_the_config_gets_a_line_per_invocation") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("netbox-cni.log");
    let config = conf(
        "1.0.0",
        json!({"logFile": log.to_str().expect("utf-8 path")}),
    );
    add("c1", "c1", &config);
    // Another container's ADD into the same interface name fails: logged with its code.
    let again = cni(&env_of("ADD", "c2", "/run/netns/c1"), &config);
    assert!(!again.ok);
    assert!(cni(&env_of("DEL", "c1", "/run/netns/c1"), &config).ok);
    let text = std::fs::read_to_string(&log).expect("log file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("command=ADD") && lines[0].contains("ok"),
        "{text}"
    );
    assert!(
        lines[1].contains("failed") && lines[1].contains("code=4"),
        "{text}"
    );
    assert!(
        lines[2].contains("command=DEL") && lines[2].contains("container=c1"),
        "{text}"
    );
    // Nothing but the protocol on stdout.
    assert!(again.json.is_some());
}

#[test]
fn add_rolls_back_veth_and_lease_when_a_later_step_fails() {
    if !private_host("cni::add_rolls_back_veth_and_lease_when_a_later_step_fails") {
        return;
    }
    netns::create_named("c1").expect("netns");
    // The kernel refuses a route through a gateway no interface can reach: the last step fails.
    let config = conf(
        "1.0.0",
        json!({"ipam": {"type": "netbox", "subnet": "10.89.0.0/24",
                        "routes": [{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}]}}),
    );
    let answer = cni(&env_of("ADD", "c1", "/run/netns/c1"), &config);
    assert!(!answer.ok, "{}", answer.stdout);
    assert!(host_veths().is_empty(), "{:?}", host_veths());
    assert_eq!(links_in("c1"), vec!["lo".to_string()]);
    assert!(leases().is_empty(), "{:?}", leases());
}

#[test]
fn del_succeeds_twice_without_netns_and_with_the_netns_gone() {
    if !private_host("cni::del_succeeds_twice_without_netns_and_with_the_netns_gone") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let config = conf("1.1.0", json!({}));
    add("c1", "c1", &config);
    assert_eq!(leases().len(), 1);
    netns::delete_named("c1").expect("delete netns");
    // DEL from a near-empty environment: no CNI_NETNS, no CNI_PATH, no prevResult.
    let del_env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    for _ in 0..2 {
        let answer = cni(&del_env, &config);
        assert!(answer.ok && answer.json.is_none(), "{}", answer.stdout);
    }
    assert!(leases().is_empty(), "{:?}", leases());
    eventually("the veth to go", || host_veths().is_empty());
    // With CNI_NETNS naming the deleted namespace, too.
    let answer = cni(&env_of("DEL", "c1", "/run/netns/c1"), &config);
    assert!(answer.ok, "{}", answer.stdout);
}

#[test]
fn del_removes_the_veth_even_while_the_netns_lives_on() {
    if !private_host("cni::del_removes_the_veth_even_while_the_netns_lives_on") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let config = conf("1.0.0", json!({}));
    let result = add("c1", "c1", &config);
    let host_name = result["interfaces"][1]["name"].as_str().expect("veth");
    let alias = &ip_json(&format!("link show {host_name}"))[0]["ifalias"];
    assert_eq!(alias, "netbox-cni:testnet:c1:eth0");
    assert!(cni(&env_of("DEL", "c1", "/run/netns/c1"), &config).ok);
    // Down at once (unless already gone), then deleted by DEL's detached helper.
    let shown = Command::new("ip")
        .args(["-j", "link", "show", host_name])
        .output()
        .expect("ip");
    if shown.status.success() {
        let link: Value = serde_json::from_slice(&shown.stdout).expect("ip -j");
        let flags = &link[0]["flags"];
        assert!(!flags.to_string().contains("\"UP\""), "{flags}");
    }
    eventually("the veth to go", || host_veths().is_empty());
    assert_eq!(links_in("c1"), vec!["lo".to_string()]);
}

#[test]
fn gc_releases_everything_not_in_the_valid_list() {
    if !private_host("cni::gc_releases_everything_not_in_the_valid_list") {
        return;
    }
    let config = conf("1.1.0", json!({}));
    for id in ["a", "b", "c"] {
        netns::create_named(id).expect("netns");
        add(id, id, &config);
    }
    assert_eq!(leases().len(), 3);
    let mut gc_conf: Value = serde_json::from_str(&config).expect("json");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
    for _ in 0..2 {
        let answer = cni(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            &gc_conf.to_string(),
        );
        assert!(answer.ok, "{}", answer.stdout);
        assert_eq!(leases().len(), 1, "{:?}", leases());
        assert_eq!(host_veths().len(), 1, "{:?}", host_veths());
    }
    assert_eq!(links_in("a"), vec!["lo".to_string()]);
    assert_eq!(links_in("b").len(), 2);
    // The legacy key works too.
    gc_conf
        .as_object_mut()
        .map(|o| o.remove("cni.dev/valid-attachments"));
    gc_conf["cni.dev/attachments"] = json!([]);
    assert!(cni(&[("CNI_COMMAND", "GC")], &gc_conf.to_string()).ok);
    assert!(leases().is_empty() && host_veths().is_empty());
}

#[test]
fn status_reports_a_full_pool_with_code_50() {
    if !private_host("cni::status_reports_a_full_pool_with_code_50") {
        return;
    }
    // A /29 with a 2-address range: two containers fill it.
    let config = conf(
        "1.1.0",
        json!({"ipam": {"type": "netbox", "subnet": "10.89.0.0/29",
                        "rangeStart": "10.89.0.2", "rangeEnd": "10.89.0.3"}}),
    );
    let status = || cni(&[("CNI_COMMAND", "STATUS")], &config);
    assert!(status().ok);
    for id in ["a", "b"] {
        netns::create_named(id).expect("netns");
        add(id, id, &config);
    }
    assert_eq!(status().code(), 50);
    netns::create_named("c").expect("netns");
    let third = cni(&env_of("ADD", "c", "/run/netns/c"), &config);
    assert_eq!(third.code(), 11, "{}", third.stdout);
    assert!(cni(&env_of("DEL", "a", "/run/netns/a"), &config).ok);
    assert!(status().ok);
}

#[test]
fn hairpin_and_promisc_modes_are_applied() {
    if !private_host("cni::hairpin_and_promisc_modes_are_applied") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let result = add("c1", "c1", &conf("1.0.0", json!({"hairpinMode": true})));
    let veth = result["interfaces"][1]["name"].as_str().expect("veth");
    let info = &ip_json(&format!("-d link show {veth}"))[0]["linkinfo"]["info_slave_data"];
    assert_eq!(info["hairpin"], true, "{info}");
    netns::create_named("c2").expect("netns");
    add(
        "c2",
        "c2",
        &conf(
            "1.0.0",
            json!({"bridge": "nbt1", "promiscMode": true,
        "ipam": {"type": "netbox", "subnet": "10.89.1.0/24"}}),
        ),
    );
    let flags = ip_json("link show nbt1")[0]["flags"].clone();
    assert!(
        flags
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == "PROMISC"),
        "{flags}"
    );
}

#[test]
fn ipv6_dad_is_off_unless_enabledad() {
    if !private_host("cni::ipv6_dad_is_off_unless_enabledad") {
        return;
    }
    let dual = |dad: bool| {
        conf(
            "1.0.0",
            json!({"enabledad": dad, "ipam": {"type": "netbox", "ranges": [
                [{"subnet": "10.89.0.0/24"}], [{"subnet": "fd00:89::/64"}]]}}),
        )
    };
    let tentative = |ns: &str| {
        let addrs = ip_json(&format!("-n {ns} addr show eth0"))[0]["addr_info"].clone();
        let global = addrs
            .as_array()
            .expect("addr_info")
            .iter()
            .find(|a| a["family"] == "inet6" && a["scope"] == "global")
            .cloned()
            .unwrap_or_else(|| panic!("no global IPv6 address: {addrs}"));
        global["tentative"] == true
    };
    netns::create_named("off").expect("netns");
    add("off", "off", &dual(false));
    assert!(!tentative("off"));
    netns::create_named("on").expect("netns");
    let result = add("on", "on", &dual(true));
    assert!(tentative("on"));
    // The IPv6 default route is there too, added after the address.
    assert_eq!(
        result["routes"].as_array().map(Vec::len),
        Some(2),
        "{result}"
    );
    let routes = ip_json("-n on -6 route show default");
    assert_eq!(routes[0]["gateway"], "fd00:89::1", "{routes}");
}

/// 30 ADDs, 10 at a time, each in its own namespace.
#[test]
fn concurrent_adds_get_distinct_addresses_and_del_releases_all() {
    if !private_host("cni::concurrent_adds_get_distinct_addresses_and_del_releases_all") {
        return;
    }
    let config = conf("1.0.0", json!({}));
    let ids: Vec<String> = (0..30).map(|i| format!("par{i}")).collect();
    for id in &ids {
        netns::create_named(id).expect("netns");
    }
    let run_all = |command: &'static str| -> Vec<Answer> {
        let chunks: Vec<Vec<String>> = ids.chunks(3).map(|c| c.to_vec()).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let config = config.clone();
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|id| cni(&env_of(command, id, &netns_path(id)), &config))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        })
    };
    let added = run_all("ADD");
    let addresses: BTreeSet<IpAddr> = added.iter().map(|a| address_of(a.result())).collect();
    assert_eq!(addresses.len(), 30, "duplicate addresses: {addresses:?}");
    assert_eq!(leases().len(), 30);
    assert_eq!(host_veths().len(), 30);
    for answer in run_all("DEL") {
        assert!(answer.ok, "{}", answer.stdout);
    }
    assert!(leases().is_empty(), "{:?}", leases());
    eventually("every veth to go", || host_veths().is_empty());
}

#[test]
fn calls_ahead_in_the_queue_that_hang_or_die_never_block_an_add() {
    if !private_host("cni::calls_ahead_in_the_queue_that_hang_or_die_never_block_an_add") {
        return;
    }
    let config = conf("1.0.0", json!({}));
    let run_dir = netbox::sys::dirfd::Dir::open(Path::new("/run/netbox")).expect("run dir");
    // As many places ahead as there are cores, held by calls that never finish.
    let width = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stuck: Vec<_> = (0..width)
        .map(|_| netbox::sys::admission::join(&run_dir, "cni-queue").expect("join"))
        .collect();
    netns::create_named("q1").expect("netns");
    let added = cni(&env_of("ADD", "q1", "/run/netns/q1"), &config);
    assert!(added.ok, "{}", added.stdout);
    let deleted = cni(&env_of("DEL", "q1", "/run/netns/q1"), &config);
    assert!(deleted.ok, "{}", deleted.stdout);
    assert!(leases().is_empty(), "{:?}", leases());
    // Calls ahead killed mid-way (their places vanish with them): the next ones go through.
    let ahead: Vec<_> = (0..width)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_netbox-cni"))
                .env("CNI_COMMAND", "ADD")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("plugin")
        })
        .collect();
    drop(stuck);
    for mut call in ahead {
        call.kill().expect("kill");
        call.wait().expect("wait");
    }
    netns::create_named("q2").expect("netns");
    let added = cni(&env_of("ADD", "q2", "/run/netns/q2"), &config);
    assert!(added.ok, "{}", added.stdout);
    assert_eq!(leases().len(), 1);
}

#[test]
fn two_containers_on_one_bridge_talk_over_tcp() {
    if !private_host("cni::two_containers_on_one_bridge_talk_over_tcp") {
        return;
    }
    let config = conf("1.1.0", json!({}));
    netns::create_named("server").expect("netns");
    netns::create_named("client").expect("netns");
    let server_ip = address_of(&add("server", "server", &config));
    add("client", "client", &config);
    let server_ns = NetNs::open(Path::new("/run/netns/server")).expect("open");
    // The socket belongs to the namespace it was made in, whichever thread uses it later.
    let listener = server_ns
        .run_in(|| TcpListener::bind((server_ip, 7000)))
        .expect("enter")
        .expect("listen");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(format!("echo {}", String::from_utf8_lossy(&buf)).as_bytes())
            .expect("write");
        peer.ip()
    });
    let client_ns = NetNs::open(Path::new("/run/netns/client")).expect("open");
    let answer = client_ns
        .run_in(move || {
            let mut conn =
                TcpStream::connect_timeout(&(server_ip, 7000).into(), Duration::from_secs(5))
                    .expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            conn.write_all(b"hello").expect("send");
            let mut answer = String::new();
            conn.read_to_string(&mut answer).expect("receive");
            answer
        })
        .expect("enter");
    assert_eq!(answer, "echo hello");
    let peer = server.join().expect("server");
    assert_ne!(peer, server_ip);
}

#[test]
fn ipam_is_delegated_to_a_plugin_on_cni_path_and_released_on_failure() {
    if !private_host("cni::ipam_is_delegated_to_a_plugin_on_cni_path_and_released_on_failure") {
        return;
    }
    if !Path::new(REFERENCE_HOST_LOCAL).exists() {
        skip(
            "cni::ipam_is_delegated_to_a_plugin_on_cni_path_and_released_on_failure",
            "containernetworking-plugins is not installed (/usr/lib/cni/host-local)",
        );
        return;
    }
    let data = "/var/lib/netbox/host-local";
    let config = conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "subnet": "10.89.3.0/24", "dataDir": data}}),
    );
    netns::create_named("c1").expect("netns");
    let result = add("c1", "c1", &config);
    assert_eq!(result["ips"][0]["address"], "10.89.3.2/24", "{result}");
    assert_eq!(result["ips"][0]["interface"], 2);
    assert!(Path::new(&format!("{data}/testnet/10.89.3.2")).exists());
    let addr = &ip_json("-n c1 addr show eth0")[0]["addr_info"];
    assert!(addr.to_string().contains("10.89.3.2"), "{addr}");
    let check = with_prev(&config, &result);
    let checked = cni(&env_of("CHECK", "c1", "/run/netns/c1"), &check);
    assert!(checked.ok, "{}", checked.stdout);
    assert!(cni(&env_of("DEL", "c1", "/run/netns/c1"), &config).ok);
    assert!(!Path::new(&format!("{data}/testnet/10.89.3.2")).exists());
    eventually("the veth to go", || host_veths().is_empty());
    // A failure after host-local answered gives its address back.
    let failing = conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "subnet": "10.89.3.0/24", "dataDir": data,
                        "routes": [{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}]}}),
    );
    let answer = cni(&env_of("ADD", "c1", "/run/netns/c1"), &failing);
    assert!(!answer.ok, "{}", answer.stdout);
    let left: Vec<String> = files_under(Path::new(&format!("{data}/testnet")))
        .into_iter()
        .filter(|f| f.contains("10.89.3."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(host_veths().is_empty());
    // Without CNI_PATH the plugin cannot be found: an environment error.
    let no_path: Vec<(&str, &str)> = env_of("ADD", "c1", "/run/netns/c1")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_PATH")
        .collect();
    assert_eq!(cni(&no_path, &config).code(), 4);
}

#[test]
fn chained_add_appends_to_prev_result() {
    if !private_host("cni::chained_add_appends_to_prev_result") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "other0", "sandbox": "/run/netns/c1"}],
        "ips": [{"address": "192.0.2.5/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}});
    let config = with_prev(&conf("1.0.0", json!({})), &prev);
    let result = add("c1", "c1", &config);
    assert_eq!(
        result["interfaces"].as_array().map(Vec::len),
        Some(4),
        "{result}"
    );
    assert_eq!(result["ips"][0]["address"], "192.0.2.5/24");
    assert_eq!(result["ips"][1]["interface"], 3);
    assert_eq!(result["dns"]["nameservers"][0], "192.0.2.53");
}

// ---------------------------------------------------------------------------------------------
// A real runtime: podman 4.3 with its CNI backend (see ../shared/ANCHORS.md for its pitfalls).

/// Podman's state, the CNI cache and the cgroup hierarchies, made private to this test: the
/// private host replaced /sys, hiding the host's cgroup mounts, which are mounted again.
fn prepare_podman_host(work: &Path) {
    for dir in [
        "/var/lib/cni",
        "/run/containers",
        "/var/lib/containers",
        "/run/libpod",
    ] {
        sh(&format!("mkdir -p {dir} && mount -t tmpfs tmpfs {dir}"));
    }
    crate::harness::private_cgroups();
    let w = work.display();
    sh(&format!(
        "mkdir -p {w}/cni-bin {w}/net.d {w}/rootfs/bin {w}/rootfs/www {w}/rootfs/proc \
         {w}/rootfs/sys {w}/rootfs/dev {w}/rootfs/etc {w}/rootfs/tmp && \
         ln -s {} {w}/cni-bin/netbox-cni && cp /bin/busybox {w}/rootfs/bin/ && \
         for t in sh sleep httpd wget; do ln -s busybox {w}/rootfs/bin/$t; done && \
         echo hello-from-a > {w}/rootfs/www/index.html",
        cni_bin().display()
    ));
    std::fs::write(
        work.join("net.d/nbnet.conflist"),
        r#"{"cniVersion":"1.0.0","name":"nbnet","plugins":[{"type":"netbox-cni",
"bridge":"nbpod0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,
"capabilities":{"portMappings":true},
"ipam":{"type":"netbox","subnet":"10.90.0.0/24"}}]}"#,
    )
    .expect("conflist");
    std::fs::write(
        work.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{w}/cni-bin\"]\n\
             network_config_dir = \"{w}/net.d\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\ntmp_dir = \"{w}/libpod\"\n"
        ),
    )
    .expect("containers.conf");
    std::fs::write(
        work.join("storage.conf"),
        format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{w}/run\"\ngraphroot = \"{w}/graph\"\n"),
    )
    .expect("storage.conf");
}

fn podman(work: &Path, args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", work.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", work.join("storage.conf"))
        .stdin(Stdio::null())
        .output()
        .expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn podman_containers_on_a_netbox_network_talk_and_rm_leaves_nothing() {
    const NAME: &str = "cni::podman_containers_on_a_netbox_network_talk_and_rm_leaves_nothing";
    if !private_host(NAME) {
        return;
    }
    let missing: Vec<&str> = ["podman", "runc", "busybox"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() || !crate::harness::is_root() {
        skip(
            NAME,
            &format!("needs root and podman, runc, busybox-static (missing: {missing:?})"),
        );
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    prepare_podman_host(work.path());
    let w = work.path();
    sh(&format!(
        "tar -C {0}/rootfs -c . | CONTAINERS_CONF={0}/containers.conf \
         CONTAINERS_STORAGE_CONF={0}/storage.conf podman import - localhost/nbtest >/dev/null",
        w.display()
    ));
    // The network really is netbox-cni's (a rejected conflist would fall back to podman's own).
    let networks = podman(w, &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(networks.contains("nbnet netbox-cni"), "{networks}");
    podman(
        w,
        &[
            "run",
            "-d",
            "--name",
            "a",
            "--network",
            "nbnet",
            "-p",
            "18080:8080",
            "localhost/nbtest",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ],
    );
    let ip = podman(
        w,
        &[
            "inspect",
            "a",
            "--format",
            "{{.NetworkSettings.Networks.nbnet.IPAddress}}",
        ],
    );
    assert!(ip.starts_with("10.90.0."), "{ip}");
    assert_eq!(leases().len(), 1);
    let page = podman(
        w,
        &[
            "run",
            "--rm",
            "--name",
            "b",
            "--network",
            "nbnet",
            "localhost/nbtest",
            "wget",
            "-qO-",
            &format!("http://{ip}:8080/index.html"),
        ],
    );
    assert_eq!(page, "hello-from-a");
    // `-p` arrives as the portMappings capability: the page is published on the host.
    let mut conn = TcpStream::connect("127.0.0.1:18080").expect("connect to the published port");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("receive");
    assert!(reply.contains("hello-from-a"), "{reply}");
    podman(w, &["rm", "-f", "-t", "0", "a"]);
    eventually("podman's veths to go", || host_veths().is_empty());
    assert!(
        crate::firewall::netbox_state().is_empty(),
        "{:?}",
        crate::firewall::netbox_state()
    );
    assert!(leases().is_empty(), "{:?}", leases());
    // cgroups are not namespaced here: remove the empty ones podman made on the real host.
    let _ = Command::new("sh")
        .args([
            "-c",
            "find /sys/fs/cgroup -depth -type d -path '*/libpod_parent*' -exec rmdir {} + 2>/dev/null",
        ])
        .status();
}

// ---------------------------------------------------------------------------------------------
// Parsers under arbitrary input: never a panic, always a spec code, names never paths.

const SPEC_CODES: [u32; 5] = [1, 2, 4, 6, 7];

fn parse_all(env: &[(String, String)], stdin: &[u8]) {
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let parsed = match Env::parse(&get) {
        Ok(e) => e,
        Err(e) => {
            assert!(
                SPEC_CODES.contains(&e.code),
                "code {} for env {env:?}",
                e.code
            );
            return;
        }
    };
    if !parsed.container_id.is_empty() {
        assert!(!parsed.container_id.contains('/') && !parsed.container_id.starts_with('.'));
    }
    match NetConf::parse(stdin, &parsed) {
        Ok(c) => {
            let dir = Path::new("/data");
            let joined = dir.join(c.name());
            assert_eq!(joined.parent(), Some(dir), "name {:?} escapes", c.name());
            assert!(!c.name().starts_with('.'), "name {:?}", c.name());
        }
        Err(e) => assert!(
            SPEC_CODES.contains(&e.code),
            "code {} for {stdin:?}",
            e.code
        ),
    }
}

fn valid_config() -> Value {
    json!({"cniVersion": "1.0.0", "name": "net", "type": "netbox-cni", "bridge": "cni0",
           "isGateway": true, "mtu": 1500, "hairpinMode": false,
           "runtimeConfig": {"ips": ["10.0.0.5"], "mac": "02:00:00:00:00:01"},
           "ipam": {"type": "netbox", "subnet": "10.0.0.0/24",
                    "routes": [{"dst": "0.0.0.0/0"}]},
           "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}})
}

fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
        prop::sample::select(vec![
            "../../etc",
            "/",
            ".",
            "..",
            "a/b",
            "\u{0}",
            "é\u{202e}x",
            "10.0.0.0/33",
            "::/0",
            "ff:ff:ff:ff:ff:ff",
            "9.9.9",
            "1.1.0",
            "netbox",
            "host-local",
            "0.0.0.0/0",
            "x".repeat(300).leak(),
        ])
        .prop_map(|s| Value::String(s.to_string())),
        Just(json!([])),
        Just(json!({})),
        Just(json!([[{"subnet": "10.0.0.0/24"}], "x"])),
    ]
}

const KEYS: [&str; 20] = [
    "cniVersion",
    "name",
    "type",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "ipam",
    "dns",
    "runtimeConfig",
    "prevResult",
    "args",
    "cni.dev/valid-attachments",
    "macspoofchk",
    "enabledad",
    "forceAddress",
];

fn mutated_config() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            (prop::sample::select(KEYS.to_vec()), 0usize..4, odd_value()),
            0..4,
        ),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(edits, cut)| {
            let mut c = valid_config();
            for (key, depth, v) in edits {
                let section = ["", "ipam", "runtimeConfig", "prevResult"][depth];
                let target = if section.is_empty() {
                    Some(&mut c)
                } else {
                    c.get_mut(section)
                };
                // An earlier edit may have made the section something other than an object.
                if let Some(obj) = target.and_then(Value::as_object_mut) {
                    obj.insert(key.to_string(), v);
                }
            }
            let mut bytes = c.to_string().into_bytes();
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

fn env_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    let value = prop_oneof![
        ".*",
        prop::sample::select(vec![
            "ADD",
            "DEL",
            "CHECK",
            "GC",
            "STATUS",
            "VERSION",
            "eth0",
            "../x",
            "/run/netns/x",
            "IgnoreUnknown=1;IP=10.0.0.5",
            "IP=1.2.3.4,::1;MAC=02:00:00:00:00:01",
            "MAC=zz",
            "a;b;=c",
            "",
            "ctr-1",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "CNI_COMMAND",
                "CNI_CONTAINERID",
                "CNI_NETNS",
                "CNI_IFNAME",
                "CNI_ARGS",
                "CNI_PATH",
            ])
            .prop_map(str::to_string),
            value,
        ),
        0..7,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic_on_mutated_configs(env in env_strategy(), stdin in mutated_config()) {
        parse_all(&env, &stdin);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(env in env_strategy(), stdin in prop::collection::vec(any::<u8>(), 0..200)) {
        parse_all(&env, &stdin);
    }

    #[test]
    fn add_environments_with_valid_configs_parse_or_fail_with_code_4(
        id in ".{0,140}", ifname in ".{0,20}", args in ".{0,40}"
    ) {
        let env = [
            ("CNI_COMMAND".to_string(), "ADD".to_string()),
            ("CNI_CONTAINERID".to_string(), id),
            ("CNI_NETNS".to_string(), "/run/netns/x".to_string()),
            ("CNI_IFNAME".to_string(), ifname),
            ("CNI_ARGS".to_string(), args),
        ];
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        match Env::parse(&get) {
            Ok(e) => prop_assert!(netbox::sys::netlink::validate_ifname(&e.ifname).is_ok()),
            Err(e) => prop_assert_eq!(e.code, 4),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round 2: a live attachment is never harmed, a killed ADD leaks nothing, results tell the truth.

/// What a refused ADD must leave as it was: host links with their MACs and state, the
/// namespace's links with MACs and addresses, leases, records.
fn attachment_state(ns: &str) -> String {
    let strip = |v: Value| {
        v.as_array()
            .map(|links| {
                links
                    .iter()
                    .map(|l| {
                        // Global addresses only: link-local ones come and go with DAD.
                        let global: Vec<String> = l["addr_info"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|a| a["scope"] == "global")
                            .map(|a| format!("{}/{}", a["local"], a["prefixlen"]))
                            .collect();
                        let up = l["flags"].to_string().contains("\"UP\"");
                        format!(
                            "{} {} up={up} {} {global:?}",
                            l["ifname"], l["address"], l["ifalias"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    format!(
        "{}\n--\n{}\n--\n{:?}\n--\n{:?}",
        strip(ip_json("addr show")),
        strip(ip_json(&format!("-n {ns} addr show"))),
        files_under(Path::new("/var/lib/netbox")),
        files_under(Path::new("/run/netbox/cni"))
            .into_iter()
            .map(|f| std::fs::read_to_string(&f).unwrap_or_default())
            .collect::<Vec<_>>(),
    )
}

#[test]
fn a_refused_add_never_touches_the_live_attachment() {
    if !private_host("cni::a_refused_add_never_touches_the_live_attachment") {
        return;
    }
    let data = "/var/lib/netbox/host-local";
    let builtin = conf("1.0.0", json!({}));
    let delegated = conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "subnet": "10.89.3.0/24", "dataDir": data}}),
    );
    netns::create_named("c1").expect("netns");
    for (what, config) in [("built-in", &builtin), ("host-local", &delegated)] {
        let result = add("c1", "c1", config);
        let before = attachment_state("c1");
        let path = netns_path("c1");
        let no_path: Vec<(&str, &str)> = env_of("ADD", "c1", &path)
            .into_iter()
            .map(|(k, v)| {
                if k == "CNI_PATH" {
                    (k, "/nonexistent")
                } else {
                    (k, v)
                }
            })
            .collect();
        let mut outside = env_of("ADD", "c1", &path);
        outside.push(("CNI_ARGS", "IP=10.77.0.5"));
        let everything = conf(
            "1.0.0",
            json!({"ipam": {"type": "netbox", "subnet": "0.0.0.0/0"}}),
        );
        let clash = conf(
            "1.0.0",
            json!({"ipam": {"type": "netbox", "subnet": "10.89.0.0/24", "gateway": "10.89.0.9"}}),
        );
        type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
        let attempts: Vec<Attempt> = vec![
            (
                "the same ADD again",
                env_of("ADD", "c1", &path),
                config.clone(),
            ),
            ("an IP outside the ranges", outside, config.clone()),
            ("CNI_PATH without the delegate", no_path, delegated.clone()),
            ("subnet 0.0.0.0/0", env_of("ADD", "c1", &path), everything),
            ("a bridge address clash", env_of("ADD", "c1", &path), clash),
        ];
        for (why, env, stdin) in attempts {
            let answer = cni(&env, &stdin);
            assert!(!answer.ok, "{what}, {why}: accepted: {}", answer.stdout);
            assert_eq!(
                attachment_state("c1"),
                before,
                "{what}, {why}: the refused ADD changed something ({})",
                answer.stdout
            );
            let check = cni(&env_of("CHECK", "c1", &path), &with_prev(config, &result));
            assert!(check.ok, "{what}, {why}: CHECK after: {}", check.stdout);
        }
        let again = cni(&env_of("ADD", "c1", &path), config);
        assert_eq!(again.code(), 4, "{what}: {}", again.stdout);
        assert!(cni(&env_of("DEL", "c1", &path), config).ok);
        eventually("the veth to go", || host_veths().is_empty());
    }
}

#[test]
fn add_after_del_in_the_same_namespace_reattaches_at_once() {
    if !private_host("cni::add_after_del_in_the_same_namespace_reattaches_at_once") {
        return;
    }
    // podman network disconnect + connect: DEL then ADD while DEL's helper may still be
    // deleting the old pair.
    netns::create_named("c1").expect("netns");
    let config = conf("1.1.0", json!({}));
    let path = netns_path("c1");
    for round in 0..5 {
        let result = add("c1", "c1", &config);
        let check = cni(&env_of("CHECK", "c1", &path), &with_prev(&config, &result));
        assert!(check.ok, "round {round}: {}", check.stdout);
        assert!(cni(&env_of("DEL", "c1", &path), &config).ok);
    }
    eventually("the veth to go", || host_veths().is_empty());
    assert_eq!(links_in("c1"), vec!["lo".to_string()]);
    assert!(leases().is_empty(), "{:?}", leases());
}

#[test]
fn the_bridge_mac_in_results_stays_the_live_one_as_ports_join() {
    if !private_host("cni::the_bridge_mac_in_results_stays_the_live_one_as_ports_join") {
        return;
    }
    let config = conf("1.1.0", json!({}));
    let mut reported = Vec::new();
    for id in ["a", "b", "c", "d"] {
        netns::create_named(id).expect("netns");
        let result = add(id, id, &config);
        assert_eq!(result["interfaces"][0]["name"], "nbt0");
        reported.push(result["interfaces"][0]["mac"].clone());
    }
    let live = ip_json("link show nbt0")[0]["address"].clone();
    for mac in &reported {
        assert_eq!(mac, &live, "reported {reported:?}, live {live}");
    }
}

#[test]
fn a_failed_add_removes_the_bridge_it_made_and_never_an_existing_one() {
    if !private_host("cni::a_failed_add_removes_the_bridge_it_made_and_never_an_existing_one") {
        return;
    }
    netns::create_named("c1").expect("netns");
    // The kernel refuses a route through a gateway no interface can reach: the last step fails.
    let failing = conf(
        "1.0.0",
        json!({"ipam": {"type": "netbox", "subnet": "10.89.0.0/24",
                        "routes": [{"dst": "192.168.0.0/16", "gw": "172.31.9.9"}]}}),
    );
    let path = netns_path("c1");
    assert!(!cni(&env_of("ADD", "c1", &path), &failing).ok);
    assert!(
        !link_names().contains(&"nbt0".to_string()),
        "{:?}",
        link_names()
    );
    // A bridge that was there before stays, with its address.
    sh("ip link add nbt0 type bridge && ip addr add 10.89.0.1/24 dev nbt0");
    assert!(!cni(&env_of("ADD", "c1", &path), &failing).ok);
    assert!(link_names().contains(&"nbt0".to_string()));
    assert!(ip_json("addr show nbt0").to_string().contains("10.89.0.1"));
    assert!(host_veths().is_empty() && leases().is_empty());
}

#[test]
fn an_add_killed_at_any_moment_leaks_nothing() {
    if !private_host("cni::an_add_killed_at_any_moment_leaks_nothing") {
        return;
    }
    let firewall = which("nft");
    netns::create_named("c1").expect("netns");
    let config = conf("1.1.0", json!({"ipMasq": firewall}));
    let path = netns_path("c1");
    let env = env_of("ADD", "c1", &path);
    for trial in 0..24u64 {
        // 1-8 ms into the ADD, spread evenly over the trials.
        let delay = Duration::from_micros(1000 + (trial * 7000 / 23));
        let mut child = Command::new(cni_bin())
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start netbox-cni");
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(config.as_bytes());
        drop(input);
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        if trial % 2 == 0 {
            // DEL while the namespace lives on: nothing of the attachment may stay.
            let del = cni(&env_of("DEL", "c1", &path), &config);
            assert!(del.ok, "trial {trial}: {}", del.stdout);
            eventually("the veth to go", || {
                host_veths().is_empty() && links_in("c1") == vec!["lo".to_string()]
            });
            assert!(leases().is_empty(), "trial {trial}: {:?}", leases());
            let tables = crate::firewall::netbox_state();
            assert!(tables.is_empty(), "trial {trial}: {tables:?}");
            let records: Vec<String> = files_under(Path::new("/run/netbox/cni"))
                .into_iter()
                .filter(|f| !f.contains("/.tmp."))
                .collect();
            assert!(records.is_empty(), "trial {trial}: {records:?}");
        } else {
            // No DEL: the next ADD of the same attachment clears what the killed one left,
            // unless the killed one had finished: then it is live and the ADD is refused.
            let record =
                std::fs::read_to_string("/run/netbox/cni/c1+eth0.json").unwrap_or_default();
            if record.contains("\"ready\"") {
                assert_eq!(cni(&env, &config).code(), 4, "trial {trial}");
                assert!(cni(&env_of("DEL", "c1", &path), &config).ok);
                continue;
            }
            let result = cni(&env, &config);
            assert!(result.ok, "trial {trial}: {}", result.stdout);
            let check = cni(
                &env_of("CHECK", "c1", &path),
                &with_prev(&config, result.result()),
            );
            assert!(check.ok, "trial {trial}: {}", check.stdout);
            assert!(cni(&env_of("DEL", "c1", &path), &config).ok);
        }
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_ipam_delegate_that_stops_at_1_0_0_serves_a_1_1_0_network() {
    if !private_host("cni::an_ipam_delegate_that_stops_at_1_0_0_serves_a_1_1_0_network") {
        return;
    }
    if !Path::new(REFERENCE_HOST_LOCAL).exists() {
        skip(
            "cni::an_ipam_delegate_that_stops_at_1_0_0_serves_a_1_1_0_network",
            "containernetworking-plugins is not installed (/usr/lib/cni/host-local)",
        );
        return;
    }
    // Debian's host-local 1.1.1 speaks up to 1.0.0: called at 1.0.0, its result converted.
    let data = "/var/lib/netbox/host-local";
    let config = conf(
        "1.1.0",
        json!({"ipam": {"type": "host-local", "subnet": "10.89.3.0/24", "dataDir": data}}),
    );
    let lease = |ip: &str| Path::new(&format!("{data}/testnet/{ip}")).exists();
    for id in ["a", "b"] {
        netns::create_named(id).expect("netns");
        let result = add(id, id, &config);
        assert_eq!(result["cniVersion"], "1.1.0");
        let check = cni(
            &env_of("CHECK", id, &netns_path(id)),
            &with_prev(&config, &result),
        );
        assert!(check.ok, "{}", check.stdout);
    }
    assert!(lease("10.89.3.2") && lease("10.89.3.3"));
    assert!(cni(&env_of("DEL", "a", &netns_path("a")), &config).ok);
    assert!(!lease("10.89.3.2") && lease("10.89.3.3"));
    // GC: host-local 1.1.1 has none, so each attachment netbox recorded and the runtime no
    // longer lists gets the delegate's DEL.
    add("a", "a", &config);
    let mut gc_conf: Value = serde_json::from_str(&config).expect("json");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let gc = cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc_conf.to_string(),
    );
    assert!(gc.ok, "{}", gc.stdout);
    assert!(
        lease("10.89.3.4") && !lease("10.89.3.3"),
        "{:?}",
        files_under(Path::new(data))
    );
    eventually("b's veth to go", || host_veths().len() == 1);
    // STATUS: the delegate has none; netbox's own checks pass.
    let status = cni(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        &config,
    );
    assert!(status.ok, "{}", status.stdout);
}

/// A delegate that speaks 1.1.0: logs each call, answers STATUS with 50 while `full` exists.
fn fake_ipam(dir: &Path) -> PathBuf {
    let script = dir.join("fake-ipam");
    let log = dir.join("calls");
    let full = dir.join("full");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
input=$(cat)
echo "$CNI_COMMAND $input" >> {log}
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
ADD) echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.89.5.2/24","gateway":"10.89.5.1"}}]}}' ;;
STATUS) if [ -e {full} ]; then
    echo '{{"cniVersion":"1.1.0","code":50,"msg":"the pool is exhausted"}}'; exit 1; fi ;;
esac
"#,
            log = log.display(),
            full = full.display()
        ),
    )
    .expect("script");
    sh(&format!("chmod 755 {}", script.display()));
    log
}

#[test]
fn gc_and_status_are_forwarded_to_a_delegate_that_speaks_them() {
    if !private_host("cni::gc_and_status_are_forwarded_to_a_delegate_that_speaks_them") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fake_ipam(dir.path());
    let path = dir.path().display().to_string();
    let config = conf("1.1.0", json!({"ipam": {"type": "fake-ipam"}}));
    let status = || cni(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)], &config);
    assert!(status().ok, "{}", status().stdout);
    std::fs::write(dir.path().join("full"), "").expect("full");
    let refused = status();
    assert_eq!(refused.code(), 50, "{}", refused.stdout);
    assert!(
        refused.stdout.contains("the pool is exhausted"),
        "{}",
        refused.stdout
    );
    let mut gc_conf: Value = serde_json::from_str(&config).expect("json");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "x", "ifname": "eth0"}]);
    let gc = cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &path)],
        &gc_conf.to_string(),
    );
    assert!(gc.ok, "{}", gc.stdout);
    let calls = std::fs::read_to_string(&log).expect("log");
    let gc_call = calls
        .lines()
        .find(|l| l.starts_with("GC "))
        .unwrap_or_else(|| panic!("no GC call: {calls}"));
    assert!(gc_call.contains("cni.dev/valid-attachments"), "{gc_call}");
    assert!(gc_call.contains("\"cniVersion\":\"1.1.0\""), "{gc_call}");
    assert!(calls.lines().any(|l| l.starts_with("STATUS ")), "{calls}");
}

// ---------------------------------------------------------------------------------------------
// Store robustness.

fn netbox_ls() -> Value {
    let out = Command::new(crate::harness::netbox_bin())
        .args(["ls", "--json"])
        .output()
        .expect("netbox ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ls json")
}

#[test]
fn corrupt_store_files_are_reported_skipped_and_reclaimed() {
    if !private_host("cni::corrupt_store_files_are_reported_skipped_and_reclaimed") {
        return;
    }
    let config = conf("1.1.0", json!({}));
    for id in ["a", "b"] {
        netns::create_named(id).expect("netns");
        add(id, id, &config);
    }
    let store = format!("{LEASES}/testnet");
    // A lease that is a plain file, a lease naming no owner, b's index truncated to a plain
    // file, and a record that is not JSON.
    std::fs::write(format!("{store}/leases/10.89.0.200"), "garbage").expect("plant");
    std::os::unix::fs::symlink("../owners/nowhere", format!("{store}/leases/10.89.0.201"))
        .expect("plant");
    let b_index = format!("{store}/owners/cni/b+eth0");
    std::fs::remove_file(&b_index).expect("index");
    std::fs::write(&b_index, "10.89.0.").expect("plant");
    std::fs::write("/run/netbox/cni/zzz+eth0.json", "{\"kind\": \"cn").expect("plant");
    let garbage = netbox_ls()["garbage"].to_string();
    for planted in ["10.89.0.200", "10.89.0.201", "b+eth0", "zzz+eth0.json"] {
        assert!(
            garbage.contains(planted),
            "{planted} not reported: {garbage}"
        );
    }
    // DEL of b works despite its broken index, and releases its lease.
    assert!(cni(&env_of("DEL", "b", &netns_path("b")), &config).ok);
    assert!(
        !leases().iter().any(|l| l.ends_with("/10.89.0.3")),
        "{:?}",
        leases()
    );
    // GC of the network works despite the garbage, keeps a and removes what nobody owns.
    let mut gc_conf: Value = serde_json::from_str(&config).expect("json");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let gc = cni(&[("CNI_COMMAND", "GC")], &gc_conf.to_string());
    assert!(gc.ok, "{}", gc.stdout);
    let left: Vec<String> = leases().into_iter().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("/10.89.0.2"), "{left:?}");
    // netbox gc removes the unreadable record: nothing of its attachment exists.
    let out = Command::new(crate::harness::netbox_bin())
        .arg("gc")
        .output()
        .expect("netbox gc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/run/netbox/cni/zzz+eth0.json").exists());
    assert!(netbox_ls()["garbage"].as_array().is_some_and(Vec::is_empty));
    // a is untouched and still passes CHECK-worthy state: its lease and veth.
    assert_eq!(host_veths().len(), 1, "{:?}", host_veths());
}

#[test]
fn a_write_on_a_full_disk_leaves_no_temporary_file() {
    if !private_host("cni::a_write_on_a_full_disk_leaves_no_temporary_file") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let config = conf("1.1.0", json!({}));
    // The state directory and the lease store on a tiny file system, filled up.
    sh("mount -t tmpfs -o size=64k tmpfs /run/netbox");
    sh("mkdir -p /var/lib/netbox/ipam && mount -t tmpfs -o size=64k tmpfs /var/lib/netbox/ipam");
    add("c1", "c1", &config);
    assert!(cni(&env_of("DEL", "c1", &netns_path("c1")), &config).ok);
    for dir in ["/run/netbox", "/var/lib/netbox/ipam"] {
        // dd stops at ENOSPC: that is the point.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={dir}/fill"), "bs=4k"])
            .stderr(Stdio::null())
            .status();
    }
    let answer = cni(&env_of("ADD", "c1", &netns_path("c1")), &config);
    assert_eq!(answer.code(), 5, "{}", answer.stdout);
    let tmp: Vec<String> = files_under(Path::new("/run/netbox"))
        .into_iter()
        .chain(files_under(Path::new("/var/lib/netbox/ipam/testnet/tmp")))
        .filter(|f| f.contains(".tmp.") || f.contains("/tmp/"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    assert!(
        host_veths().is_empty() && leases().is_empty(),
        "{:?}",
        leases()
    );
}

#[test]
fn nothing_in_the_stores_follows_a_planted_symlink() {
    if !private_host("cni::nothing_in_the_stores_follows_a_planted_symlink") {
        return;
    }
    netns::create_named("c1").expect("netns");
    let config = conf("1.1.0", json!({}));
    let victim = "/var/lib/netbox/victim";
    sh(&format!(
        "mkdir -p {victim} && echo keep > {victim}/precious"
    ));
    let contents = || files_under(Path::new(victim));
    let before = contents();
    let store = format!("{LEASES}/testnet");
    sh(&format!("mkdir -p {store}"));
    let env = env_of("ADD", "c1", "/run/netns/c1");
    // Each directory or file of the stores replaced by a link into the victim directory.
    for (planted, what) in [
        (format!("{store}/tmp"), "the store's tmp/"),
        (format!("{store}/lock"), "the store's lock"),
        (format!("{store}/leases"), "the store's leases/"),
        ("/run/netbox/cni".to_string(), "the records' directory"),
    ] {
        let _ = std::fs::remove_dir_all(&store);
        sh(&format!("mkdir -p {store} && rm -rf /run/netbox/cni"));
        let target = if what.ends_with('/') || what.contains("directory") {
            victim.to_string()
        } else {
            format!("{victim}/planted-lock")
        };
        std::os::unix::fs::symlink(&target, &planted).expect("plant");
        let answer = cni(&env, &config);
        assert!(!answer.ok, "{what}: followed? {}", answer.stdout);
        assert_eq!(contents(), before, "{what}: the victim changed");
        let _ = std::fs::remove_file(&planted);
        assert!(host_veths().is_empty(), "{what}");
    }
}
