//! Shell completions (bash, zsh, fish) from the clap definitions, with live names.
//!
//! clap_complete's dynamic engine (`CompleteEnv`): the script a shell loads is a few lines that
//! call `netbox` back at each TAB (`NETBOX_COMPLETE=bash netbox -- WORDS...`), and netbox answers
//! from the same clap tree it parses with, plus the completers below for what only exists at
//! run time: sandboxes, networks, TUN/TAP devices, running labs and their nodes. clap_complete's
//! static generators have no hook for run-time values, which would need hand-written functions
//! per shell that repeat the command structure. The engine is behind clap_complete's
//! `unstable-dynamic` feature: Cargo.lock pins it, and a script and the binary that answers it
//! come from the same build (the Debian package installs both; `netbox completions` writes it).

use std::ffi::OsStr;
use std::io::Write;

use clap::{Args, ValueEnum};
use clap_complete::engine::ValueCompleter;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use clap_complete::{CompletionCandidate, PathCompleter};

/// The environment variable that turns a netbox invocation into a completion request.
pub const VAR: &str = "NETBOX_COMPLETE";

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    shell: Shell,
    /// The netbox the script calls at each TAB (default: `netbox` from PATH when invoked from
    /// PATH, else this binary's path).
    #[arg(long, value_name = "PATH")]
    completer: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Answers a completion request and exits, when NETBOX_COMPLETE asks for one.
pub fn answer_if_asked(command: fn() -> clap::Command) {
    if std::env::var_os(VAR).is_some() {
        clap_complete::CompleteEnv::with_factory(|| with_lab_completers(command()))
            .var(VAR)
            .complete();
    }
}

/// `netbox completions SHELL`: the script to source (or install) for SHELL.
pub fn run(args: CompletionsArgs) -> i32 {
    let completer = args.completer.unwrap_or_else(default_completer);
    let shell: &dyn EnvCompleter = match args.shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    let mut out = Vec::new();
    let written = shell
        .write_registration(VAR, "netbox", "netbox", &completer, &mut out)
        .and_then(|()| std::io::stdout().write_all(&out));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("netbox: writing the completion script: {e}");
            125
        }
    }
}

fn default_completer() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if !argv0.to_string_lossy().contains('/') {
        return "netbox".into();
    }
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| argv0.to_string_lossy().into_owned())
}

fn matching(current: &OsStr, names: impl IntoIterator<Item = String>) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(prefix.as_ref()))
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// Named namespaces (`netbox exec` enters any of them).
pub fn namespaces(current: &OsStr) -> Vec<CompletionCandidate> {
    let names = std::fs::read_dir(netbox::sys::netns::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string));
    matching(current, names)
}

/// Sandboxes made by `netbox ns add`.
pub fn sandboxes(current: &OsStr) -> Vec<CompletionCandidate> {
    let names = netbox::provision::records::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.kind == netbox::provision::records::Kind::Ns)
        .map(|r| r.name);
    matching(current, names)
}

/// The built-in network and the CNI conflists.
pub fn networks(current: &OsStr) -> Vec<CompletionCandidate> {
    let names = netbox::model::network::list(&netbox::model::network::conf_dirs())
        .into_iter()
        .map(|n| n.name);
    matching(current, names)
}

/// TUN/TAP devices in the current network namespace.
pub fn tun_devices(current: &OsStr) -> Vec<CompletionCandidate> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return vec![];
    };
    let links = rt.block_on(async {
        match netbox::sys::netlink::Netlink::connect() {
            Ok(nl) => nl.tun_links().await.unwrap_or_default(),
            Err(_) => vec![],
        }
    });
    matching(current, links.into_iter().map(|l| l.name))
}

/// Lab files: those of running labs first, then any file.
pub fn lab_files(current: &OsStr) -> Vec<CompletionCandidate> {
    let running = crate::lab::running_labs()
        .into_iter()
        .map(|l| l.file.display().to_string());
    let mut out = matching(current, running);
    out.extend(PathCompleter::any().complete(current));
    out
}

/// Nodes (and switches) of the lab file named earlier on the command line (`netbox lab
/// exec FILE NODE`, `lab isolate FILE NODE`, `lab link-down FILE A B`, ...).
pub fn lab_nodes(current: &OsStr) -> Vec<CompletionCandidate> {
    // The words being completed follow `--` on this process's command line: netbox lab SUB
    // [OPTIONS] FILE ...
    let words: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let Some(pos) = words.iter().position(|w| w == "lab") else {
        return vec![];
    };
    let Some(file) = words.iter().skip(pos + 2).find(|w| !w.starts_with('-')) else {
        return vec![];
    };
    match netbox::lab::Topology::from_file(file.as_ref())
        .and_then(|t| netbox::lab::topology::resolve(&t))
    {
        Ok(plan) => {
            let nodes = plan.nodes.iter().map(|n| n.name.clone());
            matching(
                current,
                nodes.chain(plan.switches.iter().map(|s| s.name.clone())),
            )
        }
        Err(_) => vec![],
    }
}

/// The clap tree with the completers lab commands take from here rather than carry in their
/// definitions: every lab subcommand's FILE completes lab files, its NODE, A and B the nodes
/// and switches of that file. New lab commands get them without a line of their own.
pub fn with_lab_completers(cmd: clap::Command) -> clap::Command {
    use clap_complete::ArgValueCompleter;
    cmd.mut_subcommand("lab", |lab| {
        lab.mut_subcommands(|sub| {
            // mut_args keeps the arguments in place (mut_arg would move one to the end, and
            // positionals are ordered).
            sub.mut_args(|a| match a.get_id().as_str() {
                "file" => a.add(ArgValueCompleter::new(lab_files)),
                "node" | "a" | "b" => a.add(ArgValueCompleter::new(lab_nodes)),
                _ => a,
            })
        })
    })
}
