//! The firewall through CNI: netbox-cni with ipMasq and one port mapping against the reference
//! chain a runtime runs for the same thing (Debian's containernetworking-plugins: bridge with
//! ipMasq + host-local, then portmap with the portMappings capability), side by side in one
//! run, cycles interleaved. ADD of the reference is bridge ADD + portmap ADD (with the bridge's
//! result as prevResult), DEL is portmap DEL + bridge DEL, as a runtime calls them.
//! Prints medians, p90 and the ratio (target: ADD <= 0.3x).
//!
//! Runs as root inside a private network + mount namespace (its own nftables ruleset).
//! `sudo cargo bench --bench firewall [-- N]` (N cycles, default 30).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, ms, private_host, require_root, samples};
use serde_json::{json, Value};

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn main() {
    let n = samples(30);
    if !require_root("firewall") {
        return;
    }
    for plugin in ["bridge", "portmap", "host-local"] {
        if !Path::new(REFERENCE_DIR).join(plugin).exists() {
            eprintln!("firewall bench: {REFERENCE_DIR}/{plugin} missing; skipped");
            return;
        }
    }
    private_host();
    let ports =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let bridge = json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": "refbench0",
        "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "subnet": "10.120.0.0/16",
                 "dataDir": "/var/lib/netbox/bench-host-local"}
    });
    let portmap = json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "portmap",
        "capabilities": {"portMappings": true}, "runtimeConfig": ports
    });
    let netbox = json!({
        "cniVersion": "1.0.0", "name": "nbbench", "type": "netbox-cni", "bridge": "nbbench0",
        "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "ipam": {"type": "netbox", "subnet": "10.121.0.0/16"},
        "runtimeConfig": ports
    });
    let netbox_bin = std::env::var("NETBOX_BENCH_CNI_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbox-cni").to_string());
    let bridge_bin = format!("{REFERENCE_DIR}/bridge");
    let portmap_bin = format!("{REFERENCE_DIR}/portmap");
    let mut times: [Vec<Duration>; 4] = Default::default();
    for i in 0..=n {
        let record = i > 0; // the first cycle of each creates its bridge and base tables
                            // Reference chain.
        let id = format!("r{i}");
        let path = netns(&id);
        let start = Instant::now();
        let result = call(&bridge_bin, "ADD", &id, &path, &bridge);
        let mut chained = portmap.clone();
        chained["prevResult"] = result;
        call(&portmap_bin, "ADD", &id, &path, &chained);
        let add = start.elapsed();
        let start = Instant::now();
        call(&portmap_bin, "DEL", &id, &path, &chained);
        call(&bridge_bin, "DEL", &id, &path, &bridge);
        let del = start.elapsed();
        netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
        if record {
            times[0].push(add);
            times[1].push(del);
        }
        // netbox-cni.
        let id = format!("n{i}");
        let path = netns(&id);
        let start = Instant::now();
        call(&netbox_bin, "ADD", &id, &path, &netbox);
        let add = start.elapsed();
        let start = Instant::now();
        call(&netbox_bin, "DEL", &id, &path, &netbox);
        let del = start.elapsed();
        netbox::sys::netns::delete_named(&format!("bench-{id}")).expect("delete netns");
        if record {
            times[2].push(add);
            times[3].push(del);
        }
    }
    println!("CNI with ipMasq + one port mapping, {n} cycles each, interleaved");
    println!(
        "{:<5} {:>28} {:>12} {:>8}",
        "op", "reference bridge+portmap", "netbox-cni", "ratio"
    );
    for (op, r, nb, target) in [("ADD", 0, 2, " (target <= 0.30)"), ("DEL", 1, 3, "")] {
        let (r_med, nb_med) = (median(&mut times[r]), median(&mut times[nb]));
        println!(
            "{op:<5} {:>25.2} ms {:>9.2} ms {:>8.3}{target}",
            ms(r_med),
            ms(nb_med),
            nb_med.as_secs_f64() / r_med.as_secs_f64()
        );
    }
}

fn netns(id: &str) -> String {
    let name = format!("bench-{id}");
    netbox::sys::netns::create_named(&name).expect("netns");
    format!("/run/netns/{name}")
}

fn call(binary: &str, command: &str, id: &str, netns: &str, config: &Value) -> Value {
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        // portmap runs iptables: it needs a PATH.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plugin");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(config.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("wait plugin");
    assert!(
        out.status.success(),
        "{binary} {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}
