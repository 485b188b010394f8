//! The lease store against concurrent processes, crashes, dead owners and bad input. It needs
//! no privileges: each test works in its own temporary data directory.
//!
//! Several tests re-run this test binary as helper processes (see [`helper`]): that is how
//! they get truly separate processes, which they can kill with SIGKILL at a chosen step.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use netbox::model::ipam::default_data_dir;
use netbox::model::ipam::{IpamConfig, IpamError};
use netbox::model::owner::Owner;
use netbox::provision::leases::Step;
use netbox::provision::leases::Store;
use serde_json::{json, Value};

/// What a helper process does (unset: the helper test does nothing).
const ACTION: &str = "NETBOX_IPAM_HELPER";
const DIR: &str = "NETBOX_IPAM_HELPER_DIR";
const NET: &str = "NETBOX_IPAM_HELPER_NET";
const CONFIG: &str = "NETBOX_IPAM_HELPER_CONFIG";
const OWNERS: &str = "NETBOX_IPAM_HELPER_OWNERS";
const PAUSE_AT: &str = "NETBOX_IPAM_HELPER_PAUSE_AT";

fn cfg(v: Value) -> IpamConfig {
    IpamConfig::from_json(&v).expect("valid config")
}

fn cni(id: &str) -> Owner {
    Owner::Cni {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn store(dir: &Path) -> Store {
    Store::open(dir, "testnet").expect("open store")
}

/// Runs inside helper processes only, as directed by the environment.
#[test]
fn helper() {
    let Ok(action) = std::env::var(ACTION) else {
        return;
    };
    let dir = std::env::var(DIR).expect("helper dir");
    let net = std::env::var(NET).expect("helper network");
    let config: Value = serde_json::from_str(&std::env::var(CONFIG).expect("helper config"))
        .expect("helper config JSON");
    let config = cfg(config);
    let store = Store::open(Path::new(&dir), &net)
        .expect("helper store")
        .with_step_hook(pause_if_asked);
    let say = |line: String| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").expect("stdout");
        out.flush().expect("stdout");
    };
    match action.as_str() {
        // Allocates for each listed CNI owner; prints the addresses.
        "allocate" => {
            for id in std::env::var(OWNERS).expect("owners").split(',') {
                for a in store.allocate(&config, &cni(id), &[]).expect("allocate") {
                    say(format!("LEASE {id} {}", a.address.ip()));
                }
            }
        }
        // Allocates for this process and exits without releasing (as after a crash).
        "allocate-process" => {
            let owner = Owner::current_process().expect("owner");
            let Owner::Process { pid, start_time } = owner else {
                unreachable!("current_process is a process owner")
            };
            say(format!("OWNER {pid} {start_time}"));
            for a in store.allocate(&config, &owner, &[]).expect("allocate") {
                say(format!("LEASE {pid} {}", a.address.ip()));
            }
        }
        // Allocates then releases for one CNI owner (pausing where PAUSE_AT says).
        "allocate-release" => {
            let owner = cni(&std::env::var(OWNERS).expect("owner"));
            store.allocate(&config, &owner, &[]).expect("allocate");
            store.release(&owner).expect("release");
        }
        // Allocates and releases for ever, until killed.
        "churn" => {
            let pid = std::process::id();
            for n in 0u64.. {
                let owner = cni(&format!("churn-{pid}-{n}"));
                store.allocate(&config, &owner, &[]).expect("allocate");
                if n % 2 == 0 {
                    store.release(&owner).expect("release");
                }
            }
        }
        "default-dir" => say(format!("DIR {}", default_data_dir().display())),
        other => panic!("unknown helper action {other}"),
    }
}

fn pause_if_asked(step: Step) {
    if std::env::var(PAUSE_AT).ok().as_deref() == Some(format!("{step:?}").as_str()) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PAUSED");
        let _ = out.flush();
        drop(out);
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Starts a helper process on `dir`'s store.
fn spawn_helper(dir: &Path, config: &Value, action: &str, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["ipam::helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(ACTION, action)
        .env(DIR, dir)
        .env(NET, "testnet")
        .env(CONFIG, config.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn helper")
}

/// Waits for a helper and returns its protocol lines, failing with its output if it failed.
fn finish(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("wait helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "helper did not run:\n{stdout}");
    protocol_lines(&stdout)
}

/// The helper's own lines. libtest prints `test ipam::helper ... ` without a newline before
/// the test's first output, so a marker may start mid-line.
fn protocol_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            ["LEASE ", "OWNER ", "DIR "]
                .iter()
                .filter_map(|m| l.find(m))
                .min()
                .map(|at| l[at..].to_string())
        })
        .collect()
}

/// Reads a helper's stdout until it reports PAUSED, then kills it with SIGKILL.
fn kill_when_paused(mut child: Child) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The helper sleeps a bounded time, so a helper that never pauses ends this loop too.
    let paused = lines.any(|l| l.map(|l| l.ends_with("PAUSED")).unwrap_or(false));
    child.kill().expect("SIGKILL helper");
    let status = child.wait().expect("reap helper");
    if !paused {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("helper never paused ({status}):\n{err}");
    }
}

/// The store's invariants: every lease is found through its owner's index, no owner holds two
/// addresses of one range set, no address is reserved or outside the configuration.
fn assert_consistent(store: &Store, config: &IpamConfig) {
    let leases = store.leases().expect("leases");
    let mut per_owner: HashMap<(String, usize), IpAddr> = HashMap::new();
    for lease in &leases {
        let of = store.leases_of(&lease.owner).expect("leases_of");
        assert!(
            of.iter().any(|l| l.ip == lease.ip),
            "lease {} of {} is missing from its owner's index",
            lease.ip,
            lease.owner
        );
        let set = config
            .set_of(lease.ip)
            .expect("lease inside the configuration");
        assert!(
            config.range_sets[set]
                .iter()
                .all(|r| !r.contains(lease.ip) || !r.is_reserved(lease.ip)),
            "reserved address {} leased",
            lease.ip
        );
        if let Some(other) = per_owner.insert((format!("{:?}", lease.owner), set), lease.ip) {
            panic!(
                "{} holds {other} and {} in one range set",
                lease.owner, lease.ip
            );
        }
    }
    let distinct: HashSet<IpAddr> = leases.iter().map(|l| l.ip).collect();
    assert_eq!(distinct.len(), leases.len(), "an address is leased twice");
}

#[test]
fn processes_allocating_40_way_concurrently_get_200_distinct_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({"subnet": "10.20.0.0/24"});
    let children: Vec<Child> = (0..40)
        .map(|p| {
            let owners: Vec<String> = (0..5).map(|i| format!("c{p}-{i}")).collect();
            spawn_helper(
                dir.path(),
                &config,
                "allocate",
                &[(OWNERS, &owners.join(","))],
            )
        })
        .collect();
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for child in children {
        for line in finish(child) {
            let mut parts = line.split(' ').skip(1);
            let (owner, addr) = (parts.next().expect("owner"), ip(parts.next().expect("ip")));
            if let Some(other) = seen.insert(addr, owner.to_string()) {
                panic!("{addr} handed to both {other} and {owner}");
            }
        }
    }
    assert_eq!(seen.len(), 200);
    let store = store(dir.path());
    let config = cfg(config);
    assert_eq!(store.leases().expect("leases").len(), 200);
    assert_consistent(&store, &config);
    for (addr, owner) in &seen {
        let of = store.leases_of(&cni(owner)).expect("leases_of");
        assert_eq!(of.iter().map(|l| l.ip).collect::<Vec<_>>(), vec![*addr]);
    }
}

