//! The bf16 kernels (`--precision bf16`, `vdpbf16ps`), kernel by kernel.
//!
//! The GEMM and direct convolutions round exactly two things to bf16: the weights (at compile
//! time) and the input after the prologue (when the task packs its panel); products and sums
//! are f32. So they are checked against an *emulation* of that rounding, computed here in f64
//! with a bf16 conversion of its own (to nearest even): any pairing, packing or striding slip
//! (a channel dropped, a pair swapped with the wrong weight, an odd last channel mishandled)
//! shows up far above the f32 summation noise of the bound, [`EMULATED_BOUND`]. Winograd
//! convolutions round the *transformed* tiles instead, so they are checked against the exact
//! f64 reference within [`WINOGRAD_BOUND`]. Every case also runs under the three
//! parallel-fors and must not write outside its output view (`kernels::check_against`).
//!
//! The bf16 kernels need AVX512_BF16: on other hosts they are compiled (for `x86-64-v4`
//! with the feature added) and not run, with the reason printed. The AMX tile kernels
//! (`sapphirerapids`: convolutions of 32 input channels or more on `tdpbf16ps`) round the same
//! two things and are checked against the same emulation; they run where the host has
//! AMX-BF16 and the OS grants the tile state, and are compiled only elsewhere.

use crate::kernels::{check_against, conv_case, Case};
use crate::support::TestIsa;
use compiler::backend::cpu::CpuOptions;
use compiler::backend::precision::Precision;
use ir::ops::Op;
use ir::reference::Tensor;

/// Relative error of the GEMM and direct kernels against the emulated rounding: f32 sums of
/// up to a few thousand products, in another order.
const EMULATED_BOUND: f64 = 2e-5;
/// Relative error of the Winograd kernels with bf16 GEMMs against the exact f64 reference
/// (measured below 4e-3 on these cases; bf16 rounding of the transformed tiles).
const WINOGRAD_BOUND: f64 = 1.5e-2;

fn host_has_bf16() -> bool {
    crate::support::host_has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// The bf16 kernels of both vector widths (zmm, and ymm through AVX512VL).
fn bf16_isas() -> Vec<TestIsa> {
    static SKIP_NOTE: std::sync::Once = std::sync::Once::new();
    let runs = host_has_bf16();
    if !runs {
        SKIP_NOTE.call_once(|| {
            eprintln!("note: the host has no AVX512_BF16: the bf16 kernels are compiled, not run");
        });
    }
    [("bf16-zmm", None), ("bf16-ymm", Some(256))]
        .into_iter()
        .map(|(name, vector_bits)| TestIsa {
            name,
            opts: CpuOptions {
                cpu: "x86-64-v4".into(),
                precision: Precision::Bf16,
                vector_bits,
                ..CpuOptions::default()
            },
            runs,
        })
        .collect()
}

/// The AMX tile kernels (`sapphirerapids`, bf16).
fn amx_isa() -> TestIsa {
    static SKIP_NOTE: std::sync::Once = std::sync::Once::new();
    // Also asks the OS for the tile state, which the kernels need (`runtime::host_has_amx`).
    let runs = host_has_bf16() && runtime::host_has_amx();
    if !runs {
        SKIP_NOTE.call_once(|| {
            eprintln!(
                "note: the host has no usable AMX-BF16: the tile kernels are compiled, not run"
            );
        });
    }
    TestIsa {
        name: "bf16-amx",
        opts: CpuOptions {
            cpu: "sapphirerapids".into(),
            precision: Precision::Bf16,
            ..CpuOptions::default()
        },
        runs,
    }
}

/// `x` rounded to bf16, to nearest even (written independently of the compiler's).
fn bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// The convolution of `case` in f64 with the operands the bf16 kernels multiply: weights and
/// prologue outputs rounded to bf16 (padding stays 0, as the panels hold it).
fn emulated_reference(case: &Case) -> Tensor {
    let Op::Conv2d(c) = &case.op else {
        panic!("{}: not a convolution", case.name)
    };
    let data = |name: &str| case.graph.constant_data(name).expect("constant").clone();
    let w = data(&c.weight);
    let bias = c.bias.as_deref().map(data);
    let prologue = c
        .prologue
        .as_ref()
        .map(|p| (data(&p.scale), data(&p.shift), p.relu));
    let [n, ic, h, wd] = <[usize; 4]>::try_from(case.input.shape.as_slice()).expect("NCHW");
    let (oc, [kh, kw], [sh, sw], [ph, pw]) = (c.out_channels, c.kernel, c.stride, c.padding);
    let oh = (h + 2 * ph - kh) / sh + 1;
    let ow = (wd + 2 * pw - kw) / sw + 1;
    // The input as the panels hold it: prologue applied, rounded to bf16.
    let x: Vec<f64> = case
        .input
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / (h * wd)) % ic;
            let y = match &prologue {
                Some((scale, shift, relu)) => {
                    let y = v * scale[ch] + shift[ch];
                    if *relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                }
                None => v,
            };
            f64::from(bf16(y))
        })
        .collect();
    let w: Vec<f64> = w.iter().map(|&v| f64::from(bf16(v))).collect();
    let mut out = vec![0.0f32; n * oc * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = bias.as_ref().map_or(0.0, |bv| f64::from(bv[o]));
                    for i in 0..ic {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (
                                    (y * sh + ky) as isize - ph as isize,
                                    (xo * sw + kx) as isize - pw as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b * ic + i) * h + iy as usize) * wd + ix as usize];
                                s += xv * w[((o * ic + i) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    if c.relu {
                        s = s.max(0.0);
                    }
                    out[((b * oc + o) * oh + y) * ow + xo] = s as f32;
                }
            }
        }
    }
    Tensor::from_vec(vec![n, oc, oh, ow], out).expect("shape")
}

