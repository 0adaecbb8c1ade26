//! Finding the network in a checkpoint's object.
//!
//! A checkpoint is whatever object its author saved. This module walks it
//! (never executing anything) and lists the *candidates*, the places that
//! can hold a network's tensors:
//! - a **state dict**: a dict with string keys and tensor values, at the top
//!   or nested under any key (`state_dict`, `model_state_dict`, `model`,
//!   `net`, `ema`, `optimizer.state.0`, ...);
//! - a **pickled module** (`torch.save(model)`): an object whose state has
//!   `_modules`/`_parameters`/`_buffers`, whatever its class; its module
//!   tree is walked as `state_dict()` would (parameters and persistent
//!   buffers by dotted path, `None` skipped), submodules included.
//!
//! Tensors elsewhere (in lists, under integer keys) are *loose*: never
//! chosen, only counted in the report.
//!
//! Each candidate is then scored against the graph's constants under every
//! key prefix that maps at least one of its names onto a constant
//! (`module.`, `model.`, `module.densenet121.`, ...; names are compared
//! after [`super::normalize_name`]): first by constants found with the
//! right shape, then by constants found, then by fewest names left over.
//! The best (candidate, prefix) wins; units that tie with the same tensors
//! (the same state dict seen with and without `module.`, two keys holding
//! the same storages) are one, and the longest prefix is reported. A tie
//! between different tensors is an error listing them, unless exactly one
//! of them is not an EMA copy (a key naming `ema`), which then wins.
//! Without a graph ([`super::read_tensors`]) the candidate with the most
//! tensors wins under the same tie rules. [`Choice`] overrides both.

use super::bind::normalize_name;
use super::error::{ParseError, WeightError};
use super::pickle::{Heap, Obj, Value};
use super::pth::{self, Pickled, View};
use super::{Format, Tensor, TensorMap};
use ir::Graph;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// Deepest nesting of containers the walk follows.
const MAX_DEPTH: usize = 64;

/// Buffers that models carry beside their weights and that are not part of
/// the network's computation: named here, ignored with the reason.
const EXTRAS: [(&str, &str); 1] = [(
    "op_threshs",
    "torchxrayvision's operating-point thresholds (an output calibration, not a weight)",
)];

/// How the user chose where the network is (`--weights-key`,
/// `--weights-prefix`); `None` fields are found automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// The path of the state dict or module: keys from the top of the
    /// object joined by `.` (`state_dict`, `model.ema`); empty or `.` for
    /// the top level. As [`Found::path`] prints it.
    pub key: Option<String>,
    /// The prefix to strip from every tensor name (`module.`); tensors
    /// outside it are ignored. An empty prefix strips nothing.
    pub prefix: Option<String>,
}

/// What holds the network's tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A dict of tensors (`model.state_dict()`).
    StateDict,
    /// A whole pickled `nn.Module` of this class, walked by path.
    Module { class: String },
    /// A flat file of named tensors (safetensors).
    Flat,
}

/// Tensors of the file that were not bound, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Where they are: a path as in [`Found::path`] (the first key under
    /// the top level), or a tensor name.
    pub path: String,
    pub tensors: usize,
    pub reason: String,
}

/// Where in a weights file the network's tensors were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub format: Format,
    /// Keys from the top of the object to the state dict or module, joined
    /// by `.`; empty for the top level.
    pub path: String,
    pub kind: SourceKind,
    /// The prefix stripped from every name taken (empty: none).
    pub prefix: String,
    /// Tensors taken for binding (`num_batches_tracked` included; `bind`
    /// ignores those).
    pub tensors: usize,
    /// Everything else in the file that holds tensors.
    pub ignored: Vec<Ignored>,
    /// Whether the graph's constants chose the candidate (false without a
    /// graph, or when no candidate named any constant).
    pub matched: bool,
}

fn quoted_path(path: &str) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("`{path}`")
    }
}

