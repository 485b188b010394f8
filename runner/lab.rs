//! `netbox lab`: build, use, check and remove reproducible network labs (see src/lab).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use netbox::lab::check::{self, CheckResult};
use netbox::lab::control::{self, Reply, Request};
use netbox::lab::holder::{self, LabRecord as LabState, Mode};
use netbox::lab::topology::{ImpairSpec, StepSpec};
use netbox::lab::{graph, LabError, Topology};
use netbox::lab::{runtime, timeline};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab and keep it up (prints a table of nodes and addresses).
    Up {
        file: PathBuf,
        /// Build on the real host (root only) instead of a private host.
        #[arg(long)]
        host: bool,
        /// Write a pcap file per link into DIR.
        #[arg(long, value_name = "DIR")]
        capture: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a node of a running lab.
    Exec {
        file: PathBuf,
        node: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Run the lab file's checks against the running lab.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove the lab.
    Down { file: PathBuf },
    /// Take a link down (give its two ends: NODE, NODE:IFNAME or a switch).
    LinkDown { file: PathBuf, a: String, b: String },
    /// Bring a link back up.
    LinkUp { file: PathBuf, a: String, b: String },
    /// Change a link's rate, loss, delay, jitter or reordering ("none" removes one).
    Impair {
        file: PathBuf,
        a: String,
        b: String,
        #[arg(long)]
        rate: Option<String>,
        #[arg(long)]
        loss: Option<String>,
        #[arg(long)]
        delay: Option<String>,
        #[arg(long)]
        jitter: Option<String>,
        #[arg(long)]
        reorder: Option<String>,
    },
    /// Cut every link of a node.
    Isolate { file: PathBuf, node: String },
    /// Undo `isolate`.
    Restore { file: PathBuf, node: String },
    /// Split the lab into groups that cannot reach each other: one GROUP per argument, nodes
    /// separated by commas ("a,b" "c"); nodes not named form one more group.
    Partition {
        file: PathBuf,
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Undo `partition`.
    Heal { file: PathBuf },
    /// Stop a node's start commands.
    StopNode { file: PathBuf, node: String },
    /// Start a node's start commands (again).
    StartNode { file: PathBuf, node: String },
    /// Back to the file's state (links, shaping, partition, start commands).
    Reset { file: PathBuf },
    /// The state of every link.
    Links {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Play the file's timeline on the running lab.
    Play {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Up, checks, timeline and down; the exit status is the result (0 all passed).
    Test {
        file: PathBuf,
        #[arg(long)]
        host: bool,
        #[arg(long, value_name = "DIR")]
        capture: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the topology as Graphviz DOT (and write SVG with --svg when Graphviz is installed).
    Graph {
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// List the running labs: name, mode, holder pid, file.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// (internal) The process that holds a lab while it is up.
    #[command(hide = true)]
    Hold {
        file: PathBuf,
        #[arg(long)]
        capture: Option<PathBuf>,
        #[arg(long)]
        control_fd: Option<i32>,
    },
}

pub fn run(args: LabArgs) -> i32 {
    holder::restore_cwd();
    match dispatch(args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netbox lab: {}", netbox::error::chain(&e));
            125
        }
    }
}

fn dispatch(cmd: LabCommand) -> Result<i32, LabError> {
    let cmd = match as_change(cmd) {
        Ok((file, spec)) => return change(&file, spec),
        Err(other) => *other,
    };
    match cmd {
        LabCommand::Hold {
            file,
            capture,
            control_fd,
        } => Ok(holder::hold(&file, capture, control_fd)),
        LabCommand::Links { file, json } => {
            let name = running_name(&file)?;
            match control::request(&name, &Request::Links, &mut |_| {})? {
                Reply::Links(links) => print_links(&links, json),
                other => return Err(unexpected(other)),
            }
            Ok(0)
        }
        LabCommand::Play { file, json } => {
            let name = running_name(&file)?;
            play(&name, json)
        }
        LabCommand::Ls { json } => {
            ls(json);
            Ok(0)
        }
        LabCommand::Up {
            file,
            host,
            capture,
            json,
        } => {
            up(&file, host, capture.as_deref(), json)?;
            Ok(0)
        }
        LabCommand::Exec {
            file,
            node,
            command,
        } => exec(&file, &node, command),
        LabCommand::Check { file, json } => check(&file, json),
        LabCommand::Down { file } => {
            let (_, plan) = holder::lab_name(&file)?;
            if !holder::down(&plan.name)? {
                eprintln!("netbox lab: lab \"{}\" was not up", plan.name);
            }
            Ok(0)
        }
        LabCommand::Test {
            file,
            host,
            capture,
            json,
        } => {
            let (_, plan) = holder::lab_name(&file)?;
            up(&file, host, capture.as_deref(), json)?;
            let mut result = check(&file, json);
            if !plan.steps.is_empty() {
                result = match (result, play(&plan.name, json)) {
                    (Ok(a), Ok(b)) => Ok(a.max(b)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
            }
            let down = holder::down(&plan.name);
            let code = result?;
            down?;
            Ok(code)
        }
        LabCommand::Graph { file, svg } => {
            let topo = Topology::from_file(&file)?;
            let plan = netbox::lab::topology::resolve(&topo)?;
            print!("{}", graph::dot(&plan));
            if let Some(out) = svg {
                match graph::svg(&plan)? {
                    Some(bytes) => std::fs::write(&out, bytes).map_err(|source| LabError::Io {
                        what: format!("writing {}", out.display()),
                        source,
                    })?,
                    None => {
                        eprintln!("netbox lab: Graphviz (dot) is not installed: no SVG written");
                        return Ok(1);
                    }
                }
            }
            Ok(0)
        }
        // Taken by as_change above.
        LabCommand::LinkDown { .. }
        | LabCommand::LinkUp { .. }
        | LabCommand::Impair { .. }
        | LabCommand::Isolate { .. }
        | LabCommand::Restore { .. }
        | LabCommand::Partition { .. }
        | LabCommand::Heal { .. }
        | LabCommand::StopNode { .. }
        | LabCommand::StartNode { .. }
        | LabCommand::Reset { .. } => Err(LabError::Invalid("not a change".into())),
    }
}

fn up(file: &Path, host: bool, capture: Option<&Path>, json: bool) -> Result<(), LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        what: "finding the netbox binary".into(),
        source,
    })?;
    let mode = if host { Mode::Host } else { Mode::Private };
    // A progress bar only for large labs on a terminal.
    let bar = crate::progress::Progress::new("building links", 100, json);
    let update = |done, total| bar.update(done, total);
    let progress: Option<&dyn Fn(usize, usize)> = bar.enabled().then_some(&update as _);
    let (state, summary) = holder::up(&exe, file, mode, capture, progress)?;
    if json {
        let value = serde_json::json!({
            "name": state.name, "pid": holder_pid(&state), "mode": state.mode, "summary": summary,
        });
        println!("{value}");
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

/// The running lab of `file`, or NotUp.
/// Inside a private host (re-executed) there is no state to read: None.
fn running(file: &Path) -> Result<(Option<LabState>, netbox::lab::Plan), LabError> {
    let (_, plan) = holder::lab_name(file)?;
    if std::env::var_os(holder::INSIDE_VAR).is_some() {
        return Ok((None, plan));
    }
    match holder::load_state(&plan.name)? {
        Some(state) => Ok((Some(state), plan)),
        None => Err(LabError::NotUp { name: plan.name }),
    }
}

/// For a private lab seen from outside: re-runs this very command inside its private host.
fn reenter(state: Option<&LabState>, args: &[OsString]) -> Result<Option<i32>, LabError> {
    let Some(state) = state.filter(|s| s.mode == Mode::Private) else {
        return Ok(None);
    };
    let status = holder::enter_command(state, args)?
        .status()
        .map_err(|source| LabError::Io {
            what: format!("entering lab \"{}\"", state.name),
            source,
        })?;
    Ok(Some(status.code().unwrap_or(125)))
}

fn exec(file: &Path, node: &str, command: Vec<OsString>) -> Result<i32, LabError> {
    let file = absolute(file);
    let (state, plan) = running(&file)?;
    let mut args: Vec<OsString> = vec![
        "lab".into(),
        "exec".into(),
        file.clone().into(),
        node.into(),
        "--".into(),
    ];
    args.extend(command.iter().cloned());
    if let Some(code) = reenter(state.as_ref(), &args)? {
        return Ok(code);
    }
    let nodes = holder::open_nodes(&plan)?;
    let ns = nodes.get(node).ok_or_else(|| LabError::Unknown {
        what: "node",
        name: node.to_string(),
        context: format!("lab \"{}\"", plan.name),
    })?;
    let mut words = command.into_iter();
    let program = words
        .next()
        .ok_or_else(|| LabError::Invalid("no command given".into()))?;
    let hosts = netbox::lab::hosts::HostsFile::new(&plan)?;
    let status = netbox::lab::command_in(ns, Some(&hosts), &program)?
        .args(words)
        .status()
        .map_err(|source| LabError::Io {
            what: format!("running {program:?} in node \"{node}\""),
            source,
        })?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}

fn check(file: &Path, json: bool) -> Result<i32, LabError> {
    let file = absolute(file);
    let (state, plan) = running(&file)?;
    let mut args: Vec<OsString> = vec!["lab".into(), "check".into(), file.clone().into()];
    if json {
        args.push("--json".into());
    }
    if let Some(code) = reenter(state.as_ref(), &args)? {
        return Ok(code);
    }
    let nodes = holder::open_nodes(&plan)?;
    let hosts = netbox::lab::hosts::HostsFile::new(&plan)?;
    let node = |n: &str| {
        nodes.get(n).ok_or_else(|| LabError::Unknown {
            what: "node",
            name: n.to_string(),
            context: "check".into(),
        })
    };
    let env = check::Env {
        plan: &plan,
        node: &node,
        hosts: Some(&hosts),
    };
    let results = check::run_checks(&env, &plan.checks)?;
    print_results(&results, json);
    Ok(if results.iter().all(|r| r.passed) {
        0
    } else {
        1
    })
}

fn print_results(results: &[CheckResult], json: bool) {
    let summary = check::summary(results);
    if json {
        let passed = results.iter().filter(|r| r.passed).count();
        let value = serde_json::json!({
            "checks": results, "passed": passed, "failed": results.len() - passed,
        });
        println!("{value}");
        return;
    }
    for r in results {
        println!(
            "{}  {}  ({}, {:.1} ms)",
            if r.passed { "PASS" } else { "FAIL" },
            r.check,
            r.detail,
            r.millis
        );
    }
    println!("{summary}");
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The labs whose holder is alive (a state file whose holder died is removed on the way).
pub fn running_labs() -> Vec<LabState> {
    let mut labs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(holder::state_dir()) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(Some(state)) = holder::load_state(name) {
                labs.push(state);
            }
        }
    }
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    labs
}

fn ls(json: bool) {
    let labs = running_labs();
    if json {
        crate::ns::print_json(&labs);
        return;
    }
    println!("{:<20} {:<8} {:<8} FILE", "NAME", "MODE", "PID");
    for l in &labs {
        let mode = match l.mode {
            Mode::Private => "private",
            Mode::Host => "host",
        };
        println!(
            "{:<20} {:<8} {:<8} {}",
            l.name,
            mode,
            holder_pid(l)
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            l.file.display()
        );
    }
}

fn holder_pid(state: &LabState) -> Option<u32> {
    match &state.holder {
        Some(netbox::model::owner::Owner::Process { pid, .. }) => Some(*pid),
        _ => None,
    }
}

/// The name of the running lab of `file`, or NotUp.
fn running_name(file: &Path) -> Result<String, LabError> {
    let (_, plan) = holder::lab_name(file)?;
    match holder::load_state(&plan.name)? {
        Some(_) => Ok(plan.name),
        None => Err(LabError::NotUp { name: plan.name }),
    }
}

fn unexpected(reply: Reply) -> LabError {
    LabError::Invalid(format!("the holder answered {reply:?}"))
}

/// Sends a change to the holder; prints the links afterwards (and the checks' results).
fn change(file: &Path, spec: StepSpec) -> Result<i32, LabError> {
    let name = running_name(file)?;
    let mut code = 0;
    let reply = control::request(&name, &Request::Apply(Box::new(spec)), &mut |r| {
        if let Reply::Step(step) = r {
            print!("{}", timeline::text(step));
            if !step.passed {
                code = 1;
            }
        }
    })?;
    match reply {
        Reply::Links(links) => print_links(&links, false),
        other => return Err(unexpected(other)),
    }
    Ok(code)
}

fn print_links(links: &[runtime::LinkStatus], json: bool) {
    if json {
        println!("{}", serde_json::json!({ "links": links }));
    } else {
        print!("{}", runtime::table(links));
    }
}

/// Plays the timeline of a running lab; 0 when every step passed.
fn play(name: &str, json: bool) -> Result<i32, LabError> {
    let mut steps = vec![];
    let reply = control::request(name, &Request::Play, &mut |r| {
        if let Reply::Step(step) = r {
            if !json {
                print!("{}", timeline::text(step));
            }
            steps.push(step.clone());
        }
    })?;
    let Reply::Done { passed } = reply else {
        return Err(unexpected(reply));
    };
    let failed = steps.iter().filter(|s| !s.passed).count();
    if json {
        let checks: Vec<_> = steps.iter().flat_map(|s| s.checks.iter()).collect();
        let checks_passed = checks.iter().filter(|c| c.passed).count();
        println!(
            "{}",
            serde_json::json!({
                "steps": steps,
                "passed": checks_passed,
                "failed": checks.len() - checks_passed + steps.iter().filter(|s| s.error.is_some()).count(),
                "steps_failed": failed,
            })
        );
    } else {
        println!(
            "timeline: {} steps passed, {failed} failed",
            steps.len() - failed
        );
    }
    Ok(if passed { 0 } else { 1 })
}

/// A change command as the timeline step it makes, or the command back when it is another.
fn as_change(cmd: LabCommand) -> Result<(PathBuf, StepSpec), Box<LabCommand>> {
    match cmd {
        LabCommand::LinkDown { file, a, b } => Ok((
            file,
            StepSpec {
                link_down: Some(vec![a, b]),
                ..StepSpec::default()
            },
        )),
        LabCommand::LinkUp { file, a, b } => Ok((
            file,
            StepSpec {
                link_up: Some(vec![a, b]),
                ..StepSpec::default()
            },
        )),
        LabCommand::Impair {
            file,
            a,
            b,
            rate,
            loss,
            delay,
            jitter,
            reorder,
        } => Ok((
            file,
            StepSpec {
                impair: Some(ImpairSpec {
                    link: vec![a, b],
                    rate,
                    loss,
                    delay,
                    jitter,
                    reorder,
                }),
                ..StepSpec::default()
            },
        )),
        LabCommand::Isolate { file, node } => Ok((
            file,
            StepSpec {
                isolate: Some(node),
                ..StepSpec::default()
            },
        )),
        LabCommand::Restore { file, node } => Ok((
            file,
            StepSpec {
                restore: Some(node),
                ..StepSpec::default()
            },
        )),
        LabCommand::Partition { file, groups } => Ok((
            file,
            StepSpec {
                partition: Some(
                    groups
                        .iter()
                        .map(|g| {
                            g.split(',')
                                .filter(|n| !n.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                        .collect(),
                ),
                ..StepSpec::default()
            },
        )),
        LabCommand::Heal { file } => Ok((
            file,
            StepSpec {
                heal: true,
                ..StepSpec::default()
            },
        )),
        LabCommand::StopNode { file, node } => Ok((
            file,
            StepSpec {
                stop: Some(node),
                ..StepSpec::default()
            },
        )),
        LabCommand::StartNode { file, node } => Ok((
            file,
            StepSpec {
                start: Some(node),
                ..StepSpec::default()
            },
        )),
        LabCommand::Reset { file } => Ok((
            file,
            StepSpec {
                reset: true,
                ..StepSpec::default()
            },
        )),
        other => Err(Box::new(other)),
    }
}