#[test]
fn threads_sharing_one_store_get_distinct_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(json!({"subnet": "10.21.0.0/24"}));
    let all: Vec<IpAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (store, config) = (&store, &config);
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let got = store
                                .allocate(config, &cni(&format!("t{t}-{i}")), &[])
                                .expect("allocate");
                            got[0].address.ip()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 200);
    assert_consistent(&store, &config);
}

#[test]
fn a_process_killed_at_any_step_leaves_a_consistent_store() {
    let config_json = json!({"subnet": "10.22.0.0/28"});
    let config = cfg(config_json.clone());
    for (step, action) in [
        (Step::IndexWritten, "allocate"),
        (Step::LeasesWritten, "allocate"),
        (Step::LeasesRemoved, "allocate-release"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let neighbour = cni("neighbour");
        store.allocate(&config, &neighbour, &[]).expect("allocate");
        let step_name = format!("{step:?}");
        kill_when_paused(spawn_helper(
            dir.path(),
            &config_json,
            action,
            &[(OWNERS, "victim"), (PAUSE_AT, &step_name)],
        ));
        // The lock died with the process: the store is usable, and consistent.
        assert_consistent(&store, &config);
        let victim = cni("victim");
        let held = store.leases_of(&victim).expect("leases_of").len();
        assert_eq!(held, usize::from(step == Step::LeasesWritten), "{step:?}");
        let again = store
            .allocate(&config, &victim, &[])
            .expect("allocate after crash");
        let other = store
            .allocate(&config, &cni("other"), &[])
            .expect("allocate");
        assert_ne!(again[0].address, other[0].address, "{step:?}");
        assert_consistent(&store, &config);
        assert_eq!(store.release(&victim).expect("release"), 1, "{step:?}");
        assert_eq!(
            store.release(&victim).expect("release again"),
            0,
            "{step:?}"
        );
        assert_eq!(store.leases().expect("leases").len(), 2, "{step:?}");
        assert_eq!(store.leases_of(&neighbour).expect("neighbour").len(), 1);
    }
}

#[test]
fn processes_killed_at_random_moments_leave_a_consistent_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for seconds of churn, so the helper is killed mid-work, never stopped by exhaustion.
    let config_json = json!({"subnet": "10.23.0.0/22"});
    let config = cfg(config_json.clone());
    let store = store(dir.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7)
        ^ std::process::id();
    let mut x = u64::from(seed) | 1;
    let mut churned = 0;
    for _ in 0..12 {
        // xorshift: cheap varied delays, so kills land on different steps.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut child = spawn_helper(dir.path(), &config_json, "churn", &[]);
        std::thread::sleep(Duration::from_millis(30 + x % 100));
        child.kill().expect("SIGKILL churn");
        child.wait().expect("reap churn");
        assert_consistent(&store, &config);
        // Churn keeps every other owner's lease: gc frees them, and counts that it worked.
        churned += store.gc(&[]).expect("gc").len();
    }
    assert!(churned > 0, "the helpers were killed before doing anything");
    let got = store
        .allocate(&config, &cni("after"), &[])
        .expect("allocate");
    assert!(config.set_of(got[0].address.ip()).is_some());
    assert_consistent(&store, &config);
}

