//! `netbox run --network NAME` and netbox-cni read a conflist through one model: for the same
//! configuration they build the same network, and refuse the same keys with the same message.
//! Each case sets one bridge key; the plugin attaches a namespace and `netbox run` a sandbox, and
//! what the kernel shows of both (inside: MTU, addresses, DAD, default routes; host: the bridge's
//! addresses, MTU and promiscuity, the veth's hairpin and MTU, firewall state) must match.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{cni_bin, ip_json, netbox, private_host};
use netbox::sys::netns;

/// A network with one key changed from a plain dual-stack gateway bridge; `n` keeps bridges
/// and subnets of cases apart.
fn network(name: &str, bridge: &str, net: usize, n: usize, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": name, "type": "netbox-cni",
        "bridge": bridge, "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "netbox", "ranges": [[{"subnet": format!("10.{net}.{n}.0/24")}],
                                              [{"subnet": format!("fd00:{net}:{n}::/64")}]]}
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// What the kernel shows of an attachment.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    inside_mtu: Value,
    /// (family, prefix length, tentative)
    addresses: Vec<(String, u64, bool)>,
    default_gateways: Vec<String>,
    bridge_mtu: Value,
    bridge_promisc: bool,
    bridge_addresses: Vec<String>,
    veth_mtu: Value,
    hairpin: Value,
    firewall: bool,
}