/// Checks `spec` on both bf16 widths against the emulated rounding; returns the plans.
fn check_emulated(name: &str, seed: u64, spec: &str) -> Vec<String> {
    let case = conv_case(name, seed, spec);
    let want = emulated_reference(&case);
    let mut plans = Vec::new();
    for isa in bf16_isas().into_iter().chain([amx_isa()]) {
        if let Some((plan, err)) = check_against(&case, &isa, &want, EMULATED_BOUND) {
            println!(
                "{name} ({}): {err:.2e} against the emulated rounding",
                isa.name
            );
            plans.push(plan);
        }
    }
    plans
}

#[test]
fn gemm_and_direct_match_the_emulated_rounding() {
    let cases = [
        // 1x1 GEMMs: prologue, odd channel counts (a last pair with a zero), chunks of
        // 256 channels, strided and block views, bias and ReLU.
        ("bottleneck", "n2 c20 5x7 oc12 pro relu block"),
        ("odd_channels", "c37 6x6 oc40 bias relu strided"),
        ("chunked_rem", "c301 3x5 oc24 pro bias relu"),
        ("three_chunks_block", "c600 2x2 oc8 pro relu block"),
        ("one_channel", "c1 4x4 oc16 pro"),
        ("wide_oc", "c64 3x3 oc200 bn bias relu bordered"),
        // Direct: the ImageNet stem (3 channels, 7x7 stride 2), odd channels, padding with
        // a positive prologue shift (padding must stay 0), transitions' strides.
        ("stem", "n2 c3 23x19 oc64 k7 s2 p3"),
        ("direct_odd", "c15 8x8 oc12 k3 p1 pro relu"),
        ("direct_s2", "c33 9x9 oc20 k3 s2 p1 bn bias strided"),
        ("direct_bordered", "n2 c9 6x7 oc32 k3 p1 pro relu bordered"),
        ("direct_no_pad", "c16 8x8 oc12 k3"),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        for plan in check_emulated(name, 700 + seed as u64, spec) {
            assert!(!plan.contains("Winograd"), "{name}: {plan}");
        }
    }
}

