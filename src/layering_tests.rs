//! The library's files import one another without cycles, and its modules in one
//! direction: config ← model ← store ← keys ← alerts ← channels/api ← daemon.
//!
//! Every path in every file under `src/` (not the binaries) that names something
//! of this crate (`crate::…`, `super::…`, `self::…`, or a child module) is an edge
//! from that file to the file that holds the module the path ends in: `use
//! super::Keys` in `keys/verify.rs` is an edge to `keys/mod.rs`, wherever `Keys` is
//! defined. A cycle of such edges is what makes files impossible to read or move
//! one at a time (issue 10: `alerts/maintenance.rs` → `keys/mod.rs` →
//! `keys/notify.rs` → `alerts/maintenance.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Module path (`["keys", "index"]`) → the file that holds it.
type Files = BTreeMap<Vec<String>, PathBuf>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the library that has its own file.
fn module_files() -> Files {
    let mut out = Files::new();
    let root = src();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&root).unwrap().to_owned();
            if rel.starts_with("bin") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                module.pop();
            }
            out.insert(module, rel);
        }
    }
    out
}

/// Collects the modules a file's paths lead to.
struct Edges<'a> {
    files: &'a Files,
    /// The file's module, then any inline modules the visitor is inside.
    here: Vec<String>,
    /// Each module reached, with the first path that reached it.
    found: BTreeMap<Vec<String>, String>,
}

impl Edges<'_> {
    /// The deepest module with its own file that `segments`, read from `here`,
    /// lead into.
    fn resolve(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let (mut at, rest): (Vec<String>, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (self.here.clone(), &segments[1..]),
            "super" => {
                let mut at = self.here.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    at.pop();
                    rest = &rest[1..];
                }
                (at, rest)
            }
            _ => {
                // A child module of the current one (`table::Slot` beside `mod table;`);
                // anything else is another crate or an imported name, whose import
                // is an edge of its own.
                let mut child = self.here.clone();
                child.push(first.clone());
                if !self.files.contains_key(&child) {
                    return;
                }
                (self.here.clone(), segments)
            }
        };
        for s in rest {
            at.push(s.clone());
            if !self.files.contains_key(&at) {
                at.pop();
                break;
            }
        }
        // Inline modules live in their parent's file.
        while !self.files.contains_key(&at) && !at.is_empty() {
            at.pop();
        }
        self.found.entry(at).or_insert_with(|| segments.join("::"));
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Edges<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        // A single segment is a local name (a variable, an imported item), not a
        // module: `change.is_empty()` beside `mod change;`.
        if p.segments.len() > 1 {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.resolve(&segments);
        }
        syn::visit::visit_path(self, p);
    }

    /// `pub(super)` names who may see an item, not something the file uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.here.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.here.pop();
        }
    }
}

/// File → the files it imports from, each with a path that does.
type Graph = BTreeMap<PathBuf, BTreeMap<PathBuf, String>>;

fn graph() -> Graph {
    let files = module_files();
    let mut out = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut edges = Edges {
            files: &files,
            here: module.clone(),
            found: BTreeMap::new(),
        };
        edges.visit_file(&ast);
        let targets = edges
            .found
            .into_iter()
            .filter_map(|(m, path)| Some((files.get(&m)?.clone(), path)))
            .filter(|(f, _)| f != file)
            .collect();
        out.insert(file.clone(), targets);
    }
    out
}

/// The strongly connected components with more than one file (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flat_map(|t| t.keys()) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_file_imports_another_in_a_circle() {
    let g = graph();
    assert!(g.len() > 50, "only {} files found", g.len());
    let found = cycles(&g);
    let shown: Vec<String> = found
        .iter()
        .map(|scc| {
            let files: BTreeSet<&PathBuf> = scc.iter().collect();
            let edges: Vec<String> = scc
                .iter()
                .flat_map(|f| {
                    g[f].iter()
                        .filter(|(t, _)| files.contains(t))
                        .map(move |(t, path)| {
                            format!("  {} → {} ({path})", f.display(), t.display())
                        })
                })
                .collect();
            edges.join("\n")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", shown.join("\n\n"));
}

/// The layer of a top-level module: a file may import only from its own layer or
/// lower ones (test-only files are exempt: a test of a layer may drive it with the
/// layers above, as `test_support.rs` does).
fn layer(top: &str) -> Option<usize> {
    Some(match top {
        "clock" | "config" => 0,
        "model" => 1,
        "store" => 2,
        // Above the stores it copies between, beside the key service.
        "keys" | "migrate" | "backup" => 3,
        "alerts" => 4,
        "channels" | "api" => 5,
        "client" => 5,
        "daemon" => 6,
        _ => return None,
    })
}

#[test]
fn modules_import_only_from_the_layers_below() {
    let g = graph();
    let top = |f: &PathBuf| {
        f.iter()
            .next()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
            .unwrap_or_default()
    };
    let test_only = |f: &PathBuf| {
        let name = f.to_string_lossy();
        name.contains("tests") || name.ends_with("test_support.rs")
    };
    let mut wrong = Vec::new();
    for (from, targets) in &g {
        if test_only(from) {
            continue;
        }
        let Some(own) = layer(&top(from)) else {
            continue;
        };
        for (to, path) in targets {
            if layer(&top(to)).is_some_and(|l| l > own) {
                wrong.push(format!("{} → {} ({path})", from.display(), to.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a higher layer:\n{}",
        wrong.join("\n")
    );
}
