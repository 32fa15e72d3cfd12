//! The thesis' theory figures, drawn from the numerical tools in
//! `samlab_optim::theory`: `cargo run --release -p samlab-optim --example
//! theory_figures [OUT_DIR]` (default `results/theory`).
//!
//! - `fig3-1ab-sextic.svg`, `fig3-1cd-linex.svg` (Figure 3.1): the thesis'
//!   sextic `w^2 (w-1)^2 (w-2)^2` and LINEX `e^(alpha w) - alpha w - 1`
//!   (alpha = -0.3) with SAM's loss `L~(w) = max_{|e|<=rho} L(w + e)` for
//!   two rho each;
//! - `fig3-2-two-asymmetric.svg` (Figure 3.2): L~ over the plane for LINEX
//!   along both coordinates, with the minimisers of L and L~;
//! - `fig7-1-piecewise-linear.svg` (Figure 7.1, Lemma 7.1.4): slopes p
//!   (right) and c p (left); L~'s minimiser moves right by `(c-1)/(c+1) rho`;
//! - `theorem-3-2-1-quadratic.svg`: a quadratic valley with a plateau and
//!   L~: same minimiser, shallower by `lambda rho^2 / 2`, narrower;
//! - `theorem-3-2-1-rising.svg`: the same quadratic continued past the
//!   boundary of D = (-1, 1): L~ is deeper, by `lambda r rho` (Theorem 3.2.1
//!   (i) needs L~ = L on the boundary);
//! - `theorem-3-3-2-2d-profile.svg`, `theorem-3-3-2-2d-shift.svg`: one
//!   asymmetric and one symmetric direction in one L2 ball: L and L~ along
//!   the asymmetric axis, and the shift of L~'s minimiser against the
//!   symmetric slope, below the 1-D bound (results/theory/README.md).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use samlab_optim::theory::{
    argmin_1d, asymmetric_shift_2d, depth_1d, linex, sam_loss_1d, sam_loss_2d, sextic,
};

type R = Result<(), Box<dyn std::error::Error>>;

