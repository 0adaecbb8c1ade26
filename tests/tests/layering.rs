//! Every directory reads bottom-up: no import cycle among the modules of
//! one directory (siblings, with their descendants).
//!
//! The test reads the sources of the crates `npy`, `ir`, `compiler` and
//! `runtime` (library and binaries), follows the `mod` declarations from
//! each crate root (`#[path]` included) to map files and inline modules to
//! module paths, and collects every path into the crate: `use crate::…`,
//! `use super::…`, `use self::…` (grouped trees too), paths such as
//! `crate::a::b::f()` or `super::X` in code, and paths starting at a child
//! module or at a name imported with `use`. Comments and string literals
//! are stripped first. A path resolves to the longest prefix that is a
//! module; a name that module imports (`pub use child::X`, or any `use`)
//! is followed to where it leads, so a parent re-exporting a child's item
//! is transparent: a module depends on the module it names *and* on the
//! one the re-export leads to. Glob imports (`pub use child::*`) are not
//! looked through: a name reached by one counts as the module's own.
//!
//! What a cycle is: an edge A → B (B a module of the same crate) is lifted
//! to the children of the lowest common ancestor of A and B; an edge
//! between two distinct siblings counts. An edge between a module and one
//! of its ancestors does not: a `mod.rs` declaring its children and
//! re-exporting their items, or a child using its parent's items, is not a
//! cycle. The test fails listing each strongly connected component of the
//! sibling graph, with one import (file:line) per edge.

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The crates whose module structure is checked (directories under the workspace root).
const CRATES: [&str; 4] = ["npy", "ir", "compiler", "runtime"];

// ---------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A string literal's contents (kept only for `#[path = "…"]`).
    Str(String),
    /// A number, char literal or lifetime: nothing a path is made of.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Rust source → tokens, without comments; string and char literals are
/// single tokens (so braces, `use` or `crate::` inside them are not seen).
fn tokenize(src: &str) -> Vec<Token> {
    let s: Vec<char> = src.chars().collect();
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            let start = line;
            let (text, next) = quoted(&s, i + 1, &mut line);
            out.push(Token {
                tok: Tok::Str(text),
                line: start,
            });
            i = next;
        } else if c == '\'' {
            // Char literal ('a', '\n', '\'', '{') or lifetime/label ('a).
            if at(i + 1) == '\\' {
                i += 3; // the quote, the backslash and the escaped char
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < s.len() && is_ident_char(s[i]) {
                    i += 1;
                }
            }
            out.push(Token {
                tok: Tok::Other,
                line,
            });
        } else if is_ident_start(c) {
            // Literal prefixes: b"…", b'…', r"…", r#"…"#, br, c, cr; raw identifiers r#x.
            let mut j = i;
            while j < s.len() && is_ident_char(s[j]) {
                j += 1;
            }
            let word: String = s[i..j].iter().collect();
            let prefix = matches!(word.as_str(), "b" | "r" | "br" | "c" | "cr");
            if prefix && at(j) == '\'' && word == "b" {
                i = j + 1;
                if at(i) == '\\' {
                    i += 1;
                }
                i += 1;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Other,
                    line,
                });
            } else if prefix && word.contains('r') && (at(j) == '"' || at(j) == '#') {
                let mut hashes = 0;
                let mut k = j;
                while at(k) == '#' {
                    hashes += 1;
                    k += 1;
                }
                if at(k) == '"' {
                    // Raw string: up to '"' followed by `hashes` '#'.
                    let start = line;
                    k += 1;
                    let begin = k;
                    loop {
                        if k >= s.len() {
                            break;
                        }
                        if s[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#') {
                            break;
                        }
                        if s[k] == '\n' {
                            line += 1;
                        }
                        k += 1;
                    }
                    out.push(Token {
                        tok: Tok::Str(s[begin..k.min(s.len())].iter().collect()),
                        line: start,
                    });
                    i = k + 1 + hashes;
                } else if word == "r" && hashes == 1 && is_ident_start(at(k)) {
                    // Raw identifier r#name.
                    let mut e = k;
                    while e < s.len() && is_ident_char(s[e]) {
                        e += 1;
                    }
                    out.push(Token {
                        tok: Tok::Ident(s[k..e].iter().collect()),
                        line,
                    });
                    i = e;
                } else {
                    out.push(Token {
                        tok: Tok::Ident(word),
                        line,
                    });
                    i = j;
                }
            } else if prefix && at(j) == '"' {
                let start = line;
                let (text, next) = quoted(&s, j + 1, &mut line);
                out.push(Token {
                    tok: Tok::Str(text),
                    line: start,
                });
                i = next;
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
                i = j;
            }
        } else if c.is_ascii_digit() {
            while i < s.len()
                && (is_ident_char(s[i]) || (s[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Other,
                line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        }
    }
    out
}

/// The contents of a `"`-delimited literal starting after its opening quote,
/// and the index after its closing quote.
fn quoted(s: &[char], mut i: usize, line: &mut usize) -> (String, usize) {
    let mut text = String::new();
    while i < s.len() && s[i] != '"' {
        if s[i] == '\n' {
            *line += 1;
        }
        if s[i] == '\\' && i + 1 < s.len() {
            text.push(s[i]);
            i += 1;
            if s[i] == '\n' {
                *line += 1;
            }
        }
        text.push(s[i]);
        i += 1;
    }
    (text, i + 1)
}

// ---------------------------------------------------------------------------
// Module tree

type ModPath = Vec<String>;

/// A path into the crate as written, in the module (`scope`) it is written in.
#[derive(Debug, Clone)]
struct Ref {
    segs: Vec<String>,
    file: String,
    line: usize,
}

#[derive(Debug, Default)]
struct Module {
    /// The file holding the module (its `mod` block for an inline module).
    file: String,
    children: BTreeSet<String>,
    /// Names `use` brings into the module (`_` and globs excluded): name → path as written.
    imports: HashMap<String, Vec<String>>,
    refs: Vec<Ref>,
}

/// One crate: a library, or one binary (`src/main.rs`, `src/bin/*.rs`).
#[derive(Debug)]
struct Crate {
    name: String,
    modules: BTreeMap<ModPath, Module>,
}

/// Parse state of one file: the module scopes open (the file's module,
/// then inline `mod x { … }` blocks) with the brace depth they opened at.
struct FileParse<'a> {
    toks: &'a [Token],
    file: String,
    /// Directory a `mod x;` of the file's own module looks in.
    child_dir: PathBuf,
    /// Directory `#[path]` is relative to.
    file_dir: PathBuf,
}

