//! One straightforward kernel per op, PyTorch semantics, f64 accumulation.
//!
//! A fused prologue is applied by first materialising the affine(+ReLU)
//! image of the *real* input pixels; the consumer then pads that image as
//! usual (zeros for conv, nothing-counted-but-the-divisor for avg pool, -inf
//! for max pool), which is exactly "the prologue never touches padding".

use super::tensor::{checked_numel, Tensor};
use crate::error::{IrError, Result};
use crate::graph::{Graph, Node};
use crate::ops::{BatchNorm, ChannelAffine, Conv2d, Head, Linear, Op, Pool2d};

/// Evaluate `node` over its operand values.
pub(crate) fn eval(g: &Graph, node: &Node, args: &[&Tensor], threads: usize) -> Result<Tensor> {
    let k = Kernel { g, node, threads };
    let one = || -> Result<&Tensor> {
        match args {
            [x] => Ok(*x),
            _ => Err(k.err(format!("expects 1 operand, found {}", args.len()))),
        }
    };
    match &node.op {
        Op::Input => Err(k.err("an input node has no kernel")),
        Op::Conv2d(c) => k.conv2d(one()?, c),
        Op::BatchNorm(b) => k.batch_norm(one()?, b),
        Op::ChannelAffine(a) => k.affine(one()?, a),
        Op::Relu => {
            let x = one()?;
            Ok(Tensor {
                shape: x.shape.clone(),
                data: x.data.iter().map(|&v| relu(v)).collect(),
            })
        }
        Op::Concat => k.concat(args),
        Op::AvgPool2d(p) => k.pool(one()?, p, PoolKind::Avg),
        Op::MaxPool2d(p) => k.pool(one()?, p, PoolKind::Max),
        Op::GlobalAvgPool { prologue } => k.global_avg_pool(one()?, prologue.as_ref()),
        Op::Flatten => {
            let x = one()?;
            let (&n, rest) = x
                .shape
                .split_first()
                .ok_or_else(|| k.err("flatten of a rank-0 tensor"))?;
            Ok(Tensor {
                shape: vec![n, checked_numel(rest)?],
                data: x.data.clone(),
            })
        }
        Op::Linear(l) => k.linear(one()?, l),
        Op::Head(h) => k.head(one()?, h),
    }
}

/// PyTorch's ReLU: negative values become 0, NaN propagates.
fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Avg,
    Max,
}

struct Kernel<'a> {
    g: &'a Graph,
    node: &'a Node,
    threads: usize,
}

