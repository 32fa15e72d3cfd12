//! The thesis' statements about SAM's loss `L~(w) = max_{|e| <= rho} L(w + e)`,
//! checked numerically, and an escape simulation.
//!
//! The thesis' own statements and functions (../shared/thesis, Sections
//! 3.1-3.3 and 7.1):
//! - Theorem 3.2.1: for L locally quadratic on a ball of radius r around
//!   w*, (i) the depth drops by `lambda_max rho^2 / 2` (which holds only
//!   under its proof's step `min_{dD} L = min_{dD} L~`, an assumption the
//!   statement does not make: `theory_gaps.rs`) and (ii) the largest
//!   curvature grows at least by `1 + rho / (r - rho)`, where the curvature
//!   of SAM's loss at its (non-differentiable) minimum is Lemma 7.1.3's
//!   finite-difference form `2 / delta^2 (L~(w* + delta) - L~(w*))`;
//! - Figure 3.1's functions: the sextic `w^2 (w-1)^2 (w-2)^2` and the LINEX
//!   loss `e^(alpha w) - alpha w - 1`, alpha = -0.3;
//! - an (r, p, c, 0)-asymmetric direction: slope in (0, p) on the flat side,
//!   below -c p on the sharp side, both strict (Definition 2.3.1, Theorem
//!   3.3.2); where a test uses the boundary slopes p and c p themselves it
//!   says so (their values are limits of admissible ones: `theory_gaps.rs`).

//!
//! Tolerances: everything here is scalar f64 code (no kernel paths, rounding
//! ~1e-16), so each bound is a few steps of the grid the quantity is found
//! on (`N` points across the ball, 20,000 or 30,000 across a search
//! interval, 61 x 61 refined twice in 2-D); docs/numerics.md derives each
//! from its grid.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use samlab_optim::theory::*;

const N: usize = 4000;

/// Depth, radius along +x and minimiser of a 1-D valley of plateau height `h`.
fn valley_1d(f: &impl Fn(f64) -> f64, h: f64, extent: f64) -> (f64, f64, f64) {
    let (wmin, lmin) = argmin_1d(f, -extent, extent, 20_000);
    let step = extent / 20_000.0;
    let mut t = wmin;
    while f(t) < h - 1e-12 {
        t += step;
    }
    (h - lmin, t - wmin, wmin)
}

/// Theorem 3.2.1 on `L = min(lambda w^2 / 2, h)` with D = (-r, r), r =
/// sqrt(2 h / lambda), the largest set on which L is quadratic. L is flat
/// past dD, so L~ = L = h there: the proof's step "min_{w ∈ ∂D} L(w) =
/// min_{w ∈ ∂D} L~(w)" (Lemma 7.1.2), which the statement does not assume,
/// holds, and the test asserts it before checking (i). A valley that keeps
/// rising past dD breaks (i): `theory_gaps.rs`.
#[test]
fn theorem_3_2_1_one_dimensional_quadratic_valley() {
    for (lambda, h, rho) in [(1.0, 0.5, 0.1), (4.0, 2.0, 0.25), (10.0, 0.05, 0.02)] {
        let l = move |w: f64| (0.5 * lambda * w * w).min(h);
        let r = (2.0 * h / lambda).sqrt();
        let sam = |w: f64| sam_loss_1d(l, w, rho, N);
        // The proof's assumption, explicit: L~ = L on dD = {-r, r} (both
        // are h: the ball around ±r reaches only the plateau and the
        // valley below it; the grid holds the ball's ends, and r rounds
        // to within an ulp or two of where the plateau starts).
        for edge in [-r, r] {
            assert!(
                (sam(edge) - h).abs() < 1e-12 * h && (l(edge) - h).abs() < 1e-12 * h,
                "L~ = L = h on dD: {} {}",
                sam(edge),
                l(edge)
            );
        }
        let (depth, radius, at) = valley_1d(&l, h, 2.0 * r);
        let (sdepth, sradius, sat) = valley_1d(&sam, h, 2.0 * r);
        assert!(
            at.abs() < 1e-3 * r && sat.abs() < 1e-3 * r,
            "the minimum stays at w*: {sat}"
        );
        let drop = depth - sdepth;
        let want = lambda * rho * rho / 2.0;
        assert!(
            (drop - want).abs() < 1e-3 * want,
            "depth drops by lambda rho^2/2: {drop} vs {want}"
        );
        assert!((radius - r).abs() < 1e-3 * r && (sradius - (r - rho)).abs() < 1e-3 * r);
        // (ii) with Lemma 7.1.3's own curvature: for every |delta| < r - rho,
        // 2/delta^2 (L~(delta) - L~(0)) = 2/delta^2 (alpha delta^2 + 2 alpha
        // |delta| rho) with alpha = lambda/2, i.e. lambda (1 + 2 rho/|delta|).
        // (The thesis' proof writes 2 alpha (1 + rho/|delta|): a factor 2
        // is lost in its last step; the stated bound holds with room, see
        // results/theory/README.md.) L''(w*) = lambda here.
        let bound = (1.0 + rho / (r - rho)) * lambda;
        let tight = (1.0 + 2.0 * rho / (r - rho)) * lambda;
        for frac in [0.1, 0.5, 0.9, 0.999] {
            for delta in [frac * (r - rho), -frac * (r - rho)] {
                let fd = curvature_fd(sam, 0.0, delta);
                let exact = lambda * (1.0 + 2.0 * rho / delta.abs());
                assert!(
                    (fd - exact).abs() < 2e-3 * exact,
                    "lambda {lambda} rho {rho} delta {delta}: {fd} vs {exact}"
                );
                assert!(fd >= tight * (1.0 - 1e-3), "{fd} below {tight}");
                assert!(fd > bound, "{fd} not above the thesis' {bound}");
            }
        }
        // ... and L's own finite-difference curvature is lambda (Lemma 7.1.1).
        let fd = curvature_fd(l, 0.0, 0.5 * r);
        assert!((fd - lambda).abs() < 1e-9 * lambda, "{fd}");
    }
}

