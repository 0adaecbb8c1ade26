//! The DenseNet graph builder: any [`DenseNetConfig`] to an [`ir::Graph`]
//! in PyTorch semantics, with torchvision's module and parameter names.
//!
//! The graph is the literal torchvision forward pass: layer `i` of a block
//! reads `cat(block_input, f_1, …, f_{i-1})` and the block returns
//! `cat(block_input, f_1, …, f_L)`. Those concatenations are copies here;
//! the `concat-in-place` pass makes them free. Constants are unbound; bind
//! weights with `crate::weights`.

mod config;

pub use config::{ConfigOverrides, DenseNetConfig, Stem, PRESETS};

use ir::ops::{BatchNorm, Conv2d, Linear, Pool2d};
use ir::{Constant, Graph, IrError, NodeId, Op, TensorType};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("unknown architecture `{name}`; valid names: {valid}")]
    UnknownArch { name: String, valid: String },
    #[error("no architecture given: use --arch NAME or --config FILE")]
    NoArch,
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("configuration file: {0}")]
    ConfigFile(String),
    #[error("batch size must be at least 1")]
    ZeroBatch,
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// Build the inference graph of `cfg` for `batch` images.
pub fn build(cfg: &DenseNetConfig, batch: usize) -> Result<Graph, BuildError> {
    cfg.validate()?;
    if batch == 0 {
        return Err(BuildError::ZeroBatch);
    }
    let mut b = Builder {
        g: Graph::new(&cfg.name),
        cfg,
    };
    let input = b.g.add_input(
        "input",
        TensorType::f32([batch, cfg.in_channels, cfg.image_size, cfg.image_size]),
    )?;
    let mut x = match cfg.stem {
        Stem::Imagenet => {
            let x = b.conv("features.conv0", input, cfg.num_init_features, 7, 2, 3)?;
            let x = b.bn_relu("features.norm0", "features.relu0", x)?;
            b.pool("features.pool0", x, false, 3, 2, 1)?
        }
        Stem::Cifar => b.conv("features.conv0", input, cfg.num_init_features, 3, 1, 1)?,
    };
    let blocks = cfg.block_config.len();
    for (i, &layers) in cfg.block_config.iter().enumerate() {
        let block = format!("features.denseblock{}", i + 1);
        x = b.dense_block(&block, x, layers)?;
        if i + 1 < blocks {
            let t = format!("features.transition{}", i + 1);
            let c = b.g.node(x).ty.shape[1];
            let out = (c as f64 * cfg.compression).floor() as usize;
            let y = b.bn_relu(&format!("{t}.norm"), &format!("{t}.relu"), x)?;
            let y = b.conv(&format!("{t}.conv"), y, out, 1, 1, 0)?;
            x = b.pool(&format!("{t}.pool"), y, true, 2, 2, 0)?;
        }
    }
    let x = b.bn_relu("features.norm5", "features.relu5", x)?;
    let x =
        b.g.add_node("avgpool", Op::GlobalAvgPool { prologue: None }, &[x])?;
    let x = b.g.add_node("flatten", Op::Flatten, &[x])?;
    let features = b.g.node(x).ty.shape[1];
    b.param("classifier.weight", &[cfg.num_classes, features])?;
    b.param("classifier.bias", &[cfg.num_classes])?;
    let logits = b.g.add_node(
        "classifier",
        Op::Linear(Linear {
            weight: "classifier.weight".into(),
            bias: Some("classifier.bias".into()),
            out_features: cfg.num_classes,
        }),
        &[x],
    )?;
    b.g.set_outputs(vec![logits]);
    ir::verify::verify(&b.g)?;
    Ok(b.g)
}

struct Builder<'a> {
    g: Graph,
    cfg: &'a DenseNetConfig,
}

impl Builder<'_> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<(), BuildError> {
        Ok(self.g.add_constant(name, Constant::unbound(shape))?)
    }

    fn conv(
        &mut self,
        name: &str,
        x: NodeId,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<NodeId, BuildError> {
        let cin = self.g.node(x).ty.shape[1];
        let weight = format!("{name}.weight");
        self.param(&weight, &[out, cin, k, k])?;
        let bias = if self.cfg.conv_bias {
            let b = format!("{name}.bias");
            self.param(&b, &[out])?;
            Some(b)
        } else {
            None
        };
        let op = Op::Conv2d(Conv2d {
            weight,
            bias,
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            prologue: None,
            relu: false,
        });
        Ok(self.g.add_node(name, op, &[x])?)
    }

    fn bn_relu(&mut self, norm: &str, relu: &str, x: NodeId) -> Result<NodeId, BuildError> {
        let c = self.g.node(x).ty.shape[1];
        let names =
            ["weight", "bias", "running_mean", "running_var"].map(|p| format!("{norm}.{p}"));
        for n in &names {
            self.param(n, &[c])?;
        }
        let [weight, bias, running_mean, running_var] = names;
        let op = Op::BatchNorm(BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            eps: self.cfg.bn_eps,
        });
        let y = self.g.add_node(norm, op, &[x])?;
        Ok(self.g.add_node(relu, Op::Relu, &[y])?)
    }

    fn pool(
        &mut self,
        name: &str,
        x: NodeId,
        average: bool,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<NodeId, BuildError> {
        let p = Pool2d {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            prologue: None,
        };
        let op = if average {
            Op::AvgPool2d(p)
        } else {
            Op::MaxPool2d(p)
        };
        Ok(self.g.add_node(name, op, &[x])?)
    }

    fn dense_block(&mut self, block: &str, x: NodeId, layers: usize) -> Result<NodeId, BuildError> {
        let k = self.cfg.growth_rate;
        let mut features = vec![x];
        for l in 1..=layers {
            let p = format!("{block}.denselayer{l}");
            let input = if features.len() == 1 {
                x
            } else {
                self.g.add_node(format!("{p}.cat"), Op::Concat, &features)?
            };
            let y = self.bn_relu(&format!("{p}.norm1"), &format!("{p}.relu1"), input)?;
            let out = if self.cfg.bn_size > 0 {
                let y = self.conv(&format!("{p}.conv1"), y, self.cfg.bn_size * k, 1, 1, 0)?;
                let y = self.bn_relu(&format!("{p}.norm2"), &format!("{p}.relu2"), y)?;
                self.conv(&format!("{p}.conv2"), y, k, 3, 1, 1)?
            } else {
                self.conv(&format!("{p}.conv1"), y, k, 3, 1, 1)?
            };
            features.push(out);
        }
        Ok(self
            .g
            .add_node(format!("{block}.cat"), Op::Concat, &features)?)
    }
}