impl Kernel<'_> {
    fn err(&self, message: impl Into<String>) -> IrError {
        IrError::node(&self.node.name, message)
    }

    /// The data of constant `name`, checked to be bound and of shape `want`.
    fn constant(&self, name: &str, want: &[usize]) -> Result<&[f32]> {
        let data = self.g.constant_data(name)?;
        let declared = self
            .g
            .constants
            .get(name)
            .map(|c| c.shape.as_slice())
            .unwrap_or_default();
        if declared != want || data.len() != checked_numel(want)? {
            return Err(IrError::constant(
                name,
                format!(
                    "node `{}` needs shape {want:?}, the constant has shape {declared:?} \
                     and {} values",
                    self.node.name,
                    data.len()
                ),
            ));
        }
        Ok(data.as_slice())
    }

    fn nchw(&self, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = x
            .nchw()
            .ok_or_else(|| self.err(format!("expects a rank-4 operand, found {:?}", x.shape)))?;
        if x.data.len() != checked_numel(&x.shape)? {
            return Err(self.err("operand data does not match its shape"));
        }
        Ok(dims)
    }

    /// `y = x * scale[c] + shift[c]`, then ReLU if asked, per channel.
    fn affine(&self, x: &Tensor, a: &ChannelAffine) -> Result<Tensor> {
        let (_, c, h, w) = self.nchw(x)?;
        let scale = self.constant(&a.scale, &[c])?;
        let shift = self.constant(&a.shift, &[c])?;
        let coeff: Vec<(f64, f64)> = scale
            .iter()
            .zip(shift)
            .map(|(&s, &t)| (f64::from(s), f64::from(t)))
            .collect();
        Ok(self.per_channel(x, c, h * w, &coeff, a.relu))
    }

    /// BatchNorm, inference form, evaluated in f64 exactly as written:
    /// `(x - mean) / sqrt(var + eps) * weight + bias`.
    fn batch_norm(&self, x: &Tensor, b: &BatchNorm) -> Result<Tensor> {
        let (_, c, h, w) = self.nchw(x)?;
        let weight = self.constant(&b.weight, &[c])?;
        let bias = self.constant(&b.bias, &[c])?;
        let mean = self.constant(&b.running_mean, &[c])?;
        let var = self.constant(&b.running_var, &[c])?;
        let eps = f64::from(b.eps);
        let coeff: Vec<(f64, f64)> = (0..c)
            .map(|i| {
                let s = f64::from(weight[i]) / (f64::from(var[i]) + eps).sqrt();
                (s, f64::from(bias[i]) - f64::from(mean[i]) * s)
            })
            .collect();
        Ok(self.per_channel(x, c, h * w, &coeff, false))
    }

    fn per_channel(
        &self,
        x: &Tensor,
        c: usize,
        plane: usize,
        coeff: &[(f64, f64)],
        with_relu: bool,
    ) -> Tensor {
        let mut data = Vec::with_capacity(x.data.len());
        for (p, chunk) in x.data.chunks(plane.max(1)).enumerate() {
            let (s, t) = coeff[p % c];
            data.extend(chunk.iter().map(|&v| {
                let y = (f64::from(v) * s + t) as f32;
                if with_relu {
                    relu(y)
                } else {
                    y
                }
            }));
        }
        Tensor {
            shape: x.shape.clone(),
            data,
        }
    }

    fn with_prologue<'t>(
        &self,
        x: &'t Tensor,
        prologue: Option<&ChannelAffine>,
    ) -> Result<std::borrow::Cow<'t, Tensor>> {
        Ok(match prologue {
            Some(a) => std::borrow::Cow::Owned(self.affine(x, a)?),
            None => std::borrow::Cow::Borrowed(x),
        })
    }

    fn conv2d(&self, x: &Tensor, conv: &Conv2d) -> Result<Tensor> {
        let x = self.with_prologue(x, conv.prologue.as_ref())?;
        let (n, c, h, w) = self.nchw(&x)?;
        let o = conv.out_channels;
        let [kh, kw] = conv.kernel;
        let [sh, sw] = conv.stride;
        let [ph, pw] = conv.padding;
        let weight = self.constant(&conv.weight, &[o, c, kh, kw])?;
        let bias = match &conv.bias {
            Some(b) => Some(self.constant(b, &[o])?),
            None => None,
        };
        let ho = crate::ops::window_out(h, kh, sh, ph).map_err(|m| self.err(m))?;
        let wo = crate::ops::window_out(w, kw, sw, pw).map_err(|m| self.err(m))?;
        let geom = ConvGeom {
            c,
            h,
            w,
            kw,
            sh,
            sw,
            ph,
            pw,
            wo,
            plane: ho * wo,
            rows: (0..kh).map(|k| valid_range(ho, h, k, sh, ph)).collect(),
            cols: (0..kw).map(|k| valid_range(wo, w, k, sw, pw)).collect(),
        };
        let plane = geom.plane;
        let mut out = vec![0.0f32; checked_numel(&[n, o, plane])?];
        par_planes(&mut out, plane, self.threads, |first, chunk| {
            let mut acc = vec![0.0f64; 4 * plane];
            let count = chunk.len() / plane;
            let mut i = 0;
            while i < count {
                let (b, oc) = ((first + i) / o, (first + i) % o);
                let xi = &x.data[b * c * h * w..][..c * h * w];
                // Four output channels of one image share each input load.
                let block = if sw == 1 && i + 4 <= count && oc + 4 <= o {
                    4
                } else {
                    1
                };
                let acc = &mut acc[..block * plane];
                for (j, a) in acc.chunks_mut(plane).enumerate() {
                    a.fill(bias.map_or(0.0, |bs| f64::from(bs[oc + j])));
                }
                let wsize = c * kh * kw;
                let wblock = &weight[oc * wsize..][..block * wsize];
                if block == 4 {
                    geom.accumulate4(xi, wblock, acc);
                } else {
                    geom.accumulate(xi, wblock, acc);
                }
                for (y, &a) in chunk[i * plane..][..block * plane].iter_mut().zip(&*acc) {
                    *y = if conv.relu { relu(a as f32) } else { a as f32 };
                }
                i += block;
            }
        });
        Ok(Tensor {
            shape: vec![n, o, ho, wo],
            data: out,
        })
    }

    fn pool(&self, x: &Tensor, p: &Pool2d, kind: PoolKind) -> Result<Tensor> {
        let x = self.with_prologue(x, p.prologue.as_ref())?;
        let (n, c, h, w) = self.nchw(&x)?;
        let [kh, kw] = p.kernel;
        let [sh, sw] = p.stride;
        let [ph, pw] = p.padding;
        let ho = crate::ops::window_out(h, kh, sh, ph).map_err(|m| self.err(m))?;
        let wo = crate::ops::window_out(w, kw, sw, pw).map_err(|m| self.err(m))?;
        let mut data = Vec::with_capacity(checked_numel(&[n, c, ho, wo])?);
        for xp in x.data.chunks(h * w) {
            for oh in 0..ho {
                for ow in 0..wo {
                    // Window in padded coordinates; padded positions add 0
                    // to an average (but count in its divisor, as PyTorch's
                    // count_include_pad) and -inf to a max (never wins).
                    let (y0, x0) = (oh * sh, ow * sw);
                    let (y1, x1) = ((y0 + kh).min(h + 2 * ph), (x0 + kw).min(w + 2 * pw));
                    let mut sum = 0.0f64;
                    let mut max = f32::NEG_INFINITY;
                    for py in y0..y1 {
                        for px in x0..x1 {
                            if py < ph || py - ph >= h || px < pw || px - pw >= w {
                                continue;
                            }
                            let v = xp[(py - ph) * w + (px - pw)];
                            sum += f64::from(v);
                            if v > max || v.is_nan() {
                                max = v;
                            }
                        }
                    }
                    data.push(match kind {
                        PoolKind::Avg => (sum / ((y1 - y0) * (x1 - x0)) as f64) as f32,
                        PoolKind::Max => max,
                    });
                }
            }
        }
        Ok(Tensor {
            shape: vec![n, c, ho, wo],
            data,
        })
    }

    fn global_avg_pool(&self, x: &Tensor, prologue: Option<&ChannelAffine>) -> Result<Tensor> {
        let x = self.with_prologue(x, prologue)?;
        let (n, c, h, w) = self.nchw(&x)?;
        if h * w == 0 {
            return Err(self.err("global_avg_pool over an empty spatial extent"));
        }
        let data = x
            .data
            .chunks(h * w)
            .map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / (h * w) as f64) as f32)
            .collect();
        Ok(Tensor {
            shape: vec![n, c, 1, 1],
            data,
        })
    }

    fn concat(&self, args: &[&Tensor]) -> Result<Tensor> {
        let first = args.first().ok_or_else(|| self.err("concat of nothing"))?;
        let (n, _, h, w) = self.nchw(first)?;
        let mut channels = 0;
        for a in args {
            let (na, ca, ha, wa) = self.nchw(a)?;
            if (na, ha, wa) != (n, h, w) {
                return Err(self.err(format!(
                    "concat operands {:?} and {:?} differ outside the channel axis",
                    first.shape, a.shape
                )));
            }
            channels += ca;
        }
        let mut data = Vec::with_capacity(checked_numel(&[n, channels, h, w])?);
        for b in 0..n {
            for a in args {
                let per_image = a.data.len() / n.max(1);
                data.extend_from_slice(&a.data[b * per_image..][..per_image]);
            }
        }
        Ok(Tensor {
            shape: vec![n, channels, h, w],
            data,
        })
    }

    fn head(&self, x: &Tensor, h: &Head) -> Result<Tensor> {
        let &[n, c] = x.shape.as_slice() else {
            return Err(self.err(format!("expects a rank-2 operand, found {:?}", x.shape)));
        };
        if x.data.len() != checked_numel(&x.shape)? {
            return Err(self.err("operand data does not match its shape"));
        }
        let thresholds = match h {
            Head::SigmoidOpNorm { thresholds } => Some(self.constant(thresholds, &[c])?),
            _ => None,
        };
        let mut data = Vec::with_capacity(x.data.len());
        let mut row = vec![0.0f64; c];
        for b in 0..n {
            for (r, &v) in row.iter_mut().zip(&x.data[b * c..][..c]) {
                *r = f64::from(v);
            }
            h.apply_row(&mut row, thresholds);
            data.extend(row.iter().map(|&v| v as f32));
        }
        Ok(Tensor {
            shape: x.shape.clone(),
            data,
        })
    }

    fn linear(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        let &[n, i] = x.shape.as_slice() else {
            return Err(self.err(format!("expects a rank-2 operand, found {:?}", x.shape)));
        };
        if x.data.len() != checked_numel(&x.shape)? {
            return Err(self.err("operand data does not match its shape"));
        }
        let o = l.out_features;
        let weight = self.constant(&l.weight, &[o, i])?;
        let bias = match &l.bias {
            Some(b) => Some(self.constant(b, &[o])?),
            None => None,
        };
        let mut out = vec![0.0f32; checked_numel(&[n, o])?];
        par_planes(&mut out, 1, self.threads, |first, chunk| {
            for (k, y) in chunk.iter_mut().enumerate() {
                let (b, oc) = ((first + k) / o, (first + k) % o);
                let xr = &x.data[b * i..][..i];
                let wr = &weight[oc * i..][..i];
                let mut acc = bias.map_or(0.0, |bs| f64::from(bs[oc]));
                for (&a, &wv) in xr.iter().zip(wr) {
                    acc += f64::from(a) * f64::from(wv);
                }
                *y = acc as f32;
            }
        });
        Ok(Tensor {
            shape: vec![n, o],
            data: out,
        })
    }
}