impl Found {
    /// One line: the container and the prefix (for error messages).
    pub fn summary(&self) -> String {
        let what = match &self.kind {
            SourceKind::StateDict => format!("the state dict at {}", quoted_path(&self.path)),
            SourceKind::Module { class } => format!(
                "the pickled module `{class}` at {}",
                quoted_path(&self.path)
            ),
            SourceKind::Flat => "its tensors".into(),
        };
        if self.prefix.is_empty() {
            what
        } else {
            format!("{what}, prefix `{}` stripped", self.prefix)
        }
    }
}

impl fmt::Display for Found {
    /// What was found where, one fact per line (`inspect --weights`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format:   {}", self.format)?;
        let found = match &self.kind {
            SourceKind::StateDict => format!("a state dict at {}", quoted_path(&self.path)),
            SourceKind::Module { class } => format!(
                "a pickled module `{class}` (torch.save(model)) at {}, its module tree walked",
                quoted_path(&self.path)
            ),
            SourceKind::Flat => "named tensors".into(),
        };
        writeln!(f, "found:    {found}, {} tensors taken", self.tensors)?;
        if !self.prefix.is_empty() {
            writeln!(f, "prefix:   `{}` stripped from every name", self.prefix)?;
        }
        if !self.matched {
            writeln!(
                f,
                "chosen:   the largest candidate (no graph given, or no name matched it)"
            )?;
        }
        for i in &self.ignored {
            writeln!(
                f,
                "ignored:  {} ({} tensor{}): {}",
                quoted_path(&i.path),
                i.tensors,
                if i.tensors == 1 { "" } else { "s" },
                i.reason
            )?;
        }
        Ok(())
    }
}

/// Refers to one tensor of the object.
#[derive(Debug, Clone)]
enum Handle {
    Pickle(Value),
    Flat(String),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// The declared shape, if the value reads as a tensor.
    shape: Option<Vec<usize>>,
    handle: Handle,
}

#[derive(Debug)]
struct Candidate {
    path: Vec<String>,
    kind: SourceKind,
    entries: Vec<Entry>,
}

impl Candidate {
    fn path(&self) -> String {
        self.path.join(".")
    }
}

/// The object a file holds, after its container is read.
pub(crate) enum Object<'a> {
    Pickle(Pickled<'a>),
    Flat(TensorMap),
}

/// Collects candidates and loose tensors.
struct Walker<'h> {
    heap: &'h Heap,
    seen: HashSet<usize>,
    candidates: Vec<Candidate>,
    /// Paths of tensors outside any candidate.
    loose: Vec<Vec<String>>,
    /// Containers left to visit: the walk never takes more steps than a
    /// small multiple of the heap, whatever the object's sharing.
    budget: usize,
}

fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => "?".into(),
    }
}

/// The `__dict__` of a pickled `nn.Module`, if `v` is one.
fn module_state<'h>(heap: &'h Heap, v: &Value) -> Option<&'h Value> {
    let Some(Obj::Call {
        state: Some(state), ..
    }) = heap.get(v)
    else {
        return None;
    };
    ["_modules", "_parameters", "_buffers"]
        .iter()
        .any(|k| heap.dict_get(state, k).is_some())
        .then_some(state)
}

/// Items of a dict (`_parameters`, `_modules`) as `(string key, value)`,
/// the last of a repeated key winning.
fn str_items<'h>(heap: &'h Heap, v: Option<&Value>) -> Vec<(&'h str, &'h Value)> {
    let Some(Obj::Dict(items)) = v.and_then(|v| heap.get(v)) else {
        return Vec::new();
    };
    let mut out: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in items {
        if let Some(k) = pth::str_key(k) {
            match out.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
    }
    out
}

/// The strings in a pickled set: `EMPTY_SET`/`ADDITEMS` (protocol 4+) or
/// `builtins.set([...])` (protocol 2).
fn set_strings<'h>(heap: &'h Heap, v: Option<&Value>) -> HashSet<&'h str> {
    let items = match v.and_then(|v| heap.get(v)) {
        Some(Obj::Set(items) | Obj::List(items)) => items,
        Some(Obj::Call { args, .. }) => match heap.get(args) {
            Some(Obj::Tuple(a)) => match a.first().and_then(|l| heap.get(l)) {
                Some(Obj::List(items)) => items,
                _ => return HashSet::new(),
            },
            _ => return HashSet::new(),
        },
        _ => return HashSet::new(),
    };
    items.iter().filter_map(pth::str_key).collect()
}

