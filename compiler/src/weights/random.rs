//! Deterministic random weights.
//!
//! Each constant gets values drawn according to its role, found from the op
//! that reads it (the first reader in node order):
//! - conv weight `[O, I, KH, KW]`: U(±sqrt(6 / fan_in)), He-uniform with the
//!   ReLU gain, so activations stay O(1) through a deep DenseNet;
//! - linear weight `[O, I]`: U(±sqrt(3 / fan_in)), unit gain;
//! - biases: magnitude U(0.01, 0.1), random sign (small, never zero);
//! - BatchNorm weight (and a channel affine's scale): magnitude U(0.5, 1.5),
//!   negative with probability 0.2; bias and shift U(-0.5, 0.5);
//!   running_mean U(-0.5, 0.5); running_var U(0.5, 2.0). Never an identity BN;
//! - a constant no op reads: U(-0.5, 0.5).
//!
//! The generator is SplitMix64, seeded from the seed and the constant's name
//! (FNV-1a), so a constant's values depend only on the seed, its name, role
//! and shape: the same on every platform and for every crate version, and
//! unchanged when other constants are added or removed. Only exact IEEE
//! operations (+, *, sqrt) are used.

use ir::{Graph, Op, Prologue};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ConvWeight,
    LinearWeight,
    Bias,
    Scale,
    Shift,
    Mean,
    Var,
}

/// SplitMix64 (Steele, Lea, Flood 2014), as in `java.util.SplittableRandom`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn roles(graph: &Graph) -> BTreeMap<String, Role> {
    let mut roles = BTreeMap::new();
    let mut set = |name: &str, role: Role| {
        roles.entry(name.to_owned()).or_insert(role);
    };
    let affine = |p: &Prologue, set: &mut dyn FnMut(&str, Role)| {
        set(&p.scale, Role::Scale);
        set(&p.shift, Role::Shift);
    };
    for id in graph.node_ids() {
        match &graph.node(id).op {
            Op::Conv2d(c) => {
                if let Some(p) = &c.prologue {
                    affine(p, &mut set);
                }
                set(&c.weight, Role::ConvWeight);
                if let Some(b) = &c.bias {
                    set(b, Role::Bias);
                }
            }
            Op::BatchNorm(b) => {
                set(&b.weight, Role::Scale);
                set(&b.bias, Role::Shift);
                set(&b.running_mean, Role::Mean);
                set(&b.running_var, Role::Var);
            }
            Op::Linear(l) => {
                set(&l.weight, Role::LinearWeight);
                if let Some(b) = &l.bias {
                    set(b, Role::Bias);
                }
            }
            op => {
                if let Some(p) = op.prologue() {
                    affine(p, &mut set);
                } else if let Op::ChannelAffine(a) = op {
                    affine(a, &mut set);
                }
            }
        }
    }
    roles
}

fn values(role: Option<Role>, shape: &[usize], rng: &mut SplitMix64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
    let draw: Box<dyn FnMut(&mut SplitMix64) -> f32> = match role {
        Some(Role::ConvWeight) => {
            let b = (6.0 / fan_in).sqrt() as f32;
            Box::new(move |r| r.uniform(-b, b))
        }
        Some(Role::LinearWeight) => {
            let b = (3.0 / fan_in).sqrt() as f32;
            Box::new(move |r| r.uniform(-b, b))
        }
        Some(Role::Bias) => Box::new(|r| {
            let m = r.uniform(0.01, 0.1);
            if r.next_u64() & 1 == 0 {
                m
            } else {
                -m
            }
        }),
        Some(Role::Scale) => Box::new(|r| {
            let m = r.uniform(0.5, 1.5);
            if r.unit() < 0.2 {
                -m
            } else {
                m
            }
        }),
        Some(Role::Var) => Box::new(|r| r.uniform(0.5, 2.0)),
        Some(Role::Shift | Role::Mean) | None => Box::new(|r| r.uniform(-0.5, 0.5)),
    };
    let mut draw = draw;
    (0..n).map(|_| draw(rng)).collect()
}

/// Give every constant of `graph` deterministic random values (see the
/// module doc), replacing any data already bound.
pub fn randomize(graph: &mut Graph, seed: u64) {
    let roles = roles(graph);
    for (name, constant) in graph.constants.iter_mut() {
        let mut rng = SplitMix64(seed ^ fnv1a(name));
        // Decorrelate nearby seeds before the first draw.
        rng.0 = rng.next_u64();
        let data = values(roles.get(name).copied(), &constant.shape, &mut rng);
        constant.data = Some(Arc::new(data));
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn splitmix64_reference_values() {
        // From the reference implementation, seed 1234567.
        let mut r = SplitMix64(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(r.next_u64(), 9_817_491_932_198_370_423);
    }
}