/// A `mod x;` found in a file: the module, where its file may be, and where it was declared.
struct Declared {
    module: ModPath,
    candidates: Vec<PathBuf>,
    file: String,
    line: usize,
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token {
            tok: Tok::Ident(s), ..
        }) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&Token>, want: &Tok) -> bool {
    t.is_some_and(|t| &t.tok == want)
}

/// A leaf of a use tree: the full path, the name it binds (`None` for globs and `_`).
struct UseLeaf {
    segs: Vec<String>,
    name: Option<String>,
    line: usize,
}

/// Parse a use tree from `i` with the path so far; returns the index after it.
fn use_tree(toks: &[Token], mut i: usize, prefix: Vec<String>, out: &mut Vec<UseLeaf>) -> usize {
    let mut segs = prefix;
    loop {
        let Some(t) = toks.get(i) else { return i };
        match &t.tok {
            Tok::PathSep => i += 1,
            Tok::Ident(s) => {
                segs.push(s.clone());
                let line = t.line;
                i += 1;
                if is(toks.get(i), &Tok::PathSep) {
                    i += 1;
                    continue;
                }
                let mut name = segs.last().cloned();
                if ident(toks.get(i)) == Some("as") {
                    name = ident(toks.get(i + 1)).map(str::to_owned);
                    i += 2;
                }
                if segs.last().map(String::as_str) == Some("self") {
                    segs.pop();
                    if name.as_deref() == Some("self") {
                        name = segs.last().cloned();
                    }
                }
                if name.as_deref() == Some("_") {
                    name = None;
                }
                out.push(UseLeaf { segs, name, line });
                return i;
            }
            Tok::Punct('*') => {
                out.push(UseLeaf {
                    segs,
                    name: None,
                    line: t.line,
                });
                return i + 1;
            }
            Tok::Punct('{') => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.tok) {
                        None => return i,
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(_) => {
                            let before = i;
                            i = use_tree(toks, i, segs.clone(), out);
                            if i == before {
                                i += 1; // not a use tree: do not loop forever
                            }
                        }
                    }
                }
            }
            _ => return i,
        }
    }
}

