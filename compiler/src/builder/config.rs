//! DenseNet configurations: the presets of the command line (ARCHITECTURE.md, Command-line
//! contract), overrides from the command line or a TOML file, and validation.

use super::BuildError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The stem in front of the first dense block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7x7/2 conv, BN, ReLU, 3x3/2 max pool (torchvision's ImageNet models).
    Imagenet,
    /// One 3x3/1 conv (the paper's CIFAR models).
    Cifar,
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stem::Imagenet => "imagenet",
            Stem::Cifar => "cifar",
        })
    }
}

impl std::str::FromStr for Stem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "imagenet" => Ok(Stem::Imagenet),
            "cifar" => Ok(Stem::Cifar),
            other => Err(format!(
                "unknown stem `{other}` (expected imagenet or cifar)"
            )),
        }
    }
}

/// A complete DenseNet configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetConfig {
    /// Name of the model (the preset's name, or `custom`).
    pub name: String,
    /// k: channels each dense layer adds.
    pub growth_rate: usize,
    /// Number of layers in each dense block.
    pub block_config: Vec<usize>,
    /// Channels out of the stem.
    pub num_init_features: usize,
    /// Bottleneck width factor: the 1x1 conv outputs `bn_size * k`
    /// channels; 0 means plain BN-ReLU-3x3 layers with no bottleneck.
    pub bn_size: usize,
    /// θ ∈ (0, 1]: a transition outputs `floor(C * θ)` channels.
    pub compression: f64,
    pub num_classes: usize,
    pub in_channels: usize,
    /// Height and width of the (square) input image.
    pub image_size: usize,
    pub stem: Stem,
    /// Every conv carries a bias (implementations other than torchvision's).
    pub conv_bias: bool,
    /// BatchNorm epsilon.
    pub bn_eps: f32,
}

/// Optional changes to a configuration: the CLI's override flags and the
/// keys of a `--config` TOML file (which may also name a base `arch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigOverrides {
    pub arch: Option<String>,
    pub name: Option<String>,
    pub growth_rate: Option<usize>,
    pub block_config: Option<Vec<usize>>,
    /// `init_features` (the command line's spelling) is accepted too.
    #[serde(alias = "init_features")]
    pub num_init_features: Option<usize>,
    pub bn_size: Option<usize>,
    pub compression: Option<f64>,
    pub num_classes: Option<usize>,
    pub in_channels: Option<usize>,
    pub image_size: Option<usize>,
    pub stem: Option<Stem>,
    pub conv_bias: Option<bool>,
    pub bn_eps: Option<f32>,
}

/// Names accepted by `--arch`.
pub const PRESETS: &[&str] = &[
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet-bc-100",
    "densenet-bc-250",
    "densenet-bc-190",
    "densenet-40",
];

impl DenseNetConfig {
    /// A named preset (ARCHITECTURE.md, Command-line contract).
    pub fn preset(name: &str) -> Result<Self, BuildError> {
        let imagenet = |k: usize, blocks: &[usize], init: usize| DenseNetConfig {
            name: name.to_owned(),
            growth_rate: k,
            block_config: blocks.to_vec(),
            num_init_features: init,
            bn_size: 4,
            compression: 0.5,
            num_classes: 1000,
            in_channels: 3,
            image_size: 224,
            stem: Stem::Imagenet,
            conv_bias: false,
            bn_eps: 1e-5,
        };
        // The paper's CIFAR models: depth L has (L - 4) / 6 bottleneck layers
        // per block (BC) or (L - 4) / 3 plain layers; BC starts with 2k channels.
        let cifar_bc = |k: usize, depth: usize| DenseNetConfig {
            name: name.to_owned(),
            growth_rate: k,
            block_config: vec![(depth - 4) / 6; 3],
            num_init_features: 2 * k,
            bn_size: 4,
            compression: 0.5,
            num_classes: 10,
            in_channels: 3,
            image_size: 32,
            stem: Stem::Cifar,
            conv_bias: false,
            bn_eps: 1e-5,
        };
        Ok(match name {
            "densenet121" => imagenet(32, &[6, 12, 24, 16], 64),
            "densenet161" => imagenet(48, &[6, 12, 36, 24], 96),
            "densenet169" => imagenet(32, &[6, 12, 32, 32], 64),
            "densenet201" => imagenet(32, &[6, 12, 48, 32], 64),
            "densenet-bc-100" => cifar_bc(12, 100),
            "densenet-bc-250" => cifar_bc(24, 250),
            "densenet-bc-190" => cifar_bc(40, 190),
            "densenet-40" => DenseNetConfig {
                block_config: vec![12; 3],
                num_init_features: 16,
                bn_size: 0,
                compression: 1.0,
                ..cifar_bc(12, 40)
            },
            other => {
                return Err(BuildError::UnknownArch {
                    name: other.to_owned(),
                    valid: PRESETS.join(", "),
                })
            }
        })
    }