impl<'h> Walker<'h> {
    fn new(heap: &'h Heap) -> Self {
        Walker {
            heap,
            seen: HashSet::new(),
            candidates: Vec::new(),
            loose: Vec::new(),
            budget: 4 * heap.len() + 64,
        }
    }

    fn entry(&self, name: String, v: &Value) -> Entry {
        Entry {
            name,
            shape: pth::tensor_view(self.heap, v).ok().map(|view| view.size),
            handle: Handle::Pickle(v.clone()),
        }
    }

    fn visit(&mut self, v: &Value, path: &mut Vec<String>, depth: usize) {
        let Value::Obj(index) = v else { return };
        if depth > MAX_DEPTH || self.budget == 0 {
            return;
        }
        self.budget -= 1;
        let heap = self.heap;
        if pth::is_tensor(heap, v) {
            self.loose.push(path.clone());
            return;
        }
        if !self.seen.insert(*index) {
            return;
        }
        if let Some(state) = module_state(heap, v) {
            let class = match heap.get(v) {
                Some(Obj::Call { func, .. }) => heap.class_name(func),
                _ => None,
            }
            .unwrap_or_else(|| "?".into());
            let mut entries = Vec::new();
            self.module(state, "", &mut entries, depth);
            self.candidates.push(Candidate {
                path: path.clone(),
                kind: SourceKind::Module { class },
                entries,
            });
            return;
        }
        match heap.get(v) {
            Some(Obj::Dict(items)) => {
                let mut entries: Vec<Entry> = Vec::new();
                for (k, item) in items {
                    if pth::is_tensor(heap, item) {
                        if let Some(name) = pth::str_key(k) {
                            let e = self.entry(name.to_owned(), item);
                            match entries.iter_mut().find(|x| x.name == name) {
                                Some(slot) => *slot = e,
                                None => entries.push(e),
                            }
                            continue;
                        }
                    }
                    path.push(key_name(k));
                    self.visit(item, path, depth + 1);
                    path.pop();
                }
                if !entries.is_empty() {
                    self.candidates.push(Candidate {
                        path: path.clone(),
                        kind: SourceKind::StateDict,
                        entries,
                    });
                }
            }
            Some(Obj::List(items) | Obj::Tuple(items) | Obj::Set(items)) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    self.visit(item, path, depth + 1);
                    path.pop();
                }
            }
            Some(Obj::Call { args, state, .. }) => {
                // Another pickled object (argparse.Namespace, a trainer):
                // its attributes and arguments may hold state dicts.
                if let Some(state) = state {
                    self.visit(state, path, depth + 1);
                }
                self.visit(args, path, depth + 1);
            }
            _ => {}
        }
    }

    /// The tensors of a module tree, named as `state_dict()` names them.
    fn module(&mut self, state: &Value, prefix: &str, entries: &mut Vec<Entry>, depth: usize) {
        if depth > MAX_DEPTH || self.budget == 0 {
            return;
        }
        self.budget -= 1;
        let heap = self.heap;
        for (name, p) in str_items(heap, heap.dict_get(state, "_parameters")) {
            if *p != Value::None {
                entries.push(self.entry(format!("{prefix}{name}"), p));
            }
        }
        let transient = set_strings(heap, heap.dict_get(state, "_non_persistent_buffers_set"));
        for (name, b) in str_items(heap, heap.dict_get(state, "_buffers")) {
            if *b != Value::None && !transient.contains(name) {
                entries.push(self.entry(format!("{prefix}{name}"), b));
            }
        }
        for (name, m) in str_items(heap, heap.dict_get(state, "_modules")) {
            if let Some(child) = module_state(heap, m) {
                self.module(child, &format!("{prefix}{name}."), entries, depth + 1);
            } else if *m != Value::None {
                // Not a module: bind reports whatever it should have held.
                entries.push(self.entry(format!("{prefix}{name}"), m));
            }
        }
    }
}