/// The geometry of one convolution, for the accumulation loops.
struct ConvGeom {
    c: usize,
    h: usize,
    w: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    wo: usize,
    plane: usize,
    /// For each kernel row (column), the output rows (columns) whose tap
    /// lands on a real input pixel; the others read padding, i.e. zero.
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
}

impl ConvGeom {
    /// `acc[oh*wo + ow] += sum_{ic,ky,kx} w[ic,ky,kx] * x[ic, ih, iw]` over
    /// the taps that read real pixels, for one output channel: `xi` is one
    /// image `[C, H, W]`, `wt` the channel's weights `[C, KH, KW]`.
    fn accumulate(&self, xi: &[f32], wt: &[f32], acc: &mut [f64]) {
        let (h, w, kw, sw, wo) = (self.h, self.w, self.kw, self.sw, self.wo);
        for ic in 0..self.c {
            let xp = &xi[ic * h * w..][..h * w];
            for (ky, &(oh0, oh1)) in self.rows.iter().enumerate() {
                for (kx, &(ow0, ow1)) in self.cols.iter().enumerate() {
                    let len = ow1 - ow0;
                    if len == 0 {
                        continue;
                    }
                    let wv = f64::from(wt[(ic * self.rows.len() + ky) * kw + kx]);
                    let ix0 = ow0 * sw + kx - self.pw;
                    for oh in oh0..oh1 {
                        let xrow = &xp[(oh * self.sh + ky - self.ph) * w..][..w];
                        let xs = xrow[ix0..].iter().step_by(sw);
                        for (a, &v) in acc[oh * wo + ow0..][..len].iter_mut().zip(xs) {
                            *a += wv * f64::from(v);
                        }
                    }
                }
            }
        }
    }

