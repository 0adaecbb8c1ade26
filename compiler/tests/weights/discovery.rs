//! Finding the network in checkpoints saved the way DenseNet users save
//! them (`tools/gen_checkpoint_fixtures.py`, `tests/data/checkpoints/`):
//! each binds to the graph of its config and reproduces its PyTorch golden
//! through the reference executor; `densenetc compile` takes each file as it
//! is; ambiguous, truncated, lying and incomplete files are clear errors.

use crate::support::data;
use compiler::builder::{self, ConfigOverrides, DenseNetConfig};
use compiler::weights::{
    self, load, parse_checkpoint, read_checkpoint, read_tensors, BindProblem, Choice, Format,
    SourceKind, TensorMap, WeightError,
};
use ir::reference::{self, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn checkpoint(name: &str) -> PathBuf {
    data(&format!("checkpoints/{name}"))
}

/// One case of `manifest.json`.
struct Case {
    file: String,
    format: Format,
    config: DenseNetConfig,
    overrides: serde_json::Value,
    batch: usize,
    path: String,
    prefix: String,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(checkpoint("manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let o: ConfigOverrides =
                serde_json::from_value(c["config"].clone()).expect("a densenetc config");
            Case {
                file: c["file"].as_str().expect("file").to_owned(),
                format: match c["format"].as_str() {
                    Some("legacy") => Format::TorchLegacy,
                    Some("zip") => Format::TorchZip,
                    other => panic!("format {other:?}"),
                },
                config: DenseNetConfig::resolve(None, &o).expect("valid config"),
                overrides: c["config"].clone(),
                batch: c["batch"].as_u64().expect("batch") as usize,
                path: c["path"].as_str().expect("path").to_owned(),
                prefix: c["prefix"].as_str().expect("prefix").to_owned(),
            }
        })
        .collect()
}

fn case(file: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("no case {file}"))
}

fn graph(c: &Case) -> ir::Graph {
    builder::build(&c.config, c.batch).expect("builds")
}

fn golden(file: &str) -> TensorMap {
    read_tensors(&checkpoint(&format!("{file}.golden.safetensors"))).expect("golden")
}

fn golden_tensor(g: &TensorMap, name: &str) -> Tensor {
    let t = &g[name];
    Tensor::from_vec(t.shape.clone(), t.as_f32().expect("f32").to_vec()).expect("tensor")
}

/// Run a bound graph on the golden input; the relative error against `want`.
fn error_against(g: &ir::Graph, gold: &TensorMap, want: &str) -> f64 {
    let x = golden_tensor(gold, "input");
    let y = reference::run(g, &[x]).expect("runs");
    y[0].rel_error(&golden_tensor(gold, want))
        .expect("same shape")
}

#[test]
fn every_layout_reproduces_its_pytorch_golden() {
    let all = cases();
    assert_eq!(all.len(), 5, "CheXNet, two xrv, DataParallel trainer, .dat");
    for c in all {
        let mut g = graph(&c);
        let loaded = load(&mut g, &checkpoint(&c.file), &Choice::default())
            .unwrap_or_else(|e| panic!("{}: {e}", c.file));
        assert!(g.is_bound(), "{}", c.file);
        assert_eq!(loaded.found.format, c.format, "{}", c.file);
        assert_eq!(loaded.found.path, c.path, "{}", c.file);
        assert_eq!(loaded.found.prefix, c.prefix, "{}", c.file);
        assert!(loaded.found.matched, "{}", c.file);
        let rel = error_against(&g, &golden(&c.file), "logits");
        println!("{}: relative error {rel:.2e}", c.file);
        assert!(rel <= 1e-4, "{}: relative error {rel}", c.file);
    }
}

