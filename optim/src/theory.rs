//! Numerical tools for the thesis' statements about SAM's loss
//! `L~(w) = max_{||e|| <= rho} L(w + e)`.

/// `max_{|e| <= rho} f(w + e)` in one dimension, over `samples + 1` evenly
/// spaced points of [-rho, rho] (endpoints included).
pub fn sam_loss_1d(f: impl Fn(f64) -> f64, w: f64, rho: f64, samples: usize) -> f64 {
    (0..=samples)
        .map(|i| f(w - rho + 2.0 * rho * i as f64 / samples as f64))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `max_{||e|| <= rho} f(w + e)` in two dimensions, over `rings` circles
/// (the last of radius rho) of `angles` points each, plus the centre.
pub fn sam_loss_2d(
    f: impl Fn([f64; 2]) -> f64,
    w: [f64; 2],
    rho: f64,
    rings: usize,
    angles: usize,
) -> f64 {
    let mut best = f(w);
    for r in 1..=rings {
        let radius = rho * r as f64 / rings as f64;
        for a in 0..angles {
            let t = std::f64::consts::TAU * a as f64 / angles as f64;
            best = best.max(f([w[0] + radius * t.cos(), w[1] + radius * t.sin()]));
        }
    }
    best
}

/// The minimiser of `f` over a grid of `n + 1` points of [lo, hi].
pub fn argmin_1d(f: impl Fn(f64) -> f64, lo: f64, hi: f64, n: usize) -> (f64, f64) {
    (0..=n)
        .map(|i| lo + (hi - lo) * i as f64 / n as f64)
        .map(|w| (w, f(w)))
        .fold(
            (f64::NAN, f64::INFINITY),
            |b, c| if c.1 < b.1 { c } else { b },
        )
}

/// Overdamped escape simulation: `w <- w - lr * (g(w) + noise)` with
/// Gaussian gradient noise of standard deviation `sigma`, from `w0`, until
/// `|w| > exit` or `max_steps`. SAM evaluates the gradient at
/// `w + rho * sign(g(w) + noise)` (the 1-D normalised ascent) with the same
/// noise sample, as a minibatch SAM step does. Returns the exit step, or
/// `None` when the walk did not leave within `max_steps`.
pub fn escape_steps(
    grad: impl Fn(f64) -> f64,
    params: EscapeParams,
    mut normal: impl FnMut() -> f64,
) -> Option<u64> {
    let mut w = params.w0;
    for t in 0..params.max_steps {
        let noise = params.sigma * normal();
        let g = grad(w) + noise;
        let g = if params.rho > 0.0 {
            let e = params.rho * g.signum();
            grad(w + e) + noise
        } else {
            g
        };
        w -= params.lr * g;
        if w.abs() > params.exit {
            return Some(t + 1);
        }
    }
    None
}

/// Settings of [`escape_steps`].
#[derive(Clone, Copy, Debug)]
pub struct EscapeParams {
    pub w0: f64,
    pub lr: f64,
    pub sigma: f64,
    pub rho: f64,
    pub exit: f64,
    pub max_steps: u64,
}

/// The thesis' symmetric example (Section 3.1, Figure 3.1a-b): the sextic
/// `w^2 (w - 1)^2 (w - 2)^2`, with minima at 0, 1 and 2.
pub fn sextic(w: f64) -> f64 {
    (w * (w - 1.0) * (w - 2.0)).powi(2)
}

/// The thesis' asymmetric example (Section 3.1, Figure 3.1c-d): the LINEX
/// loss `e^(alpha w) - alpha w - 1` (the thesis uses alpha = -0.3: steep
/// for w < 0, slope below |alpha| for w > 0).
pub fn linex(w: f64, alpha: f64) -> f64 {
    (alpha * w).exp() - alpha * w - 1.0
}

/// The second derivative of `f` at its minimum `w` as Lemma 7.1.1 and the
/// proof of Lemma 7.1.3 take it: `2 / delta^2 * (f(w + delta) - f(w))`
/// (exact for a quadratic; for SAM's loss, which is not differentiable at
/// its minimum, the thesis' "function value sensitivity").
pub fn curvature_fd(f: impl Fn(f64) -> f64, w: f64, delta: f64) -> f64 {
    2.0 / (delta * delta) * (f(w + delta) - f(w))
}

/// The shift of SAM's minimiser along an asymmetric direction in two
/// dimensions, in closed form: for `L(x, y) = A(x) + a |y|` with `A(x) = p x`
/// for x >= 0 and `-c p x` for x < 0, and one L2 ball of radius `rho` for
/// both coordinates, SAM's loss on the x axis near 0 is
/// `max(p x + rho sqrt(p^2 + a^2), -c p x + rho sqrt(c^2 p^2 + a^2))`, whose
/// minimiser is `(sqrt(c^2 p^2 + a^2) - sqrt(p^2 + a^2)) / ((c + 1) p) rho`:
/// the 1-D bound `(c - 1)/(c + 1) rho` of Theorem 3.3.2 for a = 0, less for
/// a > 0 (results/theory/README.md).
pub fn asymmetric_shift_2d(p: f64, c: f64, a: f64, rho: f64) -> f64 {
    let h = |g: f64| (g * g + a * a).sqrt();
    (h(c * p) - h(p)) / ((c + 1.0) * p) * rho
}
