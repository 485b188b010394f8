//! The layer rule of ARCHITECTURE.md, checked on every test run by reading the library's
//! sources: binaries -> use cases -> provisioning -> model -> system adapters, nothing pointing
//! up, no use case calling another, and no two files of the library importing each other in a
//! circle (directly or through others).
//!
//! A module's sub-modules are its parts: a parent using its own children (re-exports, a facade
//! calling them) is composition, not an import, so only a child's use of its parent counts
//! between the two. Circles among siblings, or through modules elsewhere, always count.
//!
//! A reference is any `crate::a::b` or `super::a` path, or a `child::` path in a module that
//! declares `mod child` (grouped imports `crate::a::{b, c}` count for each member). It is
//! resolved to the longest module prefix that is a file of the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module may use its own layer and those below.
const LAYERS: [(&str, &[&str]); 4] = [
    ("system adapters", &["sys", "process"]),
    ("model", &["model"]),
    ("provisioning", &["provision", "firewall"]),
    ("use cases", &["usecase", "lab", "startup"]),
];

/// Modules outside the layers: the crate root and the error type gathering every layer's
/// errors (each module keeps its own error type; `Error` only collects them).
const UNLAYERED: [&str; 2] = ["", "error"];

/// Use cases: none may use another.
const USE_CASES: [&str; 8] = [
    "usecase::run",
    "usecase::node",
    "usecase::named",
    "usecase::gc",
    "usecase::cni",
    "usecase::doctor",
    "lab",
    "startup",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library file with its module path (`sys::netlink` for src/sys/netlink/mod.rs).
fn modules() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(module_of(&path), path);
            }
        }
    }
    out
}

fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments (doc links name modules without using them).
fn code(file: &Path) -> String {
    std::fs::read_to_string(file)
        .expect("read source")
        .lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal is rare enough in this code base; a line whose
            // code ends before the comment keeps its code.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file refers to, as absolute module paths (not yet resolved to a file).
fn references(module: &str, is_dir_module: bool, text: &str) -> Vec<String> {
    let parent = |m: &str| m.rsplit_once("::").map_or(String::new(), |(p, _)| p.into());
    // `super` of a.rs in dir x is x; of x/mod.rs it is x's parent.
    let super_of = parent(module);
    let self_dir = if is_dir_module {
        module.to_string()
    } else {
        parent(module)
    };
    let children: BTreeSet<String> = if is_dir_module || module.is_empty() {
        text.lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
                l.strip_prefix("mod ")?
                    .strip_suffix(';')
                    .map(|n| n.trim().to_string())
            })
            .collect()
    } else {
        BTreeSet::new()
    };
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}::{b}")
        }
    };
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let head: String = chars[start..i].iter().collect();
        if !(i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':') {
            continue;
        }
        let base = match head.as_str() {
            "crate" => String::new(),
            "super" => super_of.clone(),
            h if children.contains(h) => join(&self_dir, h),
            _ => continue,
        };
        // The rest of the path: segments, then possibly a group.
        let mut path = base;
        while i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
            i += 2;
            if chars.get(i) == Some(&'{') {
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(chars.len(), |p| i + p);
                let group: String = chars[i + 1..end].iter().collect();
                for member in group.split(',') {
                    let member = member.trim();
                    let first = member.split("::").next().unwrap_or("").trim();
                    if first.is_empty() || first == "self" || first.starts_with('{') {
                        out.push(path.clone());
                    } else {
                        out.push(join(
                            &path,
                            member.split(" as ").next().unwrap_or("").trim(),
                        ));
                    }
                }
                path.clear();
                i = end;
                break;
            }
            let seg_start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let seg: String = chars[seg_start..i].iter().collect();
            if seg == "super" {
                path = parent(&path);
            } else if !seg.is_empty() {
                path = join(&path, &seg);
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// The longest module prefix of `path` that is a library file.
fn resolve<'a>(modules: &'a BTreeMap<String, PathBuf>, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split("::").map(str::trim).collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find_map(|p| modules.get_key_value(&p).map(|(k, _)| k.as_str()))
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or("");
    LAYERS.iter().position(|(_, tops)| tops.contains(&top))
}

fn use_case_of(module: &str) -> Option<&'static str> {
    USE_CASES
        .iter()
        .find(|u| module == **u || module.starts_with(&format!("{u}::")))
        .copied()
}

/// Edges between library files: (from, to) module paths.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let is_dir_module = file.file_name().is_some_and(|n| n == "mod.rs");
        let targets = edges.entry(module.clone()).or_default();
        for path in references(module, is_dir_module, &code(file)) {
            if let Some(to) = resolve(&modules, &path) {
                let own_part = module.is_empty() || to.starts_with(&format!("{module}::"));
                if to != module && !to.is_empty() && !own_part {
                    targets.insert(to.to_string());
                }
            }
        }
    }
    edges
}

#[test]
fn every_top_level_module_has_a_layer() {
    for module in modules().keys() {
        let top = module.split("::").next().unwrap_or("");
        assert!(
            UNLAYERED.contains(&top) || layer_of(module).is_some(),
            "src module {module} is in no layer: add it to LAYERS here and to ARCHITECTURE.md"
        );
    }
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        let Some(mine) = layer_of(&from) else {
            continue;
        };
        for to in targets {
            if let Some(theirs) = layer_of(&to) {
                if theirs > mine {
                    wrong.push(format!(
                        "{from} ({}) uses {to} ({})",
                        LAYERS[mine].0, LAYERS[theirs].0
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_use_case_calls_another() {
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        let Some(mine) = use_case_of(&from) else {
            continue;
        };
        for to in targets {
            if let Some(theirs) = use_case_of(&to) {
                if theirs != mine {
                    wrong.push(format!("{from} uses {to}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "use cases calling each other (move what they share down to provision):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let edges = graph();
    let circles = strongly_connected(&edges);
    assert!(
        circles.is_empty(),
        "files importing each other in a circle:\n{}",
        circles
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Tarjan's algorithm: the components of more than one file.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let targets: Vec<&'a str> = s
            .edges
            .get(v)
            .map(|t| t.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for w in targets {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_checker_sees_imports_of_every_form() {
    let text = "use crate::sys::{netlink::Netlink, netns};\nuse super::conf::Env;\nlet x = ops::run();\n// crate::lab::nothing\n";
    let refs = references("usecase::cni", true, &code_of(text));
    for want in ["sys::netlink::Netlink", "sys::netns", "usecase::conf::Env"] {
        assert!(refs.iter().any(|r| r == want), "{want} in {refs:?}");
    }
    assert!(!refs.iter().any(|r| r.starts_with("lab")), "{refs:?}");
}

fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_checker_finds_a_circle_through_three_files() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [
        ("run", "gc"),
        ("gc", "named"),
        ("named", "run"),
        ("run", "sys"),
    ] {
        edges.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(
        strongly_connected(&edges),
        vec![vec!["gc".to_string(), "named".into(), "run".into()]]
    );
}
