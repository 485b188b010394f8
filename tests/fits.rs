//! Fitting the user's system: `netbox doctor`, shell completions, manual pages.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{is_root, netbox, netbox_bin, private_host, sh};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn doctor_json(args: &[&str]) -> (Value, Option<i32>) {
    let out = netbox()
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .expect("run netbox doctor");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out)));
    (report, out.status.code())
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

#[test]
fn doctor_passes_here_and_tries_the_kernel_in_a_throwaway_namespace() {
    if !private_host("fits::doctor_passes_here_and_tries_the_kernel_in_a_throwaway_namespace") {
        return;
    }
    let links_before = sh("ip -br link");
    // Without root, bridge networks cannot work: judge labs only.
    let purposes: &[&str] = if is_root() { &[] } else { &["--for", "lab"] };
    let (report, code) = doctor_json(purposes);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    for name in [
        "kernel: veth",
        "kernel: bridge",
        "kernel: nftables",
        "subnet overlap",
    ] {
        let c = check(&report, name);
        assert_eq!(c["status"], "ok", "{c:#}");
    }
    let veth = check(&report, "kernel: veth");
    assert_eq!(veth["method"], "tried in a throwaway network namespace");
    // Every check that is not OK says how to fix it, in one line.
    for c in report["checks"].as_array().expect("checks") {
        if c["status"] != "ok" {
            let fix = c["fix"].as_str().unwrap_or_else(|| panic!("no fix: {c:#}"));
            assert!(!fix.is_empty() && !fix.contains('\n'), "{c:#}");
        }
    }
    // The tries left nothing here.
    assert_eq!(sh("ip -br link"), links_before);
}

#[test]
fn doctor_without_nft_fails_with_the_fix() {
    if !private_host("fits::doctor_without_nft_fails_with_the_fix") {
        return;
    }
    // Hide nft in this private host's mount namespace (netbox also looks in the sbin dirs).
    let nft = sh("command -v nft || echo /usr/sbin/nft");
    sh(&format!("mount --bind /dev/null {}", nft.trim()));
    let for_run: &[&str] = if is_root() { &["run"] } else { &["lab"] };
    let out = netbox()
        .args(["doctor", "--for", for_run[0]])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("doctor");
    let printed = text(&out);
    assert!(
        printed.contains("FAIL  program: nft"),
        "nft not reported missing:\n{printed}"
    );
    assert!(
        printed.contains("fix: sudo apt-get install nftables"),
        "{printed}"
    );
    if is_root() {
        assert_eq!(out.status.code(), Some(1), "{printed}");
    } else {
        // Labs do not need nft: a FAIL that blocks nothing asked for.
        assert_eq!(out.status.code(), Some(0), "{printed}");
    }
    // Labs never need nft.
    let (report, code) = doctor_json(&["--for", "lab"]);
    let nft_check = check(&report, "program: nft");
    assert_eq!(nft_check["status"], "fail");
    assert_eq!(nft_check["blocking"], false);
    if is_root() {
        assert_eq!(code, Some(0), "{report:#}");
    }
}

#[test]
fn doctor_reports_what_gc_would_remove_and_removes_nothing() {
    if !private_host("fits::doctor_reports_what_gc_would_remove_and_removes_nothing") {
        return;
    }
    if !is_root() {
        crate::harness::skip(
            "fits::doctor_reports_what_gc_would_remove_and_removes_nothing",
            "gc's dry run needs root",
        );
        return;
    }
    // A veth whose alias names a process that is gone (pid 1 never started at tick 1).
    sh("ip link add nbstale0 type veth peer name nbstale1 && ip link set nbstale0 alias netbox:netbox:proc/1.1");
    let (report, code) = doctor_json(&[]);
    let stale = check(&report, "stale objects");
    assert_eq!(stale["status"], "warn", "{stale:#}");
    assert!(
        stale["detail"].as_str().unwrap_or("").contains("1 veth"),
        "{stale:#}"
    );
    assert_eq!(stale["fix"], "sudo netbox gc");
    assert_eq!(code, Some(0), "a warning fails nothing: {report:#}");
    assert!(sh("ip -br link").contains("nbstale0"), "doctor removed it");
}