#[test]
fn leases_of_dead_processes_are_reclaimed_and_live_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_json = json!({"subnet": "10.24.0.0/24"});
    let config = cfg(config_json.clone());
    let store = store(dir.path());
    let me = Owner::current_process().expect("this process");
    assert!(me.is_alive());
    let mine = store.allocate(&config, &me, &[]).expect("allocate");
    let lines = finish(spawn_helper(
        dir.path(),
        &config_json,
        "allocate-process",
        &[],
    ));
    let owner_line = lines
        .iter()
        .find(|l| l.starts_with("OWNER "))
        .expect("owner line");
    let fields: Vec<&str> = owner_line.split(' ').collect();
    let dead = Owner::Process {
        pid: fields[1].parse().expect("pid"),
        start_time: fields[2].parse().expect("start time"),
    };
    assert!(!dead.is_alive(), "the helper exited and was reaped");
    assert_eq!(store.leases_of(&dead).expect("leases_of").len(), 1);
    // Also a process killed between its index and its lease: its index goes, nothing else.
    kill_when_paused(spawn_helper(
        dir.path(),
        &config_json,
        "allocate-process",
        &[(PAUSE_AT, "IndexWritten")],
    ));
    assert_eq!(store.reclaim_dead().expect("reclaim"), 1);
    assert!(store.leases_of(&dead).expect("leases_of").is_empty());
    let left = store.leases().expect("leases");
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].ip, &left[0].owner), (mine[0].address.ip(), &me));
    assert_eq!(store.reclaim_dead().expect("reclaim again"), 0);
    assert!(
        std::fs::read_dir(store.dir().join("owners/proc"))
            .expect("proc owners")
            .count()
            == 1,
        "only this process's index is left"
    );
}

#[test]
fn gc_releases_all_but_valid_attachments_and_live_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_json =
        json!({"ranges": [[{"subnet": "10.25.0.0/24"}], [{"subnet": "fd00:25::/64"}]]});
    let config = cfg(config_json.clone());
    let store = store(dir.path());
    for id in ["keep", "drop1", "drop2"] {
        store.allocate(&config, &cni(id), &[]).expect("allocate");
    }
    let me = Owner::current_process().expect("this process");
    store.allocate(&config, &me, &[]).expect("allocate");
    finish(spawn_helper(
        dir.path(),
        &config_json,
        "allocate-process",
        &[],
    ));
    let released = store.gc(&[cni("keep")]).expect("gc");
    // Two addresses (dual stack) for each of drop1, drop2 and the dead process.
    assert_eq!(released.len(), 6, "{released:?}");
    let owners: HashSet<Owner> = store
        .leases()
        .expect("leases")
        .into_iter()
        .map(|l| l.owner)
        .collect();
    assert_eq!(owners, HashSet::from([cni("keep"), me.clone()]));
    assert_eq!(store.leases_of(&cni("drop1")).expect("leases_of").len(), 0);
    assert!(store.gc(&[cni("keep")]).expect("gc again").is_empty());
    assert_consistent(&store, &config);
    assert_eq!(store.release(&cni("drop1")).expect("release after gc"), 0);
}

