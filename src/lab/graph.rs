//! The topology as a Graphviz DOT graph (nodes with their addresses, switches, links with their
//! interface names and limits), and as SVG when Graphviz's `dot` is installed.

use std::io::Write;
use std::process::{Command, Stdio};

use super::topology::{EndPlan, Plan};
use super::{LabError, Result};

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// DOT text for the plan.
pub fn dot(plan: &Plan) -> String {
    let mut out = format!(
        "graph {} {{\n  node [fontname=\"monospace\"];\n",
        quote(&plan.name)
    );
    for n in &plan.nodes {
        let mut label = n.name.clone();
        if n.router {
            label.push_str(" (router)");
        }
        for (ifname, addr) in plan.addresses_of(&n.name) {
            label.push_str(&format!("\\n{ifname} {addr}"));
        }
        out.push_str(&format!(
            "  {} [shape=box, label={}];\n",
            quote(&n.name),
            quote(&label)
        ));
    }
    for s in &plan.switches {
        let mut label = format!("{}\\n{}", s.name, s.subnet);
        if let Some(n) = &s.node {
            label.push_str(&format!("\\nin {n}"));
        }
        out.push_str(&format!(
            "  {} [shape=ellipse, label={}];\n",
            quote(&format!("switch:{}", s.name)),
            quote(&label)
        ));
    }
    for l in &plan.links {
        let id = |e: &EndPlan| match e {
            EndPlan::Node { node, .. } => quote(node),
            EndPlan::Switch { switch, .. } => quote(&format!("switch:{switch}")),
        };
        let ifname = |e: &EndPlan| match e {
            EndPlan::Node { iface, .. } => iface.name.clone(),
            EndPlan::Switch { port, .. } => port.clone(),
        };
        let mut attrs = format!(
            "taillabel={}, headlabel={}",
            quote(&ifname(&l.a)),
            quote(&ifname(&l.b))
        );
        let mut limits = vec![];
        if let Some(r) = &l.rate {
            limits.push(format!("rate {r}"));
        }
        if let Some(d) = l.delay_ns {
            limits.push(format!("delay {}ms", d as f64 / 1e6));
        }
        if let Some(p) = l.loss_percent {
            limits.push(format!("loss {p}%"));
        }
        if !limits.is_empty() {
            attrs.push_str(&format!(", label={}", quote(&limits.join(" "))));
        }
        out.push_str(&format!("  {} -- {} [{attrs}];\n", id(&l.a), id(&l.b)));
    }
    for n in &plan.nodes {
        for (vx, _) in &n.vxlan {
            if let Some(sw) = &vx.switch {
                out.push_str(&format!(
                    "  {} -- {} [style=dashed, label={}];\n",
                    quote(&n.name),
                    quote(&format!("switch:{sw}")),
                    quote(&format!("{} vni {}", vx.name, vx.vni))
                ));
            }
        }
    }
    out.push_str("}\n");
    out
}

/// SVG through Graphviz's `dot`; None when Graphviz is not installed.
pub fn svg(plan: &Plan) -> Result<Option<Vec<u8>>> {
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LabError::Io {
                what: "running Graphviz dot".into(),
                source,
            })
        }
    };
    let io = |source| LabError::Io {
        what: "running Graphviz dot".into(),
        source,
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot(plan).as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "Graphviz dot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Some(out.stdout))
}
