//! The private-host harness every integration test uses.
//!
//! A test calls [`private_host`] first. In the normal run that re-executes the test binary for
//! just this test inside a throwaway "host": new network + mount namespaces as root, or user +
//! network + mount namespaces otherwise. Inside, /run/netns, /run/netbox and /var/lib/netbox are
//! fresh tmpfs mounts and /sys is remounted for the private network namespace, so a test can
//! create bridges, veths, named namespaces and leases freely: nothing reaches the real host, and
//! everything vanishes with the re-executed process, even when it panics or is killed.
//!
//! When the kernel refuses the namespaces, the test prints SKIPPED with the reason; under CI
//! (CI set in the environment) it fails instead, so CI can never pass on skipped tests.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use netbox::sys::private_host::PrivateHost;

const INSIDE_VAR: &str = "NETBOX_PRIVATE_HOST";
/// Exit code the re-executed child uses when the kernel refused the namespaces.
const REFUSED: i32 = 77;

/// Directories that get a private tmpfs inside the private host.
const PRIVATE_DIRS: [&str; 3] = ["/run/netns", "/run/netbox", "/var/lib/netbox"];

/// Re-runs the calling test inside a private host. Returns true inside (go on with the test),
/// false outside once the inner run passed; panics when the inner run failed.
/// `test_path` is the test's name as cargo prints it (`module::function`).
pub fn private_host(test_path: &str) -> bool {
    if std::env::var(INSIDE_VAR).as_deref() == Ok(test_path) {
        bring_loopback_up();
        return true;
    }
    let out = run_inside(test_path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(REFUSED) {
        let reason = stderr
            .lines()
            .last()
            .unwrap_or("namespaces refused")
            .to_string();
        skip(test_path, &reason);
        return false;
    }
    // Show what the inner run printed, so failures read as if the test had run here; skips
    // inside are repeated where they cannot be captured.
    print!("{stdout}");
    eprint!("{stderr}");
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED ")) {
        loud(line);
    }
    assert!(
        out.status.success(),
        "{test_path} failed inside its private host ({})",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{test_path}: the inner run did not run exactly this test:\n{stdout}"
    );
    false
}

/// True when the current process is root in the initial user namespace (CI runs as root).
/// Inside a rootless private host the test is uid 0 too, but of a user namespace that maps
/// only the invoking user: that is not root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .map(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false)
}

/// Prints SKIPPED loudly, or fails when running under CI.
pub fn skip(test_path: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test_path}: would be SKIPPED under CI ({reason}); CI must not skip tests");
    }
    loud(&format!("SKIPPED {test_path}: {reason}"));
}

/// Writes a framed line to the real stderr: libtest captures `eprintln!` of passing tests, and
/// a skip must never go unseen.
fn loud(line: &str) {
    let bar = "!".repeat(line.len());
    let _ = std::io::stderr().write_all(format!("\n{bar}\n{line}\n{bar}\n").as_bytes());
}

fn run_inside(test_path: &str) -> Output {
    let exe = std::env::current_exe().expect("current test binary");
    let root = is_root();
    if root {
        for dir in PRIVATE_DIRS {
            // Empty mount points on the real host are the only trace a test leaves.
            std::fs::create_dir_all(dir).expect("create private mount point");
        }
    }
    // Rootless, the private directories may be missing and uncreatable: those are skipped.
    let host = PrivateHost::new(!root, &PRIVATE_DIRS).skip_missing_dirs();
    let mut cmd = Command::new(exe);
    cmd.args([test_path, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE_VAR, test_path)
        .env("RUST_BACKTRACE", "1");
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls (and
    // writes id maps prepared before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if let Err(refused) = host.enter() {
                let _ = writeln!(std::io::stderr(), "{refused}");
                libc::_exit(REFUSED);
            }
            Ok(())
        });
    }
    // Its own process group: when the test ends, even by a panic, whatever it left running (a
    // `netbox run` server, say) is killed, rather than holding the output pipes open forever.
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("re-run the test in a private host");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    // The group goes while its leader is still a zombie: once reaped, its pid (the group's id)
    // may be reused by another test's process group.
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(group),
        nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
    );
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().expect("wait for the private host");
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn bring_loopback_up() {
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j ARGS` parsed: the independent view of kernel state.
pub fn ip_json(args: &str) -> serde_json::Value {
    let out = sh(&format!("ip -j {args}"));
    if out.trim().is_empty() {
        return serde_json::Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args}: bad JSON ({e}): {out}"))
}

/// Names of the links in the current network namespace, per `ip -j link`.
pub fn link_names() -> Vec<String> {
    ip_json("link show")
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until `cond` holds; kernel teardown of namespaces is asynchronous.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The built `netbox` binary (cargo builds bins for integration tests).
pub fn netbox_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netbox"))
}

/// The built `netbox-cni` binary, or the one `NETBOX_TEST_CNI_BIN` names (the static musl
/// build of the README, say).
pub fn cni_bin() -> PathBuf {
    std::env::var_os("NETBOX_TEST_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_netbox-cni")))
}

/// Runs `cmd` with `stdin` written to its input and its output collected (a CNI plugin call).
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // A program that does not read its input (VERSION) closes the pipe: fine.
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("waiting for the command")
}

/// A fresh `netbox` command.
pub fn netbox() -> Command {
    Command::new(netbox_bin())
}

/// True when `path` exists.
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// Builds the example `name` (cargo test does not build examples it does not link) and returns
/// its path: target/debug/deps/integration-HASH -> target/debug/examples/NAME.
pub fn example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .status()
        .expect("cargo build --example");
    assert!(status.success(), "building example {name}");
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join(name)
}

/// Every file below `dir`, recursively (an absent directory has none).
pub fn files_under(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&path));
        } else {
            out.insert(path.display().to_string());
        }
    }
    out
}

/// Makes the host's cgroup hierarchies visible again under the private host's /sys (its sysfs
/// is fresh, so /sys/fs/cgroup is empty): what container runtimes (runc) need to start.
pub fn private_cgroups() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let cgroups: Vec<Vec<String>> = mounts
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[1].starts_with("/sys/fs/cgroup") && f[2].starts_with("cgroup"))
        .collect();
    if cgroups
        .iter()
        .any(|f| f[1] == "/sys/fs/cgroup" && f[2] == "cgroup2")
    {
        sh("mount -t cgroup2 none /sys/fs/cgroup");
    } else {
        sh("mount -t tmpfs cgroup /sys/fs/cgroup");
        for f in &cgroups {
            sh(&format!(
                "mkdir -p {1} && mount -t {2} -o {3} {0} {1}",
                f[0], f[1], f[2], f[3]
            ));
        }
    }
}
