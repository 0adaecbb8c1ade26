//! The C API from C, and both examples: the C library `libdensenetc` (package
//! `densenetc-capi`, `capi/`) exports every function of the header, `examples/c/classify.c` is
//! compiled against its cdylib (`-ldensenetc`) and against its staticlib,
//! `tests/data/c_api_checks.c` checks every error status, and the C and Rust classifiers must
//! print the same, correct lines for the toy artefact. Skipped, with a printed reason, where no
//! C compiler is available.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{runtime_dir, scratch_dir, toy_artefact, toy_expected, toy_input, CLASSES, LABELS};

/// What `cargo build -p runtime -p densenetc-capi --lib --example classify` produced. `cargo
/// test -p runtime` only builds the rlib it links the tests with, so the C library (cdylib and
/// staticlib) and the example are built here (a no-op when they are fresh); their paths come
/// from cargo's JSON messages.
struct Built {
    cdylib: PathBuf,
    staticlib: PathBuf,
    rust_example: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "runtime",
                "-p",
                "densenetc-capi",
                "--lib",
                "--example",
                "classify",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(runtime_dir())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" && msg["target"]["name"] != "build-script-build"
            {
                files.extend(
                    msg["filenames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.as_str())
                        .map(PathBuf::from),
                );
                if let Some(exe) = msg["executable"].as_str() {
                    files.push(exe.into());
                }
            }
        }
        let find = |pred: &dyn Fn(&Path) -> bool, what: &str| {
            files
                .iter()
                .find(|f| pred(f))
                .cloned()
                .unwrap_or_else(|| panic!("cargo built no {what}: {files:?}"))
        };
        Built {
            cdylib: find(
                &|f| f.file_name().is_some_and(|n| n == "libdensenetc.so"),
                "cdylib",
            ),
            staticlib: find(
                &|f| f.file_name().is_some_and(|n| n == "libdensenetc.a"),
                "staticlib",
            ),
            rust_example: find(
                &|f| {
                    f.parent().is_some_and(|d| d.ends_with("examples"))
                        && f.file_name().is_some_and(|n| n == "classify")
                },
                "example",
            ),
        }
    })
}

/// The `-L`/`-l`/rpath flags to link against the cdylib.
fn dynamic_link_flags() -> Vec<String> {
    let dir = built()
        .cdylib
        .parent()
        .expect("cdylib dir")
        .display()
        .to_string();
    vec![
        format!("-L{dir}"),
        "-ldensenetc".into(),
        format!("-Wl,-rpath,{dir}"),
    ]
}

/// Every `dnc_*` function the header declares is exported by the cdylib (no C compiler needed).
#[test]
fn the_c_library_exports_every_function_of_the_header() {
    let header = std::fs::read_to_string(runtime_dir().join("include/densenetc.h"))
        .expect("read the header");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // Every `dnc_…(`: the declarations (and calls in the doc comments).
    let mut names: Vec<&str> = header
        .match_indices("dnc_")
        .filter(|&(i, _)| !header[..i].ends_with(ident))
        .filter_map(|(i, _)| {
            let rest = &header[i..];
            let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
            rest[end..].starts_with('(').then(|| &rest[..end])
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(
        names.len() >= 10 && names.contains(&"dnc_session_run"),
        "{names:?}"
    );
    // SAFETY: loading the C library runs no initialiser but Rust's std's; only symbol
    // addresses are looked up, nothing is called.
    let lib = unsafe { libloading::Library::new(&built().cdylib) }.expect("dlopen libdensenetc");
    let missing: Vec<&str> = names
        .iter()
        .copied()
        // SAFETY: the symbol is only looked up, never called or read.
        .filter(|name| unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not export {missing:?}",
        built().cdylib.display()
    );
}

fn cc(source: &Path, out: &Path, link: &[&str]) {
    let status = Command::new("cc")
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(runtime_dir().join("include"))
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(link)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on {}", source.display());
}

/// classify.c linked against the cdylib (with an rpath to it), built once.
fn classify_dynamic() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(build_classify_dynamic).clone()
}

fn build_classify_dynamic() -> PathBuf {
    let out = scratch_dir().join("classify_dynamic");
    let flags = dynamic_link_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cc(
        &runtime_dir().join("../examples/c/classify.c"),
        &out,
        &flags,
    );
    out
}

/// classify.c linked statically against the staticlib, built once.
fn classify_static() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(build_classify_static).clone()
}

fn build_classify_static() -> PathBuf {
    let out = scratch_dir().join("classify_static");
    let lib = built().staticlib.to_string_lossy().into_owned();
    // The system libraries Rust's std needs (`rustc --print native-static-libs`).
    cc(
        &runtime_dir().join("../examples/c/classify.c"),
        &out,
        &[
            &lib,
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ],
    );
    out
}

fn run(exe: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(exe).args(args).output().expect("run example")
}