type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    x: (f64, f64),
    y: (f64, f64),
    curves: &[Curve],
    marks: &[(&str, f64, RGBColor)],
) -> R {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    c.configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .light_line_style(WHITE)
        .draw()?;
    for (name, color, pts) in curves {
        let color = *color;
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    for (name, at, color) in marks {
        let color = *color;
        c.draw_series(LineSeries::new(
            vec![(*at, y.0), (*at, y.1)],
            color.stroke_width(1),
        ))?
        .label(*name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..=n)
        .map(|i| lo + (hi - lo) * i as f64 / n as f64)
        .collect()
}

fn main() -> R {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or("results/theory".into()));
    std::fs::create_dir_all(&out)?;
    let grey = RGBColor(120, 120, 120);

    // Symmetric quadratic valley.
    let (lambda, h, rho) = (2.0, 1.0, 0.3);
    let l = move |w: f64| (lambda * w * w / 2.0).min(h);
    let xs = grid(-1.6, 1.6, 800);
    let orig: Vec<(f64, f64)> = xs.iter().map(|&w| (w, l(w))).collect();
    let sam: Vec<(f64, f64)> = xs
        .iter()
        .map(|&w| (w, sam_loss_1d(l, w, rho, 2000)))
        .collect();
    let drop = lambda * rho * rho / 2.0;
    chart(
        &out.join("theorem-3-2-1-quadratic.svg"),
        &format!(
            "Quadratic valley (lambda {lambda}, rho {rho}): L~ is lambda rho^2/2 = {drop:.3} shallower"
        ),
        ("w", "loss"),
        (-1.6, 1.6),
        (-0.05, 1.2),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[],
    )?;

    // The same quadratic continued past dD = {-r, r} (r = 1): Theorem
    // 3.2.1 (i) fails (results/theory/README.md, optim/tests/theory_gaps.rs).
    let r = (2.0 * h / lambda).sqrt();
    let q = move |w: f64| lambda * w * w / 2.0;
    let orig: Vec<(f64, f64)> = xs.iter().map(|&w| (w, q(w))).collect();
    let sam: Vec<(f64, f64)> = xs
        .iter()
        .map(|&w| (w, sam_loss_1d(q, w, rho, 2000)))
        .collect();
    let sam_q = |w: f64| sam_loss_1d(q, w, rho, 2000);
    let (depth, sam_depth) = (depth_1d(q, 0.0, r), depth_1d(sam_q, 0.0, r));
    chart(
        &out.join("theorem-3-2-1-rising.svg"),
        &format!(
            "L = lambda w^2/2 past dD = {{-{r}, {r}}} (lambda {lambda}, rho {rho}): depth {depth:.2}, L~'s {sam_depth:.2}"
        ),
        ("w", "loss"),
        (-1.6, 1.6),
        (-0.05, 3.7),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[("-r (dD)", -r, BLACK), ("r (dD)", r, BLACK)],
    )?;

    // Asymmetric valley in one dimension.
    let (p, c, rho) = (1.0, 3.0, 0.2);
    let l = move |w: f64| (if w >= 0.0 { p * w } else { -c * p * w }).min(1.0);
    let xs = grid(-0.6, 1.2, 900);
    let orig: Vec<(f64, f64)> = xs.iter().map(|&w| (w, l(w))).collect();
    let sam: Vec<(f64, f64)> = xs
        .iter()
        .map(|&w| (w, sam_loss_1d(l, w, rho, 2000)))
        .collect();
    let (at, _) = argmin_1d(|w| sam_loss_1d(l, w, rho, 2000), -rho, 2.0 * rho, 4000);
    let lower = (c - 1.0) / (c + 1.0) * rho;
    chart(
        &out.join("fig7-1-piecewise-linear.svg"),
        &format!("Asymmetric valley (slopes {p} and {c}, rho {rho}): argmin L~ = {at:.3}"),
        ("w", "loss"),
        (-0.6, 1.2),
        (-0.05, 1.3),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[
            ("argmin L~", at, RED),
            ("(c-1)/(c+1) rho", lower, grey),
            ("rho", rho, BLACK),
        ],
    )?;

    // Two dimensions: asymmetric along x, symmetric along y, one L2 ball.
    let (p, c, a, rho) = (1.0, 3.0, 1.0, 0.2);
    let l2 =
        move |w: [f64; 2]| (if w[0] >= 0.0 { p * w[0] } else { -c * p * w[0] }) + a * w[1].abs();
    let sam2 = |x: f64| sam_loss_2d(l2, [x, 0.0], rho, 1, 2880);
    let xs = grid(-0.6, 1.2, 600);
    let orig: Vec<(f64, f64)> = xs.iter().map(|&x| (x, l2([x, 0.0]))).collect();
    let sam: Vec<(f64, f64)> = xs.iter().map(|&x| (x, sam2(x))).collect();
    let (at, _) = argmin_1d(sam2, -rho, 2.0 * rho, 3000);
    chart(
        &out.join("theorem-3-3-2-2d-profile.svg"),
        &format!(
            "L = A(x) + {a}|y| (A: slopes {p}/{c}), rho {rho}, along y = 0: argmin L~ = {at:.3}"
        ),
        ("w", "loss"),
        (-0.6, 1.2),
        (-0.05, 2.2),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[
            ("argmin L~", at, RED),
            ("(c-1)/(c+1) rho", (c - 1.0) / (c + 1.0) * rho, grey),
            ("rho", rho, BLACK),
        ],
    )?;
    // The shift of L~'s minimiser along x against the symmetric slope a.
    let (p, c) = (1.0, 3.0);
    let ratios = grid(0.0, 3.0, 300);
    let shift: Vec<(f64, f64)> = ratios
        .iter()
        .map(|&a| (a, asymmetric_shift_2d(p, c, a * p, 1.0)))
        .collect();
    let bound = (c - 1.0) / (c + 1.0);
    chart(
        &out.join("theorem-3-3-2-2d-shift.svg"),
        &format!("2-D shift of argmin L~ / rho against a/p (c = {c}); dashed: 1-D bound"),
        ("a / p", "shift / rho"),
        (0.0, 3.0),
        (0.0, 0.6),
        &[
            ("(sqrt(c^2p^2+a^2) - sqrt(p^2+a^2)) / ((c+1)p)", RED, shift),
            ("(c-1)/(c+1)", grey, vec![(0.0, bound), (3.0, bound)]),
        ],
        &[],
    )?;

    // Figure 3.1 with the thesis' functions.
    let xs = grid(-0.4, 2.4, 1400);
    let mut curves: Vec<Curve> = vec![(
        "L (sextic)",
        BLUE,
        xs.iter().map(|&w| (w, sextic(w))).collect(),
    )];
    for (rho, color) in [(0.1, RED), (0.2, RGBColor(200, 120, 0))] {
        let pts = xs
            .iter()
            .map(|&w| (w, sam_loss_1d(sextic, w, rho, 400)))
            .collect();
        curves.push((
            if rho == 0.1 {
                "L~, rho 0.1"
            } else {
                "L~, rho 0.2"
            },
            color,
            pts,
        ));
    }
    chart(
        &out.join("fig3-1ab-sextic.svg"),
        "Figure 3.1a-b: L = w^2 (w-1)^2 (w-2)^2 and SAM's L~: shallower, narrower",
        ("w", "loss"),
        (-0.4, 2.4),
        (-0.01, 0.6),
        &curves,
        &[],
    )?;
    let alpha = -0.3;
    let l = move |w: f64| linex(w, alpha);
    let xs = grid(-6.0, 8.0, 1400);
    let mut curves: Vec<Curve> = vec![(
        "L (LINEX, alpha -0.3)",
        BLUE,
        xs.iter().map(|&w| (w, l(w))).collect(),
    )];
    let mut marks = Vec::new();
    for (rho, color) in [(1.0, RED), (2.0, RGBColor(200, 120, 0))] {
        let pts = xs
            .iter()
            .map(|&w| (w, sam_loss_1d(l, w, rho, 400)))
            .collect();
        curves.push((
            if rho == 1.0 { "L~, rho 1" } else { "L~, rho 2" },
            color,
            pts,
        ));
        let (at, _) = argmin_1d(|w| sam_loss_1d(l, w, rho, 400), -rho, 2.0 * rho, 4000);
        marks.push((
            if rho == 1.0 {
                "argmin L~, rho 1"
            } else {
                "argmin L~, rho 2"
            },
            at,
            color,
        ));
    }
    chart(
        &out.join("fig3-1cd-linex.svg"),
        "Figure 3.1c-d: LINEX e^(aw) - aw - 1, a = -0.3: argmin L~ moves to the flat side",
        ("w", "loss"),
        (-6.0, 8.0),
        (-0.05, 2.0),
        &curves,
        &marks,
    )?;

    // Figure 3.2: two asymmetric directions.
    heat_map(&out.join("fig3-2-two-asymmetric.svg"), alpha, 2.0)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// SAM's loss over the plane for `L = LINEX(w1) + LINEX(w2)`, with the
/// minimisers of L (blue) and L~ (red), as the thesis' Figure 3.2.
fn heat_map(path: &Path, alpha: f64, rho: f64) -> R {
    let l = move |w: [f64; 2]| linex(w[0], alpha) + linex(w[1], alpha);
    let sam = |w: [f64; 2]| sam_loss_2d(l, w, rho, 8, 360);
    let (lo, hi, n) = (-4.0, 6.0, 80);
    let cell = (hi - lo) / n as f64;
    let mut values = Vec::new();
    let (mut best, mut at) = (f64::INFINITY, [0.0, 0.0]);
    for i in 0..n {
        for j in 0..n {
            let w = [lo + (i as f64 + 0.5) * cell, lo + (j as f64 + 0.5) * cell];
            let v = sam(w);
            if v < best {
                (best, at) = (v, w);
            }
            values.push((w, v));
        }
    }
    let vmax = values.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let root = SVGBackend::new(path, (620, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!(
                "Figure 3.2: L~ for LINEX(w1) + LINEX(w2), rho {rho}; argmin L~ = ({:.2}, {:.2})",
                at[0], at[1]
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(lo..hi, lo..hi)?;
    c.configure_mesh()
        .x_desc("w1")
        .y_desc("w2")
        .disable_mesh()
        .draw()?;
    c.draw_series(values.iter().map(|(w, v)| {
        // light (low) to dark (high), on a square-root scale
        let t = (v - best).max(0.0) / (vmax - best);
        let g = (255.0 * (1.0 - t.sqrt())) as u8;
        Rectangle::new(
            [
                (w[0] - cell / 2.0, w[1] - cell / 2.0),
                (w[0] + cell / 2.0, w[1] + cell / 2.0),
            ],
            RGBColor(g, g, 255).filled(),
        )
    }))?;
    c.draw_series([(0.0, 0.0)].map(|p| Circle::new(p, 6, BLUE.filled())))?
        .label("argmin L (SGD)")
        .legend(|(x, y)| Circle::new((x, y), 5, BLUE.filled()));
    c.draw_series([(at[0], at[1])].map(|p| Circle::new(p, 6, RED.filled())))?
        .label("argmin L~ (SAM)")
        .legend(|(x, y)| Circle::new((x, y), 5, RED.filled()));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