/// Runs bash completion for `line` (the word under the cursor is the last, maybe empty).
fn complete_in_bash(line: &str) -> Vec<String> {
    let script = format!(
        "source <({bin} completions bash)\n\
         read -ra COMP_WORDS <<< '{line}'\n\
         [[ '{line}' == *' ' ]] && COMP_WORDS+=('')\n\
         COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_TYPE=9\n\
         _clap_complete_netbox netbox \"${{COMP_WORDS[COMP_CWORD]}}\" netbox\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bin = netbox_bin().display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn completion_scripts_load_and_complete_subcommands_and_names() {
    if !private_host("fits::completion_scripts_load_and_complete_subcommands_and_names") {
        return;
    }
    let registered = sh(&format!(
        "bash -c 'source <({} completions bash); complete -p netbox'",
        netbox_bin().display()
    ));
    assert!(
        registered.contains("_clap_complete_netbox") && registered.trim().ends_with("netbox"),
        "{registered}"
    );
    let subcommands = complete_in_bash("netbox ");
    for s in [
        "run",
        "ns",
        "exec",
        "ls",
        "gc",
        "lab",
        "doctor",
        "completions",
    ] {
        assert!(
            subcommands.contains(&s.to_string()),
            "{s} missing: {subcommands:?}"
        );
    }
    assert!(
        !subcommands.contains(&"man".to_string()),
        "hidden: {subcommands:?}"
    );
    assert_eq!(complete_in_bash("netbox doc"), ["doctor"]);
    // Live names: networks, and named sandboxes (made as root).
    assert!(complete_in_bash("netbox run --network ").contains(&"netbox".to_string()));
    if is_root() {
        sh(&format!("{} ns add web", netbox_bin().display()));
        assert_eq!(complete_in_bash("netbox exec w"), ["web"]);
        assert!(complete_in_bash("netbox ns del ").contains(&"web".to_string()));
    }
    // Lab commands: nodes and switches of the file named before, for every subcommand.
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/labs/router.toml");
    assert_eq!(
        complete_in_bash(&format!("netbox lab exec {lab} cl")),
        ["client"]
    );
    let ends = complete_in_bash(&format!("netbox lab link-down {lab} "));
    for name in ["client", "router", "server", "left", "right"] {
        assert!(ends.contains(&name.to_string()), "{name} missing: {ends:?}");
    }
    assert_eq!(
        complete_in_bash(&format!("netbox lab isolate {lab} ro")),
        ["router"]
    );
    // fish completes through the same engine; zsh registers its completer.
    let bin = netbox_bin().display().to_string();
    let fish = sh(&format!(
        "fish -c '{bin} completions fish | source; complete -C\"netbox doc\"'"
    ));
    assert!(fish.starts_with("doctor\t"), "{fish}");
    let zsh = sh(&format!(
        "zsh -fc 'autoload -U compinit && compinit -u -D; source <({bin} completions zsh); \
         print -r -- ${{_comps[netbox]}}'"
    ));
    assert_eq!(zsh.trim(), "_clap_dynamic_completer_netbox");
}

fn render(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man -l (package man-db)");
    assert!(
        out.status.success(),
        "man -l {}: {}",
        page.display(),
        text(&out)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!rendered.contains("warning:"), "{rendered}");
    rendered
}

#[test]
fn manual_pages_render_for_every_command_and_the_plugin() {
    if !private_host("fits::manual_pages_render_for_every_command_and_the_plugin") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = netbox().arg("man").arg(dir.path()).output().expect("man");
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "netbox.1",
        "netbox-run.1",
        "netbox-ns-add.1",
        "netbox-lab.1",
        "netbox-doctor.1",
        "netbox-completions.1",
    ] {
        let rendered = render(&dir.path().join(page));
        let name = page.trim_end_matches(".1");
        assert!(rendered.contains(name), "{page}: {rendered}");
    }
    let run = render(&dir.path().join("netbox-run.1"));
    assert!(
        run.contains("--publish") && run.contains("--network"),
        "{run}"
    );
    let cni = render(&dir.path().join("netbox-cni.8"));
    // In step with README's netbox-cni section: its keys, error codes and variables.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("\n## `netbox-cni`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a netbox-cni section");
    let keys_start = section.find("the keys are").expect("keys sentence");
    let keys_text = &section[keys_start..];
    let keys_text = &keys_text[..keys_text.find(". ").unwrap_or(keys_text.len())];
    let keys: Vec<&str> = keys_text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| k.chars().all(|c| c.is_ascii_alphabetic()))
        .collect();
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys
        .iter()
        .chain(["logFile", "logLevel", "isolate", "blockHost"].iter())
    {
        assert!(cni.contains(key), "netbox-cni.8 lacks README's key {key}");
    }
    let codes_line = section
        .lines()
        .skip_while(|l| !l.contains("Errors are CNI error objects"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    for word in codes_line.split(|c: char| !c.is_ascii_digit()) {
        if let Ok(code) = word.parse::<u32>() {
            assert!(
                cni.lines()
                    .any(|l| l.split_whitespace().next() == Some(code.to_string().as_str())),
                "netbox-cni.8 lacks error code {code}"
            );
        }
    }
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
        "NETBOX_LOG",
    ] {
        assert!(cni.contains(var), "netbox-cni.8 lacks {var}");
    }
}

