//! Curvature of a network's loss at fixed weights, as PyHessian and Li et
//! al.'s loss-landscape measure it: Hessian-vector products, the top
//! Hessian eigenvalues (Lanczos), the Hessian trace (Hutchinson), SAM's
//! own sharpness `max_{|e| <= rho} L(w + e) - L(w)`, and filter-normalised
//! directions.
//!
//! # The loss
//!
//! [`LossSurface`] is the mean cross-entropy over a fixed set of batches,
//! BatchNorm in evaluation mode (its running statistics are constants, as
//! in PyHessian's `model.eval()`), weight decay left out. Its variables are
//! the model's trainable parameters in [`ParamStore::trainable`](samlab_models::ParamStore::trainable) order,
//! flattened into one `f64` vector.
//!
//! # Hessian-vector products
//!
//! candle has no double backward, so `H v` is the central difference of
//! two exact gradients: `(g(w + h u) - g(w - h u)) / (2 h) * |v|` with
//! `u = v / |v|`. Its truncation error is O(h^2) (the third derivative), and
//! where a step of `h` moves a ReLU input across zero it sees the kink that
//! double backward ignores; its rounding error is O(eps |g| / h). In f64
//! with `h = 1e-5` it agrees with JAX's exact `jvp(grad)` to about 1e-7
//! relative on ResNet-8 (optim/tests/curvature.rs, which also states the
//! f32 error at its default step).
//!
//! The algorithms ([`lanczos`], [`hutchinson`]) take the product as a
//! closure, so they are tested on matrices with known spectra.

use candle_core::{DType, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use samlab_models::layers::{ReluMasks, record_relu_masks, with_relu_masks};
use samlab_models::{Model, cross_entropy};
use serde::{Deserialize, Serialize};

use crate::error::{Result, bad};
use crate::sgd::collect_grads;

/// A vector in parameter space.
pub type Flat = Vec<f64>;

/// Loss, accuracy and (if asked) gradient at one point.
#[derive(Clone, Debug)]
pub struct Reading {
    pub loss: f64,
    pub accuracy: f64,
    pub grad: Option<Flat>,
}

/// The training loss of a model on fixed batches, as a function of its
/// trainable parameters (module docs). Moving the point changes the
/// model's parameters; [`restore`](Self::restore) puts `w` back, and so
/// does dropping the surface.
pub struct LossSurface<'a> {
    model: &'a Model,
    batches: Vec<(Tensor, Tensor)>,
    /// Each batch's activation pattern at `w`, recorded by the first
    /// Hessian-vector product (a surface that only reads losses never
    /// pays for it).
    masks: std::cell::OnceCell<Vec<ReluMasks>>,
    images: usize,
    vars: Vec<Var>,
    base: Vec<Tensor>,
    sizes: Vec<usize>,
    /// The finite-difference step of [`hvp`](Self::hvp).
    pub h: f64,
}

impl<'a> LossSurface<'a> {
    /// The surface of `model` around its current weights over `batches`
    /// (images on the model's device, u32 labels).
    pub fn new(model: &'a Model, batches: Vec<(Tensor, Tensor)>, h: f64) -> Result<Self> {
        if !(h > 0.0 && h.is_finite()) {
            return Err(bad(format!(
                "the finite-difference step must be positive, not {h}"
            )));
        }
        let mut images = 0;
        for (x, y) in &batches {
            let n = y.dims1()?;
            if x.dim(0)? != n {
                return Err(bad("a batch's images and labels differ in number"));
            }
            images += n;
        }
        if images == 0 {
            return Err(bad("the loss needs at least one image"));
        }
        let mut vars = Vec::new();
        let mut base = Vec::new();
        let mut sizes = Vec::new();
        for (_, v) in model.params.trainable() {
            vars.push(v.clone());
            base.push(v.as_tensor().copy()?);
            sizes.push(v.elem_count());
        }
        Ok(LossSurface {
            model,
            batches,
            masks: std::cell::OnceCell::new(),
            images,
            vars,
            base,
            sizes,
            h,
        })
    }

