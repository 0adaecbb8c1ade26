//! Attribute values and the ops built from them.

use crate::ops::{BatchNorm, ChannelAffine, Conv2d, Head, Linear, Op, Pool2d};
use std::collections::BTreeMap;

/// The largest integer the text form accepts (dimensions, kernel sizes,
/// strides, paddings, channel counts). Bounding them keeps the shape rules'
/// arithmetic (e.g. `2 * padding`) far from overflow on hostile input.
pub const MAX_INT: usize = i32::MAX as usize;

/// A decimal integer no larger than [`MAX_INT`].
pub(super) fn int(w: &str) -> Result<usize, String> {
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected an integer, found `{w}`"));
    }
    w.parse::<usize>()
        .ok()
        .filter(|&v| v <= MAX_INT)
        .ok_or_else(|| format!("integer {w} is out of range (at most {MAX_INT})"))
}

#[derive(Debug)]
pub(super) enum Value {
    Word(String),
    Const(String),
    List(Vec<String>),
    Affine(Attrs),
}

/// Parsed attributes, taken one by one by [`build_op`]; what is left at
/// the end is an unknown attribute.
#[derive(Debug, Default)]
pub(super) struct Attrs(BTreeMap<String, Value>);

impl Attrs {
    /// Add `key`; `false` when it was already there.
    pub(super) fn insert(&mut self, key: String, value: Value) -> bool {
        self.0.insert(key, value).is_none()
    }

    fn opt(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    fn req(&mut self, key: &str) -> Result<Value, String> {
        self.opt(key)
            .ok_or_else(|| format!("missing attribute `{key}`"))
    }

    fn usize(&mut self, key: &str) -> Result<usize, String> {
        match self.req(key)? {
            Value::Word(w) => int(&w).map_err(|m| format!("attribute `{key}`: {m}")),
            _ => Err(format!("attribute `{key}` must be an integer")),
        }
    }

    fn pair(&mut self, key: &str) -> Result<[usize; 2], String> {
        match self.req(key)? {
            Value::List(l) if l.len() == 2 => {
                let v = |w: &str| int(w).map_err(|m| format!("attribute `{key}`: {m}"));
                Ok([v(&l[0])?, v(&l[1])?])
            }
            _ => Err(format!("attribute `{key}` must be a list of two integers")),
        }
    }

    fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.req(key)? {
            Value::Word(w) if w == "true" => Ok(true),
            Value::Word(w) if w == "false" => Ok(false),
            _ => Err(format!("attribute `{key}` must be `true` or `false`")),
        }
    }

    fn f32(&mut self, key: &str) -> Result<f32, String> {
        match self.req(key)? {
            Value::Word(w) => w
                .parse::<f32>()
                .map_err(|_| format!("attribute `{key}`: `{w}` is not a number")),
            _ => Err(format!("attribute `{key}` must be a number")),
        }
    }

    fn constant(&mut self, key: &str) -> Result<String, String> {
        self.opt_constant(key)?
            .ok_or_else(|| format!("missing attribute `{key}`"))
    }

    fn opt_constant(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Const(n)) => Ok(Some(n)),
            Some(_) => Err(format!("attribute `{key}` must be a constant `@name`")),
        }
    }

    fn opt_affine(&mut self, key: &str) -> Result<Option<ChannelAffine>, String> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Affine(mut a)) => {
                let affine = a.affine().map_err(|m| format!("attribute `{key}`: {m}"))?;
                Ok(Some(affine))
            }
            Some(_) => Err(format!("attribute `{key}` must be `affine(...)`")),
        }
    }

    /// `relu`, `scale` and `shift`, and nothing else.
    fn affine(&mut self) -> Result<ChannelAffine, String> {
        let a = ChannelAffine {
            scale: self.constant("scale")?,
            shift: self.constant("shift")?,
            relu: self.bool("relu")?,
        };
        self.finish()?;
        Ok(a)
    }

    fn pool(&mut self) -> Result<Pool2d, String> {
        Ok(Pool2d {
            kernel: self.pair("kernel")?,
            stride: self.pair("stride")?,
            padding: self.pair("padding")?,
            prologue: self.opt_affine("prologue")?,
        })
    }

    fn finish(&self) -> Result<(), String> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("unknown attribute `{k}`")),
        }
    }
}

/// The op named `mnemonic` (as [`Op::mnemonic`] spells it) from its
/// attributes, all of which must be used.
pub(super) fn build_op(mnemonic: &str, mut a: Attrs) -> Result<Op, String> {
    match op_from(mnemonic, &mut a) {
        Ok(None) => Err(format!("unknown op `{mnemonic}`")),
        Ok(Some(op)) => a
            .finish()
            .map(|()| op)
            .map_err(|m| format!("{mnemonic}: {m}")),
        Err(m) => Err(format!("{mnemonic}: {m}")),
    }
}

/// `None` for an unknown mnemonic.
fn op_from(mnemonic: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    Ok(Some(match mnemonic {
        "input" => Op::Input,
        "conv2d" => Op::Conv2d(Conv2d {
            weight: a.constant("weight")?,
            bias: a.opt_constant("bias")?,
            out_channels: a.usize("out_channels")?,
            kernel: a.pair("kernel")?,
            stride: a.pair("stride")?,
            padding: a.pair("padding")?,
            prologue: a.opt_affine("prologue")?,
            relu: a.bool("relu")?,
        }),
        "batch_norm" => Op::BatchNorm(BatchNorm {
            weight: a.constant("weight")?,
            bias: a.constant("bias")?,
            running_mean: a.constant("running_mean")?,
            running_var: a.constant("running_var")?,
            eps: a.f32("eps")?,
        }),
        "channel_affine" => Op::ChannelAffine(a.affine()?),
        "relu" => Op::Relu,
        "concat" => Op::Concat,
        "avg_pool2d" => Op::AvgPool2d(a.pool()?),
        "max_pool2d" => Op::MaxPool2d(a.pool()?),
        "global_avg_pool" => Op::GlobalAvgPool {
            prologue: a.opt_affine("prologue")?,
        },
        "flatten" => Op::Flatten,
        "linear" => Op::Linear(Linear {
            weight: a.constant("weight")?,
            bias: a.opt_constant("bias")?,
            out_features: a.usize("out_features")?,
        }),
        "sigmoid" => Op::Head(Head::Sigmoid),
        "softmax" => Op::Head(Head::Softmax),
        "sigmoid_op_norm" => Op::Head(Head::SigmoidOpNorm {
            thresholds: a.constant("thresholds")?,
        }),
        _ => return Ok(None),
    }))
}
