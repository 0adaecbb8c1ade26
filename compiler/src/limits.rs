//! What a configuration will cost, estimated from the configuration alone (before anything is
//! built), and the limits a compile refuses beyond, each with its reason.
//!
//! [`estimate`] counts parameters exactly as torchvision does, the weight bytes the graph binds
//! (parameters plus BatchNorm running statistics), a lower bound of the activation arena (the
//! largest set of tensors that must be live at once, input included, times the batch) and the
//! kernel count of the CPU schedule (within a few kernels). [`Estimate::check`] refuses:
//!
//! - an arena above [`MAX_ARENA_BYTES`] (2^47 bytes, 128 TiB: the user address space of x86-64
//!   and AArch64 Linux; no process can map it);
//! - weights above [`MAX_WEIGHT_BYTES`] (2^40 bytes, 1 TiB) or above this machine's physical
//!   memory: a compile holds every weight in memory (twice while packing);
//! - more than [`MAX_KERNELS`] kernels: code generation time grows with the kernel count
//!   (DenseNet-201 has about 200).
//!
//! An arena larger than this machine's memory is no refusal (the artefact may run elsewhere):
//! the command line warns at compile time and `densenetc run` refuses it cleanly at run time.

use crate::builder::{DenseNetConfig, Stem};
use crate::error::CompileError;

/// The largest arena a compile accepts: 2^47 bytes (128 TiB), the user address space of x86-64
/// and AArch64 Linux.
pub const MAX_ARENA_BYTES: u64 = 1 << 47;
/// The largest weights a compile accepts: 2^40 bytes (1 TiB).
pub const MAX_WEIGHT_BYTES: u64 = 1 << 40;
/// The most kernels a compile accepts.
pub const MAX_KERNELS: u64 = 100_000;

/// What a configuration will cost (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Parameters as torchvision counts them (running statistics excluded).
    pub params: u64,
    /// Bytes of every weight the graph binds (f32; running statistics included).
    pub weight_bytes: u64,
    /// A lower bound of the activation arena's bytes for the whole batch, input included.
    pub arena_bytes: u64,
    /// Kernels of the CPU schedule, within a few.
    pub kernels: u64,
}

/// Estimates `cfg` at `batch` images (the configuration must have been validated; every
/// figure saturates instead of overflowing).
pub fn estimate(cfg: &DenseNetConfig, batch: usize) -> Result<Estimate, CompileError> {
    let (stages, c_final) = cfg.stages()?;
    let u = |x: usize| x as u128;
    let bias = |c: u128| if cfg.conv_bias { c } else { 0 };
    let (k, bn) = (u(cfg.growth_rate), u(cfg.bn_size) * u(cfg.growth_rate));
    let (s0, inc, init) = (
        u(cfg.image_size),
        u(cfg.in_channels),
        u(cfg.num_init_features),
    );
    let mut params: u128 = 0;
    let mut stats: u128 = 0;
    let mut batch_norm = |c: u128, params: &mut u128| {
        *params += 2 * c;
        stats += 2 * c;
    };
    let mut kernels: u128 = 0;
    // Per image, in f32 values.
    let mut live: u128 = 0;
    match cfg.stem {
        Stem::Imagenet => {
            params += inc * init * 49 + bias(init);
            batch_norm(init, &mut params);
            let conv = s0.div_ceil(2);
            let pooled = conv.div_ceil(2);
            live = live.max(inc * s0 * s0 + init * conv * conv);
            live = live.max(init * conv * conv + init * pooled * pooled);
            kernels += 2;
        }
        Stem::Cifar => {
            params += inc * init * 9 + bias(init);
            live = live.max(inc * s0 * s0 + init * s0 * s0);
            kernels += 1;
        }
    }
    for (i, (&(c_in, size), &layers)) in stages.iter().zip(&cfg.block_config).enumerate() {
        let (mut c, s2) = (u(c_in), u(size) * u(size));
        for _ in 0..layers {
            batch_norm(c, &mut params);
            if bn > 0 {
                params += c * bn + bias(bn);
                batch_norm(bn, &mut params);
                params += bn * k * 9 + bias(k);
                kernels += 2;
            } else {
                params += c * k * 9 + bias(k);
                kernels += 1;
            }
            c += k;
        }
        // The block's concatenation is one buffer; a bottleneck is live beside it.
        live = live.max(c * s2 + bn * s2);
        if i + 1 < cfg.block_config.len() {
            let out = (c as f64 * cfg.compression).floor() as u128;
            batch_norm(c, &mut params);
            params += c * out + bias(out);
            kernels += 2;
        }
    }
    let c = u(c_final);
    batch_norm(c, &mut params);
    params += c * u(cfg.num_classes) + u(cfg.num_classes);
    kernels += 3;
    let sat = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
    Ok(Estimate {
        params: sat(params),
        weight_bytes: sat((params + stats).saturating_mul(4)),
        arena_bytes: sat(live.saturating_mul(4).saturating_mul(u(batch))),
        kernels: sat(kernels),
    })
}