#[test]
fn chexnet_training_checkpoint_in_the_legacy_format() {
    let c = case("chexnet_model.pth.tar");
    let mut g = graph(&c);
    let l = load(&mut g, &checkpoint(&c.file), &Choice::default()).expect("loads");
    let f = &l.found;
    assert_eq!(f.kind, SourceKind::StateDict);
    assert_eq!(f.format, Format::TorchLegacy);
    // Adam's moments (exp_avg, exp_avg_sq, step per parameter) are ignored.
    let opt = f
        .ignored
        .iter()
        .find(|i| i.path == "optimizer")
        .expect("optimizer listed");
    assert_eq!(opt.reason, "optimizer state");
    assert!(opt.tensors >= 2 * l.bind.bound / 2, "{opt:?}");
    // PyTorch 0.3: no num_batches_tracked; old names and classifier.0 renamed.
    assert!(l.bind.ignored.is_empty(), "{:?}", l.bind.ignored);
    assert!(l.bind.renamed.contains(&(
        "features.denseblock1.denselayer1.norm.1.weight".into(),
        "features.denseblock1.denselayer1.norm1.weight".into()
    )));
    assert!(l
        .bind
        .renamed
        .contains(&("classifier.0.weight".into(), "classifier.weight".into())));
    let text = f.to_string();
    for needle in [
        "legacy format",
        "a state dict at `state_dict`",
        "prefix:   `module.densenet121.` stripped",
        "ignored:  `optimizer`",
    ] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    // The model's own output is the sigmoid of the logits.
    let gold = golden(&c.file);
    let (logits, output) = (
        golden_tensor(&gold, "logits"),
        golden_tensor(&gold, "output"),
    );
    for (z, p) in logits.data.iter().zip(&output.data) {
        assert!((1.0 / (1.0 + (-z).exp()) - p).abs() < 1e-6);
    }
}

#[test]
fn whole_pickled_modules_are_walked_by_path() {
    for file in ["xrv_densenet.pt", "xrv_densenet_legacy.pt"] {
        let c = case(file);
        let mut g = graph(&c);
        let l = load(&mut g, &checkpoint(file), &Choice::default()).expect("loads");
        assert_eq!(
            l.found.kind,
            SourceKind::Module {
                class: "torchxrayvision.models.DenseNet".into()
            },
            "{file}"
        );
        let thresholds = l
            .found
            .ignored
            .iter()
            .find(|i| i.path == "op_threshs")
            .unwrap_or_else(|| panic!("{file}: {:?}", l.found.ignored));
        assert!(
            thresholds.reason.contains("torchxrayvision"),
            "{thresholds:?}"
        );
        assert!(
            l.found.to_string().contains("pickled module"),
            "{}",
            l.found
        );
    }
    // Without a graph the module tree reads as its state_dict() would.
    let t = read_tensors(&checkpoint("xrv_densenet_legacy.pt")).expect("reads");
    assert_eq!(t["op_threshs"].shape, [6]);
    assert_eq!(t["features.conv0.weight"].shape, [8, 1, 7, 7]);
    assert_eq!(
        t,
        read_tensors(&checkpoint("xrv_densenet.pt")).expect("reads"),
        "the legacy and zip files hold the same module"
    );
}

#[test]
fn dataparallel_trainer_checkpoint_and_its_ema_copy() {
    let c = case("dp_trainer.ckpt");
    let mut g = graph(&c);
    let l = load(&mut g, &checkpoint(&c.file), &Choice::default()).expect("loads");
    let reason = |p: &str| {
        l.found
            .ignored
            .iter()
            .find(|i| i.path == p)
            .map(|i| i.reason.clone())
            .unwrap_or_else(|| panic!("{p} not in {:?}", l.found.ignored))
    };
    assert!(reason("ema_state_dict").contains("EMA copy"));
    assert_eq!(reason("optimizer_state_dict"), "optimizer state");

    // --weights-key picks the EMA copy, which has its own golden.
    let mut g = graph(&c);
    let choice = Choice {
        key: Some("ema_state_dict".into()),
        prefix: None,
    };
    let l = load(&mut g, &checkpoint(&c.file), &choice).expect("loads the EMA copy");
    assert_eq!(l.found.prefix, "module.");
    let rel = error_against(&g, &golden(&c.file), "ema_logits");
    assert!(rel <= 1e-4, "EMA: relative error {rel}");
    // An explicit prefix of the right spelling binds too.
    let mut g = graph(&c);
    let choice = Choice {
        key: Some("model_state_dict".into()),
        prefix: Some("module.".into()),
    };
    load(&mut g, &checkpoint(&c.file), &choice).expect("key and prefix");
}