fn inside_view(
    addr: &Value,
    routes4: &Value,
    routes6: &Value,
) -> (Value, Vec<(String, u64, bool)>, Vec<String>) {
    let mut addresses: Vec<(String, u64, bool)> = addr[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .map(|i| {
                    (
                        i["family"].as_str().unwrap_or_default().to_string(),
                        i["prefixlen"].as_u64().unwrap_or_default(),
                        i["tentative"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    addresses.sort();
    let mut gateways: Vec<String> = [routes4, routes6]
        .iter()
        .flat_map(|r| r.as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["gateway"].as_str().map(str::to_string))
        .collect();
    gateways.sort();
    (addr[0]["mtu"].clone(), addresses, gateways)
}

fn host_view(bridge: &str, veth: &str) -> (Value, bool, Vec<String>, Value, Value) {
    let b = ip_json(&format!("-d addr show {bridge}"));
    let promisc = b[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "PROMISC"));
    let mut addrs: Vec<String> = b[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    let v = ip_json(&format!("-d link show {veth}"));
    (
        b[0]["mtu"].clone(),
        promisc,
        addrs,
        v[0]["mtu"].clone(),
        v[0]["linkinfo"]["info_slave_data"]["hairpin"].clone(),
    )
}

/// The plugin's ADD of namespace `ns`: what it made, or its error message.
fn plugin(conf: &Value, ns: &str) -> Result<Seen, String> {
    netns::create_named(ns).expect("netns");
    let path = format!("/run/netns/{ns}");
    let mut child = Command::new(cni_bin())
        .env_clear()
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ns),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netbox-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("config");
    let out = child.wait_with_output().expect("netbox-cni");
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    if !out.status.success() {
        return Err(answer["msg"].as_str().unwrap_or_default().to_string());
    }
    let veth = answer["interfaces"][1]["name"]
        .as_str()
        .expect("veth")
        .to_string();
    let (inside_mtu, addresses, default_gateways) = inside_view(
        &ip_json(&format!("-n {ns} addr show eth0")),
        &ip_json(&format!("-n {ns} -4 route show default")),
        &ip_json(&format!("-n {ns} -6 route show default")),
    );
    let bridge = conf["bridge"].as_str().unwrap_or("cni0");
    let (bridge_mtu, bridge_promisc, bridge_addresses, veth_mtu, hairpin) =
        host_view(bridge, &veth);
    let firewall = crate::firewall::netbox_owners().contains(&format!("owner-cni/{ns}_2Beth0"));
    Ok(Seen {
        inside_mtu,
        addresses,
        default_gateways,
        bridge_mtu,
        bridge_promisc,
        bridge_addresses,
        veth_mtu,
        hairpin,
        firewall,
    })
}

/// `netbox run --network` on the same configuration: what it made while CMD runs, or its error.
fn run(conf: &Value, dir: &std::path::Path) -> Result<Seen, String> {
    let name = conf["name"].as_str().expect("name");
    let script = "ip -j addr show eth0; ip -j -4 route show default; ip -j -6 route show default; \
                  echo READY; read _; exit 0";
    let mut child = netbox()
        .args(["run", "--network", name, "--", "sh", "-c", script])
        .env("NETBOX_CNI_CONF_DIR", dir)
        .env_remove("SUDO_UID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netbox run");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut got = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line == "READY" {
            break;
        }
        got.push(line);
    }
    if got.len() < 3 {
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("netbox run");
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let parse = |s: &str| s.parse::<Value>().unwrap_or(Value::Array(vec![]));
    let (inside_mtu, addresses, default_gateways) =
        inside_view(&parse(&got[0]), &parse(&got[1]), &parse(&got[2]));
    let bridge = conf["bridge"].as_str().unwrap_or("cni0");
    let veth = ip_json(&format!("link show master {bridge}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .find(|n| n.starts_with("nbx"))
        .expect("the run's veth");
    let (bridge_mtu, bridge_promisc, bridge_addresses, veth_mtu, hairpin) =
        host_view(bridge, &veth);
    let owner = format!("owner-proc/{}.", child.id());
    let firewall = crate::firewall::netbox_owners()
        .iter()
        .any(|t| t.starts_with(&owner));
    drop(child.stdin.take());
    let status = child.wait().expect("netbox run");
    assert!(status.success(), "netbox run failed: {status}");
    Ok(Seen {
        inside_mtu,
        addresses,
        default_gateways,
        bridge_mtu,
        bridge_promisc,
        bridge_addresses,
        veth_mtu,
        hairpin,
        firewall,
    })
}

#[test]
fn run_and_the_plugin_agree_on_every_bridge_key() {
    if !private_host("agree::run_and_the_plugin_agree_on_every_bridge_key") {
        return;
    }
    let cases = [
        json!({}),
        json!({"vlan": 0}),
        json!({"vlan": 5}),
        json!({"vlan": "x"}),
        json!({"hairpinMode": true}),
        json!({"promiscMode": true}),
        json!({"hairpinMode": true, "promiscMode": true}),
        json!({"forceAddress": true}),
        json!({"enabledad": true}),
        json!({"macspoofchk": true}),
        json!({"ipMasq": true}),
        json!({"ipMasq": true, "noMasqueradeTo": ["10.244.0.0/16", "192.168.1.0/24"]}),
        json!({"noMasqueradeTo": ["10.244.0.5/16"]}),
        json!({"isGateway": false, "isDefaultGateway": false}),
        json!({"isDefaultGateway": false}),
        json!({"mtu": 1400}),
        json!({"mtu": 20}),
        json!({"bridge": "a/b"}),
        json!({"hairpinMode": "yes"}),
        json!({"ipam": {"type": "../x"}}),
    ];
    for (n, extra) in cases.iter().enumerate() {
        // Each side gets a network of its own (name, bridge, subnets), made anew.
        let conf = network(&format!("agree{n}"), &format!("nba{n}"), 91, n, extra);
        let run_conf = network(&format!("agreerun{n}"), &format!("nbr{n}"), 92, n, extra);
        let dir = tempfile::tempdir().expect("conf dir");
        std::fs::write(
            dir.path().join("net.conflist"),
            json!({"cniVersion": "1.0.0", "name": run_conf["name"], "plugins": [run_conf]})
                .to_string(),
        )
        .expect("conflist");
        let by_plugin = plugin(&conf, &format!("agree{n}"));
        let by_run = run(&run_conf, dir.path());
        match (&by_plugin, &by_run) {
            (Ok(a), Ok(b)) => {
                // Only the bridge's own addresses differ by name; their prefixes must match.
                let strip = |v: &[String]| -> Vec<String> {
                    v.iter()
                        .map(|a| a.split('/').nth(1).unwrap_or("").to_string())
                        .collect()
                };
                assert_eq!(
                    strip(&a.bridge_addresses),
                    strip(&b.bridge_addresses),
                    "{extra}"
                );
                let mut a = a.clone();
                let mut b = b.clone();
                a.bridge_addresses.clear();
                b.bridge_addresses.clear();
                // Gateways are the first address of each side's subnets: compare their count.
                assert_eq!(
                    a.default_gateways.len(),
                    b.default_gateways.len(),
                    "{extra}"
                );
                a.default_gateways.clear();
                b.default_gateways.clear();
                assert_eq!(a, b, "{extra}: plugin and run built different networks");
                // And the key took effect (on both, being equal).
                let key = extra.as_object().and_then(|o| o.keys().next().cloned());
                match key.as_deref() {
                    Some("hairpinMode") => assert_eq!(a.hairpin, true, "{a:?}"),
                    Some("promiscMode") => assert!(a.bridge_promisc, "{a:?}"),
                    Some("mtu") => assert_eq!(a.inside_mtu, 1400, "{a:?}"),
                    Some("enabledad") => assert!(a.addresses.iter().any(|x| x.2), "{a:?}"),
                    Some("macspoofchk" | "ipMasq") => assert!(a.firewall, "{a:?}"),
                    None => {
                        assert_eq!(a.hairpin, false, "{a:?}");
                        assert!(!a.firewall && !a.bridge_promisc, "{a:?}");
                        assert!(a.addresses.iter().all(|x| !x.2), "{a:?}");
                    }
                    _ => {}
                }
            }
            (Err(a), Err(b)) => assert!(
                b.contains(a.as_str()),
                "{extra}: plugin said {a:?}, run said {b:?}"
            ),
            _ => panic!("{extra}: plugin {by_plugin:?}, run {by_run:?}"),
        }
    }
}