impl Estimate {
    /// Refuses what exceeds a limit (module docs); `physical_memory` is this machine's, if
    /// known. The error gives the estimate, the limit and why.
    pub fn check(&self, physical_memory: Option<u64>) -> Result<(), CompileError> {
        let refuse = |what: String, why: &str| Err(CompileError::Limit(format!("{what}: {why}")));
        if self.arena_bytes > MAX_ARENA_BYTES {
            return refuse(
                format!(
                    "the activation arena would need at least {} bytes, beyond the limit of \
                     {MAX_ARENA_BYTES} bytes",
                    self.arena_bytes
                ),
                "2^47 bytes is the whole user address space of a 64-bit Linux process; \
                 use a smaller --batch or --image-size",
            );
        }
        let weights = |limit: u64| {
            format!(
                "the weights would take about {} bytes ({} parameters), beyond the limit of \
                 {limit} bytes",
                self.weight_bytes, self.params
            )
        };
        if self.weight_bytes > MAX_WEIGHT_BYTES {
            return refuse(
                weights(MAX_WEIGHT_BYTES),
                "a compile holds every weight in memory; use fewer layers or channels",
            );
        }
        if let Some(mem) = physical_memory.filter(|&m| self.weight_bytes > m) {
            return refuse(
                weights(mem),
                "a compile holds every weight in memory and this machine has no more",
            );
        }
        if self.kernels > MAX_KERNELS {
            return refuse(
                format!(
                    "the model would have about {} kernels, beyond the limit of {MAX_KERNELS}",
                    self.kernels
                ),
                "code generation time grows with every kernel (DenseNet-201 has about 200); \
                 use fewer layers",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> DenseNetConfig {
        DenseNetConfig::preset(name).expect("preset")
    }

    #[test]
    fn params_are_torchvisions() {
        assert_eq!(
            estimate(&preset("densenet121"), 1).expect("e").params,
            7_978_856
        );
        assert_eq!(
            estimate(&preset("densenet201"), 1).expect("e").params,
            20_013_928
        );
        assert_eq!(
            estimate(&preset("densenet-bc-100"), 1).expect("e").params,
            769_162
        );
    }

    #[test]
    fn presets_are_within_every_limit_and_huge_batches_are_not() {
        for name in crate::builder::PRESETS {
            let e = estimate(&preset(name), 64).expect("estimate");
            e.check(None).expect("a preset fits");
            assert!(e.kernels > 10 && e.kernels < 1000, "{name}: {e:?}");
        }
        let e = estimate(&preset("densenet121"), 100_000_000).expect("estimate");
        let err = e.check(None).expect_err("too large").to_string();
        assert!(
            err.contains("arena") && err.contains("140737488355328"),
            "{err}"
        );
    }

    #[test]
    fn the_arena_bound_is_below_the_planned_arena() {
        // DenseNet-121 at batch 1 plans 7,024,640 bytes, input included.
        let e = estimate(&preset("densenet121"), 1).expect("estimate");
        assert!(
            e.arena_bytes <= 7_024_640 && e.arena_bytes > 3_000_000,
            "{e:?}"
        );
        let e8 = estimate(&preset("densenet121"), 8).expect("estimate");
        assert_eq!(e8.arena_bytes, 8 * e.arena_bytes);
    }
}
