//! Deterministic random weights: same seed, same bits; distributions by
//! role; activations stay O(1) through a deep DenseNet.

use crate::support::{densenet, run_all, Config, Nd};
use compiler::weights::randomize;
use ir::Graph;

fn deep() -> Config {
    Config {
        in_channels: 3,
        image: 32,
        init_features: 24,
        growth: 12,
        bn_size: 4,
        blocks: vec![6, 12, 24, 16],
        classes: 10,
        conv_bias: false,
    }
}

fn bits(g: &Graph) -> Vec<(String, Vec<u32>)> {
    g.constants
        .iter()
        .map(|(k, c)| {
            let d = c.data.as_ref().expect("bound");
            (k.clone(), d.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

fn values<'g>(g: &'g Graph, filter: impl Fn(&str) -> bool + 'g) -> impl Iterator<Item = f32> + 'g {
    g.constants
        .iter()
        .filter(move |(k, _)| filter(k))
        .flat_map(|(_, c)| c.data.as_ref().expect("bound").iter().copied())
}

#[test]
fn same_seed_same_bits() {
    let mut a = densenet(&Config::mini(), 1);
    let mut b = densenet(&Config::mini(), 1);
    randomize(&mut a, 42);
    randomize(&mut b, 42);
    assert!(a.is_bound());
    assert_eq!(bits(&a), bits(&b));
    randomize(&mut b, 43);
    let (ba, bb) = (bits(&a), bits(&b));
    for ((name, x), (_, y)) in ba.iter().zip(&bb) {
        assert_ne!(x, y, "`{name}` must change with the seed");
    }
}

#[test]
fn values_are_pinned_across_platforms_and_versions() {
    // Regression pin: changing these changes every random-weight fixture.
    let mut g = densenet(&Config::mini(), 1);
    randomize(&mut g, 0);
    let first = |name: &str| -> Vec<u32> {
        g.constants[name].data.as_ref().expect("bound")[..3]
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let got = [
        first("features.conv0.weight"),
        first("features.norm0.weight"),
        first("features.norm0.running_var"),
        first("classifier.bias"),
    ];
    let want: [Vec<u32>; 4] = [
        vec![0xbe8b54ff, 0xbdff8190, 0x3ec9de6a],
        vec![0x3f8a51c8, 0x3f596d95, 0x3f1f1a3e],
        vec![0x3f809a84, 0x3f99f608, 0x3f1701f9],
        vec![0x3d4dab6e, 0x3d776d7e, 0x3dbf414c],
    ];
    assert_eq!(got, want, "{got:x?}");
}

#[test]
fn a_constant_depends_only_on_seed_name_role_and_shape() {
    let mut small = densenet(&Config::mini(), 1);
    let mut other = densenet(
        &Config {
            classes: 7,
            blocks: vec![2, 3],
            ..Config::mini()
        },
        4,
    );
    randomize(&mut small, 5);
    randomize(&mut other, 5);
    for name in ["features.conv0.weight", "features.norm0.running_mean"] {
        assert_eq!(small.constants[name], other.constants[name], "{name}");
    }
}

#[test]
fn distributions_follow_the_roles() {
    let mut g = densenet(
        &Config {
            conv_bias: true,
            ..deep()
        },
        1,
    );
    randomize(&mut g, 7);
    let gamma: Vec<f32> = values(&g, |k| k.contains("norm") && k.ends_with(".weight")).collect();
    assert!(gamma.len() > 10_000);
    assert!(gamma.iter().all(|v| (0.5..=1.5).contains(&v.abs())));
    let negative = gamma.iter().filter(|&&v| v < 0.0).count() as f64 / gamma.len() as f64;
    assert!((0.18..0.22).contains(&negative), "{negative}");
    for (suffix, lo, hi) in [
        (".bias", -0.5, 0.5),
        (".running_mean", -0.5, 0.5),
        (".running_var", 0.5, 2.0),
    ] {
        let v: Vec<f32> = values(&g, |k| k.contains("norm") && k.ends_with(suffix)).collect();
        assert!(v.iter().all(|x| (lo..hi).contains(x)), "{suffix}");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            (mean - (lo + hi) / 2.0).abs() < 0.05,
            "{suffix}: mean {mean}"
        );
    }
    let biases: Vec<f32> = values(&g, |k| !k.contains("norm") && k.ends_with(".bias")).collect();
    assert!(biases.iter().all(|b| (0.01..=0.1).contains(&b.abs())));
    for (name, c) in &g.constants {
        if name.contains("conv") && name.ends_with(".weight") {
            let fan_in: usize = c.shape[1..].iter().product();
            let bound = (6.0 / fan_in as f32).sqrt();
            let d = c.data.as_ref().expect("bound");
            assert!(d.iter().all(|w| w.abs() <= bound), "{name}");
            let var = d.iter().map(|w| w * w).sum::<f32>() / d.len() as f32;
            if d.len() > 1000 {
                let want = 2.0 / fan_in as f32;
                assert!((var / want - 1.0).abs() < 0.15, "{name}: {var} vs {want}");
            }
        }
    }
}

#[test]
fn activations_stay_order_one_through_a_deep_densenet() {
    // DenseNet-121's block structure at growth 12: 58 layers deep.
    let cfg = deep();
    let mut g = densenet(&cfg, 1);
    randomize(&mut g, 2024);
    let n = cfg.in_channels * cfg.image * cfg.image;
    let input = Nd {
        shape: vec![1, cfg.in_channels, cfg.image, cfg.image],
        // A deterministic O(1) pattern.
        data: (0..n)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect(),
    };
    for (id, v) in run_all(&g, &input) {
        let rms = (v.data.iter().map(|x| x * x).sum::<f32>() / v.data.len() as f32).sqrt();
        let name = &g.node(id).name;
        assert!(
            rms.is_finite() && (0.2..5.0).contains(&rms),
            "{name}: rms {rms}"
        );
    }
}
