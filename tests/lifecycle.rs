//! Named sandboxes and their lifecycle (`netbox ns`, `exec`, `ls`, `gc`, `run --name`), and crash
//! safety: netbox, `netbox ns add/del` and `netbox-cni ADD` killed with SIGKILL at random points,
//! then checked with `ip -j link`, `ip netns list`, the lease files and the record directory.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{cni_bin, eventually, files_under, ip_json, netbox, private_host, sh};

const LEASES: &str = "/var/lib/netbox/ipam";
const RECORDS: &str = "/run/netbox";

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nb(args: &[&str]) -> Output {
    netbox()
        .args(args)
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("start netbox")
}

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a failing
/// sequence can be read back from the log.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How long `f` takes, in microseconds: the kill delays are drawn over the span of the
/// operation on this machine now (a loaded machine stretches it), so kills land in set-up and
/// teardown rather than before the start or after the end.
fn span_us(mut f: impl FnMut()) -> u64 {
    let start = std::time::Instant::now();
    f();
    (start.elapsed().as_micros() as u64).max(1000)
}

/// Kills `child` with SIGKILL after `micros`, unless it ended first; true when it was killed.
fn kill_after(mut child: Child, micros: u64) -> bool {
    std::thread::sleep(Duration::from_micros(micros));
    let done = matches!(child.try_wait(), Ok(Some(_)));
    if !done {
        let _ = child.kill();
    }
    let _ = child.wait();
    !done
}

