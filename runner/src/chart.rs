//! Drawing and reading for plots, below every stage kind: SVG line charts
//! and heat maps (plotters), the palette, mean ± std points, and an entry's
//! `metrics.csv` as fields or numbers. `plots` composes a study's plots
//! from these; each kind draws its own (`Kind::plots`) with them.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::stats::mean_std;

/// One line of a chart: its points, with an optional +- half-width each.
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64, f64)>,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    ErrorKind::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("cannot draw the plot: {e}")),
    }
    .into()
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.06
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - pad, hi + pad)
}

/// A line chart with points and error bars, as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(all().map(|p| p.0));
    let (y0, y1) = range(all().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for s in series {
        let color = s.color;
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.points.len() > 12 {
            // A curve: its spread as a band, no markers.
            let mut band: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1 + p.2)).collect();
            band.extend(s.points.iter().rev().map(|p| (p.0, p.1 - p.2)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| plot_err(path, e))?;
            continue;
        }
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|p| {
                ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.stroke_width(1), 8)
            }))
            .map_err(|e| plot_err(path, e))?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend_corner(series, (y0, y1)))
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A heat map of `values[i][j]` at `(xs[i], ys[j])` (a regular grid),
/// from dark blue (lowest) to yellow (highest), with the lowest and highest
/// values in the caption; `log` colours by `ln(value)` (losses spanning
/// decades).
pub fn heat_map(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    xs: &[f64],
    ys: &[f64],
    values: &[Vec<f64>],
    log: bool,
) -> Result<()> {
    let finite = || values.iter().flatten().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let t = |v: f64| -> f64 {
        let (a, b, v) = if log {
            (lo.max(1e-12).ln(), hi.max(1e-12).ln(), v.max(1e-12).ln())
        } else {
            (lo, hi, v)
        };
        if b > a { (v - a) / (b - a) } else { 0.0 }
    };
    let colour = |v: f64| -> RGBColor {
        if !v.is_finite() {
            return RGBColor(200, 200, 200);
        }
        // dark blue -> teal -> yellow
        let s = t(v).clamp(0.0, 1.0);
        let stops = [
            (68.0, 1.0, 84.0),
            (33.0, 145.0, 140.0),
            (253.0, 231.0, 37.0),
        ];
        let (i, f) = if s < 0.5 {
            (0, s * 2.0)
        } else {
            (1, (s - 0.5) * 2.0)
        };
        let (a, b) = (stops[i], stops[i + 1]);
        let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    };
    let half = |v: &[f64]| -> f64 {
        if v.len() > 1 {
            (v[1] - v[0]).abs() / 2.0
        } else {
            0.5
        }
    };
    let (hx, hy) = (half(xs), half(ys));
    let (x0, x1) = (xs[0] - hx, xs[xs.len() - 1] + hx);
    let (y0, y1) = (ys[0] - hy, ys[ys.len() - 1] + hy);
    let root = SVGBackend::new(path, (620, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let caption = format!(
        "{title} ({lo:.3} dark to {hi:.3} light{})",
        if log { ", log" } else { "" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .disable_mesh()
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let cells = xs
        .iter()
        .enumerate()
        .flat_map(|(i, &x)| ys.iter().enumerate().map(move |(j, &y)| (i, j, x, y)));
    chart
        .draw_series(cells.map(|(i, j, x, y)| {
            Rectangle::new(
                [(x - hx, y - hy), (x + hx, y + hy)],
                colour(values[i][j]).filled(),
            )
        }))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(std::iter::once(Cross::new(
            (0.0, 0.0),
            6,
            WHITE.stroke_width(2),
        )))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// The right-hand corner the lines leave free: where the last fifth of the
/// x range sits in the lower half of the y range, the upper corner.
fn legend_corner(series: &[Series], (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let x_min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let cut = x_max - 0.2 * (x_max - x_min);
    let tail: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(|p| p.0 >= cut).map(|p| p.1))
        .collect();
    let mid = 0.5 * (y0 + y1);
    if !tail.is_empty() && tail.iter().sum::<f64>() / tail.len() as f64 > mid {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Points `(x, mean, std)` in x order from values grouped by x (as f64 bits).
pub fn mean_std_points(by_x: &BTreeMap<u64, Vec<f64>>) -> Vec<(f64, f64, f64)> {
    let mut points: Vec<(f64, f64, f64)> = by_x
        .iter()
        .map(|(x, ys)| {
            let (m, s) = mean_std(ys);
            (f64::from_bits(*x), m, s)
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// A `metrics.csv`: its header and rows of numbers (empty fields NaN).
pub type Table = (Vec<String>, Vec<Vec<f64>>);

/// An entry's `metrics.csv`, fields as numbers.
pub fn table(cache: &Cache, key: &str) -> Table {
    let (header, rows) = fields(cache, key);
    let rows = rows
        .iter()
        .map(|r| r.iter().map(|x| x.parse().unwrap_or(f64::NAN)).collect())
        .collect();
    (header, rows)
}

/// An entry's `metrics.csv` as its header and rows of fields (empty when
/// the entry has none).
pub fn fields(cache: &Cache, key: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let text =
        std::fs::read_to_string(cache.entry_dir(key).join("metrics.csv")).unwrap_or_default();
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect());
    (lines.next().unwrap_or_default(), lines.collect())
}

/// Mean ± std over runs of column `y` against column `x`, at each x that
/// at least one run reached.
pub fn mean_curve(runs: &[Table], x: &str, y: &str) -> Vec<(f64, f64, f64)> {
    let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (header, rows) in runs {
        let (Some(ix), Some(iy)) = (
            header.iter().position(|h| h == x),
            header.iter().position(|h| h == y),
        ) else {
            continue;
        };
        for r in rows {
            if let (Some(&a), Some(&b)) = (r.get(ix), r.get(iy))
                && a.is_finite()
                && b.is_finite()
            {
                by_x.entry(a.to_bits()).or_default().push(b);
            }
        }
    }
    mean_std_points(&by_x)
}