#[test]
fn two_networks_are_ambiguous_until_chosen() {
    let c = case("efficient_densenet.dat");
    let file = checkpoint("two_densenets.pth");
    let e = load(&mut graph(&c), &file, &Choice::default()).expect_err("ambiguous");
    assert!(matches!(e, WeightError::Ambiguous { .. }), "{e:?}");
    let msg = e.to_string();
    for needle in [
        "`model_a`",
        "`model_b`",
        "--weights-key",
        "two_densenets.pth",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    // Without a graph too: the two are the same size.
    let e = read_tensors(&file).expect_err("ambiguous without a graph");
    assert!(matches!(e, WeightError::Ambiguous { .. }), "{e:?}");
    for key in ["model_a", "model_b"] {
        let mut g = graph(&c);
        let choice = Choice {
            key: Some(key.into()),
            prefix: None,
        };
        let l = load(&mut g, &file, &choice).expect("chosen");
        assert_eq!(l.found.path, key);
        let other = if key == "model_a" {
            "model_b"
        } else {
            "model_a"
        };
        assert!(l.found.ignored.iter().any(|i| i.path == other));
    }
    // A key that names nothing lists what there is.
    let choice = Choice {
        key: Some("model".into()),
        prefix: None,
    };
    let e = load(&mut graph(&c), &file, &choice).expect_err("no such key");
    assert!(matches!(e, WeightError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("`model_a`"), "{e}");
}

/// A safetensors file of `tensors`.
fn safetensors_bytes(tensors: &TensorMap) -> Vec<u8> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let d = t.as_f32()?;
            Some((
                k.clone(),
                t.shape.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(k, shape, bytes)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("view");
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialises")
}

#[test]
fn two_prefixes_in_one_dict_need_weights_prefix() {
    let c = case("efficient_densenet.dat");
    let sd = read_tensors(&checkpoint(&c.file)).expect("reads");
    let mut both = TensorMap::new();
    for (k, t) in &sd {
        both.insert(format!("student.{k}"), t.clone());
        let mut t2 = t.clone();
        if let weights::TensorData::F32(d) = &mut t2.data {
            d.iter_mut().for_each(|x| *x *= 0.5);
        }
        both.insert(format!("teacher.{k}"), t2);
    }
    let bytes = safetensors_bytes(&both);
    let name = Path::new("distilled.bin");
    let g = graph(&c);
    let e = parse_checkpoint(&bytes, name, Some(&g), &Choice::default()).expect_err("tie");
    let msg = e.to_string();
    assert!(
        msg.contains("prefix `student.`") && msg.contains("prefix `teacher.`"),
        "{msg}"
    );
    assert!(msg.contains("--weights-prefix"), "{msg}");
    let choice = Choice {
        key: None,
        prefix: Some("student.".into()),
    };
    let (t, found) = parse_checkpoint(&bytes, name, Some(&g), &choice).expect("chosen");
    assert_eq!(found.format, Format::Safetensors);
    assert_eq!(found.prefix, "student.");
    let f32s = sd.values().filter(|t| t.as_f32().is_some()).count();
    assert_eq!(t.len(), f32s, "every student tensor, stripped");
    assert!(t.contains_key("features.norm_final.weight"));
    let outside = &found.ignored[0];
    assert!(
        outside.reason.contains("outside --weights-prefix"),
        "{outside:?}"
    );
    // The student binds and reproduces the golden.
    let mut g = graph(&c);
    weights::bind(&mut g, t).expect("binds");
    let rel = error_against(&g, &golden(&c.file), "logits");
    assert!(rel <= 1e-4, "{rel}");
    // A prefix nothing starts with.
    let choice = Choice {
        key: None,
        prefix: Some("pupil.".into()),
    };
    let e = parse_checkpoint(&bytes, name, Some(&g), &choice).expect_err("no such prefix");
    assert!(e.to_string().contains("`pupil.`"), "{e}");
}

#[test]
fn a_module_missing_a_parameter_names_it() {
    let c = case("xrv_densenet.pt");
    let mut g = graph(&c);
    let e = load(
        &mut g,
        &checkpoint("xrv_missing_param.pt"),
        &Choice::default(),
    )
    .expect_err("a parameter is missing");
    let msg = e.to_string();
    assert_eq!(
        e.problems().expect("a mismatch"),
        [BindProblem::Missing {
            name: "features.denseblock2.denselayer1.norm2.weight".into(),
            expected: vec![8],
        }]
    );
    assert!(
        msg.contains("the pickled module `torchxrayvision.models.DenseNet` at the top level"),
        "{msg}"
    );
    assert!(!g.is_bound() && g.constants.values().all(|c| c.data.is_none()));
}

#[test]
fn legacy_files_that_lie_or_end_early_are_clear_errors() {
    // {'w': tensor([1., 2.])}: the file ends with count 2 and the 8 bytes.
    let orig = std::fs::read(data("legacy_format.pth")).expect("fixture");
    let t = weights::parse_tensors(&orig, Path::new("small.pth")).expect("reads");
    assert_eq!(t["w"].as_f32(), Some(&[1.0f32, 2.0][..]));
    let n = orig.len();
    assert_eq!(&orig[n - 16..n - 8], &2i64.to_le_bytes());
    let mut lie = orig.clone();
    lie[n - 16..n - 8].copy_from_slice(&3i64.to_le_bytes());
    let e = weights::parse_tensors(&lie, Path::new("lie.pth")).expect_err("lies");
    let msg = e.to_string();
    assert!(matches!(e, WeightError::Corrupt { .. }), "{e:?}");
    assert!(
        msg.contains("(of tensor `w`) declares 2 float32 values, but its data says 3"),
        "{msg}"
    );
    let e = weights::parse_tensors(&orig[..n - 3], Path::new("cut.pth")).expect_err("cut");
    let msg = e.to_string();
    assert!(
        msg.contains("ends inside storage") && msg.contains("of tensor `w`"),
        "{msg}"
    );
    assert!(msg.contains("truncated"), "{msg}");
    let e = weights::parse_tensors(&orig[..n - 12], Path::new("cut.pth")).expect_err("cut");
    assert!(e.to_string().contains("ends before storage"), "{e}");

    // A real checkpoint cut anywhere is an error naming where it stopped.
    let chexnet = std::fs::read(checkpoint("chexnet_model.pth.tar")).expect("fixture");
    let c = case("chexnet_model.pth.tar");
    let g = graph(&c);
    for cut in [20, 60, 200, chexnet.len() / 2, chexnet.len() - 1] {
        let e = parse_checkpoint(
            &chexnet[..cut],
            Path::new("cut"),
            Some(&g),
            &Choice::default(),
        )
        .expect_err("truncated");
        assert!(matches!(e, WeightError::Corrupt { .. }), "{cut}: {e:?}");
        if cut > chexnet.len() / 3 {
            assert!(e.to_string().contains("of tensor `"), "{cut}: {e}");
        }
    }
}

#[test]
fn formats_are_sniffed_from_bytes_not_names() {
    // The golden is safetensors, the .dat a zip checkpoint, the .tar legacy.
    for (file, format) in [
        (
            "efficient_densenet.dat.golden.safetensors",
            Format::Safetensors,
        ),
        ("efficient_densenet.dat", Format::TorchZip),
        ("chexnet_model.pth.tar", Format::TorchLegacy),
    ] {
        let bytes = std::fs::read(checkpoint(file)).expect("fixture");
        let (_, found) =
            parse_checkpoint(&bytes, Path::new("weights.bin"), None, &Choice::default())
                .expect("reads whatever the name");
        assert_eq!(found.format, format, "{file}");
    }
    for (bytes, needle) in [
        (&b"\x89HDF\r\n\x1a\n\0\0\0\0"[..], "HDF5"),
        (&b"\x1f\x8b\x08\0\0\0"[..], "gzip"),
        (
            &b"\x80\x02}q\0."[..],
            "pickle without PyTorch's magic number",
        ),
        (&b"<!DOCTYPE html>\n<html>"[..], "HTML"),
        (
            &b"version https://git-lfs.github.com/spec/v1\n"[..],
            "Git LFS",
        ),
    ] {
        let e = weights::parse_tensors(bytes, Path::new("model.pth")).expect_err(needle);
        assert!(matches!(e, WeightError::UnknownFormat { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(needle) && msg.contains("model.pth"), "{msg}");
    }
}

#[test]
fn read_checkpoint_without_a_graph_takes_the_largest_candidate() {
    let (t, found) = read_checkpoint(
        &checkpoint("chexnet_model.pth.tar"),
        None,
        &Choice::default(),
    )
    .expect("reads");
    assert_eq!(found.path, "state_dict");
    assert!(!found.matched);
    assert_eq!(found.prefix, "", "no graph, no prefix");
    assert!(t.keys().all(|k| k.starts_with("module.densenet121.")));
}

// --- the command line -------------------------------------------------------

fn densenetc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenetc"))
        .args(args)
        .output()
        .expect("densenetc runs")
}

fn ok(args: &[&str]) -> String {
    let out = densenetc(args);
    assert!(
        out.status.success(),
        "densenetc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--arch NAME --growth-rate K ...` of a case.
fn arch_args(c: &Case) -> Vec<String> {
    let mut a = Vec::new();
    for (k, v) in c.overrides.as_object().expect("config object") {
        let flag = match k.as_str() {
            "num_init_features" => "init-features".to_owned(),
            other => other.replace('_', "-"),
        };
        let value = match v {
            serde_json::Value::Array(xs) => xs
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        a.extend([format!("--{flag}"), value]);
    }
    a.extend(["--batch".into(), c.batch.to_string()]);
    a
}

#[test]
fn densenetc_compiles_and_runs_every_checkpoint_as_the_user_has_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for c in cases() {
        let weights = checkpoint(&c.file);
        let dnc = dir.path().join(format!("{}.dnc", c.file));
        let mut args: Vec<String> = vec!["compile".into()];
        args.extend(arch_args(&c));
        args.extend([
            "--weights".into(),
            weights.display().to_string(),
            "-o".into(),
            dnc.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args);
        let gold = golden(&c.file);
        let x = dir.path().join(format!("{}.in.npy", c.file));
        let y = dir.path().join(format!("{}.out.npy", c.file));
        reference::npy::write(&x, &golden_tensor(&gold, "input")).expect("input");
        ok(&[
            "run",
            dnc.to_str().expect("utf-8"),
            "--input",
            x.to_str().expect("utf-8"),
            "--output",
            y.to_str().expect("utf-8"),
        ]);
        let got = reference::npy::read(&y).expect("output");
        // A checkpoint carrying torchxrayvision's `op_threshs` compiles to that model's own
        // forward (sigmoid + op_norm: the golden `output`); the others to the logits.
        let want = if c.file.starts_with("xrv_") {
            "output"
        } else {
            "logits"
        };
        let rel = got
            .rel_error(&golden_tensor(&gold, want))
            .expect("same shape");
        println!("{}: compiled, relative error {rel:.2e}", c.file);
        assert!(rel <= 1e-4, "{}: {rel}", c.file);
    }
}

#[test]
fn inspect_weights_says_what_was_found_where() {
    let c = case("chexnet_model.pth.tar");
    let file = checkpoint(&c.file);
    let mut args: Vec<String> = vec!["inspect".into()];
    args.extend(arch_args(&c));
    args.extend([
        "--summary".into(),
        "--weights".into(),
        file.display().to_string(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(&argv);
    for needle in [
        "weights:       bound",
        "legacy format",
        "a state dict at `state_dict`",
        "`module.densenet121.` stripped",
        "ignored:  `optimizer`",
        "renamed:",
    ] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    let mut json_args = argv.clone();
    json_args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&json_args)).expect("JSON");
    assert_eq!(v["weights"]["path"], "state_dict");
    assert_eq!(v["weights"]["prefix"], "module.densenet121.");
    assert_eq!(v["weights"]["kind"], "state_dict");

    // Two networks: the error names them and the flags; the flag resolves it.
    let e = case("efficient_densenet.dat");
    let two = checkpoint("two_densenets.pth");
    let mut args: Vec<String> = vec!["inspect".into()];
    args.extend(arch_args(&e));
    args.extend([
        "--summary".into(),
        "--weights".into(),
        two.display().to_string(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = densenetc(&argv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`model_a`") && err.contains("--weights-key"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let mut chosen = argv.clone();
    chosen.extend(["--weights-key", "model_b"]);
    let text = ok(&chosen);
    assert!(text.contains("a state dict at `model_b`"), "{text}");
    assert!(text.contains("ignored:  `model_a`"), "{text}");
}

#[test]
fn trainer_prefixes_are_detected_and_the_top_level_can_be_named() {
    let c = case("efficient_densenet.dat");
    let sd = read_tensors(&checkpoint(&c.file)).expect("reads");
    let g = graph(&c);
    // Lightning's `model.`, torch.compile's `_orig_mod.`, both at once.
    for prefix in ["model.", "_orig_mod.", "model._orig_mod."] {
        let prefixed: TensorMap = sd
            .iter()
            .filter(|(_, t)| t.as_f32().is_some())
            .map(|(k, t)| (format!("{prefix}{k}"), t.clone()))
            .collect();
        let bytes = safetensors_bytes(&prefixed);
        let (t, found) = parse_checkpoint(&bytes, Path::new("x"), Some(&g), &Choice::default())
            .unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(found.prefix, prefix);
        let mut g2 = graph(&c);
        weights::bind(&mut g2, t).expect("binds");
    }
    let choice = Choice {
        key: Some(".".into()),
        prefix: None,
    };
    let mut g2 = graph(&c);
    let l = load(&mut g2, &checkpoint(&c.file), &choice).expect("the top level");
    assert_eq!(l.found.path, "");
}

/// A legacy file as PyTorch 0.3 under Python 2 wrote it: `str` keys as
/// `SHORT_BINSTRING`, `torch.cuda.FloatStorage`, `_rebuild_tensor`, and a
/// storage *view* (`view_metadata`) into a root storage.
fn pytorch03_file(stored_count: i64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}(U\x0dlittle_endian\x88U\x0atype_sizes}u.");
    // {'w': _rebuild_tensor(pid, 0, (2,), (1,))} with
    // pid = ('storage', torch.cuda.FloatStorage, 'k', 'cuda:0', 4, ('v', 1, 2)).
    f.extend_from_slice(b"\x80\x02}U\x01wctorch._utils\n_rebuild_tensor\n(");
    f.extend_from_slice(b"(U\x07storagectorch.cuda\nFloatStorage\nU\x01kU\x06cuda:0K\x04");
    f.extend_from_slice(b"(U\x01vK\x01K\x02ttQK\x00K\x02\x85K\x01\x85tRs.");
    f.extend_from_slice(b"\x80\x02]U\x01ka.");
    f.extend_from_slice(&stored_count.to_le_bytes());
    for x in [1.0f32, 2.0, 3.0, 4.0] {
        f.extend_from_slice(&x.to_le_bytes());
    }
    f
}

#[test]
fn pytorch_0_3_legacy_files_with_storage_views_read() {
    let t = weights::parse_tensors(&pytorch03_file(4), Path::new("old.pth")).expect("reads");
    assert_eq!(t["w"].shape, [2]);
    assert_eq!(
        t["w"].as_f32(),
        Some(&[2.0f32, 3.0][..]),
        "view (1, 2) of [1, 2, 3, 4]"
    );
    let e = weights::parse_tensors(&pytorch03_file(5), Path::new("old.pth")).expect_err("lies");
    assert!(
        e.to_string()
            .contains("declares 4 float32 values, but its data says 5"),
        "{e}"
    );
}