#[test]
fn theorem_3_2_1_two_dimensional_quadratic_valley() {
    let (l1, l2, h, rho) = (4.0, 1.0, 1.0, 0.1);
    let l = move |w: [f64; 2]| (0.5 * (l1 * w[0] * w[0] + l2 * w[1] * w[1])).min(h);
    let sam = |w: [f64; 2]| sam_loss_2d(l, w, rho, 8, 720);
    // The minimum stays at w* = 0 and rises by lambda_max rho^2 / 2.
    let centre = sam([0.0, 0.0]);
    let want = l1 * rho * rho / 2.0;
    assert!((centre - want).abs() < 1e-3 * want, "{centre} vs {want}");
    for w in [[0.02, 0.0], [-0.02, 0.0], [0.0, 0.03], [0.01, -0.01]] {
        assert!(
            sam(w) > centre,
            "L~({w:?}) = {} is not above L~(0) = {centre}",
            sam(w)
        );
    }
    // Along the sharpest axis the valley edge moves in from r to r - rho.
    let r = (2.0 * h / l1).sqrt();
    let along = |t: f64| sam([t, 0.0]);
    let (sdepth, sradius, _) = valley_1d(&along, h, 2.0 * r);
    assert!(
        (sradius - (r - rho)).abs() < 2e-3 * r,
        "edge at {sradius}, want {}",
        r - rho
    );
    assert!(sdepth < h, "shallower: {sdepth}");
    // (ii) along v1 = (1, 0), the eigenvector of lambda_max, with Lemma
    // 7.1.3's finite difference (the proof's equation 7.1).
    let bound = (1.0 + rho / (r - rho)) * l1;
    for frac in [0.2, 0.6, 0.95] {
        let fd = curvature_fd(along, 0.0, frac * (r - rho));
        assert!(fd >= bound * (1.0 - 2e-3), "v1: {fd} below {bound}");
    }
}