/// Makes `n` veths whose alias names a gone `netbox run` (pid 1 never started at tick 1).
fn stale_veths(n: usize) {
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "link add nbgc{i} type veth peer name nbgcp{i}\nlink set nbgc{i} alias netbox:netbox:proc/1.1\n"
        ));
    }
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("write batch");
    }
    assert!(child.wait().expect("ip").success());
}

/// `netbox ARGS` on a pseudo-terminal (util-linux `script`): what a user at a terminal sees.
fn on_terminal(args: &str) -> String {
    on_terminal_with(args, &[])
}

fn on_terminal_with(args: &str, env: &[(&str, &std::path::Path)]) -> String {
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", netbox_bin().display()),
            "/dev/null",
        ])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gc_of_many_objects_shows_progress_on_a_terminal_only() {
    if !private_host("fits::gc_of_many_objects_shows_progress_on_a_terminal_only") {
        return;
    }
    if !is_root() {
        crate::harness::skip(
            "fits::gc_of_many_objects_shows_progress_on_a_terminal_only",
            "gc needs root",
        );
        return;
    }
    // Not a terminal: no bar on stderr, the report on stdout.
    stale_veths(25);
    let out = netbox().arg("gc").output().expect("gc");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("removed veth")
            .count(),
        25
    );
    // --json on a terminal: nothing but JSON.
    stale_veths(25);
    let printed = on_terminal("gc --json");
    assert!(!printed.contains("removing veths"), "{printed}");
    let json: Value = serde_json::from_str(printed.trim()).expect("only JSON on the terminal");
    assert_eq!(json["removed"].as_array().map(Vec::len), Some(25));
    // A terminal: the bar, ending at 25/25.
    stale_veths(25);
    let printed = on_terminal("gc");
    assert!(printed.contains("removing veths"), "{printed}");
    assert!(printed.contains("25/25"), "{printed}");
}

#[test]
fn a_large_lab_shows_progress_on_a_terminal_only() {
    if !private_host("fits::a_large_lab_shows_progress_on_a_terminal_only") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml =
        String::from("name = \"big\"\n[[switch]]\nname = \"sw\"\nsubnet = \"10.50.0.0/16\"\n");
    for i in 0..110 {
        toml.push_str(&format!(
            "[[node]]\nname = \"n{i}\"\n[[link]]\na = \"n{i}\"\nb = \"sw\"\n"
        ));
    }
    let file = dir.path().join("big.toml");
    std::fs::write(&file, toml).expect("write lab");
    let lab_dir = dir.path().join("state");
    let file = file.display();
    let on_terminal = |args: &str| on_terminal_with(args, &[("NETBOX_LAB_DIR", &lab_dir)]);
    let printed = on_terminal(&format!("lab test {file}"));
    assert!(printed.contains("building links"), "{printed}");
    assert!(printed.contains("110/110"), "{printed}");
    let printed = on_terminal(&format!("lab test --json {file}"));
    assert!(!printed.contains("building links"), "{printed}");
    // Not a terminal: nothing on stderr.
    let out = netbox()
        .args(["lab", "test", &file.to_string()])
        .env("NETBOX_LAB_DIR", &lab_dir)
        .output()
        .expect("lab test");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