#[test]
fn amx_tiles_match_the_emulated_rounding() {
    // Shapes that exercise the tile kernel's edges: K padded to 32-channel steps (37, 45 in
    // the last chunk, 33, 48), pixel counts that are not whole 16-row tiles (25, 49, 9x13 rows),
    // 1, 2 and 3 channel tiles per call (12, 32, 48 output channels; 200 = 6 blocks of 32
    // + 8), strides, borders, chunks of 256 channels, the last vector masked.
    let cases = [
        ("k37_m36", "c37 6x6 oc40 bias relu strided"),
        ("k301_chunks", "c301 3x5 oc24 pro bias relu"),
        ("k600_block", "c600 2x2 oc8 pro relu block"),
        ("oc200_bordered", "c64 3x3 oc200 bn bias relu bordered"),
        ("m25_nv3", "c96 5x5 oc48 pro relu"),
        ("m49_k128", "c128 7x7 oc128 pro bias relu block"),
        (
            "direct_k48_oc12",
            "n2 c48 9x13 oc12 k3 p1 pro bias relu strided",
        ),
        ("direct_k33_s2", "c33 9x9 oc20 k3 s2 p1 bn bias strided"),
        ("direct_d121_block1", "c128 56x56 oc32 k3 p1 bn relu block"),
        (
            "direct_nv3_bordered",
            "n2 c64 7x7 oc48 k3 p1 pro relu bordered",
        ),
        // Stride 1 in whole-row tasks (`Mode::Rows`): K in two chunks (accumulating into the
        // junk positions too), several images, no padding, a 5x5 kernel.
        ("rows_k300_chunks", "c300 9x9 oc32 k3 p1 pro relu"),
        ("rows_7x7_images", "n3 c128 7x7 oc32 k3 p1 bn relu block"),
        ("rows_no_pad", "c40 8x8 oc16 k3"),
        ("rows_k5", "n2 c36 11x6 oc24 k5 p2 bias relu strided"),
        // Few channels: the kernel row folded into one tile step (`ConvPlan::fold`).
        ("folded_stem", "n2 c3 23x19 oc64 k7 s2 p3"),
        ("folded_cifar_stem", "c3 8x8 oc24 k3 p1 bias"),
        (
            "folded_c5_bordered",
            "n2 c5 9x9 oc16 k3 p1 pro relu bordered",
        ),
        ("folded_c4_wide", "c4 5x40 oc20 k3 s2 p1 bn bias relu"),
    ];
    let isa = amx_isa();
    for (seed, (name, spec)) in cases.iter().enumerate() {
        let case = conv_case(name, 900 + seed as u64, spec);
        let want = emulated_reference(&case);
        if let Some((plan, err)) = check_against(&case, &isa, &want, EMULATED_BOUND) {
            println!("{name} (amx): {err:.2e} against the emulated rounding");
            assert!(plan.contains("tiles: true"), "{name}: {plan}");
            let folded = name.starts_with("folded");
            assert!(plan.contains(&format!("fold: {folded}")), "{name}: {plan}");
            let rows = spec.contains(" k") && !spec.contains(" s2") && !folded;
            assert_eq!(plan.contains("Rows"), rows, "{name}: {plan}");
            // Several tap rows: calls of two register groups (2x2 and 1x3 tiles), pass by
            // pass (`amx.rs`).
            let groups = match *name {
                "direct_d121_block1" => Some("mr: 64"),
                "direct_nv3_bordered" => Some("mr: 32"),
                _ => None,
            };
            if let Some(mr) = groups {
                assert!(plan.contains(mr), "{name}: {plan}");
            }
        }
    }
}

