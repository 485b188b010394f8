//! What confines CMD beyond its network (issue 13): its own PID namespace, the default
//! capability set, no_new_privs, the seccomp filter, masked and read-only kernel paths,
//! `--read-only`, for `netbox run` and `netbox exec` alike. Each test is an escape attempt that
//! must fail, next to the positive path or the opt-out that makes it work.
//!
//! The attempts that need a raw syscall run the test binary itself as CMD (`probe_helper`,
//! driven by NETBOX_TEST_PROBE), so no compiler, gdb or python is needed inside.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use crate::harness::{netbox, netbox_bin, private_host, sh};

const PROBE: &str = "NETBOX_TEST_PROBE";

/// The capabilities container runtimes give: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID
/// SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SETFCAP.
const DEFAULT_CAPS: u64 = 0x8004_05fb;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_CHOWN: u64 = 1;

/// Not a test on its own: with NETBOX_TEST_PROBE=ATTEMPT[:ARG],... set, makes each attempt and
/// prints `probe ATTEMPT[:ARG]: ok` or `probe ATTEMPT[:ARG]: errno N`.
#[test]
fn probe_helper() {
    let Ok(probe) = std::env::var(PROBE) else {
        return;
    };
    for attempt in probe.split(',') {
        let (name, arg) = attempt.split_once(':').unwrap_or((attempt, ""));
        let pid: libc::pid_t = arg.parse().unwrap_or(0);
        let path = std::ffi::CString::new(arg).expect("path");
        // SAFETY: each call is a plain syscall with valid or deliberately invalid arguments;
        // none of them writes memory of ours.
        let rc = unsafe {
            match name {
                "kill0" => libc::kill(pid, 0) as i64,
                // PTRACE_SEIZE does not stop the target; detach right away if it worked.
                "ptrace" => {
                    let rc = libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) as i64;
                    if rc == 0 {
                        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                    }
                    rc
                }
                "writable" => libc::access(path.as_ptr(), libc::W_OK) as i64,
                "finit_module" => libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0),
                "init_module" => libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr()),
                "perf_event_open" => perf_event_open(),
                "bpf" => libc::syscall(libc::SYS_bpf, 0, 0, 0),
                "keyctl" => libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0),
                "clone3" => libc::syscall(libc::SYS_clone3, 0, 0),
                "unshare_user" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
                "setns" => libc::syscall(libc::SYS_setns, -1, 0),
                "icmp_dgram" => {
                    libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) as i64
                }
                "raw" => libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as i64,
                other => panic!("unknown probe {other}"),
            }
        };
        if rc < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            println!("probe {attempt}: errno {errno}");
        } else {
            println!("probe {attempt}: ok");
        }
    }
}

/// A software clock event on the calling thread: needs no PMU, and only perf_event_paranoid
/// (or the filter) stands in the way.
fn perf_event_open() -> i64 {
    #[repr(C)]
    struct Attr {
        kind: u32,
        size: u32,
        config: u64,
        rest: [u64; 14],
    }
    let attr = Attr {
        kind: 1, // PERF_TYPE_SOFTWARE
        size: std::mem::size_of::<Attr>() as u32,
        config: 0, // PERF_COUNT_SW_CPU_CLOCK
        rest: [0; 14],
    };
    // SAFETY: a valid perf_event_attr; the descriptor, if any, is closed on exit.
    unsafe { libc::syscall(libc::SYS_perf_event_open, &attr, 0, -1, -1, 0) }
}

