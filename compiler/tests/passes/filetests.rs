//! Text-IR file tests, in the manner of cranelift's filetests: every
//! `tests/filetests/*.ir` holds a header, an input graph and, after a
//! `; expected:` line, the graph a pass (or the whole pipeline) must turn
//! it into. See `tests/filetests/README.md` for the format.
//!
//! For each file the runner parses the input, binds deterministic random
//! weights (`; seed: N`), runs exactly the named pass (or every pass for
//! `; pipeline`), verifies the result, prints it and compares it with the
//! expected text (a unified diff on mismatch). It then runs the reference
//! executor on the input and on the output (and the arena executor when
//! memory is planned) on the same random input and requires agreement
//! within 1e-4 relative, so a wrong rewrite fails even once blessed.
//!
//! `DNC_BLESS=1 cargo test -p compiler --test passes filetests::` rewrites the
//! expected sections of the files whose output differs (never of a file
//! that fails any other check). Every file is checked; the test fails at
//! the end listing each failing file.

use compiler::passes::{run_pipeline, PipelineOptions, PASSES, PIPELINE};
use ir::reference::Tensor;
use ir::Graph;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The bound on `Tensor::rel_error` between the input's and the output's
/// values (the project's f32 parity bound).
const TOL: f64 = 1e-4;

/// The line that separates the input from the blessed output.
const MARKER: &str = "; expected:";

/// The seed when the header gives none.
const DEFAULT_SEED: u64 = 1;

/// What a file asks for.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Pass(&'static str),
    Pipeline,
}

/// A parsed file: header, input text, and the expected section if any.
#[derive(Debug)]
struct FileTest {
    action: Action,
    /// `None` for `; seed: none`: constants stay unbound, no numeric check.
    seed: Option<u64>,
    /// Everything before the marker line (header and input graph).
    input: String,
    /// Everything after the marker line.
    expected: Option<String>,
}

fn split(text: &str) -> Result<FileTest, String> {
    let (input, expected) = match text.split_once(&format!("\n{MARKER}\n")) {
        Some((i, e)) => (format!("{i}\n"), Some(e.to_owned())),
        None => match text.strip_suffix(&format!("\n{MARKER}")) {
            Some(i) => (format!("{i}\n"), Some(String::new())),
            None => (text.to_owned(), None),
        },
    };
    if expected.as_deref().is_some_and(|e| e.contains(MARKER)) {
        return Err(format!("more than one `{MARKER}` line"));
    }
    let mut lines = input.lines();
    let first = lines.next().unwrap_or("").trim();
    let action = if first == "; pipeline" {
        Action::Pipeline
    } else if let Some(name) = first.strip_prefix("; pass:") {
        let name = name.trim();
        let known = PASSES.iter().find(|&&p| p == name).ok_or_else(|| {
            format!(
                "unknown pass `{name}` in the header; valid passes: {}",
                PASSES.join(", ")
            )
        })?;
        Action::Pass(known)
    } else {
        return Err(format!(
            "the first line must be `; pass: NAME` or `; pipeline`, found `{first}`"
        ));
    };
    let mut seed = Some(DEFAULT_SEED);
    // Header keys: comment lines before the `graph` line.
    for line in lines.map(str::trim).take_while(|l| !l.starts_with("graph")) {
        if let Some(v) = line.strip_prefix("; seed:") {
            let v = v.trim();
            seed = match v {
                "none" => None,
                n => Some(
                    n.parse()
                        .map_err(|_| format!("`; seed: {v}`: not an integer or `none`"))?,
                ),
            };
        }
    }
    Ok(FileTest {
        action,
        seed,
        input,
        expected,
    })
}

/// One random input per graph input, in `[-1, 1)`.
fn random_inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let shape = g.node(id).ty.shape.clone();
            Tensor::random_uniform(shape, seed.wrapping_add(i as u64), -1.0, 1.0)
        })
        .collect()
}

fn compare(what: &str, got: &[Tensor], want: &[Tensor]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} outputs, the input graph has {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = a
            .rel_error(b)
            .map_err(|e| format!("{what}: output {i}: {e}"))?;
        if e.is_nan() || e > TOL {
            return Err(format!(
                "{what}: output {i} differs from the input graph's, relative error {e:e} > {TOL:e}"
            ));
        }
    }
    Ok(())
}

