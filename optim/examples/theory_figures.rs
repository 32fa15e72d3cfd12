//! The thesis' theory figures, drawn from the numerical tools in
//! `samlab_optim::theory`: `cargo run --release -p samlab-optim --example
//! theory_figures [OUT_DIR]` (default `results/theory`).
//!
//! - `valley-symmetric.svg` (Figure 3.1): a quadratic valley
//!   `L(w) = min(lambda w^2 / 2, h)` and SAM's loss `L~(w) = max_{|e|<=rho}
//!   L(w + e)`: same minimiser, shallower by `lambda rho^2 / 2`, narrower.
//! - `valley-asymmetric.svg` (Figure 7.1): slopes p (right) and c p (left);
//!   L~'s minimiser moves right by `(c-1)/(c+1) rho`.
//! - `valley-2d.svg` (Figure 3.2, our reading): `L(x, y) = A(x) + a |y|`, A
//!   asymmetric, one L2 ball for both coordinates; L and L~ along y = 0.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use samlab_optim::theory::{argmin_1d, sam_loss_1d, sam_loss_2d};

type R = Result<(), Box<dyn std::error::Error>>;

type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(
    path: &Path,
    title: &str,
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
        .x_desc("w")
        .y_desc("loss")
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
        &out.join("valley-symmetric.svg"),
        &format!(
            "Quadratic valley (lambda {lambda}, rho {rho}): L~ is lambda rho^2/2 = {drop:.3} shallower"
        ),
        (-1.6, 1.6),
        (-0.05, 1.2),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[],
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
        &out.join("valley-asymmetric.svg"),
        &format!("Asymmetric valley (slopes {p} and {c}, rho {rho}): argmin L~ = {at:.3}"),
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
        &out.join("valley-2d.svg"),
        &format!(
            "L = A(x) + {a}|y| (A: slopes {p}/{c}), rho {rho}, along y = 0: argmin L~ = {at:.3}"
        ),
        (-0.6, 1.2),
        (-0.05, 2.2),
        &[("L", BLUE, orig), ("L~ (SAM)", RED, sam)],
        &[
            ("argmin L~", at, RED),
            ("(c-1)/(c+1) rho", (c - 1.0) / (c + 1.0) * rho, grey),
            ("rho", rho, BLACK),
        ],
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