fn walk(heap: &Heap, root: &Value) -> (Vec<Candidate>, Vec<Vec<String>>) {
    let mut w = Walker::new(heap);
    w.visit(root, &mut Vec::new(), 0);
    (w.candidates, w.loose)
}

/// The path of the first tensor stored in storage `key`, for messages.
pub(crate) fn tensor_using(heap: &Heap, root: &Value, key: &str) -> Option<String> {
    let (candidates, _) = walk(heap, root);
    candidates.iter().find_map(|c| {
        c.entries.iter().find_map(|e| match &e.handle {
            Handle::Pickle(v) => pth::tensor_view(heap, v)
                .ok()
                .filter(|view| view.storage.key == key)
                .map(|_| {
                    let mut p = c.path.clone();
                    p.push(e.name.clone());
                    p.join(".")
                }),
            Handle::Flat(_) => None,
        })
    })
}

/// Whether a key names an EMA copy (`ema`, `model_ema`, `state_dict_ema`).
fn is_ema_key(key: &str) -> bool {
    key.to_ascii_lowercase()
        .split(['_', '-', ' '])
        .any(|w| w == "ema")
}

/// Whether a path goes through an EMA copy.
fn is_ema(path: &[String]) -> bool {
    path.iter().any(|c| is_ema_key(c))
}

/// Why the tensors under top-level key `first` are not the network.
fn reason(first: &str) -> String {
    let k = first.to_ascii_lowercase();
    if is_ema_key(&k) {
        "an EMA copy of the weights (choose it with --weights-key)".into()
    } else if k.contains("optim") {
        "optimizer state".into()
    } else if k.contains("sched") {
        "learning-rate scheduler state".into()
    } else if k.contains("scaler") {
        "mixed-precision scaler state".into()
    } else {
        "not the chosen network".into()
    }
}

/// A candidate read under one prefix, with its score.
#[derive(Debug, Clone)]
struct Unit {
    cand: usize,
    prefix: String,
    /// Graph constants found with the graph's shape.
    shape_ok: usize,
    /// Graph constants found.
    covered: usize,
    /// Entries that name no constant (or lie outside the prefix).
    stray: usize,
}

impl Unit {
    fn rank(&self) -> (usize, usize, std::cmp::Reverse<usize>) {
        (self.shape_ok, self.covered, std::cmp::Reverse(self.stray))
    }
}

/// Does graph-relative name `g` belong to a network with constants `consts`?
fn known(consts: &BTreeMap<String, Vec<usize>>, g: &str) -> bool {
    consts.contains_key(g)
        || g.ends_with(".num_batches_tracked")
        || EXTRAS.iter().any(|(n, _)| *n == g)
}

fn score(c: &Candidate, cand: usize, prefix: &str, consts: &BTreeMap<String, Vec<usize>>) -> Unit {
    let mut found: HashMap<String, bool> = HashMap::new();
    let mut stray = 0;
    for e in &c.entries {
        let Some(rest) = e.name.strip_prefix(prefix) else {
            stray += 1;
            continue;
        };
        let g = normalize_name(rest);
        match consts.get(&g) {
            Some(shape) => {
                let ok = e.shape.as_ref() == Some(shape);
                *found.entry(g).or_insert(false) |= ok;
            }
            None if known(consts, &g) => {}
            None => stray += 1,
        }
    }
    Unit {
        cand,
        prefix: prefix.to_owned(),
        shape_ok: found.values().filter(|&&ok| ok).count(),
        covered: found.len(),
        stray,
    }
}