impl FileParse<'_> {
    /// Record the file's modules, imports and paths into `modules`; returns its `mod x;` declarations.
    fn run(&self, root: &ModPath, modules: &mut BTreeMap<ModPath, Module>) -> Vec<Declared> {
        let toks = self.toks;
        let mut declared = Vec::new();
        // (module, depth of the brace that opened it); the file's module is never closed.
        let mut scopes: Vec<(ModPath, usize)> = vec![(root.clone(), 0)];
        let mut depth = 0usize;
        let mut pending_path: Option<String> = None;
        let mut i = 0;
        while i < toks.len() {
            let scope = scopes.last().map(|s| s.0.clone()).unwrap_or_default();
            let t = &toks[i];
            match &t.tok {
                Tok::Punct('{') => {
                    depth += 1;
                    i += 1;
                }
                Tok::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    while scopes.len() > 1 && scopes.last().is_some_and(|s| s.1 > depth) {
                        scopes.pop();
                    }
                    pending_path = None;
                    i += 1;
                }
                Tok::Punct(';') => {
                    pending_path = None;
                    i += 1;
                }
                Tok::Punct('#')
                    if is(toks.get(i + 1), &Tok::Punct('['))
                        && ident(toks.get(i + 2)) == Some("path")
                        && is(toks.get(i + 3), &Tok::Punct('=')) =>
                {
                    if let Some(Tok::Str(p)) = toks.get(i + 4).map(|t| &t.tok) {
                        pending_path = Some(p.clone());
                    }
                    i += 4;
                }
                Tok::Ident(kw) if kw == "mod" && ident(toks.get(i + 1)).is_some() => {
                    let name = ident(toks.get(i + 1)).unwrap_or_default().to_owned();
                    let mut module = scope.clone();
                    module.push(name.clone());
                    modules
                        .entry(scope.clone())
                        .or_default()
                        .children
                        .insert(name.clone());
                    match toks.get(i + 2).map(|t| &t.tok) {
                        Some(Tok::Punct(';')) => {
                            let inline: Vec<&String> = scope[root.len()..].iter().collect();
                            let candidates = match pending_path.take() {
                                Some(p) if inline.is_empty() => vec![self.file_dir.join(p)],
                                Some(p) => {
                                    let mut d = self.child_dir.clone();
                                    d.extend(inline);
                                    vec![d.join(p)]
                                }
                                None => {
                                    let mut d = self.child_dir.clone();
                                    d.extend(inline);
                                    vec![d.join(format!("{name}.rs")), d.join(&name).join("mod.rs")]
                                }
                            };
                            declared.push(Declared {
                                module,
                                candidates,
                                file: self.file.clone(),
                                line: t.line,
                            });
                            i += 3;
                        }
                        Some(Tok::Punct('{')) => {
                            depth += 1;
                            modules.entry(module.clone()).or_default().file = self.file.clone();
                            scopes.push((module, depth));
                            pending_path = None;
                            i += 3;
                        }
                        _ => i += 1,
                    }
                }
                Tok::Ident(kw) if kw == "use" => {
                    let mut leaves = Vec::new();
                    i = use_tree(toks, i + 1, Vec::new(), &mut leaves);
                    let m = modules.entry(scope.clone()).or_default();
                    for leaf in leaves {
                        if let Some(name) = leaf.name {
                            m.imports.insert(name, leaf.segs.clone());
                        }
                        m.refs.push(Ref {
                            segs: leaf.segs,
                            file: self.file.clone(),
                            line: leaf.line,
                        });
                    }
                }
                Tok::Ident(first)
                    if is(toks.get(i + 1), &Tok::PathSep)
                        && !is(i.checked_sub(1).and_then(|p| toks.get(p)), &Tok::PathSep)
                        && !is(i.checked_sub(1).and_then(|p| toks.get(p)), &Tok::Punct('.')) =>
                {
                    // A path in code: `crate::a::f()`, `super::X`, `child::Y`, `Imported::new()`.
                    let mut segs = vec![first.clone()];
                    let line = t.line;
                    i += 1;
                    while is(toks.get(i), &Tok::PathSep) {
                        match ident(toks.get(i + 1)) {
                            Some(s) => {
                                segs.push(s.to_owned());
                                i += 2;
                            }
                            None => break,
                        }
                    }
                    modules.entry(scope.clone()).or_default().refs.push(Ref {
                        segs,
                        file: self.file.clone(),
                        line,
                    });
                }
                _ => i += 1,
            }
        }
        declared
    }
}

