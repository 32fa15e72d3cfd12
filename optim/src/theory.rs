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
/// a > 0 (results/theory/README.md). These are the boundary slopes p and
/// c p themselves, which Definition 2.3.1's strict inequalities exclude:
/// the value is the limit of [`asymmetric_shift_2d_slopes`] along
/// admissible slopes `p (1 - eta)`, `c p (1 + eta)` as eta -> 0.
pub fn asymmetric_shift_2d(p: f64, c: f64, a: f64, rho: f64) -> f64 {
    asymmetric_shift_2d_slopes(p, c * p, a, rho)
}

/// The shift of SAM's minimiser along x for `L(x, y) = A(x) + a |y|` with
/// `A(x) = flat x` for x >= 0 and `-sharp x` for x < 0 (flat, sharp > 0),
/// one L2 ball of radius `rho`: `(sqrt(sharp^2 + a^2) - sqrt(flat^2 + a^2))
/// / (flat + sharp) * rho`, exactly, for every `a >= 0`.
///
/// Why: L is the maximum of the four linear functions `g . w` with
/// `g = (flat or -sharp, +-a)`, so `L~(w) = max_g max_{|e| <= rho} g . (w + e)
/// = max_g (g . w + rho |g|) = a |y| + max(flat x + rho sqrt(flat^2 + a^2),
/// -sharp x + rho sqrt(sharp^2 + a^2))`, minimised at y = 0 and where the
/// two lines cross. For a = 0 it is the 1-D minimiser
/// `(sharp - flat) / (sharp + flat) * rho`.
pub fn asymmetric_shift_2d_slopes(flat: f64, sharp: f64, a: f64, rho: f64) -> f64 {
    let h = |g: f64| (g * g + a * a).sqrt();
    (h(sharp) - h(flat)) / (flat + sharp) * rho
}

/// The minimiser of a unimodal `f` (decreasing, then increasing) on
/// [lo, hi] by golden-section search: `iters` steps leave an interval of
/// `(hi - lo) * 0.618^iters` around it (100 steps: 1e-21 of the interval,
/// so f64 rounding of the abscissa, about 1e-16 of its size, is the limit).
pub fn argmin_unimodal_1d(f: impl Fn(f64) -> f64, lo: f64, hi: f64, iters: usize) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo, hi);
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..iters {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    0.5 * (a + b)
}

/// The depth of a minimum as Theorem 2.2.5 and Theorem 3.2.1 define it,
/// `Delta L = min_{w in dD} L(w) - L(w*)`, in one dimension for the
/// neighbourhood `D = (w* - r, w* + r)`, whose boundary is `{w* - r, w* + r}`.
pub fn depth_1d(f: impl Fn(f64) -> f64, w_star: f64, r: f64) -> f64 {
    f(w_star - r).min(f(w_star + r)) - f(w_star)
}

/// `E_delta [L(w) - L(w + shift)]` over `w = -delta`, each coordinate of
/// `delta` being `+delta_bar[i]` or `-delta_bar[i]` with probability 1/2,
/// independently: the generalisation gain `E L(w^) - E L(w~)` of Theorem
/// 2.3.5 and Theorem 3.3.3 when the empirical risk is the population loss
/// `f` (minimum at 0) shifted by the random `delta`, `L^(w) = f(w + delta)`:
/// then `w^* = -delta`, SAM's minimiser of `L^` is `-delta + shift` (with
/// `shift` the minimiser of f's SAM loss), and Assumption 2.3.3's shift gap
/// is 0 (xi = 0) for every R.
pub fn expected_shift_gain<const D: usize>(
    f: impl Fn([f64; D]) -> f64,
    shift: [f64; D],
    delta_bar: [f64; D],
) -> f64 {
    let n = 1usize << D;
    let mut total = 0.0;
    for signs in 0..n {
        let mut w = [0.0; D];
        let mut moved = [0.0; D];
        for i in 0..D {
            let d = if signs >> i & 1 == 1 {
                delta_bar[i]
            } else {
                -delta_bar[i]
            };
            w[i] = -d;
            moved[i] = shift[i] - d;
        }
        total += f(w) - f(moved);
    }
    total / n as f64
}
