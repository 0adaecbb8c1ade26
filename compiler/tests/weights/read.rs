//! Reading checkpoints: every layout `tools/gen_weight_test_files.py` writes.

use crate::support::data;
use compiler::weights::{read_tensors, Tensor, TensorData, TensorMap, WeightError};

fn read(name: &str) -> TensorMap {
    read_tensors(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_err(name: &str) -> (WeightError, String) {
    let e = read_tensors(&data(name)).expect_err(name);
    let msg = e.to_string();
    (e, msg)
}

fn values(m: &TensorMap, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = m.get(name).unwrap_or_else(|| panic!("no tensor `{name}`"));
    let v = t.as_f32().unwrap_or_else(|| panic!("`{name}` is not f32"));
    (t.shape.clone(), v.to_vec())
}

/// The tensors minus `num_batches_tracked`.
fn without_counters(m: &TensorMap) -> TensorMap {
    m.iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn pth_and_safetensors_agree() {
    let pth = read("mini_densenet.pth");
    let st = read("mini_densenet.safetensors");
    assert_eq!(pth, st, "the two writers must give the same tensors");
    // 9 BatchNorms x 5 entries (num_batches_tracked included), 8 convs, classifier weight and bias.
    assert_eq!(pth.len(), 9 * 5 + 8 + 2);
    let (shape, v) = values(&pth, "features.conv0.weight");
    assert_eq!(shape, [4, 2, 3, 3]);
    assert_eq!(v.len(), 72);
    assert_eq!(
        values(&pth, "classifier.weight").0,
        [3, 6],
        "6 features reach the classifier"
    );
    let counter = &pth["features.norm0.num_batches_tracked"];
    assert_eq!(counter.shape, Vec::<usize>::new());
    assert_eq!(counter.dtype(), "int64");
    let var = values(&pth, "features.norm5.running_var").1;
    assert!(var.iter().all(|&v| (0.5..=2.0).contains(&v)), "{var:?}");
}

#[test]
fn wrapped_and_prefixed_checkpoints_hold_the_same_tensors() {
    let plain = read("mini_densenet.pth");
    assert_eq!(read("mini_densenet_checkpoint.pth"), plain);
    assert_eq!(read("mini_densenet_model_key_proto4.pth"), plain);
    // read_tensors keeps the file's names; bind normalises them.
    let dp = read("mini_densenet_dataparallel.pth");
    let stripped: TensorMap = dp
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").expect("prefixed").to_owned(), v))
        .collect();
    assert_eq!(without_counters(&stripped), without_counters(&plain));
    let legacy = read("mini_densenet_legacy_names.pth");
    assert!(legacy.contains_key("features.denseblock1.denselayer1.norm.1.weight"));
    assert_eq!(legacy.len(), plain.len());
}

#[test]
fn views_are_materialised_in_row_major_order() {
    let m = read("views.pth");
    // big = arange(12).reshape(3, 4)
    assert_eq!(
        values(&m, "transposed"),
        (vec![3, 3], vec![1., 5., 9., 2., 6., 10., 3., 7., 11.])
    );
    assert_eq!(values(&m, "row"), (vec![4], vec![8., 9., 10., 11.]));
    assert_eq!(values(&m, "column"), (vec![3], vec![3., 7., 11.]));
    assert_eq!(values(&m, "tied_a"), (vec![3], vec![1.5, -2.0, 3.25]));
    assert_eq!(m["tied_a"], m["tied_b"]);
    assert_eq!(values(&m, "param"), (vec![1, 2], vec![0.5, 0.25]));
    assert_eq!(values(&m, "scalar"), (vec![], vec![2.5]));
    assert_eq!(values(&m, "empty"), (vec![0, 3], vec![]));
    assert_eq!(m["bn.num_batches_tracked"].dtype(), "int64");
    assert_eq!(m.len(), 9);
}

#[test]
fn zip64_archives_read_like_plain_ones() {
    assert_eq!(read("views_zip64.pth"), read("views.pth"));
}

#[test]
fn other_dtypes_are_kept_by_name() {
    let m = read("dtypes.pth");
    let dtype = |n: &str| m[n].dtype().to_owned();
    assert_eq!(dtype("w64"), "float64");
    assert_eq!(dtype("w16"), "float16");
    assert_eq!(dtype("wbf16"), "bfloat16");
    assert_eq!(dtype("idx"), "int64");
    assert_eq!(
        m["w64"],
        Tensor {
            shape: vec![2],
            data: TensorData::Other {
                dtype: "float64".into()
            }
        }
    );
}

#[test]
fn legacy_format_is_read() {
    // torch.save(..., _use_new_zipfile_serialization=False): the pre-1.6 format.
    let m = read("legacy_format.pth");
    assert_eq!(values(&m, "w"), (vec![2], vec![1.0, 2.0]));
    assert_eq!(m.len(), 1);
}

#[test]
fn compressed_archives_are_refused() {
    let (e, msg) = read_err("compressed.pth");
    assert!(matches!(e, WeightError::Unsupported { .. }), "{e:?}");
    assert!(
        msg.contains("compressed") && msg.contains("data.pkl"),
        "{msg}"
    );
}

#[test]
fn a_whole_pickled_module_is_read_by_path() {
    // torch.save(torch.nn.Linear(2, 1)): its module tree, as state_dict() names it.
    let m = read("whole_module.pth");
    assert_eq!(m.keys().collect::<Vec<_>>(), ["bias", "weight"]);
    assert_eq!(m["weight"].shape, [1, 2]);
    assert_eq!(m["bias"].shape, [1]);
}

#[test]
fn a_state_dict_is_found_under_any_key() {
    // `model` holds a string; the state dict is under `state_dict`.
    let m = read("wrapped_with_model_name.pth");
    assert_eq!(values(&m, "w"), (vec![2], vec![1.0, 2.0]));
    // A key densenetc has no name for (`net`).
    assert_eq!(read("unknown_wrapper.pth"), m);
}

#[test]
fn unreadable_and_unknown_files() {
    let missing = data("no_such_file.pth");
    let e = read_tensors(&missing).expect_err("missing file");
    assert!(matches!(e, WeightError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("no_such_file.pth"), "{e}");

    let p = |s: &str| std::path::PathBuf::from(s);
    let e = compiler::weights::parse_tensors(b"hello, world", &p("x.bin")).expect_err("text");
    assert!(matches!(e, WeightError::UnknownFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("x.bin"), "{e}");
    let e = compiler::weights::parse_tensors(b"", &p("empty")).expect_err("empty");
    assert!(matches!(e, WeightError::UnknownFormat { .. }), "{e:?}");
    // A zip archive that is not a checkpoint (e.g. an .npz).
    let e = compiler::weights::parse_tensors(
        b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        &p("a.npz"),
    );
    let e = e.expect_err("empty zip");
    assert!(e.to_string().contains("not a torch.save checkpoint"), "{e}");
}