#[test]
fn exhaustion_names_the_network_and_the_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    // A /30: .0 network, .1 gateway, .3 broadcast: one address.
    let tiny = cfg(json!({"subnet": "10.26.0.0/30"}));
    let got = store.allocate(&tiny, &cni("a"), &[]).expect("first");
    assert_eq!(got[0].address.to_string(), "10.26.0.2/30");
    let e = store
        .allocate(&tiny, &cni("b"), &[])
        .expect_err("exhausted")
        .to_string();
    assert!(e.contains("testnet") && e.contains("10.26.0.0/30"), "{e}");
    // A three-address range with the gateway inside it: two addresses.
    let three = cfg(json!({"subnet": "10.27.0.0/24", "rangeStart": "10.27.0.10",
        "rangeEnd": "10.27.0.12", "gateway": "10.27.0.11"}));
    let store = Store::open(dir.path(), "three").expect("open");
    let a = store.allocate(&three, &cni("a"), &[]).expect("a");
    let b = store.allocate(&three, &cni("b"), &[]).expect("b");
    let mut got = vec![a[0].address.ip(), b[0].address.ip()];
    got.sort();
    assert_eq!(got, vec![ip("10.27.0.10"), ip("10.27.0.12")]);
    let e = store
        .allocate(&three, &cni("c"), &[])
        .expect_err("exhausted");
    assert!(matches!(e, IpamError::Exhausted { .. }));
    assert!(e.to_string().contains("10.27.0.10-10.27.0.12"), "{e}");
    // Releasing makes room again.
    store.release(&cni("a")).expect("release");
    store.allocate(&three, &cni("c"), &[]).expect("room again");
}

#[test]
fn bad_configs_are_refused_naming_the_offending_value() {
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"subnet": "10.0.0.0/33"}), &["10.0.0.0/33"]),
        (json!({"subnet": "not-a-cidr"}), &["not-a-cidr"]),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/8x"}]]}),
            &["10.0.0.0/8x"],
        ),
        (
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}),
            &["10.0.1.5", "10.0.0.0/24"],
        ),
        (
            json!({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}),
            &["10.0.1.5"],
        ),
        (
            json!({"subnet": "10.0.0.0/24", "rangeStart": "fd00::5"}),
            &["fd00::5"],
        ),
        (
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}),
            &["10.0.0.50", "10.0.0.40"],
        ),
        (
            json!({"subnet": "10.0.0.0/24", "gateway": "10.9.0.1"}),
            &["10.9.0.1", "10.0.0.0/24"],
        ),
        (json!({"subnet": "10.0.0.0/24", "gateway": "gw"}), &["gw"]),
        (
            json!({"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "10.1.2.0/24"}]]}),
            &["overlap", "10.1.0.0/16", "10.1.2.0/24"],
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]}),
            &["overlap", "10.1.0.0/25"],
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            &["famil", "fd00::/64"],
        ),
        (
            json!({"subnet": "10.0.0.0/31"}),
            &["10.0.0.0/31", "too small"],
        ),
        (json!({"type": "host-local"}), &["no range"]),
        (
            json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "nowhere"}]}),
            &["nowhere"],
        ),
    ];
    for (config, needles) in cases {
        let e = IpamConfig::from_json(&config)
            .expect_err(&format!("{config} must be refused"))
            .to_string();
        for needle in needles {
            assert!(
                e.contains(needle),
                "{config}: {e:?} does not name {needle:?}"
            );
        }
    }
}

