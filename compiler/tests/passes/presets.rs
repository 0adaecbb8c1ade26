//! Every preset, optimised, computes what the unoptimised graph computes,
//! inside one arena at the planned offsets (reduced image sizes for the
//! big models).

use crate::common::*;
use compiler::builder::ConfigOverrides;

fn check(arch: &str, image_size: usize, batch: usize) {
    let t = std::time::Instant::now();
    let cfg = config(
        arch,
        ConfigOverrides {
            image_size: Some(image_size),
            ..Default::default()
        },
    );
    let g = random_graph(&cfg, batch, 7);
    let (o, report) = optimized(&g);
    assert_eq!(report.memory.as_ref().map(|m| m.concat_copies), Some(0));
    assert_same_function(arch, &g, &o, 11);
    eprintln!("{arch} at {image_size} b{batch}: {:?}", t.elapsed());
}

#[test]
fn densenet121() {
    check("densenet121", 32, 2);
}

#[test]
fn densenet161() {
    check("densenet161", 32, 1);
}

#[test]
fn densenet169() {
    check("densenet169", 32, 1);
}

#[test]
fn densenet201() {
    check("densenet201", 32, 1);
}

#[test]
fn densenet_bc_100() {
    check("densenet-bc-100", 16, 2);
}

#[test]
fn densenet_bc_250() {
    check("densenet-bc-250", 8, 1);
}

#[test]
fn densenet_bc_190() {
    check("densenet-bc-190", 8, 1);
}

#[test]
fn densenet_40() {
    check("densenet-40", 16, 2);
}
