//! Named sandboxes: `netbox ns add NAME` + `netbox ns del NAME` against the same work done with
//! iproute2 (`ip netns add`, one `ip -batch` for veth + bridge port + address + routes, `ip
//! netns del`), `netbox exec` against `ip netns exec`, and `netbox gc` with live sandboxes. Runs
//! interleaved in a private host; prints medians and ratios.

mod common;

use std::time::Duration;

use common::{median, ms, private_host, require_root, samples, time_command};

fn main() {
    if !require_root("lifecycle") {
        return;
    }
    private_host();
    let n = samples(30);
    let netbox = env!("CARGO_BIN_EXE_netbox");
    // The bridge of the built-in network exists for both sides, as on a host in use.
    time_command(&[netbox, "ns", "add", "warm"]);
    time_command(&[netbox, "ns", "del", "warm"]);
    let batch = std::env::temp_dir().join(format!("netbox-bench-{}.ip", std::process::id()));
    let inside = std::env::temp_dir().join(format!("netbox-bench-{}.in.ip", std::process::id()));
    let (mut ip_add, mut ip_del, mut nb_add, mut nb_del) = (vec![], vec![], vec![], vec![]);
    let (mut ip_exec, mut nb_exec) = (vec![], vec![]);
    for i in 0..n {
        let ip_name = format!("ipref{i}");
        let veth = format!("vref{i}");
        std::fs::write(
            &batch,
            format!(
                "link add {veth} type veth peer name eth0 netns {ip_name}\n\
                 link set {veth} master netbox0 up\n"
            ),
        )
        .expect("batch file");
        std::fs::write(
            &inside,
            format!(
                "addr add 10.117.0.{}/24 dev eth0\n\
                 link set eth0 up\n\
                 link set lo up\n\
                 route add default via 10.117.0.1\n",
                200 + (i % 50)
            ),
        )
        .expect("batch file");
        let batch_path = batch.to_str().expect("path");
        let inside_path = inside.to_str().expect("path");
        let nb_name = format!("nb{i}");
        ip_add.push(
            time_command(&["ip", "netns", "add", &ip_name])
                + time_command(&["ip", "-batch", batch_path])
                + time_command(&["ip", "-n", &ip_name, "-batch", inside_path]),
        );
        nb_add.push(time_command(&[netbox, "ns", "add", &nb_name]));
        ip_exec.push(time_command(&["ip", "netns", "exec", &ip_name, "true"]));
        nb_exec.push(time_command(&[netbox, "exec", &nb_name, "--", "true"]));
        // iproute2 leaves the veth to the kernel's namespace teardown; netbox deletes it first
        // so that the address is free at once even if a process still holds the namespace.
        ip_del.push(time_command(&["ip", "netns", "del", &ip_name]));
        nb_del.push(time_command(&[netbox, "ns", "del", &nb_name]));
    }
    let _ = std::fs::remove_file(&batch);
    let _ = std::fs::remove_file(&inside);
    // gc with 20 live sandboxes and nothing to remove.
    for i in 0..20 {
        time_command(&[netbox, "ns", "add", &format!("live{i}")]);
    }
    let mut gc: Vec<Duration> = (0..n).map(|_| time_command(&[netbox, "gc"])).collect();
    for i in 0..20 {
        time_command(&[netbox, "ns", "del", &format!("live{i}")]);
    }
    let row = |what: &str, v: &mut Vec<Duration>| {
        let m = median(v);
        println!("{what:<42} median {:7.2} ms", ms(m));
        m
    };
    println!("lifecycle bench, {n} samples each, interleaved");
    let a = row("ip netns add + 2 ip -batch (veth, addr, rt)", &mut ip_add);
    let b = row("netbox ns add", &mut nb_add);
    let c = row("ip netns exec NAME true", &mut ip_exec);
    let d = row("netbox exec NAME -- true", &mut nb_exec);
    let e = row("ip netns del", &mut ip_del);
    let f = row("netbox ns del", &mut nb_del);
    row("netbox gc (20 live sandboxes)", &mut gc);
    println!("ratio ns add netbox/iproute2: {:.2}", ms(b) / ms(a));
    println!("ratio exec netbox/iproute2:   {:.2}", ms(d) / ms(c));
    println!("ratio ns del netbox/iproute2: {:.2}", ms(f) / ms(e));
}