/// The prefixes under which some name of `c` maps onto a constant.
fn prefixes(c: &Candidate, consts: &BTreeMap<String, Vec<usize>>) -> Vec<String> {
    let mut out: Vec<String> = vec![String::new()];
    for e in &c.entries {
        let cuts = std::iter::once(0).chain(e.name.match_indices('.').map(|(i, _)| i + 1));
        for cut in cuts {
            let (p, rest) = e.name.split_at(cut);
            if !out.iter().any(|x| x == p) && consts.contains_key(&normalize_name(rest)) {
                out.push(p.to_owned());
            }
        }
    }
    out
}

/// The tensors a unit would bind: graph-relative names and what they are.
type Identity = Vec<(String, Id)>;

/// What identifies a tensor across candidates: its storage view.
#[derive(Debug, PartialEq)]
enum Id {
    View(View),
    Name(String),
}

struct Selector<'o, 'a> {
    object: &'o Object<'a>,
    candidates: Vec<Candidate>,
}

impl Selector<'_, '_> {
    fn id(&self, e: &Entry) -> Id {
        match (&e.handle, self.object) {
            (Handle::Pickle(v), Object::Pickle(p)) => match pth::tensor_view(&p.heap, v) {
                Ok(view) => Id::View(view),
                Err(_) => Id::Name(format!("{v:?}")),
            },
            (Handle::Flat(n), _) => Id::Name(n.clone()),
            (Handle::Pickle(v), _) => Id::Name(format!("{v:?}")),
        }
    }