#[test]
fn theorem_3_3_2_asymmetric_valleys_in_one_dimension() {
    for (p, c, rho) in [
        (1.0, 3.0, 0.1),
        (0.5, 2.0, 0.05),
        (2.0, 9.0, 0.3),
        (1.0, 1.5, 0.2),
    ] {
        let lower = (c - 1.0) / (c + 1.0) * rho;
        // Piecewise linear at the boundary slopes p and c p themselves,
        // which Definition 2.3.1's strict inequalities exclude: the
        // minimiser is the bound, the limit of admissible slopes (every
        // admissible L's minimiser is strictly above it:
        // theory_gaps.rs, lemma_7_1_4_lower_end_is_approached_not_attained).
        let linear = move |w: f64| if w >= 0.0 { p * w } else { -c * p * w };
        let (at, _) = argmin_1d(|w| sam_loss_1d(linear, w, rho, N), -rho, 2.0 * rho, 30_000);
        assert!(
            (at - lower).abs() < 1e-3 * rho,
            "linear p {p} c {c}: {at} vs {lower}"
        );
        // Flat side flattening (slope <= p), sharp side steepening (slope >= c p).
        let curved = move |w: f64| {
            if w >= 0.0 {
                p * rho * (1.0 - (-w / rho).exp())
            } else {
                -c * p * w + 3.0 * w * w
            }
        };
        let (at, _) = argmin_1d(|w| sam_loss_1d(curved, w, rho, N), -rho, 2.0 * rho, 30_000);
        assert!(
            at >= lower - 1e-3 * rho && at < rho,
            "curved p {p} c {c}: {at} not in [{lower}, {rho})"
        );
        assert!(at > 0.0, "the minimum moves to the flat side");
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u = |r: &mut ChaCha8Rng| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (a, b) = (u(rng), u(rng));
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

#[test]
fn sam_escapes_a_noisy_quadratic_valley_faster_and_faster_with_rho() {
    // Theorem 2.2.5's setting: a quadratic basin with Gaussian gradient noise.
    let mean_exit = |rho: f64| -> f64 {
        let seeds = 300;
        let mut total = 0u64;
        for seed in 0..seeds {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let params = EscapeParams {
                w0: 0.0,
                lr: 0.1,
                sigma: 1.0,
                rho,
                exit: 0.6,
                max_steps: 200_000,
            };
            total += escape_steps(|w| w, params, || normal(&mut rng)).expect("escapes");
        }
        total as f64 / seeds as f64
    };
    let times: Vec<f64> = [0.0, 0.05, 0.2, 0.5].into_iter().map(mean_exit).collect();
    eprintln!("mean exit steps for rho 0, 0.05, 0.2, 0.5: {times:?}");
    assert!(
        times.windows(2).all(|w| w[1] < w[0]),
        "mean exit steps must fall with rho: {times:?}"
    );
    assert!(times[3] < 0.8 * times[0], "{times:?}");
}

/// The minimiser of `f` on a grid over a box, refined twice around the best
/// point (each pass: 61 x 61 points).
fn argmin_2d(f: &impl Fn([f64; 2]) -> f64, mut lo: [f64; 2], mut hi: [f64; 2]) -> [f64; 2] {
    let mut best = [f64::NAN; 2];
    for _ in 0..3 {
        let mut bv = f64::INFINITY;
        for i in 0..=60 {
            for j in 0..=60 {
                let w = [
                    lo[0] + (hi[0] - lo[0]) * i as f64 / 60.0,
                    lo[1] + (hi[1] - lo[1]) * j as f64 / 60.0,
                ];
                let v = f(w);
                if v < bv {
                    (bv, best) = (v, w);
                }
            }
        }
        for k in 0..2 {
            let h = (hi[k] - lo[k]) / 60.0 * 3.0;
            (lo[k], hi[k]) = (best[k] - h, best[k] + h);
        }
    }
    best
}

/// Theorem 3.3.2 with a second direction: `L(x, y) = A(x) + B(y)` with `A`
/// asymmetric (slope p for x > 0, c p for x < 0) and `B` symmetric or
/// nearly so (slopes a for y > 0, b for y < 0), and one L2 ball of radius
/// rho for both coordinates. (Not the thesis' Figure 3.2, which has two
/// asymmetric directions: `figure_3_2_...` below.) The slopes are the
/// boundary values p, c p (and a = b), which Definitions 2.3.1 and 3.3.1's
/// strict inequalities exclude; `theory_gaps.rs` shows the shift stays
/// below the 1-D bound at admissible slopes near them and tends to the
/// closed form below.
///
/// What holds, numerically: the minimiser of `L~` moves toward the flat
/// side along x by less than rho, and stays within (b-a)/(a+b) rho of 0
/// along y. The 1-D lower bound (c-1)/(c+1) rho does *not* carry over: with
/// a = b, `L~ = max(x + rho sqrt(p^2 + a^2), -c p x + rho sqrt(c^2 p^2 + a^2))`
/// near 0 (up to |y| terms), so the shift is
/// `(sqrt(c^2 p^2 + a^2) - sqrt(p^2 + a^2)) / ((c + 1) p) * rho`, below the
/// 1-D bound and tending to it as a / p -> 0.
#[test]
fn theorem_3_3_2_lower_bound_fails_in_2d_when_a_symmetric_slope_is_comparable_to_p() {
    for (p, c, a, b, rho) in [
        (1.0, 3.0, 1.0, 1.0, 0.1),
        (1.0, 3.0, 0.01, 0.01, 0.1),
        (1.0, 4.0, 0.9, 1.1, 0.2),
        (0.5, 2.0, 2.0, 2.5, 0.05),
    ] {
        let l = move |w: [f64; 2]| {
            let x = if w[0] >= 0.0 { p * w[0] } else { -c * p * w[0] };
            let y = if w[1] >= 0.0 { a * w[1] } else { -b * w[1] };
            x + y
        };
        // L is convex: the max over the ball lies on its boundary circle.
        let sam = |w: [f64; 2]| sam_loss_2d(l, w, rho, 1, 2880);
        let at = argmin_2d(&sam, [-rho, -rho], [2.0 * rho, rho]);
        let label = format!("p {p} c {c} a {a} b {b} rho {rho}");
        let tol = 2e-3 * rho;
        let one_d = (c - 1.0) / (c + 1.0) * rho;
        assert!(at[0] > 0.0 && at[0] < rho, "{label}: x {}", at[0]);
        assert!(at[0] <= one_d + tol, "{label}: x {} above {one_d}", at[0]);
        let sym = (b - a).abs() / (a + b) * rho;
        assert!(
            at[1].abs() <= sym + tol,
            "{label}: |y| {} > {sym}",
            at[1].abs()
        );
        if a == b {
            let want = asymmetric_shift_2d(p, c, a, rho);
            assert!((at[0] - want).abs() < tol, "{label}: x {} vs {want}", at[0]);
        }
    }
}

/// Figure 3.1's symmetric example: the sextic's minimum at w = 1, where it
/// is perfectly symmetric (L(1 + t) = L(1 - t)), stays put under SAM
/// (Lemma 7.1.5) and rises; the minima at 0 and 2 are not symmetric (the
/// outer side is steeper) and move inward, toward their flatter side.
#[test]
fn figure_3_1_sextic_keeps_its_symmetric_minimum_and_rises() {
    assert_eq!((sextic(0.0), sextic(1.0), sextic(2.0)), (0.0, 0.0, 0.0));
    for rho in [0.05, 0.1, 0.2] {
        let sam = |w: f64| sam_loss_1d(sextic, w, rho, N);
        let (at, value) = argmin_1d(sam, 0.75, 1.25, 20_000);
        assert!((at - 1.0).abs() < 1e-4, "rho {rho}: argmin {at}");
        assert!(value > 0.0 && value >= sextic(1.0 + rho) * (1.0 - 1e-6));
        let (left, _) = argmin_1d(sam, -0.3, 0.4, 20_000);
        let (right, _) = argmin_1d(sam, 1.6, 2.3, 20_000);
        assert!(
            left > 0.0 && left < rho,
            "rho {rho}: minimum near 0 at {left}"
        );
        assert!((right - (2.0 - left)).abs() < 1e-3, "mirror image: {right}");
    }
}

/// Figure 3.1's asymmetric example: LINEX with alpha = -0.3 is steep for
/// w < 0 and flat (slope below 0.3) for w > 0; SAM's minimiser moves to
/// the flat side, by less than rho, and further for larger rho.
#[test]
fn figure_3_1_linex_minimum_moves_to_the_flat_side_more_with_rho() {
    let alpha = -0.3;
    let l = |w: f64| linex(w, alpha);
    assert_eq!(l(0.0), 0.0);
    let mut last = 0.0;
    for rho in [0.5, 1.0, 2.0, 3.0] {
        let (at, _) = argmin_1d(|w| sam_loss_1d(l, w, rho, N), -rho, 2.0 * rho, 20_000);
        assert!(
            at > last && at < rho,
            "rho {rho}: argmin {at} (previous {last})"
        );
        // The balance point L(w + rho) = L(w - rho), solved by bisection.
        let (mut lo, mut hi) = (0.0, rho);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if l(mid + rho) < l(mid - rho) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        assert!(
            (at - lo).abs() < 1e-3 * rho,
            "rho {rho}: {at} vs balance {lo}"
        );
        last = at;
    }
}

/// Figure 3.2: two asymmetric directions (LINEX along both coordinates,
/// one L2 ball): SAM's minimiser moves toward the flat side of each, i.e.
/// along the diagonal.
#[test]
fn figure_3_2_two_asymmetric_directions_shift_along_the_diagonal() {
    let alpha = -0.3;
    let l = move |w: [f64; 2]| linex(w[0], alpha) + linex(w[1], alpha);
    for rho in [1.0, 2.0] {
        let sam = |w: [f64; 2]| sam_loss_2d(l, w, rho, 16, 720);
        let at = argmin_2d(&sam, [-rho, -rho], [2.0 * rho, 2.0 * rho]);
        assert!(at[0] > 0.0 && at[1] > 0.0, "rho {rho}: {at:?}");
        assert!(
            (at[0] - at[1]).abs() < 0.02 * rho,
            "on the diagonal: {at:?}"
        );
        assert!(at[0].hypot(at[1]) < rho, "{at:?}");
    }
}