/// Links as `(name, alias)`, per `ip -j link`.
fn links() -> BTreeSet<(String, String)> {
    ip_json("link show")
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    (
                        l["ifname"].as_str().unwrap_or("").to_string(),
                        l["ifalias"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn netns_names() -> BTreeSet<String> {
    ip_json("netns list")
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn lease_files() -> BTreeSet<String> {
    files_under(Path::new(LEASES))
        .into_iter()
        .filter(|f| f.contains("/leases/") || f.contains("/owners/"))
        .collect()
}

fn record_files() -> BTreeSet<String> {
    files_under(Path::new(RECORDS))
        .into_iter()
        // Lock files, kept on purpose: the lifecycle lock and the CNI admission queue.
        .filter(|f| !f.ends_with("/lock") && !f.ends_with("/cni-queue"))
        .collect()
}

/// What the host looks like apart from netbox's sandboxes: taken once the bridges exist, with
/// foreign things netbox must never touch (a veth named like netbox's without its alias, a
/// bridge, a named namespace).
struct Baseline {
    links: BTreeSet<(String, String)>,
    netns: BTreeSet<String>,
}

fn baseline() -> Baseline {
    sh("ip link add nbxdeadbeef type veth peer name foreign1");
    sh("ip link add keep0 type bridge");
    sh("ip netns add foreign");
    Baseline {
        links: links(),
        netns: netns_names(),
    }
}

/// Nothing netbox made remains, nothing else changed.
fn assert_clean(base: &Baseline, context: &str) {
    // A namespace's veths go with it, but the kernel finishes that asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = links();
        if now == base.links {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: links differ from the baseline: extra {:?}, missing {:?}; netns {:?}; \
             records {:?}",
            now.difference(&base.links).collect::<Vec<_>>(),
            base.links.difference(&now).collect::<Vec<_>>(),
            netns_names(),
            record_files()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(netns_names(), base.netns, "{context}");
    assert_eq!(lease_files(), BTreeSet::new(), "{context}");
    assert_eq!(record_files(), BTreeSet::new(), "{context}");
}

fn gc() -> String {
    ok(&nb(&["gc"]))
}

/// A gc killed after a random delay (up to `span` µs): the next gc finishes its work.
fn killed_gc(rng: &mut Rng, span: u64) {
    let child = netbox()
        .arg("gc")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gc");
    kill_after(child, rng.below(span));
}

/// Makes the built-in network's bridge and the CNI test network's bridge exist.
fn warm_up() {
    ok(&nb(&["ns", "add", "warm"]));
    ok(&nb(&["ns", "del", "warm"]));
    sh("ip netns add warmctr");
    let add = cni_add("warmctr", "warmctr")
        .wait_with_output()
        .expect("ADD");
    ok(&add);
    ok(&cni_del("warmctr", "warmctr"));
    sh("ip netns del warmctr");
    // The kernel (and the DEL's reaper) finish removing the veths in the background.
    eventually("the warm-up veths gone", || {
        !links().iter().any(|(_, alias)| alias.starts_with("netbox"))
    });
}

const CNI_CONF: &str = r#"{"cniVersion":"1.0.0","name":"lifenet","type":"netbox-cni",
"bridge":"nbl0","isGateway":true,"isDefaultGateway":true,
"ipam":{"type":"netbox","subnet":"10.90.0.0/24"}}"#;

fn cni_command(command: &str, id: &str, netns: &str) -> Command {
    let mut c = Command::new(cni_bin());
    c.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn cni_add(id: &str, netns: &str) -> Child {
    let mut child = cni_command("ADD", id, netns).spawn().expect("start ADD");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(CNI_CONF.as_bytes());
    drop(input);
    child
}

fn cni_del(id: &str, netns: &str) -> Output {
    let mut child = cni_command("DEL", id, netns).spawn().expect("start DEL");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(CNI_CONF.as_bytes());
    drop(input);
    child.wait_with_output().expect("DEL")
}

fn sandbox_record(name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(format!("{RECORDS}/sandboxes/{name}.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[test]
fn ns_add_exec_del() {
    if !private_host("lifecycle::ns_add_exec_del") {
        return;
    }
    let out = ok(&nb(&["ns", "add", "web", "--ip", "10.117.0.50"]));
    assert!(out.contains("10.117.0.50/24"), "{out}");
    // iproute2 sees it, and the sandbox's address is where netbox says.
    assert!(netns_names().contains("web"));
    let addrs = sh("ip netns exec web ip -j addr show eth0");
    assert!(addrs.contains("10.117.0.50"), "{addrs}");
    // The host veth records its owner.
    let record = sandbox_record("web").expect("record");
    assert_eq!(record["phase"], "ready");
    let veth = record["host_ifname"].as_str().expect("veth").to_string();
    assert!(links().contains(&(veth.clone(), "netbox:netbox:named/web".into())));
    // exec: same private files and hostname treatment as run, exit codes passed on.
    let out = ok(&nb(&[
        "exec",
        "web",
        "--hostname",
        "webhost",
        "--",
        "sh",
        "-c",
        "hostname; cat /etc/hosts; ip -o addr show eth0",
    ]));
    assert!(out.starts_with("webhost\n"), "{out}");
    assert!(out.contains("10.117.0.50\twebhost"), "{out}");
    assert!(out.contains("inet 10.117.0.50/24"), "{out}");
    assert_eq!(
        nb(&["exec", "web", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        nb(&["exec", "nosuch", "--", "true"]).status.code(),
        Some(125)
    );
    // A second add of the name fails and changes nothing.
    let before = (links(), lease_files(), record_files());
    assert!(!nb(&["ns", "add", "web"]).status.success());
    assert_eq!(before, (links(), lease_files(), record_files()));
    // A namespace netbox did not make is not netbox's to delete.
    sh("ip netns add other");
    let out = nb(&["ns", "del", "other"]);
    assert!(!out.status.success());
    assert!(netns_names().contains("other"));
    // gc keeps a live sandbox.
    gc();
    assert!(sandbox_record("web").is_some());
    assert!(links().iter().any(|(n, _)| *n == veth));
    // del removes all of it, and is idempotent.
    ok(&nb(&["ns", "del", "web"]));
    ok(&nb(&["ns", "del", "web"]));
    assert!(!netns_names().contains("web"));
    // The kernel removes the pair with the namespace.
    eventually("the veth gone", || !links().iter().any(|(n, _)| *n == veth));
    assert_eq!(lease_files(), BTreeSet::new());
    assert_eq!(record_files(), BTreeSet::new());
}

#[test]
fn run_name_is_visible_while_it_lives_and_ls_shows_everything() {
    if !private_host("lifecycle::run_name_is_visible_while_it_lives_and_ls_shows_everything") {
        return;
    }
    ok(&nb(&["ns", "add", "persist"]));
    let mut named = netbox()
        .args(["run", "--name", "r1", "--", "sleep", "30"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .spawn()
        .expect("run");
    eventually("r1 named", || netns_names().contains("r1"));
    eventually("r1 recorded", || sandbox_record("r1").is_some());
    // exec into a running sandbox by its name.
    let out = ok(&nb(&[
        "exec", "r1", "--", "ip", "-o", "-4", "addr", "show", "eth0",
    ]));
    assert!(out.contains("inet 10.117.0."), "{out}");
    // An unnamed run, killed: its lease is stale (its veth went with its namespace).
    let mut doomed = netbox()
        .args(["run", "--", "sleep", "30"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .spawn()
        .expect("run");
    eventually("three leases", || {
        lease_files()
            .iter()
            .filter(|f| f.contains("/leases/"))
            .count()
            == 3
    });
    doomed.kill().expect("kill");
    doomed.wait().expect("wait");
    let listing: Value = serde_json::from_str(&ok(&nb(&["ls", "--json"]))).expect("json");
    let sandboxes = listing["sandboxes"].as_array().expect("sandboxes");
    let by_name = |n: &str| {
        sandboxes
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {listing}"))
    };
    assert_eq!(by_name("persist")["kind"], "ns");
    assert_eq!(by_name("persist")["state"], "live");
    assert_eq!(by_name("r1")["kind"], "run");
    assert_eq!(by_name("r1")["pid"], named.id());
    assert!(by_name("r1")["host_veth"].is_string());
    let stale = listing["stale_leases"].as_array().expect("stale");
    assert_eq!(stale.len(), 1, "{listing}");
    assert!(stale[0]["owner"]
        .as_str()
        .is_some_and(|o| o.starts_with(&format!("proc/{}.", doomed.id()))));
    // gc takes the stale lease only.
    let out = gc();
    assert!(out.contains("lease"), "{out}");
    assert_eq!(
        lease_files()
            .iter()
            .filter(|f| f.contains("/leases/"))
            .count(),
        2
    );
    // The name goes with the run.
    named.kill().expect("kill");
    named.wait().expect("wait");
    // The next run (or gc) finds the name of a killed run and removes it.
    ok(&nb(&["run", "--", "true"]));
    assert!(!netns_names().contains("r1"));
    assert!(sandbox_record("r1").is_none());
    ok(&nb(&["ns", "del", "persist"]));
    gc();
    assert_eq!(lease_files(), BTreeSet::new());
    assert_eq!(record_files(), BTreeSet::new());
    assert_eq!(netns_names(), BTreeSet::new());
}

/// `netbox run` (half of them named) killed anywhere in set-up, the command or teardown: the
/// next run, or gc, leaves nothing.
#[test]
fn run_killed_anywhere_leaves_nothing() {
    if !private_host("lifecycle::run_killed_anywhere_leaves_nothing") {
        return;
    }
    warm_up();
    let base = baseline();
    let mut rng = Rng::new();
    let span = span_us(|| {
        ok(&nb(&["run", "--name", "probe", "--", "sleep", "0.005"]));
    });
    let mut killed = 0;
    for trial in 0..40 {
        let name = format!("r{trial}");
        let mut args = vec!["run"];
        if trial % 2 == 0 {
            args.extend(["--name", &name]);
        }
        args.extend(["--", "sleep", "0.005"]);
        let child = netbox()
            .args(&args)
            .env_remove("SUDO_UID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run");
        if kill_after(child, rng.below(span)) {
            killed += 1;
        }
        if trial % 3 == 0 {
            // Without gc: the next run cleans up after a killed one.
            ok(&nb(&["run", "--", "true"]));
        } else {
            gc();
        }
        assert_clean(&base, &format!("run trial {trial}"));
    }
    println!("{killed} of 40 runs killed");
    assert!(killed > 5, "the delays missed the runs: {killed} killed");
}

/// `netbox ns add` and `netbox ns del` killed anywhere (and a gc killed after them): after gc, a sandbox is either whole and
/// live (and then deletes cleanly) or entirely gone.
#[test]
fn ns_add_and_del_killed_anywhere_leave_whole_sandboxes_or_nothing() {
    if !private_host("lifecycle::ns_add_and_del_killed_anywhere_leave_whole_sandboxes_or_nothing") {
        return;
    }
    warm_up();
    let base = baseline();
    let mut rng = Rng::new();
    let add_span = span_us(|| {
        ok(&nb(&["ns", "add", "probe"]));
    });
    let del_span = span_us(|| {
        ok(&nb(&["ns", "del", "probe"]));
    });
    assert_clean(&base, "after the probe");
    let mut killed = 0;
    for trial in 0..40 {
        let name = format!("s{trial}");
        let add = netbox()
            .args(["ns", "add", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ns add");
        if kill_after(add, rng.below(add_span)) {
            killed += 1;
        }
        if trial % 2 == 0 {
            let del = netbox()
                .args(["ns", "del", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ns del");
            if kill_after(del, rng.below(del_span)) {
                killed += 1;
            }
        }
        killed_gc(&mut rng, del_span);
        gc();
        if let Some(record) = sandbox_record(&name) {
            // Kept by gc: it must be whole.
            assert_eq!(record["phase"], "ready", "trial {trial}: {record}");
            assert!(netns_names().contains(&name), "trial {trial}");
            let veth = record["host_ifname"].as_str().expect("veth");
            assert!(links().iter().any(|(n, _)| n == veth), "trial {trial}");
            assert_eq!(
                lease_files()
                    .iter()
                    .filter(|f| f.contains("/leases/"))
                    .count(),
                1,
                "trial {trial}"
            );
            ok(&nb(&["ns", "del", &name]));
        }
        assert_clean(&base, &format!("ns trial {trial}"));
    }
    println!("{killed} ns operations killed");
    assert!(killed > 5, "the delays missed: {killed} killed");
}

/// `netbox-cni ADD` killed anywhere, then the runtime removes its namespace (as it does after a
/// failed ADD): gc, even after a gc that was killed, leaves nothing.
#[test]
fn cni_add_killed_anywhere_leaves_nothing_after_gc() {
    if !private_host("lifecycle::cni_add_killed_anywhere_leaves_nothing_after_gc") {
        return;
    }
    warm_up();
    let base = baseline();
    let mut rng = Rng::new();
    sh("ip netns add probe");
    let span = span_us(|| {
        ok(&cni_add("probe", "probe").wait_with_output().expect("ADD"));
    });
    ok(&cni_del("probe", "probe"));
    sh("ip netns del probe");
    let mut killed = 0;
    for trial in 0..40 {
        let ctr = format!("ctr{trial}");
        sh(&format!("ip netns add {ctr}"));
        let id = format!("c{trial:04}");
        if kill_after(cni_add(&id, &ctr), rng.below(span)) {
            killed += 1;
        }
        if trial % 2 == 0 {
            // A live attachment, or a half-made one whose namespace still exists: gc leaves a
            // finished one alone (the runtime owns it) and removes an unfinished one.
            gc();
            let attached = Path::new(&format!("{RECORDS}/cni/{id}+eth0.json")).exists();
            if attached {
                let rec: Value = serde_json::from_str(
                    &std::fs::read_to_string(format!("{RECORDS}/cni/{id}+eth0.json"))
                        .expect("record"),
                )
                .expect("json");
                assert_eq!(rec["phase"], "ready", "trial {trial}");
            }
        }
        sh(&format!("ip netns del {ctr}"));
        killed_gc(&mut rng, span);
        gc();
        assert_clean(&base, &format!("cni trial {trial}"));
    }
    println!("{killed} of 40 ADDs killed");
    assert!(killed > 5, "the delays missed: {killed} killed");
}

/// Two gcs at once, and gcs during ADDs and `ns add`s, never remove a live attachment (nor a
/// running `netbox run`'s).
#[test]
fn concurrent_gcs_never_remove_live_attachments() {
    if !private_host("lifecycle::concurrent_gcs_never_remove_live_attachments") {
        return;
    }
    warm_up();
    let base = baseline();
    // A running sandbox, named, whose process is alive throughout.
    let mut running = netbox()
        .args(["run", "--name", "running", "--", "sleep", "60"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .spawn()
        .expect("run");
    eventually("the run named", || sandbox_record("running").is_some());
    let run_veth = sandbox_record("running").expect("record")["host_ifname"]
        .as_str()
        .expect("veth")
        .to_string();
    for round in 0..6 {
        let ctr = format!("live{round}");
        sh(&format!("ip netns add {ctr}"));
        let id = format!("live{round:04}");
        let add = cni_add(&id, &ctr);
        let ns = format!("n{round}");
        let ns_add = netbox()
            .args(["ns", "add", &ns])
            .stdout(Stdio::null())
            .spawn()
            .expect("ns add");
        let gcs: Vec<Child> = (0..2)
            .map(|_| {
                netbox()
                    .arg("gc")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("gc")
            })
            .collect();
        ok(&add.wait_with_output().expect("ADD"));
        ok(&ns_add.wait_with_output().expect("ns add"));
        for g in gcs {
            ok(&g.wait_with_output().expect("gc"));
        }
        gc();
        // Both attachments are whole.
        let inside = sh(&format!("ip netns exec {ctr} ip -o -4 addr show eth0"));
        assert!(inside.contains("inet 10.90.0."), "round {round}: {inside}");
        let inside = sh(&format!("ip netns exec {ns} ip -o -4 addr show eth0"));
        assert!(inside.contains("inet 10.117.0."), "round {round}: {inside}");
        assert!(sandbox_record(&ns).is_some());
        assert!(Path::new(&format!("{RECORDS}/cni/{id}+eth0.json")).exists());
        assert!(links().iter().any(|(n, _)| *n == run_veth), "round {round}");
        let inside = ok(&nb(&["exec", "running", "--", "ip", "-o", "-4", "addr"]));
        assert!(inside.contains("inet 10.117.0."), "round {round}: {inside}");
    }
    let leases = lease_files()
        .iter()
        .filter(|f| f.contains("/leases/"))
        .count();
    assert_eq!(leases, 13);
    running.kill().expect("kill the run");
    running.wait().expect("wait");
    gc();
    for round in 0..6 {
        ok(&cni_del(
            &format!("live{round:04}"),
            &format!("live{round}"),
        ));
        sh(&format!("ip netns del live{round}"));
        ok(&nb(&["ns", "del", &format!("n{round}")]));
    }
    assert_clean(&base, "after the deletions");
}

/// A `ns add` of a name whose earlier `ns add` was killed clears what that one left, without gc.
#[test]
fn ns_add_again_after_a_killed_add_clears_its_leftovers() {
    if !private_host("lifecycle::ns_add_again_after_a_killed_add_clears_its_leftovers") {
        return;
    }
    warm_up();
    let base = baseline();
    let mut rng = Rng::new();
    let span = span_us(|| {
        ok(&nb(&["ns", "add", "probe"]));
    });
    ok(&nb(&["ns", "del", "probe"]));
    for trial in 0..20 {
        let add = netbox()
            .args(["ns", "add", "again"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ns add");
        kill_after(add, rng.below(span));
        let finished = sandbox_record("again").is_some_and(|r| r["phase"] == "ready");
        let out = nb(&["ns", "add", "again"]);
        assert_eq!(
            out.status.success(),
            !finished,
            "trial {trial}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record = sandbox_record("again").expect("record");
        assert_eq!(record["phase"], "ready", "trial {trial}");
        assert_eq!(
            lease_files()
                .iter()
                .filter(|f| f.contains("/leases/"))
                .count(),
            1,
            "trial {trial}"
        );
        ok(&nb(&["ns", "del", "again"]));
        assert_clean(&base, &format!("again trial {trial}"));
    }
}