    /// The tensors a unit would bind, by graph-relative name.
    fn identity(&self, u: &Unit) -> Identity {
        let mut out: Identity = self.candidates[u.cand]
            .entries
            .iter()
            .map(|e| match e.name.strip_prefix(u.prefix.as_str()) {
                Some(rest) => (normalize_name(rest), self.id(e)),
                None => (format!("\u{0}{}", e.name), self.id(e)),
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn describe(&self, u: &Unit) -> String {
        let c = &self.candidates[u.cand];
        let what = match &c.kind {
            SourceKind::Module { class } => format!("a pickled `{class}`"),
            _ => "a state dict".into(),
        };
        let mut s = format!(
            "{} ({what} of {} tensors",
            quoted_path(&c.path()),
            c.entries.len()
        );
        if !u.prefix.is_empty() {
            s.push_str(&format!(", prefix `{}`", u.prefix));
        }
        s.push(')');
        s
    }

    /// The best unit, or an error naming the tied ones.
    fn best(&self, units: Vec<Unit>, file: &Path) -> Result<Unit, WeightError> {
        let Some(top) = units.iter().map(Unit::rank).max() else {
            return Err(WeightError::NotFound {
                path: file.to_owned(),
                message: "it holds no tensors".into(),
            });
        };
        let tied: Vec<Unit> = units.into_iter().filter(|u| u.rank() == top).collect();
        // Group the tied units that would bind the same tensors.
        let mut groups: Vec<(Identity, Vec<Unit>)> = Vec::new();
        for u in tied {
            let id = self.identity(&u);
            match groups.iter_mut().find(|(g, _)| *g == id) {
                Some((_, members)) => members.push(u),
                None => groups.push((id, vec![u])),
            }
        }
        let mut groups: Vec<Vec<Unit>> = groups.into_iter().map(|(_, m)| m).collect();
        if groups.len() > 1 {
            let not_ema: Vec<usize> = (0..groups.len())
                .filter(|&i| !is_ema(&self.candidates[groups[i][0].cand].path))
                .collect();
            if let [only] = not_ema[..] {
                groups = vec![groups.swap_remove(only)];
            }
        }
        if groups.len() > 1 {
            let list: Vec<String> = groups
                .iter()
                .map(|g| format!("\n  - {}", self.describe(&g[0])))
                .collect();
            return Err(WeightError::Ambiguous {
                path: file.to_owned(),
                message: format!(
                    "it holds {} networks that fit equally:{}\nchoose one with \
                     --weights-key PATH (and --weights-prefix P where they share a path)",
                    groups.len(),
                    list.concat()
                ),
            });
        }
        let group = groups.swap_remove(0);
        // The same tensors seen with and without a wrapper prefix: report
        // the prefix, and the outermost candidate.
        let best = group
            .into_iter()
            .min_by(|a, b| {
                (std::cmp::Reverse(a.prefix.len()), a.cand)
                    .cmp(&(std::cmp::Reverse(b.prefix.len()), b.cand))
            })
            .ok_or_else(|| WeightError::NotFound {
                path: file.to_owned(),
                message: "it holds no tensors".into(),
            })?;
        Ok(best)
    }
}

fn not_found(file: &Path, message: String) -> WeightError {
    WeightError::NotFound {
        path: file.to_owned(),
        message,
    }
}

/// Choose the network's tensors in `object` (see the module doc) and copy
/// them out, named as the graph names them once `bind` has normalised them
/// (the prefix is stripped here; `bind` does the rest).
pub(crate) fn select(
    mut object: Object<'_>,
    format: Format,
    graph: Option<&Graph>,
    choice: &Choice,
    file: &Path,
) -> Result<(TensorMap, Found), WeightError> {
    let (candidates, loose) = match &object {
        Object::Pickle(p) => walk(&p.heap, &p.root),
        Object::Flat(map) => (
            vec![Candidate {
                path: Vec::new(),
                kind: SourceKind::Flat,
                entries: map
                    .iter()
                    .map(|(name, t)| Entry {
                        name: name.clone(),
                        shape: Some(t.shape.clone()),
                        handle: Handle::Flat(name.clone()),
                    })
                    .collect(),
            }],
            Vec::new(),
        ),
    };
    let sel = Selector {
        object: &object,
        candidates,
    };
    let listing = || -> String {
        if sel.candidates.is_empty() {
            return "none".into();
        }
        sel.candidates
            .iter()
            .map(|c| format!("{} ({} tensors)", quoted_path(&c.path()), c.entries.len()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if sel.candidates.is_empty() {
        let what = match &object {
            Object::Pickle(p) => p.heap.type_name(&p.root),
            Object::Flat(_) => "nothing".into(),
        };
        return Err(not_found(
            file,
            format!(
                "it holds {what} with no tensors in it{}",
                if loose.is_empty() {
                    String::new()
                } else {
                    format!(
                        " other than {} in lists or under integer keys (not a state dict)",
                        loose.len()
                    )
                }
            ),
        ));
    }
    let key = choice.key.as_deref().map(|k| if k == "." { "" } else { k });
    let eligible: Vec<usize> = (0..sel.candidates.len())
        .filter(|&i| key.is_none_or(|k| sel.candidates[i].path() == k))
        .collect();
    if let (Some(k), true) = (key, eligible.is_empty()) {
        return Err(not_found(
            file,
            format!(
                "--weights-key `{k}` names no state dict or module in it; it has: {}",
                listing()
            ),
        ));
    }
    let consts: BTreeMap<String, Vec<usize>> = graph
        .map(|g| {
            g.constants
                .iter()
                .map(|(k, c)| (k.clone(), c.shape.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut units: Vec<Unit> = Vec::new();
    for &i in &eligible {
        let c = &sel.candidates[i];
        let ps = match &choice.prefix {
            Some(p) => vec![p.clone()],
            None if graph.is_some() => prefixes(c, &consts),
            None => vec![String::new()],
        };
        for p in ps {
            units.push(score(c, i, &p, &consts));
        }
    }
    if let Some(p) = &choice.prefix {
        units.retain(|u| {
            sel.candidates[u.cand]
                .entries
                .iter()
                .any(|e| e.name.starts_with(p.as_str()))
        });
        if units.is_empty() {
            return Err(not_found(
                file,
                format!("no tensor name starts with --weights-prefix `{p}`"),
            ));
        }
    }
    // No name matched: fall back on size, and let bind list the mismatch.
    let matched = graph.is_some() && units.iter().any(|u| u.covered > 0);
    if !matched {
        for u in &mut units {
            let c = &sel.candidates[u.cand];
            let taken = c
                .entries
                .iter()
                .filter(|e| e.name.starts_with(u.prefix.as_str()))
                .count();
            (u.shape_ok, u.covered, u.stray) = (0, taken, 0);
        }
    }
    let unit = sel.best(units, file)?;
    let mut found = Found {
        format,
        path: sel.candidates[unit.cand].path(),
        kind: sel.candidates[unit.cand].kind.clone(),
        prefix: unit.prefix.clone(),
        tensors: 0,
        ignored: Vec::new(),
        matched,
    };

    // What the other candidates and loose tensors hold, by top-level key.
    let mut elsewhere: Vec<(String, usize)> = Vec::new();
    let mut count = |path: &[String], n: usize| {
        let first = path.first().cloned().unwrap_or_default();
        match elsewhere.iter_mut().find(|(p, _)| *p == first) {
            Some((_, k)) => *k += n,
            None => elsewhere.push((first, n)),
        }
    };
    for (i, c) in sel.candidates.iter().enumerate() {
        if i != unit.cand {
            count(&c.path, c.entries.len());
        }
    }
    for p in &loose {
        count(p, 1);
    }
    let chosen_first = sel.candidates[unit.cand].path.first().cloned();
    for (path, tensors) in elsewhere {
        let why = if Some(&path) == chosen_first.as_ref() || path.is_empty() {
            "beside the chosen network: not part of it".to_owned()
        } else {
            reason(&path)
        };
        found.ignored.push(Ignored {
            path,
            tensors,
            reason: why,
        });
    }

    // Copy the chosen tensors out.
    let entries = sel.candidates[unit.cand].entries.clone();
    let full_path = |name: &str| {
        if found.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", found.path)
        }
    };
    let mut out = TensorMap::new();
    let mut outside = 0;
    let mut extras: Vec<Ignored> = Vec::new();
    drop(sel);
    for e in entries {
        let name = match e.name.strip_prefix(unit.prefix.as_str()) {
            Some(rest) => rest.to_owned(),
            None if choice.prefix.is_some() => {
                outside += 1;
                continue;
            }
            None => e.name.clone(),
        };
        let extra = EXTRAS
            .iter()
            .find(|(n, _)| graph.is_some() && *n == name && !consts.contains_key(&name));
        if let Some((_, why)) = extra {
            extras.push(Ignored {
                path: full_path(&e.name),
                tensors: 1,
                reason: (*why).to_owned(),
            });
            continue;
        }
        let tensor: Tensor = match (&e.handle, &mut object) {
            (Handle::Pickle(v), Object::Pickle(p)) => p.materialise(v).map_err(|err| {
                let at = full_path(&e.name);
                match err {
                    ParseError::Corrupt(m) => ParseError::Corrupt(format!("tensor `{at}`: {m}")),
                    ParseError::Unsupported(m) => {
                        ParseError::Unsupported(format!("tensor `{at}`: {m}"))
                    }
                }
                .at(file)
            })?,
            (Handle::Flat(n), Object::Flat(map)) => map
                .remove(n)
                .ok_or_else(|| not_found(file, format!("tensor `{n}` vanished from the file")))?,
            _ => {
                return Err(not_found(
                    file,
                    format!("tensor `{}` is unreadable", e.name),
                ))
            }
        };
        out.insert(name, tensor);
    }
    if outside > 0 {
        found.ignored.insert(
            0,
            Ignored {
                path: found.path.clone(),
                tensors: outside,
                reason: format!("outside --weights-prefix `{}`", unit.prefix),
            },
        );
    }
    found.ignored.extend(extras);
    found.tensors = out.len();
    Ok((out, found))
}