fn stdout_of(exe: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = run(exe, args);
    assert!(
        out.status.success(),
        "{} failed: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The lines both classifiers must print for `input`, computed from the toy model's definition.
fn expected_lines(input: &[f32], top: usize) -> String {
    let logits = toy_expected(input);
    let mut s = String::new();
    for (item, row) in logits.chunks(CLASSES).enumerate() {
        let mut order: Vec<usize> = (0..CLASSES).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (rank, &c) in order.iter().take(top).enumerate() {
            s += &format!(
                "item {item}: #{} class {c} score {:.6} ({})\n",
                rank + 1,
                row[c],
                LABELS[c]
            );
        }
    }
    s
}

/// The synthetic input both examples use without an input file.
fn synthetic(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

#[test]
fn c_classifier_dynamic_and_static_print_the_right_classes() {
    let Some(artefact) = toy_artefact() else {
        return;
    };
    let want = expected_lines(&synthetic(common::BATCH * common::PIXELS), 3);
    for exe in [classify_dynamic(), classify_static()] {
        let got = stdout_of(
            &exe,
            &[
                artefact.as_os_str(),
                "--threads".as_ref(),
                "2".as_ref(),
                "--top".as_ref(),
                "3".as_ref(),
            ],
        );
        assert_eq!(got, want, "{}", exe.display());
    }
}

#[test]
fn c_and_rust_classifiers_agree_on_an_input_file() {
    let Some(artefact) = toy_artefact() else {
        return;
    };
    let input = toy_input(42);
    let path = scratch_dir().join("input.f32");
    std::fs::write(
        &path,
        input
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .expect("write input");
    let args = [artefact.as_os_str(), path.as_os_str()];
    let c = stdout_of(&classify_dynamic(), &args);
    let rust = stdout_of(&built().rust_example, &args);
    assert_eq!(c, expected_lines(&input, 5));
    assert_eq!(rust, c);
}

#[test]
fn c_classifier_reports_errors_instead_of_crashing() {
    if !common::have_cc() {
        return;
    }
    let exe = classify_dynamic();
    let out = run(&exe, &["/nonexistent/model.dnc".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));

    let mut bytes = common::toy_artefact_bytes(b"so");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let bad = scratch_dir().join("corrupt.dnc");
    std::fs::write(&bad, bytes).expect("write");
    let out = run(&exe, &[bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("section 'cpu_so' checksum mismatch"),
        "{stderr}"
    );
}

#[test]
fn every_c_api_error_status_from_c() {
    let Some(artefact) = toy_artefact() else {
        return;
    };
    let exe = scratch_dir().join("c_api_checks");
    let mut flags = dynamic_link_flags();
    flags.push("-lm".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cc(
        &runtime_dir().join("tests/data/c_api_checks.c"),
        &exe,
        &flags,
    );
    let out = stdout_of(&exe, &[artefact.as_os_str()]);
    assert!(out.starts_with("c api checks: "), "{out}");
}

/// `dnc_model_head` names the manifest's head: `logits` when it records none (the toy model),
/// else its kind; NULL for a NULL model.
#[test]
fn model_head_names_the_output_head() {
    use runtime::artefact::HeadInfo;
    use runtime::ffi::{dnc_model_free, dnc_model_head, dnc_model_load, DncModel, DncStatus};
    use std::ffi::{CStr, CString};

    let Some(so) = common::toy_so() else {
        eprintln!("model_head_names_the_output_head: skipped: no C compiler");
        return;
    };
    let head_of = |head: Option<HeadInfo>| -> String {
        let mut manifest = common::toy_manifest();
        manifest.head = head;
        let mut w = runtime::ArtefactWriter::new(manifest);
        w.add_section(runtime::SectionKind::Weights, common::weights_bytes())
            .expect("weights");
        w.add_section(runtime::SectionKind::CpuSharedObject, so.to_vec())
            .expect("so");
        let path = scratch_dir().join("toy-head.dnc");
        std::fs::write(&path, w.to_bytes().expect("bytes")).expect("write");
        let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
        let mut model: *mut DncModel = std::ptr::null_mut();
        // SAFETY: a valid C string and out pointer; the model is live until freed below.
        unsafe {
            assert_eq!(dnc_model_load(c_path.as_ptr(), &mut model), DncStatus::Ok);
            let kind = CStr::from_ptr(dnc_model_head(model))
                .to_str()
                .expect("utf-8")
                .to_owned();
            dnc_model_free(model);
            kind
        }
    };
    assert_eq!(head_of(None), "logits");
    for kind in ["softmax", "sigmoid", "op-norm"] {
        let head = HeadInfo {
            kind: kind.into(),
            classes: CLASSES,
        };
        assert_eq!(head_of(Some(head)), kind);
    }
    // SAFETY: NULL is allowed.
    assert!(unsafe { dnc_model_head(std::ptr::null()) }.is_null());
}