#[test]
fn winograd_with_bf16_gemms_stays_within_its_bound() {
    for (seed, (name, spec, m)) in [
        ("f2_k12", "n2 c48 9x13 oc12 k3 p1 pro bias relu strided", 2),
        ("f2_k32_bordered", "n2 c128 7x7 oc32 k3 p1 relu bordered", 2),
        (
            "f2_odd_channels",
            "n5 c33 9x1 oc32 k3 p1 bn relu strided",
            2,
        ),
        // Sizes where f32 takes F(4x4): bf16 keeps F(2x2) (`winograd.rs`, `choose_m`).
        ("f4_size_k32", "c128 28x28 oc32 k3 p1 pro relu block", 2),
        (
            "f4_size_k12_chunked",
            "c300 29x26 oc12 k3 p1 bias relu dense",
            2,
        ),
        (
            "densenet121_block1",
            "c128 56x56 oc32 k3 p1 bn relu block",
            2,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let case = conv_case(name, 800 + seed as u64, spec);
        let exact = ir::reference::run(&case.graph, std::slice::from_ref(&case.input))
            .expect("reference")
            .remove(0);
        for isa in bf16_isas() {
            if let Some((plan, err)) = check_against(&case, &isa, &exact, WINOGRAD_BOUND) {
                println!("{name} ({}): {err:.2e} against f64", isa.name);
                assert!(
                    plan.contains("Winograd") && plan.contains(&format!("m: {m},")),
                    "{name}: {plan}"
                );
                // bf16 operands are visibly rounded: an f32 GEMM would be 1e-6.
                assert!(err > 1e-5, "{name} ({}): {err:e}, not bf16", isa.name);
            }
        }
    }
}

#[test]
fn the_emulation_tells_bf16_from_f32() {
    // The emulated reference differs from the exact one by far more than EMULATED_BOUND, so
    // the check above would catch f32 operands (or operands rounded elsewhere).
    let case = conv_case("odd_channels", 700, "c37 6x6 oc40 bias relu strided");
    let exact = ir::reference::run(&case.graph, std::slice::from_ref(&case.input))
        .expect("reference")
        .remove(0);
    let emulated = emulated_reference(&case);
    let gap = emulated.rel_error(&exact).expect("shape");
    assert!(gap > 50.0 * EMULATED_BOUND, "emulation vs exact: {gap:e}");
    assert_eq!(bf16(1.0 + 2f32.powi(-8)), 1.0, "ties to even");
    assert_eq!(bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
}

/// A bottleneck that hands its bordered output to a 3x3 (`ConvPlan::handoffs`), stored as a
/// bf16 view (`storage.rs`), so that the 3x3 reads its A tiles from it in place
/// (`ConvPlan::rows_in_place`), with that buffer last in the arena: the compiled arena must
/// reach past it by what the last tile reads, and the output must equal, bit for bit, that of
/// f32 storage without the handoff (the same two roundings, in the same places).
#[test]
fn amx_rows_in_place_stay_inside_the_arena() {
    // A 1x1 map's bf16 buffer (9 stored pixels) is shorter than what its last tile reads past
    // it, even counting the f32 size the memory plan gave it.
    for (seed, (n, h, w)) in [(2, 9, 7), (1, 1, 1), (3, 2, 5)].into_iter().enumerate() {
        rows_in_place_case(seed as u64, n, h, w);
    }
}

fn rows_in_place_case(seed: u64, n: usize, h: usize, w: usize) {
    use compiler::backend::kernel::{Affine, ConvKernel, KernelDesc, KernelOp, View};
    use std::sync::Arc;
    let mut rng = crate::support::Rng::new(77 + seed);
    let x = View::dense(0, n, h, w, 64);
    let y = View::dense(x.end_bytes(), n, h, w, 32);
    let mid = View::dense(y.end_bytes(), n, h, w, 128).with_border([1, 1]);
    let conv = |oc: usize, ic: usize, k: usize, rng: &mut crate::support::Rng| ConvKernel {
        out_channels: oc,
        kernel: [k, k],
        stride: [1, 1],
        padding: [k / 2, k / 2],
        weight: Arc::new(rng.vec(oc * ic * k * k, -0.1, 0.1)),
        bias: Some(Arc::new(rng.vec(oc, -0.2, 0.2))),
        prologue: None,
        relu: false,
    };
    let bottleneck = ConvKernel {
        prologue: Some(Affine {
            scale: Arc::new(rng.vec(64, 0.5, 1.5)),
            shift: Arc::new(rng.vec(64, -0.2, 0.4)),
            relu: true,
        }),
        relu: true,
        ..conv(128, 64, 1, &mut rng)
    };
    let kernels = [
        KernelDesc {
            name: "conv1".into(),
            op: KernelOp::Conv(bottleneck),
            input: x,
            output: mid,
            output_to_next_only: true,
        },
        KernelDesc {
            name: "conv2".into(),
            op: KernelOp::Conv(conv(32, 128, 3, &mut rng)),
            input: mid,
            output: y,
            output_to_next_only: false,
        },
    ];
    let isa = amx_isa();
    let compile = |on: bool| {
        let opts = CpuOptions {
            tile_handoff: on,
            bf16_storage: on,
            live_out: vec![y],
            ..isa.opts.clone()
        };
        compiler::backend::cpu::compile(&kernels, &opts).expect("compile")
    };
    let (with, without) = (compile(true), compile(false));
    assert!(
        with.kernels[1].plan.contains("rows_in_place: true"),
        "{}",
        with.kernels[1].plan
    );
    assert!(!without.kernels[1].plan.contains("rows_in_place: true"));
    // The bf16 buffer's last stored byte, then 16 + 3 positions of 128 bf16 channels.
    let stored = View { bf16: true, ..mid };
    assert!(
        with.arena_bytes >= stored.end_bytes() + 19 * 128 * 2,
        "arena {} bytes, the buffer ends at {}",
        with.arena_bytes,
        stored.end_bytes()
    );
    if !isa.runs {
        return;
    }
    let input = Tensor::random_uniform(vec![n, 64, h, w], 3 + seed, -1.0, 1.0);
    let out = |c: &compiler::backend::cpu::CompiledCpu| {
        let mut arena = crate::support::Arena::poisoned(c.arena_bytes);
        arena.write(&x, &input);
        crate::support::Loaded::new(c).run(&mut arena, crate::support::Pfor::TwoThreads);
        arena.read(&y, &[n, 32, h, w])
    };
    let (a, b) = (out(&with), out(&without));
    assert!(
        a.data.iter().all(|v| v.is_finite()),
        "in-place reads reached the output"
    );
    assert!(
        a.data == b.data,
        "in place differs from f32 storage without the handoff"
    );
}