    /// Number of variables.
    pub fn dim(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Number of images the loss averages over.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The elements of each parameter tensor, in order.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The base weights `w`, flattened.
    pub fn weights(&self) -> Result<Flat> {
        let mut out = Vec::with_capacity(self.dim());
        for t in &self.base {
            out.extend(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    /// The dimensions of each parameter tensor, in order.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.base.iter().map(|t| t.dims().to_vec()).collect()
    }

    /// Moves the model to `w + t d` (`d = None`: to `w`).
    pub fn set(&self, d: Option<&[f64]>, t: f64) -> Result<()> {
        let Some(d) = d else {
            return self.restore();
        };
        if d.len() != self.dim() {
            return Err(bad(format!(
                "a direction of {} values for {} parameters",
                d.len(),
                self.dim()
            )));
        }
        let mut at = 0;
        for ((var, base), &n) in self.vars.iter().zip(&self.base).zip(&self.sizes) {
            let step: Vec<f64> = d[at..at + n].iter().map(|v| v * t).collect();
            at += n;
            let step =
                Tensor::from_vec(step, base.dims(), base.device())?.to_dtype(base.dtype())?;
            var.set(&(base + step)?)?;
        }
        Ok(())
    }

    /// Puts the base weights back.
    pub fn restore(&self) -> Result<()> {
        for (var, base) in self.vars.iter().zip(&self.base) {
            var.set(base)?;
        }
        Ok(())
    }

    /// Loss and accuracy (and the gradient, with `grad`) at the model's
    /// current weights.
    pub fn read(&self, grad: bool) -> Result<Reading> {
        self.read_with(grad, None)
    }

    /// The activation patterns at `w` (recorded once; leaves the model at `w`).
    fn masks(&self) -> Result<&[ReluMasks]> {
        if let Some(m) = self.masks.get() {
            return Ok(m);
        }
        self.restore()?;
        let mut masks = Vec::with_capacity(self.batches.len());
        for (x, _) in &self.batches {
            masks.push(record_relu_masks(|| self.model.forward(x, false))?.1);
        }
        Ok(self.masks.get_or_init(|| masks))
    }

    /// A reading with live ReLUs, or with each batch's pattern frozen to `frozen`'s.
    fn read_with(&self, grad: bool, frozen: Option<&[ReluMasks]>) -> Result<Reading> {
        let mut loss_sum = 0f64;
        let mut correct = 0f64;
        let mut g: Option<Vec<Tensor>> = None;
        for (i, (x, y)) in self.batches.iter().enumerate() {
            let n = y.dims1()?;
            let w = n as f64 / self.images as f64;
            let logits = match frozen {
                None => self.model.forward(x, false)?,
                Some(m) => with_relu_masks(&m[i], || self.model.forward(x, false))?,
            };
            let loss = cross_entropy(&logits, y)?;
            loss_sum += w * loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            correct += logits
                .argmax(1)?
                .eq(y)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            if grad {
                let store = loss.backward()?;
                let grads = collect_grads(&self.model.params, &store)?;
                let parts: Vec<Tensor> = grads
                    .values()
                    .map(|t| t.to_dtype(DType::F64)?.flatten_all()? * w)
                    .collect::<candle_core::Result<_>>()?;
                g = Some(match g {
                    None => parts,
                    Some(acc) => acc
                        .iter()
                        .zip(&parts)
                        .map(|(a, b)| a + b)
                        .collect::<candle_core::Result<_>>()?,
                });
            }
        }
        let grad = match g {
            Some(parts) => {
                let mut out = Vec::with_capacity(self.dim());
                for p in parts {
                    out.extend(p.to_vec1::<f64>()?);
                }
                Some(out)
            }
            None => None,
        };
        Ok(Reading {
            loss: loss_sum,
            accuracy: correct / self.images as f64,
            grad,
        })
    }

    /// Loss, accuracy and gradient at `w + t d`; the model is left there.
    pub fn read_at(&self, d: Option<&[f64]>, t: f64, grad: bool) -> Result<Reading> {
        self.set(d, t)?;
        self.read(grad)
    }

    /// The gradient at `w + t d` (`d = None`: at `w`) with each batch's
    /// activation pattern frozen at `w`'s: the function [`hvp`](Self::hvp)
    /// differences, by the same ops. Leaves the model at `w`.
    pub fn frozen_grad_at(&self, d: Option<&[f64]>, t: f64) -> Result<Flat> {
        let masks = self.masks()?;
        self.set(d, t)?;
        let g = self.read_with(true, Some(masks))?.grad.expect("asked");
        self.restore()?;
        Ok(g)
    }

    /// `H v` at `w` by central differences (module docs); leaves the model at `w`.
    pub fn hvp(&self, v: &[f64]) -> Result<Flat> {
        let norm = dot(v, v).sqrt();
        if norm == 0.0 {
            return Ok(vec![0.0; v.len()]);
        }
        let u: Flat = v.iter().map(|x| x / norm).collect();
        let plus = self.frozen_grad_at(Some(&u), self.h)?;
        let minus = self.frozen_grad_at(Some(&u), -self.h)?;
        let s = norm / (2.0 * self.h);
        Ok(plus.iter().zip(&minus).map(|(p, m)| (p - m) * s).collect())
    }
}

impl Drop for LossSurface<'_> {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// `a . b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `|a|`.
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Lanczos settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanczosConfig {
    /// Eigenpairs wanted (the algebraically largest).
    pub k: usize,
    /// Lanczos steps (Hessian-vector products); at least `k`.
    pub steps: usize,
    /// Seed of the random start vector.
    pub seed: u64,
}

/// One Ritz pair: an estimate of an eigenvalue and its eigenvector, with the
/// residual `|H v - value v|` (unit `v`), which bounds the distance from
/// `value` to the nearest true eigenvalue.
#[derive(Clone, Debug)]
pub struct Eigenpair {
    pub value: f64,
    pub vector: Flat,
    pub residual: f64,
}

/// The `k` algebraically largest eigenpairs of the symmetric operator
/// `hvp` of dimension `dim`, by `steps` Lanczos steps with full
/// re-orthogonalisation (the basis is kept: `steps x dim` values), and one
/// more product per pair for its residual.
pub fn lanczos(
    mut hvp: impl FnMut(&[f64]) -> Result<Flat>,
    dim: usize,
    cfg: &LanczosConfig,
) -> Result<Vec<Eigenpair>> {
    if cfg.k == 0 || cfg.steps < cfg.k || dim == 0 {
        return Err(bad(format!(
            "Lanczos needs 1 <= k <= steps and a non-empty space (k {}, steps {}, dimension {dim})",
            cfg.k, cfg.steps
        )));
    }
    let steps = cfg.steps.min(dim);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut q: Flat = (0..dim).map(|_| gaussian(&mut rng)).collect();
    let nq = norm(&q);
    scale(&mut q, 1.0 / nq);
    let mut basis: Vec<Flat> = Vec::with_capacity(steps);
    let mut alpha = Vec::with_capacity(steps);
    let mut beta: Vec<f64> = Vec::with_capacity(steps);
    for j in 0..steps {
        let mut r = hvp(&q)?;
        let a = dot(&q, &r);
        alpha.push(a);
        basis.push(q);
        // full re-orthogonalisation, twice (classical Gram-Schmidt is
        // enough when repeated)
        for _ in 0..2 {
            for b in &basis {
                let c = dot(b, &r);
                axpy(&mut r, -c, b);
            }
        }
        let nb = norm(&r);
        if j + 1 == steps || nb <= 1e-12 * a.abs().max(1e-300) {
            break;
        }
        beta.push(nb);
        scale(&mut r, 1.0 / nb);
        q = r;
    }
    let m = alpha.len();
    let t = nalgebra::DMatrix::from_fn(m, m, |i, j| {
        if i == j {
            alpha[i]
        } else if i + 1 == j {
            beta[i]
        } else if j + 1 == i {
            beta[j]
        } else {
            0.0
        }
    });
    let eig = nalgebra::SymmetricEigen::new(t);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut out = Vec::new();
    for &i in order.iter().take(cfg.k) {
        let mut v = vec![0.0; dim];
        for (j, b) in basis.iter().enumerate() {
            axpy(&mut v, eig.eigenvectors[(j, i)], b);
        }
        let n = norm(&v);
        scale(&mut v, 1.0 / n);
        let value = eig.eigenvalues[i];
        let hv = hvp(&v)?;
        let residual = hv
            .iter()
            .zip(&v)
            .map(|(h, x)| (h - value * x).powi(2))
            .sum::<f64>()
            .sqrt();
        out.push(Eigenpair {
            value,
            vector: v,
            residual,
        });
    }
    Ok(out)
}

/// A Hutchinson estimate of the trace: the mean of `v^T H v` over random
/// Rademacher vectors `v`, with its standard error.
#[derive(Clone, Debug)]
pub struct TraceEstimate {
    pub mean: f64,
    pub std_err: f64,
    /// Each vector's `v^T H v`, in order.
    pub samples: Vec<f64>,
}

/// Hutchinson's trace estimate of `hvp` from `samples` Rademacher vectors
/// drawn from `seed` (PyHessian's `trace()`, with a fixed count).
pub fn hutchinson(
    mut hvp: impl FnMut(&[f64]) -> Result<Flat>,
    dim: usize,
    samples: usize,
    seed: u64,
) -> Result<TraceEstimate> {
    if samples == 0 {
        return Err(bad("Hutchinson needs at least one sample"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let v = rademacher(&mut rng, dim);
        out.push(dot(&v, &hvp(&v)?));
    }
    let n = out.len() as f64;
    let mean = out.iter().sum::<f64>() / n;
    let std_err = if out.len() > 1 {
        (out.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
    } else {
        f64::NAN
    };
    Ok(TraceEstimate {
        mean,
        std_err,
        samples: out,
    })
}

/// SAM's sharpness at `w`: `L(w + e) - L(w)` for the first-order
/// maximiser `e = rho g / |g|` (what SAM's step uses), and the largest
/// value along `ascent` further steps `e <- rho g(w + e) / |g(w + e)|`
/// (normalised gradient ascent on the sphere of radius rho).
#[derive(Clone, Debug)]
pub struct SamSharpness {
    pub loss: f64,
    pub first_order: f64,
    /// The largest `L(w + e) - L(w)` over the first-order `e` and the ascent iterates.
    pub ascent: f64,
    /// `L(w + e) - L(w)` after each ascent step.
    pub path: Vec<f64>,
}

/// [`SamSharpness`] of `surface` at radius `rho`; leaves the model at `w`.
pub fn sam_sharpness(surface: &LossSurface, rho: f64, ascent: usize) -> Result<SamSharpness> {
    if !(rho > 0.0 && rho.is_finite()) {
        return Err(bad(format!("rho must be positive, not {rho}")));
    }
    let at_w = surface.read_at(None, 0.0, true)?;
    let mut g = at_w.grad.expect("asked");
    let mut path = Vec::new();
    let mut first = f64::NAN;
    for i in 0..=ascent {
        let n = norm(&g);
        if n == 0.0 {
            break;
        }
        let e: Flat = g.iter().map(|x| x * rho / n).collect();
        let r = surface.read_at(Some(&e), 1.0, i < ascent)?;
        let rise = r.loss - at_w.loss;
        if i == 0 {
            first = rise;
        } else {
            path.push(rise);
        }
        if let Some(next) = r.grad {
            g = next;
        }
    }
    surface.restore()?;
    let ascent = path.iter().copied().fold(first, f64::max);
    Ok(SamSharpness {
        loss: at_w.loss,
        first_order: first,
        ascent,
        path,
    })
}

/// A random direction with Li et al.'s filter normalisation (Visualizing
/// the Loss Landscape of Neural Nets, 2018): Gaussian, then every filter
/// (each output row of a tensor of rank >= 2: a conv's output channel, a
/// linear layer's output unit) rescaled to the norm of the same filter of
/// `w`; tensors of rank 1 (BatchNorm's scale and shift, biases) get zero,
/// their `ignore='biasbn'` default. `shapes` are the parameter tensors'
/// dimensions in the order of `w`.
pub fn filter_normalized_random(w: &[f64], shapes: &[Vec<usize>], seed: u64) -> Result<Flat> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d: Flat = (0..w.len()).map(|_| gaussian(&mut rng)).collect();
    filter_normalize(&d, w, shapes)
}

/// `d` with each filter rescaled to the norm of `w`'s (see
/// [`filter_normalized_random`]); rank-1 tensors zeroed.
pub fn filter_normalize(d: &[f64], w: &[f64], shapes: &[Vec<usize>]) -> Result<Flat> {
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    if d.len() != w.len() || w.len() != total {
        return Err(bad(format!(
            "a direction of {} values, weights of {}, shapes of {total}",
            d.len(),
            w.len()
        )));
    }
    let mut out = vec![0.0; d.len()];
    let mut at = 0;
    for s in shapes {
        let n: usize = s.iter().product();
        if s.len() >= 2 && s[0] > 0 {
            let per = n / s[0];
            for f in 0..s[0] {
                let r = at + f * per..at + (f + 1) * per;
                let dn = norm(&d[r.clone()]);
                let wn = norm(&w[r.clone()]);
                let c = if dn > 0.0 { wn / dn } else { 0.0 };
                for i in r {
                    out[i] = d[i] * c;
                }
            }
        }
        at += n;
    }
    Ok(out)
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller from two uniforms in (0, 1]
    let u = |rng: &mut ChaCha8Rng| ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let (a, b) = (u(rng), u(rng));
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

fn rademacher(rng: &mut ChaCha8Rng, dim: usize) -> Flat {
    let mut out = Vec::with_capacity(dim);
    while out.len() < dim {
        let bits = rng.next_u64();
        for i in 0..64.min(dim - out.len()) {
            out.push(if bits >> i & 1 == 1 { 1.0 } else { -1.0 });
        }
    }
    out
}

fn scale(a: &mut [f64], c: f64) {
    for x in a {
        *x *= c;
    }
}

fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symmetric matrix with eigenvalues `vals` in a random orthonormal basis.
    fn matrix(vals: &[f64], seed: u64) -> Vec<Flat> {
        let n = vals.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut q: Vec<Flat> = Vec::new();
        while q.len() < n {
            let mut v: Flat = (0..n).map(|_| gaussian(&mut rng)).collect();
            for b in &q {
                let c = dot(b, &v);
                axpy(&mut v, -c, b);
            }
            let nv = norm(&v);
            scale(&mut v, 1.0 / nv);
            q.push(v);
        }
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| q[k][i] * vals[k] * q[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    fn product(a: &[Flat]) -> impl FnMut(&[f64]) -> Result<Flat> + '_ {
        move |v| Ok(a.iter().map(|row| dot(row, v)).collect())
    }

    #[test]
    fn lanczos_finds_the_largest_eigenvalues_of_a_known_matrix() {
        let vals: Vec<f64> = (0..60)
            .map(|i| match i {
                0 => 50.0,
                1 => 20.0,
                2 => 10.0,
                3 => -30.0,
                _ => (i as f64 * 0.37).sin(),
            })
            .collect();
        let a = matrix(&vals, 3);
        let cfg = LanczosConfig {
            k: 3,
            steps: 30,
            seed: 1,
        };
        let pairs = lanczos(product(&a), 60, &cfg).unwrap();
        for (p, want) in pairs.iter().zip([50.0, 20.0, 10.0]) {
            assert!((p.value - want).abs() < 1e-8, "{} vs {want}", p.value);
            assert!(p.residual < 1e-6, "residual {}", p.residual);
            assert!((norm(&p.vector) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn hutchinson_is_unbiased_for_a_known_trace() {
        let vals: Vec<f64> = (0..40).map(|i| 1.0 + i as f64 * 0.1).collect();
        let trace: f64 = vals.iter().sum();
        let a = matrix(&vals, 5);
        let est = hutchinson(product(&a), 40, 400, 9).unwrap();
        assert!(
            (est.mean - trace).abs() < 4.0 * est.std_err,
            "{} +- {} vs {trace}",
            est.mean,
            est.std_err
        );
        // a diagonal matrix is estimated exactly by every Rademacher vector
        let diag: Vec<Flat> = (0..40)
            .map(|i| {
                (0..40)
                    .map(|j| if i == j { vals[i] } else { 0.0 })
                    .collect()
            })
            .collect();
        let exact = hutchinson(product(&diag), 40, 3, 0).unwrap();
        assert!((exact.mean - trace).abs() < 1e-12 && exact.std_err < 1e-12);
    }

    #[test]
    fn filter_normalisation_matches_each_filters_norm_and_zeroes_rank_one() {
        let shapes = vec![vec![2, 3], vec![2]];
        let w = vec![3.0, 0.0, 4.0, 1.0, 1.0, 1.0, 7.0, 7.0];
        let d = filter_normalized_random(&w, &shapes, 4).unwrap();
        assert!((norm(&d[0..3]) - 5.0).abs() < 1e-12);
        assert!((norm(&d[3..6]) - 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(&d[6..], &[0.0, 0.0]);
        assert!(filter_normalize(&d, &w[..4], &shapes).is_err());
    }
}