/// The crate roots under `dir` (a crate directory): the library and each binary.
fn crate_roots(
    name: &str,
    dir: &Path,
    files: &BTreeMap<PathBuf, String>,
) -> Vec<(String, PathBuf)> {
    let src = dir.join("src");
    let mut roots = Vec::new();
    if files.contains_key(&src.join("lib.rs")) {
        roots.push((name.to_owned(), src.join("lib.rs")));
    }
    if files.contains_key(&src.join("main.rs")) {
        roots.push((format!("{name}[bin]"), src.join("main.rs")));
    }
    let bin = src.join("bin");
    for path in files.keys() {
        let Ok(rel) = path.strip_prefix(&bin) else {
            continue;
        };
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let bin_name = match parts.as_slice() {
            [f] if f.ends_with(".rs") => f.trim_end_matches(".rs").to_owned(),
            [d, f] if f == "main.rs" => d.clone(),
            _ => continue,
        };
        roots.push((format!("{name}[bin {bin_name}]"), path.clone()));
    }
    roots
}

/// The sources, by path; paths are as given to [`analyse`] (relative or absolute).
type Sources = BTreeMap<PathBuf, String>;

#[derive(Debug, Default)]
struct Analysis {
    crates: Vec<Crate>,
    /// `mod x;` with no file, as "file:line: …".
    missing: Vec<String>,
    /// `.rs` files under a crate's `src/` that no crate root reaches.
    unreached: Vec<PathBuf>,
    /// Each strongly connected component of the sibling graph with more than one module.
    cycles: Vec<Cycle>,
    /// Lifted sibling edges (for the report).
    edges: usize,
}

#[derive(Debug)]
struct Cycle {
    /// The component's modules, displayed as `crate::a::b`.
    modules: Vec<String>,
    /// A cycle through the component, then its other internal edges:
    /// (from, to, "file:line: from-module → to-module").
    edges: Vec<(String, String, String)>,
    /// How many of `edges` form the cycle (the first ones).
    cycle_len: usize,
}

impl Module {
    fn child(&self, name: &str) -> bool {
        self.children.contains(name)
    }
}

