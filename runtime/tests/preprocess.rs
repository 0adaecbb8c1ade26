//! Image preprocessing against Pillow + NumPy: `tests/fixtures/images/` holds small images and
//! what torchvision's ImageNet eval transform makes of them (`tools/gen_image_fixtures.py`,
//! which lists the Pillow version in `manifest.json`). PNG must match to the bit; JPEG, decoded
//! by another library than PIL's libjpeg, only closely.
#![cfg(feature = "image")]

mod common;

use std::path::PathBuf;

use runtime::preprocess;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images")
}

struct Case {
    image: String,
    crop: usize,
    expected: String,
    exact: bool,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            image: c["image"].as_str().expect("image").to_owned(),
            crop: c["crop"].as_u64().expect("crop") as usize,
            expected: c["expected"].as_str().expect("expected").to_owned(),
            exact: c["exact"].as_bool().unwrap_or(true),
        })
        .collect()
}

/// (max |a - b|, mean |a - b|)
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, (sum / a.len() as f64) as f32)
}

#[test]
fn png_images_match_pillow_and_torchvision_exactly() {
    let cases = cases();
    let mut seen_modes = 0;
    for case in cases.iter().filter(|c| c.exact) {
        let img = preprocess::open(fixtures().join(&case.image)).expect("decode");
        let got = preprocess::imagenet(&img, case.crop);
        let want = runtime::npy::read(fixtures().join(&case.expected)).expect("expected npy");
        assert_eq!(want.shape, vec![1, 3, case.crop, case.crop]);
        let (max, _) = diff(&got, &want.data);
        eprintln!("{} crop {}: max |diff| {max:e}", case.image, case.crop);
        assert!(
            max <= 1e-6,
            "{} at {}: max |diff| {max} (one uint8 step is {})",
            case.image,
            case.crop,
            1.0 / 255.0 / 0.225
        );
        seen_modes += 1;
    }
    // RGB landscape/portrait/large, L, RGBA, P, 16-bit grey, RGB and grey+alpha, two sizes each.
    assert!(seen_modes >= 18, "only {seen_modes} exact cases");
}

#[test]
fn jpeg_decodes_close_to_pil() {
    let case = cases().into_iter().find(|c| !c.exact).expect("a JPEG case");
    let img = preprocess::open(fixtures().join(&case.image)).expect("decode JPEG");
    let got = preprocess::imagenet(&img, case.crop);
    let want = runtime::npy::read(fixtures().join(&case.expected)).expect("expected npy");
    let (max, mean) = diff(&got, &want.data);
    eprintln!("{}: max |diff| {max}, mean |diff| {mean}", case.image);
    // One uint8 step is ~0.017 after normalisation; IDCT/upsampling differences are a few steps.
    assert!(mean <= 0.02, "mean |diff| {mean}");
    assert!(max <= 0.5, "max |diff| {max}");
}

#[test]
fn unreadable_images_are_errors_not_panics() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("preprocess-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let png = std::fs::read(fixtures().join("rgb_portrait.png")).expect("png");
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).expect("write");
    let e = preprocess::open(&cut)
        .expect_err("truncated PNG")
        .to_string();
    assert!(e.contains("cut.png") && e.contains("Png"), "{e}");
    let text = dir.join("notes.png");
    std::fs::write(&text, "not an image").expect("write");
    let e = preprocess::open(&text).expect_err("text").to_string();
    assert!(e.contains("not a .npy file nor an image format"), "{e}");
    let e = preprocess::open(dir.join("missing.png"))
        .expect_err("missing")
        .to_string();
    assert!(e.contains("missing.png"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resizing_keeps_the_aspect_ratio_like_torchvision() {
    let img = preprocess::open(fixtures().join("rgb_landscape.png")).expect("decode");
    let rgb = preprocess::to_rgb8(&img);
    assert_eq!((rgb.width(), rgb.height()), (131, 77));
    let r = preprocess::resize_shorter(&rgb, 256);
    // int(256 * 131 / 77) = 435
    assert_eq!((r.width(), r.height()), (435, 256));
    let c = preprocess::center_crop(&r, 224, 224);
    assert_eq!(c.get_pixel(0, 0), r.get_pixel(106, 16));
}

#[test]
fn load_input_fills_the_batch_and_refuses_absurd_images() {
    // The toy model takes [2, 3, 4, 4]: Resize(5), CenterCrop(4), repeated over the batch.
    let Some(artefact) = common::toy_artefact() else {
        return;
    };
    let model = runtime::Model::load(artefact).expect("toy model");
    let png = fixtures().join("rgb_portrait.png");
    let x = preprocess::load_input(&png, &model).expect("image input");
    assert_eq!(x.shape, vec![2, 3, 4, 4]);
    let one = preprocess::imagenet(&preprocess::open(&png).expect("decode"), 4);
    assert_eq!(x.data, [one.clone(), one].concat());

    let npy = fixtures().join("grey_32.npy");
    let t = preprocess::load_input(&npy, &model).expect(".npy input");
    assert_eq!(t.shape, vec![1, 3, 32, 32]);

    // 20000 × 1 would be 100000 pixels wide after Resize(5): refused, not allocated.
    let strip = common::scratch_dir().join("strip.png");
    preprocess::image::RgbImage::new(20000, 1)
        .save(&strip)
        .expect("write PNG");
    let e = preprocess::load_input(&strip, &model)
        .expect_err("too elongated")
        .to_string();
    assert!(
        e.contains("strip.png") && e.contains("too elongated"),
        "{e}"
    );
}
