//! Shared by the BN passes: a BatchNorm's per-channel affine form, and
//! reading constants that are either all bound or all unbound.

use super::PassError;
use ir::ops::{BatchNorm, ChannelAffine};
use ir::{Constant, Graph};
use std::sync::Arc;

use super::rewrite::Patch;

/// The data of `names`: `Some` when all are bound, `None` when none is
/// (a shape-only graph), an error naming `node` when only some are.
pub fn bound_data(
    g: &Graph,
    node: &str,
    names: &[&str],
) -> Result<Option<Vec<Arc<Vec<f32>>>>, PassError> {
    let mut data = Vec::with_capacity(names.len());
    for &n in names {
        let c = g.constants.get(n).ok_or_else(|| PassError::Constants {
            node: node.to_owned(),
            message: format!("constant `{n}` is not declared"),
        })?;
        data.push(c.data.clone());
    }
    match data.iter().filter(|d| d.is_some()).count() {
        0 => Ok(None),
        k if k == data.len() => Ok(Some(data.into_iter().flatten().collect())),
        _ => {
            let unbound: Vec<&str> = names
                .iter()
                .zip(&data)
                .filter(|(_, d)| d.is_none())
                .map(|(n, _)| *n)
                .collect();
            Err(PassError::Constants {
                node: node.to_owned(),
                message: format!(
                    "some constants are bound and some are not (unbound: {})",
                    unbound.join(", ")
                ),
            })
        }
    }
}

/// A BatchNorm as `y = x * scale + shift`, per channel, in f64.
#[derive(Debug, Clone)]
pub struct ScaleShift {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

/// `scale = weight / sqrt(running_var + eps)` and
/// `shift = bias - running_mean * scale`; `None` for an unbound BN.
/// Errors when `running_var + eps` is not positive.
pub fn bn_scale_shift(
    g: &Graph,
    node: &str,
    bn: &BatchNorm,
) -> Result<Option<ScaleShift>, PassError> {
    let names = [
        bn.weight.as_str(),
        bn.bias.as_str(),
        bn.running_mean.as_str(),
        bn.running_var.as_str(),
    ];
    let Some(d) = bound_data(g, node, &names)? else {
        return Ok(None);
    };
    let (gamma, beta, mean, var) = (&d[0], &d[1], &d[2], &d[3]);
    let mut scale = Vec::with_capacity(gamma.len());
    let mut shift = Vec::with_capacity(gamma.len());
    for c in 0..gamma.len() {
        let denom = f64::from(var[c]) + f64::from(bn.eps);
        if denom.is_nan() || denom <= 0.0 {
            return Err(PassError::Constants {
                node: node.to_owned(),
                message: format!(
                    "running_var[{c}] + eps = {denom} is not positive (`{}`)",
                    bn.running_var
                ),
            });
        }
        let s = f64::from(gamma[c]) / denom.sqrt();
        scale.push(s);
        shift.push(f64::from(beta[c]) - f64::from(mean[c]) * s);
    }
    Ok(Some(ScaleShift { scale, shift }))
}

/// Declare the `scale` and `shift` constants of BN node `name` in `patch`
/// (`<name>.scale`, `<name>.shift`; unbound when the BN is) and return the
/// affine map with the given ReLU.
pub fn bn_to_affine(
    g: &Graph,
    patch: &mut Patch,
    name: &str,
    bn: &BatchNorm,
    channels: usize,
    relu: bool,
) -> Result<ChannelAffine, PassError> {
    let (scale, shift) = match bn_scale_shift(g, name, bn)? {
        Some(ScaleShift { scale, shift }) => (
            Constant::with_data([channels], scale.into_iter().map(|v| v as f32).collect()),
            Constant::with_data([channels], shift.into_iter().map(|v| v as f32).collect()),
        ),
        None => (Constant::unbound([channels]), Constant::unbound([channels])),
    };
    Ok(ChannelAffine {
        scale: patch.add_constant(g, &format!("{name}.scale"), scale),
        shift: patch.add_constant(g, &format!("{name}.shift"), shift),
        relu,
    })
}