    /// Resolve overrides: start from `o.arch` (or `base`), apply every set
    /// field, and validate.
    pub fn resolve(base: Option<&str>, o: &ConfigOverrides) -> Result<Self, BuildError> {
        let arch = o.arch.as_deref().or(base).ok_or(BuildError::NoArch)?;
        let preset = Self::preset(arch)?;
        let mut c = preset.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &o.$f { c.$f = v.clone(); } )* };
        }
        set!(
            growth_rate,
            block_config,
            num_init_features,
            bn_size,
            compression
        );
        set!(
            num_classes,
            in_channels,
            image_size,
            stem,
            conv_bias,
            bn_eps
        );
        // The preset's name while the overrides only restate its values.
        if let Some(name) = &o.name {
            c.name = name.clone();
        } else if c != preset {
            c.name = format!("{arch}-custom");
        }
        c.validate()?;
        Ok(c)
    }

    /// Parse a TOML configuration file's text (`arch` plus overrides, or a
    /// complete configuration with no `arch`, then based on `densenet121`
    /// for any key left out).
    pub fn from_toml(text: &str) -> Result<Self, BuildError> {
        let o: ConfigOverrides =
            toml::from_str(text).map_err(|e| BuildError::ConfigFile(e.to_string()))?;
        Self::resolve(Some("densenet121"), &o)
    }

    /// Check the configuration is buildable; every failure is a sentence
    /// naming the offending value.
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |m: String| Err(BuildError::Invalid(m));
        if self.growth_rate == 0 {
            return bad("growth rate must be at least 1".into());
        }
        if self.block_config.is_empty() {
            return bad("block config must name at least one dense block".into());
        }
        if let Some(i) = self.block_config.iter().position(|&l| l == 0) {
            return bad(format!("dense block {} has no layers", i + 1));
        }
        if self.num_init_features == 0 {
            return bad("init features must be at least 1".into());
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!(
                "compression θ = {} is outside (0, 1]",
                self.compression
            ));
        }
        if self.num_classes == 0 {
            return bad("num classes must be at least 1".into());
        }
        if self.in_channels == 0 {
            return bad("in channels must be at least 1".into());
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0) {
            return bad(format!("BatchNorm eps = {} must be positive", self.bn_eps));
        }
        self.bn_size
            .checked_mul(self.growth_rate)
            .ok_or_else(|| BuildError::Invalid("bn_size * growth rate overflows".into()))?;
        self.stages().map(|_| ())
    }

    /// Channel count and spatial size at the input of each dense block and
    /// at the classifier: `(channels_in, size)` per block, then the final
    /// channel count. Checks every stage fits and nothing overflows.
    pub fn stages(&self) -> Result<(Vec<(usize, usize)>, usize), BuildError> {
        let ovf = || BuildError::Invalid("channel count overflows".into());
        let too_small = |stage: String, size: usize, need: usize| {
            BuildError::Invalid(format!(
                "image size {} is too small: the {stage} sees {size}x{size} but needs at least {need}x{need}",
                self.image_size
            ))
        };
        let mut size = self.image_size;
        if size == 0 {
            return Err(BuildError::Invalid("image size must be at least 1".into()));
        }
        if self.stem == Stem::Imagenet {
            // conv0 7x7/2 pad 3, then max pool 3x3/2 pad 1.
            size = (size + 6 - 7) / 2 + 1;
            size = (size + 2 - 3) / 2 + 1;
        }
        let mut c = self.num_init_features;
        let mut stages = Vec::new();
        for (i, &layers) in self.block_config.iter().enumerate() {
            stages.push((c, size));
            let added = layers.checked_mul(self.growth_rate).ok_or_else(ovf)?;
            c = c.checked_add(added).ok_or_else(ovf)?;
            if i + 1 < self.block_config.len() {
                let out = (c as f64 * self.compression).floor();
                if out < 1.0 {
                    return Err(BuildError::Invalid(format!(
                        "transition {} would output floor({c} * {}) = 0 channels",
                        i + 1,
                        self.compression
                    )));
                }
                c = out as usize;
                if size < 2 {
                    return Err(too_small(format!("transition {} pool", i + 1), size, 2));
                }
                size /= 2;
            }
        }
        // Reject sizes whose tensors could not be addressed (4 bytes each).
        let largest = stages
            .iter()
            .map(|&(_, s)| s)
            .chain([self.image_size])
            .max()
            .unwrap_or(1);
        let cmax = c.max(self.num_init_features).max(self.in_channels);
        cmax.checked_mul(largest)
            .and_then(|v| v.checked_mul(largest))
            .and_then(|v| v.checked_mul(4 * 64))
            .filter(|&v| v <= isize::MAX as usize)
            .ok_or_else(|| BuildError::Invalid("tensor sizes overflow".into()))?;
        Ok((stages, c))
    }
}