/// The same values before and after, on one random input.
fn numeric_check(before: &Graph, after: &Graph, seed: u64) -> Result<(), String> {
    let x = random_inputs(before, seed);
    let want = ir::reference::run(before, &x)
        .map_err(|e| format!("the reference executor fails on the input graph: {e}"))?;
    let got = ir::reference::run(after, &x)
        .map_err(|e| format!("the reference executor fails on the output graph: {e}"))?;
    compare("reference executor", &got, &want)?;
    if after.arena_bytes.is_some() {
        let got = compiler::plan_exec::run_planned(after, &x)
            .map_err(|e| format!("the arena executor fails on the output graph: {e}"))?;
        compare("arena executor", &got, &want)?;
    }
    Ok(())
}

/// Run the file's action on `g`; returns whether anything changed.
fn apply(action: &Action, g: &mut Graph) -> Result<bool, String> {
    match action {
        Action::Pipeline => {
            let mut opts = PipelineOptions {
                verify: true,
                ..Default::default()
            };
            let report = run_pipeline(g, &mut opts).map_err(|e| format!("pipeline: {e}"))?;
            Ok(report.passes.iter().any(|p| p.changed))
        }
        Action::Pass(name) => {
            let pass = PIPELINE
                .iter()
                .find(|p| p.name() == *name)
                .ok_or_else(|| format!("no pass `{name}` in the pipeline"))?;
            let changed = pass.run(g).map_err(|e| format!("pass `{name}`: {e}"))?;
            let error = match ir::verify::verify(g) {
                Ok(()) => match g.arena_bytes {
                    Some(_) => compiler::memory::check(g).err().map(|e| e.into_ir_error()),
                    None => None,
                },
                Err(e) => Some(e),
            };
            if let Some(e) = error {
                return Err(format!(
                    "the graph is invalid after pass `{name}`: {e}\n{}",
                    ir::text::print_with_error(g, &e)
                ));
            }
            Ok(changed)
        }
    }
}

/// What became of one file.
enum Outcome {
    Pass,
    Blessed,
    Fail(String),
}