#[test]
fn requested_addresses_are_honoured_or_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(
        json!({"subnet": "10.28.0.0/24", "rangeStart": "10.28.0.10", "rangeEnd": "10.28.0.20"}),
    );
    let got = store
        .allocate(&config, &cni("a"), &[ip("10.28.0.15")])
        .expect("requested");
    assert_eq!(got[0].address.to_string(), "10.28.0.15/24");
    let e = store
        .allocate(&config, &cni("b"), &[ip("10.28.0.15")])
        .expect_err("taken");
    assert!(matches!(e, IpamError::RequestedTaken { .. }), "{e}");
    assert!(
        e.to_string().contains("10.28.0.15") && e.to_string().contains("container a"),
        "{e}"
    );
    // Inside the subnet but outside the range, or in no subnet at all.
    for outside in ["10.28.0.30", "192.0.2.1", "fd00::1"] {
        let e = store
            .allocate(&config, &cni("b"), &[ip(outside)])
            .expect_err("outside");
        assert!(
            e.to_string().contains(outside) && e.to_string().contains("testnet"),
            "{e}"
        );
    }
    let gw = cfg(json!({"subnet": "10.29.0.0/24"}));
    let e = store
        .allocate(&gw, &cni("b"), &[ip("10.29.0.1")])
        .expect_err("gateway");
    assert!(matches!(e, IpamError::RequestedReserved { .. }), "{e}");
    assert!(store.leases_of(&cni("b")).expect("leases_of").is_empty());
    // The same owner asking for another address moves to it.
    let moved = store
        .allocate(&config, &cni("a"), &[ip("10.28.0.16")])
        .expect("move");
    assert_eq!(moved[0].address.ip(), ip("10.28.0.16"));
    let held: Vec<IpAddr> = store
        .leases_of(&cni("a"))
        .expect("leases_of")
        .iter()
        .map(|l| l.ip)
        .collect();
    assert_eq!(held, vec![ip("10.28.0.16")]);
    assert_eq!(store.leases().expect("leases").len(), 1);
}

#[test]
fn unsafe_network_names_are_refused_before_touching_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "n".repeat(201);
    for name in [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/abs",
        ".hidden",
        "nul\0byte",
        "sp ace",
        "é",
        &long,
    ] {
        let e = Store::open(dir.path(), name).expect_err(&format!("{name:?} must be refused"));
        assert!(matches!(e, IpamError::BadName { .. }), "{name:?}: {e}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read dir").count(),
        0,
        "nothing was created"
    );
    assert!(!dir.path().parent().expect("parent").join("escape").exists());
    Store::open(dir.path(), "ok-net_1.2").expect("a plain name");
}

#[test]
fn dual_stack_gives_one_address_per_range_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(json!({"ranges": [
        [{"subnet": "10.30.0.0/24"}, {"subnet": "10.31.0.0/24"}],
        [{"subnet": "fd00:30::/64", "gateway": "fd00:30::fe"}]]}));
    let got = store.allocate(&config, &cni("a"), &[]).expect("dual");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].range_set, got[1].range_set), (0, 1));
    assert_eq!(got[0].address.to_string(), "10.30.0.2/24");
    assert_eq!(got[0].gateway, Some(ip("10.30.0.1")));
    assert_eq!(got[1].address.to_string(), "fd00:30::1/64");
    assert_eq!(got[1].gateway, Some(ip("fd00:30::fe")));
    // A requested v6 address goes to the v6 set; the v4 set still gets one.
    let got = store
        .allocate(&config, &cni("b"), &[ip("fd00:30::42")])
        .expect("requested v6");
    assert_eq!(got[1].address.ip(), ip("fd00:30::42"));
    assert!(got[0].address.ip().is_ipv4());
    // Two requests for one set are refused.
    let e = store
        .allocate(&config, &cni("c"), &[ip("10.30.0.9"), ip("10.31.0.9")])
        .expect_err("same set twice");
    assert!(
        e.to_string().contains("10.30.0.9") && e.to_string().contains("10.31.0.9"),
        "{e}"
    );
    assert_eq!(store.leases().expect("leases").len(), 4);
    assert_consistent(&store, &config);
}

#[test]
fn allocation_is_all_or_nothing_across_range_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config =
        cfg(json!({"ranges": [[{"subnet": "10.32.0.0/24"}], [{"subnet": "fd00:32::/126"}]]}));
    // fd00:32::/126 has ::2 and ::3 (::1 is the gateway).
    store.allocate(&config, &cni("a"), &[]).expect("a");
    store.allocate(&config, &cni("b"), &[]).expect("b");
    let e = store
        .allocate(&config, &cni("c"), &[])
        .expect_err("v6 exhausted");
    assert!(e.to_string().contains("fd00:32::/126"), "{e}");
    assert!(store.leases_of(&cni("c")).expect("leases_of").is_empty());
    assert_eq!(
        store.leases().expect("leases").len(),
        4,
        "no v4 lease left behind"
    );
}