    /// [`ConvGeom::accumulate`] for four consecutive output channels at
    /// once (`wt` is `[4, C, KH, KW]`, `acc` four planes), stride 1 along
    /// the width only.
    fn accumulate4(&self, xi: &[f32], wt: &[f32], acc: &mut [f64]) {
        let (h, w, kw, wo, plane) = (self.h, self.w, self.kw, self.wo, self.plane);
        let wsize = wt.len() / 4;
        let (a0, rest) = acc.split_at_mut(plane);
        let (a1, rest) = rest.split_at_mut(plane);
        let (a2, a3) = rest.split_at_mut(plane);
        for ic in 0..self.c {
            let xp = &xi[ic * h * w..][..h * w];
            for (ky, &(oh0, oh1)) in self.rows.iter().enumerate() {
                for (kx, &(ow0, ow1)) in self.cols.iter().enumerate() {
                    let len = ow1 - ow0;
                    if len == 0 {
                        continue;
                    }
                    let k = (ic * self.rows.len() + ky) * kw + kx;
                    let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|j| f64::from(wt[j * wsize + k]));
                    let ix0 = ow0 + kx - self.pw;
                    for oh in oh0..oh1 {
                        let xs = &xp[(oh * self.sh + ky - self.ph) * w + ix0..][..len];
                        let r = oh * wo + ow0..oh * wo + ow0 + len;
                        let rows = a0[r.clone()]
                            .iter_mut()
                            .zip(&mut a1[r.clone()])
                            .zip(&mut a2[r.clone()])
                            .zip(&mut a3[r]);
                        for ((((r0, r1), r2), r3), &v) in rows.zip(xs) {
                            let v = f64::from(v);
                            *r0 += w0 * v;
                            *r1 += w1 * v;
                            *r2 += w2 * v;
                            *r3 += w3 * v;
                        }
                    }
                }
            }
        }
    }
}

/// The output positions `lo..hi` (of `out_len`) whose kernel tap `k` reads
/// a real input position: `0 <= o*stride + k - pad < in_len`. The set is
/// contiguous because the input position grows with `o`.
fn valid_range(
    out_len: usize,
    in_len: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (usize, usize) {
    let real = |o: usize| {
        let i = o * stride + k;
        i >= pad && i - pad < in_len
    };
    let lo = (0..out_len).find(|&o| real(o)).unwrap_or(out_len);
    let hi = (lo..out_len).find(|&o| !real(o)).unwrap_or(out_len);
    (lo, hi)
}

/// Split `out` into runs of whole planes of `plane` elements and call
/// `f(first_plane_index, run)` on each, on up to `threads` scoped threads.
fn par_planes<F>(out: &mut [f32], plane: usize, threads: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let planes = out.len().checked_div(plane).unwrap_or(0);
    let threads = threads.clamp(1, planes.max(1));
    let per = planes.div_ceil(threads);
    if threads == 1 || per * plane == 0 {
        f(0, out);
        return;
    }
    std::thread::scope(|s| {
        for (t, run) in out.chunks_mut(per * plane).enumerate() {
            let f = &f;
            s.spawn(move || f(t * per, run));
        }
    });
}