impl Crate {
    fn display(&self, m: &[String]) -> String {
        std::iter::once(self.name.as_str())
            .chain(m.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("::")
    }

    /// Absolute segments of a path written in `scope` (`None`: outside the
    /// crate: std, another crate, a local item, a type's associated item).
    fn absolute(&self, scope: &ModPath, segs: &[String], hops: usize) -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut base: ModPath;
        let mut rest = &segs[1..];
        match first.as_str() {
            "crate" => base = Vec::new(),
            "self" => base = scope.clone(),
            "super" => {
                base = scope.clone();
                base.pop()?;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            name => {
                let m = self.modules.get(scope)?;
                if m.child(name) {
                    base = scope.clone();
                    base.push(name.to_owned());
                } else {
                    let target = m.imports.get(name)?;
                    if hops > 16 || target.as_slice() == segs {
                        return None;
                    }
                    base = self.absolute(scope, target, hops + 1)?;
                }
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The modules an absolute path depends on: the longest module prefix,
    /// then, where the next name is one that module imports, where that leads.
    fn targets(&self, abs: &[String], hops: usize, out: &mut Vec<ModPath>) {
        let mut cur: ModPath = Vec::new();
        for (k, seg) in abs.iter().enumerate() {
            let Some(m) = self.modules.get(&cur) else {
                break;
            };
            if m.child(seg) {
                cur.push(seg.clone());
                continue;
            }
            if let Some(target) = m.imports.get(seg) {
                if hops <= 16 {
                    if let Some(mut next) = self.absolute(&cur, target, hops + 1) {
                        next.extend(abs[k + 1..].iter().cloned());
                        out.push(cur.clone());
                        self.targets(&next, hops + 1, out);
                        return;
                    }
                }
            }
            break;
        }
        out.push(cur);
    }
}

/// Build the module trees of `crate_dirs` (name, directory) from `sources`
/// and find the cycles among siblings.
fn analyse(crate_dirs: &[(&str, PathBuf)], sources: &Sources) -> Analysis {
    let mut an = Analysis::default();
    let mut reached: BTreeSet<PathBuf> = BTreeSet::new();
    for (name, dir) in crate_dirs {
        for (crate_name, root) in crate_roots(name, dir, sources) {
            let mut krate = Crate {
                name: crate_name,
                modules: BTreeMap::new(),
            };
            let mut queue: VecDeque<(ModPath, PathBuf, bool)> = VecDeque::new();
            queue.push_back((Vec::new(), root, true));
            while let Some((module, path, is_root)) = queue.pop_front() {
                let Some(src) = sources.get(&path) else {
                    continue;
                };
                reached.insert(path.clone());
                let file_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                let mod_rs = is_root || stem.as_deref() == Some("mod");
                let child_dir = if mod_rs {
                    file_dir.clone()
                } else {
                    file_dir.join(stem.unwrap_or_default())
                };
                let toks = tokenize(src);
                let file = path.display().to_string();
                krate.modules.entry(module.clone()).or_default().file = file.clone();
                let parse = FileParse {
                    toks: &toks,
                    file,
                    child_dir,
                    file_dir,
                };
                for d in parse.run(&module, &mut krate.modules) {
                    match d.candidates.iter().find(|c| sources.contains_key(*c)) {
                        Some(c) => queue.push_back((d.module, c.clone(), false)),
                        None => an.missing.push(format!(
                            "{}:{}: mod {} has no file (looked for {:?})",
                            d.file,
                            d.line,
                            d.module.join("::"),
                            d.candidates
                        )),
                    }
                }
            }
            an.crates.push(krate);
        }
        let src = dir.join("src");
        an.unreached.extend(
            sources
                .keys()
                .filter(|p| p.starts_with(&src) && !reached.contains(*p))
                .cloned(),
        );
    }
    find_cycles(&mut an);
    an
}

fn find_cycles(an: &mut Analysis) {
    let mut graph: DiGraph<String, ()> = DiGraph::new();
    let mut nodes: HashMap<String, NodeIndex> = HashMap::new();
    // Lifted edge → its first witness.
    let mut witness: BTreeMap<(String, String), String> = BTreeMap::new();
    for krate in &an.crates {
        for (scope, m) in &krate.modules {
            for r in &m.refs {
                let Some(abs) = krate.absolute(scope, &r.segs, 0) else {
                    continue;
                };
                let mut targets = Vec::new();
                krate.targets(&abs, 0, &mut targets);
                for t in targets {
                    if t.starts_with(scope) || scope.starts_with(&t) {
                        continue; // itself, an ancestor or a descendant
                    }
                    let lca = scope.iter().zip(&t).take_while(|(a, b)| a == b).count();
                    let (a, b) = (krate.display(&scope[..=lca]), krate.display(&t[..=lca]));
                    witness.entry((a, b)).or_insert_with(|| {
                        format!(
                            "{}:{}: {} → {}",
                            r.file,
                            r.line,
                            krate.display(scope),
                            krate.display(&t)
                        )
                    });
                }
            }
        }
    }
    let mut node = |g: &mut DiGraph<String, ()>, name: &String| {
        *nodes
            .entry(name.clone())
            .or_insert_with(|| g.add_node(name.clone()))
    };
    for (a, b) in witness.keys() {
        let (ia, ib) = (node(&mut graph, a), node(&mut graph, b));
        graph.add_edge(ia, ib, ());
    }
    an.edges = witness.len();
    for scc in tarjan_scc(&graph) {
        if scc.len() < 2 {
            continue;
        }
        let mut members: Vec<String> = scc.iter().map(|&n| graph[n].clone()).collect();
        members.sort();
        let inside: BTreeSet<&String> = members.iter().collect();
        // A shortest cycle through the first member (BFS back to it).
        let start = &members[0];
        let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'bfs: while let Some(u) = queue.pop_front() {
            for ((a, b), _) in witness.range((u.clone(), String::new())..) {
                if a != u {
                    break;
                }
                if !inside.contains(b) {
                    continue;
                }
                if b == start {
                    last = Some(u);
                    break 'bfs;
                }
                if !prev.contains_key(b) {
                    prev.insert(b, u);
                    queue.push_back(b);
                }
            }
        }
        let mut path = vec![start.clone()];
        let mut cur = last.expect("a strongly connected component has a cycle");
        while cur != start {
            path.push(cur.clone());
            cur = prev[cur];
        }
        path[1..].reverse();
        path.push(start.clone()); // start, …, start
        let mut edges = Vec::new();
        let mut on_cycle = BTreeSet::new();
        for w in path.windows(2) {
            let key = (w[0].clone(), w[1].clone());
            edges.push((w[0].clone(), w[1].clone(), witness[&key].clone()));
            on_cycle.insert(key);
        }
        let cycle_len = edges.len();
        for ((a, b), w) in &witness {
            if inside.contains(a)
                && inside.contains(b)
                && !on_cycle.contains(&(a.clone(), b.clone()))
            {
                edges.push((a.clone(), b.clone(), w.clone()));
            }
        }
        an.cycles.push(Cycle {
            modules: members,
            edges,
            cycle_len,
        });
    }
    an.cycles.sort_by(|a, b| a.modules.cmp(&b.modules));
}

fn report(cycles: &[Cycle]) -> String {
    let mut s = String::new();
    for c in cycles {
        let names: Vec<&str> = c.edges[..c.cycle_len]
            .iter()
            .map(|e| e.0.as_str())
            .chain(std::iter::once(c.modules[0].as_str()))
            .collect();
        let _ = writeln!(s, "cycle: {}", names.join(" → "));
        for (k, (_, _, w)) in c.edges.iter().enumerate() {
            let tag = if k < c.cycle_len { "  " } else { "  (also) " };
            let _ = writeln!(s, "{tag}{w}");
        }
    }
    s
}

// ---------------------------------------------------------------------------
// The workspace

/// The crates' sources, by path relative to the workspace root.
fn workspace_sources() -> (Vec<(&'static str, PathBuf)>, Sources) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace root");
    let mut sources = Sources::new();
    let mut dirs = Vec::new();
    for name in CRATES {
        let mut stack = vec![Path::new(name).join("src")];
        while let Some(d) = stack.pop() {
            let entries =
                std::fs::read_dir(root.join(&d)).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            for entry in entries {
                let entry = entry.expect("directory entry");
                let path = d.join(entry.file_name());
                if entry.file_type().expect("file type").is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(root.join(&path))
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    sources.insert(path, text);
                }
            }
        }
        dirs.push((name, PathBuf::from(name)));
    }
    (dirs, sources)
}

#[test]
fn no_import_cycles_among_sibling_modules() {
    let (dirs, sources) = workspace_sources();
    let an = analyse(&dirs, &sources);
    let modules: usize = an.crates.iter().map(|c| c.modules.len()).sum();
    println!(
        "{} crates, {} modules, {} source files, {} sibling edges",
        an.crates.len(),
        modules,
        sources.len(),
        an.edges
    );
    assert!(
        an.missing.is_empty(),
        "module files not found:\n{}",
        an.missing.join("\n")
    );
    assert!(
        an.unreached.is_empty(),
        "source files no crate root declares (dead, or a `mod` this test cannot see): {:?}",
        an.unreached
    );
    assert!(
        modules > 50 && an.crates.len() >= 4,
        "only {modules} modules in {} crates: are the paths right?",
        an.crates.len()
    );
    assert!(
        an.cycles.is_empty(),
        "import cycles among sibling modules (each directory must read bottom-up):\n{}",
        report(&an.cycles)
    );
}

// ---------------------------------------------------------------------------
// Self-check of the analysis on a crate in memory

fn demo(files: &[(&str, &str)]) -> Analysis {
    let sources: Sources = files
        .iter()
        .map(|(p, s)| (Path::new("demo").join(p), (*s).to_owned()))
        .collect();
    analyse(&[("demo", PathBuf::from("demo"))], &sources)
}

const DEMO_LIB: &str = "mod a;\npub mod b;\nmod c;\nmod d;\n#[path = \"extra/e_file.rs\"]\nmod e;\npub use c::Thing;\n";
const DEMO_A: &str = r##"//! `use crate::c::Z;` in a comment is no import.
use crate::b::{B, inner::{X, Y}};
/* use crate::d::D; /* nested */ use crate::e::E; */
fn h<'a>(s: &'a str) -> char { let _ = r#"} use crate::d::D; {"#; let _ = "crate::c::W"; '{' }
pub fn g() {}
#[cfg(test)]
mod tests {
    use super::super::e::E;
}
fn k() { let _ = '}'; }
"##;
const DEMO_B: &str = "pub mod inner;\npub struct B;\npub fn f() {\n    super::a::g()\n}\n";
const DEMO_B_ACYCLIC: &str = "pub mod inner;\npub struct B;\npub fn f() {}\n";
const DEMO_INNER: &str = "pub struct X;\npub struct Y;\nuse super::B;\n";
const DEMO_C: &str = "pub struct Thing;\nfn f() -> usize {\n    crate::d::D\n}\n";
const DEMO_D: &str = "pub const D: usize = 0;\nuse crate::Thing as _;\n";
const DEMO_D_ACYCLIC: &str = "pub const D: usize = 0;\n";
const DEMO_E: &str = "pub struct E;\n";

#[test]
fn analysis_finds_a_cycle_and_only_that() {
    let an = demo(&[
        ("src/lib.rs", DEMO_LIB),
        ("src/a.rs", DEMO_A),
        ("src/b/mod.rs", DEMO_B),
        ("src/b/inner.rs", DEMO_INNER),
        ("src/c.rs", DEMO_C),
        ("src/d.rs", DEMO_D),
        ("src/extra/e_file.rs", DEMO_E),
        ("src/dead.rs", ""),
    ]);
    assert!(an.missing.is_empty(), "{:?}", an.missing);
    assert_eq!(an.unreached, [PathBuf::from("demo/src/dead.rs")]);
    let paths: Vec<String> = an.crates[0]
        .modules
        .keys()
        .map(|m| an.crates[0].display(m))
        .collect();
    assert_eq!(
        paths,
        [
            "demo",
            "demo::a",
            "demo::a::tests",
            "demo::b",
            "demo::b::inner",
            "demo::c",
            "demo::d",
            "demo::e"
        ]
    );
    let found: Vec<(Vec<String>, Vec<String>)> = an
        .cycles
        .iter()
        .map(|c| {
            (
                c.modules.clone(),
                c.edges.iter().map(|e| e.2.clone()).collect(),
            )
        })
        .collect();
    // a ↔ b through a grouped import and a path in code; c ↔ d through the
    // crate root's re-export of c::Thing. a → e (from a's inline test
    // module) is an edge, but no cycle; nothing in comments or strings counts.
    assert_eq!(
        found,
        [
            (
                vec!["demo::a".to_owned(), "demo::b".to_owned()],
                vec![
                    "demo/src/a.rs:2: demo::a → demo::b".to_owned(),
                    "demo/src/b/mod.rs:4: demo::b → demo::a".to_owned(),
                ]
            ),
            (
                vec!["demo::c".to_owned(), "demo::d".to_owned()],
                vec![
                    "demo/src/c.rs:3: demo::c → demo::d".to_owned(),
                    "demo/src/d.rs:2: demo::d → demo::c".to_owned(),
                ]
            ),
        ],
        "{}",
        report(&an.cycles)
    );
    // a → b, a → b::inner (lifted: a → b), a::tests → e (lifted: a → e), b → a, c → d, d → c.
    assert_eq!(an.edges, 5);
}

#[test]
fn analysis_passes_an_acyclic_crate() {
    let an = demo(&[
        ("src/lib.rs", DEMO_LIB),
        ("src/a.rs", DEMO_A),
        ("src/b/mod.rs", DEMO_B_ACYCLIC),
        ("src/b/inner.rs", DEMO_INNER),
        ("src/c.rs", DEMO_C),
        ("src/d.rs", DEMO_D_ACYCLIC),
        ("src/extra/e_file.rs", DEMO_E),
    ]);
    assert!(an.missing.is_empty() && an.unreached.is_empty());
    assert!(an.cycles.is_empty(), "{}", report(&an.cycles));
    assert_eq!(an.edges, 3); // a → b, a → e, c → d
}

#[test]
fn tokens_skip_comments_and_literals() {
    let toks: Vec<Tok> =
        tokenize("a /* b /* c */ d */ 'x' '\\'' 'lt r#\"q\"# b'\\n' r#type // e\n::f")
            .into_iter()
            .map(|t| t.tok)
            .collect();
    assert_eq!(
        toks,
        [
            Tok::Ident("a".into()),
            Tok::Other,
            Tok::Other,
            Tok::Other,
            Tok::Str("q".into()),
            Tok::Other,
            Tok::Ident("type".into()),
            Tok::PathSep,
            Tok::Ident("f".into()),
        ]
    );
}