#[test]
fn allocate_and_release_are_idempotent_per_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(json!({"subnet": "10.33.0.0/24"}));
    let first = store.allocate(&config, &cni("a"), &[]).expect("first");
    let again = store.allocate(&config, &cni("a"), &[]).expect("again");
    assert_eq!(first, again);
    let other_if = Owner::Cni {
        container_id: "a".into(),
        ifname: "eth1".into(),
    };
    let second_if = store
        .allocate(&config, &other_if, &[])
        .expect("second interface");
    assert_ne!(first, second_if);
    assert_eq!(store.leases().expect("leases").len(), 2);
    assert_eq!(store.release(&cni("a")).expect("release"), 1);
    assert_eq!(store.release(&cni("a")).expect("release again"), 0);
    assert_eq!(
        store.release(&cni("never-seen")).expect("release unknown"),
        0
    );
    assert_eq!(store.leases_of(&other_if).expect("leases_of").len(), 1);
}

#[test]
fn released_addresses_are_not_reused_at_once() {
    // Like host-local, allocation goes round the range: a just-released address (whose old
    // sandbox may still be known to neighbours' ARP caches) comes back last.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(json!({"subnet": "10.34.0.0/24"}));
    let a = store.allocate(&config, &cni("a"), &[]).expect("a");
    store.release(&cni("a")).expect("release");
    let b = store.allocate(&config, &cni("b"), &[]).expect("b");
    assert_eq!(a[0].address.to_string(), "10.34.0.2/24");
    assert_eq!(b[0].address.to_string(), "10.34.0.3/24");
}

#[test]
fn host_local_lease_files_are_respected() {
    // dataDir pointed at host-local's directory: its leases are not handed out again.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("testnet")).expect("mkdir");
    std::fs::write(dir.path().join("testnet/10.35.0.2"), "someid\r\neth0").expect("lease");
    let store = store(dir.path());
    let config = cfg(json!({"subnet": "10.35.0.0/24"}));
    let got = store.allocate(&config, &cni("a"), &[]).expect("allocate");
    assert_eq!(got[0].address.ip(), ip("10.35.0.3"));
    let e = store
        .allocate(&config, &cni("b"), &[ip("10.35.0.2")])
        .expect_err("host-local's");
    assert!(e.to_string().contains("host-local"), "{e}");
}

#[test]
fn container_ids_that_are_not_file_names_still_get_their_own_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let config = cfg(json!({"subnet": "10.36.0.0/24"}));
    let odd = [
        cni("../../etc"),
        cni("a+b"),
        cni("a%2Bb"),
        cni("with space"),
        // The longest kind: escaped file names stay within 255 bytes.
        cni(&"f".repeat(250)),
    ];
    for owner in &odd {
        store.allocate(&config, owner, &[]).expect("allocate");
    }
    for owner in &odd {
        assert_eq!(
            store.leases_of(owner).expect("leases_of").len(),
            1,
            "{owner}"
        );
    }
    assert!(!dir.path().join("etc").exists());
    let too_long = cni(&"f".repeat(300));
    let e = store
        .allocate(&config, &too_long, &[])
        .expect_err("too long");
    assert!(matches!(e, IpamError::BadOwner(_)), "{e}");
    assert_eq!(store.release(&too_long).expect("nothing to release"), 0);
    for owner in &odd {
        assert_eq!(store.release(owner).expect("release"), 1, "{owner}");
    }
}

#[test]
fn default_data_dir_follows_netbox_data_dir() {
    let config = json!({"subnet": "10.37.0.0/24"});
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |value: Option<&str>| {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = Command::new(exe);
        cmd.args(["ipam::helper", "--exact", "--nocapture", "--test-threads=1"])
            .env(ACTION, "default-dir")
            .env(DIR, dir.path())
            .env(NET, "testnet")
            .env(CONFIG, config.to_string())
            .env_remove("NETBOX_DATA_DIR");
        if let Some(v) = value {
            cmd.env("NETBOX_DATA_DIR", v);
        }
        let out = cmd.output().expect("helper");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        protocol_lines(&stdout)
            .iter()
            .find_map(|l| l.strip_prefix("DIR ").map(str::to_string))
            .unwrap_or_else(|| panic!("no DIR line:\n{stdout}"))
    };
    assert_eq!(run(None), "/var/lib/netbox/ipam");
    assert_eq!(run(Some("/srv/nb")), "/srv/nb/ipam");
}