/// The test binary as CMD, making `attempts` (comma-separated ATTEMPT[:ARG]).
fn probe_cmd(attempts: &str) -> Vec<String> {
    vec![
        "env".into(),
        format!("{PROBE}={attempts}"),
        std::env::current_exe()
            .expect("test binary")
            .display()
            .to_string(),
        "confine::probe_helper".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// `netbox run ARGS -- CMD` with its output, CMD as root.
fn run(args: &[&str], cmd: &[&str]) -> Output {
    netbox()
        .arg("run")
        .args(args)
        .arg("--")
        .args(cmd)
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("start netbox")
}

fn run_ok(args: &[&str], cmd: &[&str]) -> String {
    let out = run(args, cmd);
    assert!(
        out.status.success(),
        "netbox run {args:?} -- {cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The probes' results: `ATTEMPT[:ARG] -> "ok" | "errno N"`.
fn probe(args: &[&str], attempts: &str) -> std::collections::HashMap<String, String> {
    let cmd = probe_cmd(attempts);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = run_ok(args, &cmd);
    out.lines()
        .filter_map(|l| l.split_once("probe ").map(|(_, rest)| rest))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn errno(code: i32) -> String {
    format!("errno {code}")
}

/// A field of /proc/self/status as CMD sees it, for each line asked.
fn status_of(out: &str, field: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {out}"))
        .trim()
        .to_string()
}

fn mask(out: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_of(out, field), 16).expect("hex mask")
}

/// A host process the sandbox must not reach (root, full capabilities, outside).
fn host_sleeper() -> std::process::Child {
    Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("start sleep")
}

#[test]
fn cmd_sees_signals_and_traces_only_its_own_processes() {
    if !private_host("confine::cmd_sees_signals_and_traces_only_its_own_processes") {
        return;
    }
    let mut host = host_sleeper();
    let host_pid = host.id();
    // CMD is pid 2 under netbox's init; /proc lists the sandbox's processes only.
    let seen = run_ok(&[], &["sh", "-c", "echo $$; ls -d /proc/[0-9]* | wc -l"]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "2", "{seen}");
    // sh, its ls and wc, and pid 1 (the shell may run ls and wc as subshells too).
    let count: usize = lines[1].trim().parse().expect("count");
    assert!(count <= 5, "CMD sees {count} processes: {seen}");
    // A host process, and the netbox parent (with every capability): not there to signal or
    // trace. CMD learns netbox's pid on its stdin.
    let exe = std::env::current_exe().expect("test binary");
    let helper = format!(
        "'{}' confine::probe_helper --exact --nocapture --test-threads=1",
        exe.display()
    );
    let script = format!(
        "read parent; {PROBE}=kill0:{host_pid},ptrace:{host_pid},kill0:$parent,ptrace:$parent \
         {helper}; sleep 30 & {PROBE}=ptrace:$! {helper}; kill $!"
    );
    let mut child = netbox()
        .args(["run", "--", "sh", "-c", &script])
        .env_remove("SUDO_UID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start netbox");
    let parent = child.id();
    use std::io::Write;
    writeln!(child.stdin.take().expect("stdin"), "{parent}").expect("send pid");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for attempt in [
        format!("kill0:{host_pid}"),
        format!("ptrace:{host_pid}"),
        format!("kill0:{parent}"),
        format!("ptrace:{parent}"),
    ] {
        assert!(
            text.contains(&format!("probe {attempt}: {}", errno(libc::ESRCH))),
            "{attempt}: {text}"
        );
    }
    // Inside, tracing its own child works (ptrace is confined, not forbidden).
    // (libtest may print "test NAME ... " before the probe's line.)
    assert!(
        text.lines()
            .any(|l| l.contains("probe ptrace:") && l.ends_with(": ok")),
        "{text}"
    );
    // --pid host: the host's processes are visible and signalable again (CAP_KILL is in the
    // default set), but a root process with full capabilities still cannot be traced: CMD
    // lacks CAP_SYS_PTRACE and the target's capabilities are not a subset of its own.
    let host_mode = probe(
        &["--pid", "host"],
        &format!("kill0:{host_pid},ptrace:{host_pid}"),
    );
    assert_eq!(
        host_mode[&format!("kill0:{host_pid}")],
        "ok",
        "{host_mode:?}"
    );
    assert_eq!(
        host_mode[&format!("ptrace:{host_pid}")],
        errno(libc::EPERM),
        "{host_mode:?}"
    );
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn status_shows_default_capabilities_no_new_privs_and_seccomp() {
    if !private_host("confine::status_shows_default_capabilities_no_new_privs_and_seccomp") {
        return;
    }
    let status = run_ok(&[], &["cat", "/proc/self/status"]);
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(mask(&status, set), DEFAULT_CAPS, "{set}: {status}");
    }
    assert_eq!(mask(&status, "CapInh"), 0, "{status}");
    assert_eq!(mask(&status, "CapAmb"), 0, "{status}");
    assert_eq!(status_of(&status, "NoNewPrivs"), "1");
    assert_eq!(status_of(&status, "Seccomp"), "2");
    // Any capability name, any case, with or without CAP_.
    let changed = run_ok(
        &["--cap-add", "sys_ptrace", "--cap-drop", "CAP_CHOWN"],
        &["cat", "/proc/self/status"],
    );
    assert_eq!(
        mask(&changed, "CapEff"),
        (DEFAULT_CAPS | CAP_SYS_PTRACE) & !CAP_CHOWN
    );
    let only = run_ok(
        &["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"],
        &["cat", "/proc/self/status"],
    );
    assert_eq!(mask(&only, "CapBnd"), CAP_NET_ADMIN);
    // A non-root CMD keeps what was added as ambient capabilities, and nothing else.
    let nobody = run_ok(
        &["--user", "nobody", "--cap-add", "NET_ADMIN"],
        &["cat", "/proc/self/status"],
    );
    for set in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(mask(&nobody, set), CAP_NET_ADMIN, "{set}: {nobody}");
    }
    // --seccomp unconfined: no filter, no_new_privs all the same.
    let unconfined = run_ok(&["--seccomp", "unconfined"], &["cat", "/proc/self/status"]);
    assert_eq!(status_of(&unconfined, "Seccomp"), "0");
    assert_eq!(status_of(&unconfined, "NoNewPrivs"), "1");
    // Bad names are refused before anything is made.
    let bad = run(&["--cap-add", "NET_ADMINX"], &["true"]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NET_ADMINX"));
    let both = run(&["--cap-add", "KILL", "--cap-drop", "kill"], &["true"]);
    assert_eq!(both.status.code(), Some(125));
}

#[test]
fn kernel_knobs_are_read_only_and_sensitive_files_masked() {
    if !private_host("confine::kernel_knobs_are_read_only_and_sensitive_files_masked") {
        return;
    }
    // Never written: access(W_OK) tells without touching the host's core_pattern.
    let attempts = "writable:/proc/sys/kernel/core_pattern,writable:/proc/sys/kernel/panic";
    for args in [&[][..], &["--pid", "host"][..]] {
        let results = probe(args, attempts);
        for attempt in attempts.split(',') {
            assert_eq!(results[attempt], errno(libc::EROFS), "{args:?} {results:?}");
        }
    }
    // Outside the sandbox it is writable (for root): the sandbox is what changes it.
    let outside = Command::new(std::env::current_exe().expect("test binary"))
        .args(["confine::probe_helper", "--exact", "--nocapture"])
        .env(PROBE, "writable:/proc/sys/kernel/core_pattern")
        .output()
        .expect("probe outside");
    assert!(String::from_utf8_lossy(&outside.stdout)
        .contains("probe writable:/proc/sys/kernel/core_pattern: ok"));
    let seen = run_ok(
        &[],
        &[
            "sh",
            "-c",
            "cat /proc/keys | wc -c; cat /proc/timer_list | wc -c; \
             ls /sys/firmware | wc -l; echo 1 > /sys/kernel/uevent_helper; \
             cat /proc/sys/kernel/ostype",
        ],
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(&lines[..3], ["0", "0", "0"], "{seen}");
    assert_eq!(lines[3], "Linux", "sysctls stay readable: {seen}");
}

#[test]
fn escapes_through_system_calls_are_refused() {
    if !private_host("confine::escapes_through_system_calls_are_refused") {
        return;
    }
    let attempts = "finit_module,init_module,perf_event_open,bpf,keyctl,unshare_user,setns,clone3";
    let results = probe(&[], attempts);
    for call in [
        "finit_module",
        "init_module",
        "perf_event_open",
        "bpf",
        "keyctl",
        "unshare_user",
        "setns",
    ] {
        assert_eq!(results[call], errno(libc::EPERM), "{call}: {results:?}");
    }
    // clone3 answers ENOSYS so that the C library falls back to clone, whose flags the filter
    // reads; threads still work (the probe itself runs in libtest).
    assert_eq!(results["clone3"], errno(libc::ENOSYS), "{results:?}");
    let tools = run(
        &[],
        &[
            "sh",
            "-c",
            "unshare -n true; echo unshare=$?; mount -t tmpfs none /mnt; echo mount=$?",
        ],
    );
    let text = String::from_utf8_lossy(&tools.stdout);
    assert!(
        text.contains("unshare=1") && text.contains("mount=32"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&tools.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&tools.stderr)
    );
    // Opt-outs: the filter follows kept capabilities (as docker's), and unconfined has none.
    run_ok(&["--cap-add", "SYS_ADMIN"], &["unshare", "-n", "true"]);
    let unconfined = probe(&["--seccomp", "unconfined"], "keyctl,clone3");
    assert_ne!(unconfined["keyctl"], errno(libc::EPERM), "{unconfined:?}");
    assert_ne!(unconfined["clone3"], errno(libc::ENOSYS), "{unconfined:?}");
}

#[test]
fn setuid_binaries_gain_nothing() {
    if !private_host("confine::setuid_binaries_gain_nothing") {
        return;
    }
    // A file system that honours setuid, whatever the machine's /tmp is mounted with.
    let dir = tempfile::tempdir().expect("tempdir");
    sh(&format!(
        "mount -t tmpfs -o mode=0755 tmpfs {0} && cp \"$(command -v id)\" {0}/id && \
         chmod 4755 {0}/id",
        dir.path().display()
    ));
    let suid_id = dir.path().join("id");
    assert_eq!(
        std::fs::metadata(&suid_id)
            .expect("stat")
            .permissions()
            .mode()
            & 0o4000,
        0o4000
    );
    // Outside, the setuid bit works: nobody running it gets euid 0.
    let outside = Command::new(&suid_id)
        .arg("-u")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run setuid id");
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "0");
    // Inside (no_new_privs), it runs as the caller.
    let path = suid_id.display().to_string();
    let inside = run_ok(&["--user", "nobody"], &[&path, "-u"]);
    assert_eq!(inside.trim(), "65534");
    sh(&format!("umount {}", dir.path().display()));
}

#[test]
fn read_only_root_keeps_a_private_writable_tmp() {
    if !private_host("confine::read_only_root_keeps_a_private_writable_tmp") {
        return;
    }
    let marker = format!("netbox-ro-{}", std::process::id());
    let out = run(
        &["--read-only"],
        &[
            "sh",
            "-c",
            &format!(
                "touch /usr/{marker}; echo usr=$?; echo x > /tmp/{marker} && echo tmp=ok; \
                 echo x > /dev/shm/{marker} && echo shm=ok; echo x > /dev/null && echo null=ok; \
                 cat /etc/hosts | wc -l"
            ),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usr=1"), "{text}");
    assert!(text.contains("tmp=ok") && text.contains("shm=ok") && text.contains("null=ok"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sandbox's /tmp was its own.
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    assert!(!std::path::Path::new(&format!("/usr/{marker}")).exists());
    // Without --read-only the host's files are writable for a root CMD (what the option is for).
    run_ok(&[], &["sh", "-c", &format!("echo x > /tmp/{marker}")]);
    assert!(std::path::Path::new(&format!("/tmp/{marker}")).exists());
    let _ = std::fs::remove_file(format!("/tmp/{marker}"));
}

#[test]
fn orphans_are_reaped_and_leftovers_end_with_cmd() {
    if !private_host("confine::orphans_are_reaped_and_leftovers_end_with_cmd") {
        return;
    }
    // The orphaned sleep is re-parented to the sandbox's init, which reaps it: no zombie.
    let out = run_ok(
        &[],
        &[
            "sh",
            "-c",
            "sh -c 'sleep 0.1 &'; sleep 0.5; cat /proc/[0-9]*/stat | awk '{print $3}' | tr -d '\\n'",
        ],
    );
    assert!(!out.contains('Z'), "a zombie in the sandbox: {out}");
    // A background process outlives CMD only until CMD ends, as in a container.
    let marker = "sleep 471";
    let started = std::time::Instant::now();
    run_ok(&[], &["sh", "-c", &format!("{marker} & echo started")]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    crate::harness::eventually("the background sleep to be gone", || {
        !sh("ps -eo args").lines().any(|l| l.trim() == marker)
    });
}

#[test]
fn named_sandboxes_get_the_same_confinement() {
    if !private_host("confine::named_sandboxes_get_the_same_confinement") {
        return;
    }
    let add = netbox()
        .args(["ns", "add", "jail"])
        .output()
        .expect("ns add");
    assert!(add.status.success(), "{add:?}");
    let exec = |args: &[&str], cmd: &[&str]| {
        let out = netbox()
            .args(["exec"])
            .args(args)
            .arg("jail")
            .arg("--")
            .args(cmd)
            .env_remove("SUDO_UID")
            .output()
            .expect("netbox exec");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = exec(&[], &["sh", "-c", "echo $$; cat /proc/self/status"]);
    assert_eq!(status.lines().next(), Some("2"), "{status}");
    assert_eq!(mask(&status, "CapEff"), DEFAULT_CAPS);
    assert_eq!(mask(&status, "CapBnd"), DEFAULT_CAPS);
    assert_eq!(status_of(&status, "NoNewPrivs"), "1");
    assert_eq!(status_of(&status, "Seccomp"), "2");
    let cmd = probe_cmd("writable:/proc/sys/kernel/core_pattern,finit_module");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let probed = exec(&[], &cmd);
    assert!(probed.contains(&format!(
        "probe writable:/proc/sys/kernel/core_pattern: {}",
        errno(libc::EROFS)
    )));
    assert!(probed.contains(&format!("probe finit_module: {}", errno(libc::EPERM))));
    // The opt-outs are the same options as run's.
    let host = exec(
        &["--pid", "host", "--seccomp", "unconfined"],
        &["sh", "-c", "echo $$; cat /proc/self/status"],
    );
    assert_ne!(host.lines().next(), Some("2"), "{host}");
    assert_eq!(status_of(&host, "Seccomp"), "0");
    sh(&format!("{} ns del jail", netbox_bin().display()));
}

#[test]
fn rootless_sandboxes_are_confined_too() {
    if !private_host("confine::rootless_sandboxes_are_confined_too") {
        return;
    }
    let mut cmd = netbox();
    if crate::harness::is_root() {
        // An unprivileged user, as a rootless user would run it (setpriv, as CI does).
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let copy = dir.path().join("netbox");
        std::fs::copy(netbox_bin(), &copy).expect("copy netbox");
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&copy)
            .current_dir("/");
        let out = cmd
            .args(["run", "--net", "none", "--", "sh", "-c"])
            .arg("echo $$; cat /proc/self/status; unshare -U true; echo unshare=$?")
            .env_remove("SUDO_UID")
            .output()
            .expect("rootless netbox");
        check_rootless(&out);
        return;
    }
    let out = cmd
        .args(["run", "--net", "none", "--", "sh", "-c"])
        .arg("echo $$; cat /proc/self/status; unshare -U true; echo unshare=$?")
        .output()
        .expect("rootless netbox");
    check_rootless(&out);
}

fn check_rootless(out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.lines().next(), Some("2"), "{text}");
    assert_eq!(status_of(&text, "NoNewPrivs"), "1");
    assert_eq!(status_of(&text, "Seccomp"), "2");
    assert_eq!(mask(&text, "CapEff"), 0);
    assert_eq!(mask(&text, "CapBnd") & !DEFAULT_CAPS, 0, "{text}");
    assert!(text.contains("unshare=1"), "{text}");
}

#[test]
fn ping_works_without_raw_sockets() {
    if !private_host("confine::ping_works_without_raw_sockets") {
        return;
    }
    // NET_RAW is not in the default set: raw sockets are refused, but ICMP echo sockets (what
    // iputils ping uses without privileges) are open to every group of the sandbox's namespace.
    let results = probe(&[], "icmp_dgram,raw");
    assert_eq!(results["icmp_dgram"], "ok", "{results:?}");
    assert_eq!(results["raw"], errno(libc::EPERM), "{results:?}");
    let raw = probe(&["--cap-add", "NET_RAW"], "raw");
    assert_eq!(raw["raw"], "ok", "{raw:?}");
    // As a user other than root, and rootless (--net none), too.
    let nobody = probe(&["--user", "nobody"], "icmp_dgram");
    assert_eq!(nobody["icmp_dgram"], "ok", "{nobody:?}");
    let none = probe(&["--net", "none"], "icmp_dgram");
    assert_eq!(none["icmp_dgram"], "ok", "{none:?}");
}