fn run_file(path: &Path, bless: bool) -> Outcome {
    match check_file(path, bless) {
        Ok(true) => Outcome::Blessed,
        Ok(false) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

/// `Ok(true)` when the file was blessed.
fn check_file(path: &Path, bless: bool) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let t = split(&text)?;
    let mut before = ir::text::parse(&t.input).map_err(|e| format!("input: {e}"))?;
    ir::verify::verify(&before).map_err(|e| {
        format!(
            "the input graph is invalid: {e}\n{}",
            ir::text::print_with_error(&before, &e)
        )
    })?;
    if let Some(seed) = t.seed {
        compiler::weights::randomize(&mut before, seed);
    }
    let mut after = before.clone();
    let changed = apply(&t.action, &mut after)?;
    let actual = ir::text::print(&after);
    // The output is a real IR file: it parses back to the same text.
    let reparsed = ir::text::parse(&actual)
        .map_err(|e| format!("the printed output does not parse: {e}\n{actual}"))?;
    if ir::text::print(&reparsed) != actual.replace(" = <bound>", "") {
        return Err(format!(
            "the printed output does not round-trip through the parser:\n{actual}"
        ));
    }
    if !changed && actual != ir::text::print(&before) {
        return Err(format!(
            "{:?} reported no change but the graph changed:\n{}",
            t.action,
            unified_diff(&ir::text::print(&before), &actual, "input", "output")
        ));
    }
    if let Some(seed) = t.seed {
        numeric_check(&before, &after, seed)?;
    }
    match &t.expected {
        Some(e) if *e == actual => Ok(false),
        _ if bless => {
            let mut out = t.input.trim_end().to_owned();
            let _ = write!(out, "\n\n{MARKER}\n{actual}");
            std::fs::write(path, out).map_err(|e| format!("cannot bless: {e}"))?;
            Ok(true)
        }
        None => Err(format!(
            "no `{MARKER}` section; write one with \
             `DNC_BLESS=1 cargo test -p compiler --test passes filetests::`"
        )),
        Some(e) => Err(format!(
            "the output differs from the `{MARKER}` section \
             (accept it with `DNC_BLESS=1 cargo test -p compiler --test passes filetests::`):\n{}",
            unified_diff(e, &actual, "expected", "actual")
        )),
    }
}

/// A unified line diff of `a` → `b` with three lines of context (longest
/// common subsequence; the files are small).
fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (kind, line index in a, line index in b).
    let mut ops: Vec<(char, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changes.len() {
        // Grow a hunk while the next change is within 2 * CONTEXT lines.
        let start = changes[k].saturating_sub(CONTEXT);
        let mut end = changes[k];
        while k + 1 < changes.len() && changes[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changes[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let a_len = hunk.iter().filter(|o| o.0 != '+').count();
        let b_len = hunk.iter().filter(|o| o.0 != '-').count();
        let (a0, b0) = (hunk[0].1, hunk[0].2);
        let from = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        let _ = writeln!(
            out,
            "@@ -{},{a_len} +{},{b_len} @@",
            from(a0, a_len),
            from(b0, b_len)
        );
        for &(kind, i, j) in hunk {
            let line = if kind == '+' { b[j] } else { a[i] };
            let _ = writeln!(out, "{kind}{line}");
        }
        k += 1;
    }
    out
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ir"))
        .collect();
    files.sort();
    files
}

#[test]
fn filetests() {
    let bless = std::env::var_os("DNC_BLESS").is_some();
    let files = files();
    assert!(!files.is_empty(), "no tests/filetests/*.ir files");
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path)
            .display()
            .to_string();
        match run_file(path, bless) {
            Outcome::Pass => eprintln!("ok      {name}"),
            Outcome::Blessed => eprintln!("blessed {name}"),
            Outcome::Fail(e) => {
                eprintln!("FAIL    {name}");
                failures.push(format!("FAIL {name}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_diff_is_a_unified_diff() {
    let a = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
    let b = "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\nk\n";
    assert_eq!(
        unified_diff(a, b, "expected", "actual"),
        "--- expected\n+++ actual\n\
         @@ -1,10 +1,11 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n h\n i\n j\n+k\n"
    );
    let far = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
    let far2 = "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n";
    assert_eq!(
        unified_diff(far, far2, "a", "b"),
        "--- a\n+++ b\n@@ -1,3 +1,4 @@\n+0\n 1\n 2\n 3\n@@ -9,4 +10,3 @@\n 9\n 10\n 11\n-12\n"
    );
}

#[test]
fn headers_are_checked() {
    let g = "graph g {\n  %x = input : f32[1, 1, 1, 1]\n  return %x\n}\n";
    let t = split(&format!(
        "; pass: fold-batchnorm\n; seed: 7\n{g}\n{MARKER}\n{g}"
    ))
    .expect("valid");
    assert_eq!(t.action, Action::Pass("fold-batchnorm"));
    assert_eq!(t.seed, Some(7));
    assert_eq!(t.expected.as_deref(), Some(g));
    let t = split(&format!("; pipeline\n; seed: none\n{g}")).expect("valid");
    assert_eq!(
        (t.action, t.seed, t.expected),
        (Action::Pipeline, None, None)
    );
    let e = split(&format!("; pass: fold-bn\n{g}")).expect_err("unknown pass");
    assert!(e.contains("fold-batchnorm, fuse-preactivation"), "{e}");
    assert!(split(g).is_err(), "no header");
    assert!(split(&format!("; pipeline\n; seed: x\n{g}")).is_err());
}

/// A rewrite that changes the values fails even when its text was blessed:
/// here fold-batchnorm's output with the folded bias zeroed.
#[test]
fn a_wrong_rewrite_fails_the_numeric_check() {
    let text = "graph g {
  const conv.weight: f32[4, 3, 1, 1]
  const bn.bias: f32[4]
  const bn.running_mean: f32[4]
  const bn.running_var: f32[4]
  const bn.weight: f32[4]
  %x = input : f32[1, 3, 4, 4]
  %conv = conv2d(%x) {kernel=[1, 1], out_channels=4, padding=[0, 0], relu=false, stride=[1, 1], weight=@conv.weight} : f32[1, 4, 4, 4]
  %bn = batch_norm(%conv) {bias=@bn.bias, eps=1e-5, running_mean=@bn.running_mean, running_var=@bn.running_var, weight=@bn.weight} : f32[1, 4, 4, 4]
  return %bn
}
";
    let mut before = ir::text::parse(text).expect("parses");
    compiler::weights::randomize(&mut before, 1);
    let mut after = before.clone();
    assert_eq!(apply(&Action::Pass("fold-batchnorm"), &mut after), Ok(true));
    numeric_check(&before, &after, 1).expect("the real fold is exact");
    after.constants.insert(
        "conv.bias.bnfold".into(),
        ir::Constant::with_data([4], vec![0.0; 4]),
    );
    let e = numeric_check(&before, &after, 1).expect_err("a wrong fold");
    assert!(e.contains("relative error"), "{e}");
}
