//! Plots of a study's results (SVG, with plotters), written beside its
//! tables under `plots/`:
//!
//! - each kind's own plots (`Kind::plots`: Interpolate's curves along `a`,
//!   Escape's steps against rho);
//! - every stage gridded over one field besides `seed` (a sweep): each of
//!   its kind's headline measures (`Kind::HEADLINE`) against that field,
//!   mean +- std over seeds.
//!
//! Plots only read the summaries and the entries' `metrics.csv`; a plot that
//! has fewer than two points, or only one value, is left out.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::exec::StageReport;
use crate::results::mean_std;
use crate::stages::PlotOut;
use crate::study::{Stage, Study};

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

/// Mean ± std over runs of column `y` against column `x`, at each x that
/// at least one run reached.
fn mean_curve(runs: &[Table], x: &str, y: &str) -> Vec<(f64, f64, f64)> {
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

/// Training curves: train loss and accuracy per epoch for every Train stage
/// (mean over seeds, std as a band; the legend gives SAM's share of steps),
/// and for every Escape stage the reading its threshold applies to, per
/// step (mean over the runs still going), with the threshold. Returns the
/// files written.
pub fn curves(
    dir: &Path,
    study: &Study,
    rows: &[crate::compare::Row],
    reports: &[StageReport],
    cache: &Cache,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let mut written = Vec::new();
    // Train: one series per stage name (and grid point besides the seed).
    let mut train: Vec<(String, Vec<Table>, f64)> = Vec::new();
    for row in rows.iter().filter(|r| r.kind == "train") {
        let runs: Vec<Table> = row
            .members(study, reports)
            .iter()
            .map(|r| table(cache, &r.key))
            .collect();
        let share = row
            .runs
            .values()
            .filter_map(|m| Some(m.get("sam_steps")? / m.get("steps")?))
            .next()
            .unwrap_or(0.0);
        if !runs.is_empty() {
            train.push((row.label(), runs, share));
        }
    }
    if train.len() <= PALETTE.len() * 2 && !train.is_empty() {
        for (col, what) in [
            ("train_loss", "train loss"),
            ("train_acc", "train accuracy"),
        ] {
            let series: Vec<Series> = train
                .iter()
                .enumerate()
                .map(|(i, (label, runs, share))| Series {
                    name: format!("{label} (SAM {:.0}% of steps)", 100.0 * share),
                    color: PALETTE[i % PALETTE.len()],
                    points: mean_curve(runs, "epoch", col),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            if series.is_empty() {
                continue;
            }
            let name = format!("curves-{col}.svg");
            line_chart(
                &dir.join(&name),
                &format!("{what} per epoch (mean over seeds, band ± std; training mode)"),
                "epoch",
                what,
                &series,
            )?;
            written.push(name);
        }
    }
    // Escape: the chosen reading per step, one chart per stage name.
    let mut names: Vec<&str> = Vec::new();
    for st in &study.stages {
        if st.spec.kind() == "escape" && !names.contains(&st.name.as_str()) {
            names.push(&st.name);
        }
    }
    for name in names {
        let mut series = Vec::new();
        let mut threshold = None;
        for row in rows.iter().filter(|r| r.name == name) {
            let members = row.members(study, reports);
            let Some(first) = members.first() else {
                continue;
            };
            let crate::stages::StageSpec::Escape(spec) = &study.stages[first.index].spec else {
                continue;
            };
            threshold = Some(spec.threshold);
            let column = format!("{}_acc", spec.measure_name());
            let runs: Vec<_> = members.iter().map(|r| table(cache, &r.key)).collect();
            let points: Vec<(f64, f64, f64)> = mean_curve(&runs, "step", &column)
                .into_iter()
                .map(|(x, m, _)| (x, m, 0.0))
                .collect();
            if points.len() >= 2 {
                series.push(Series {
                    name: format!("{} ({column})", row.label()),
                    color: PALETTE[series.len() % PALETTE.len()],
                    points,
                });
            }
        }
        if let (Some(t), false) = (threshold, series.is_empty()) {
            let end = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .fold(1.0, f64::max);
            series.push(Series {
                name: format!("threshold {t}"),
                color: RGBColor(120, 120, 120),
                points: vec![(0.0, t, 0.0), (end, t, 0.0)],
            });
            let file = format!("{name}-readings.svg");
            line_chart(
                &dir.join(&file),
                &format!("{name}: training accuracy per step (mean over the runs still going)"),
                "step",
                "accuracy",
                &series,
            )?;
            written.push(file);
        }
    }
    Ok(written)
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

/// Writes every plot of a study into `dir`; returns the files written.
pub fn write_all(
    dir: &Path,
    study: &Study,
    reports: &[StageReport],
    cache: &Cache,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let done: Vec<&StageReport> = reports.iter().filter(|r| r.summary.is_some()).collect();

    // Each kind's own plots.
    let pairs: Vec<(&Stage, &StageReport)> =
        done.iter().map(|r| (&study.stages[r.index], *r)).collect();
    written.extend(crate::stages::plots(&pairs, &PlotOut { dir, cache })?);

    // Sweeps: a stage gridded over one field besides the seed.
    let mut names: Vec<&str> = Vec::new();
    for s in &study.stages {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    for name in names {
        let members: Vec<&&StageReport> = done
            .iter()
            .filter(|r| study.stages[r.index].name == name)
            .collect();
        let Some(first) = members.first() else {
            continue;
        };

        if !study.stages[first.index].spec.sweeps() {
            continue;
        }
        let fields: Vec<&String> = study.stages[first.index]
            .coords
            .keys()
            .filter(|k| k.as_str() != "seed")
            .collect();
        let [field] = fields.as_slice() else {
            continue;
        };
        for metric in study.stages[first.index].spec.headline() {
            let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for r in &members {
                let x = study.stages[r.index].coords.get(*field).copied();
                let y = r.summary.as_ref().and_then(|s| s.get(*metric)).copied();
                if let (Some(x), Some(y)) = (x, y) {
                    by_x.entry(x.to_bits()).or_default().push(y);
                }
            }
            let all: Vec<f64> = by_x.values().flatten().copied().collect();
            if by_x.len() < 2 || all.iter().all(|v| *v == all[0]) {
                continue; // one point, or a flat line that says nothing
            }
            let points = mean_std_points(&by_x);
            let file = format!("{name}-{metric}-vs-{field}.svg");
            line_chart(
                &dir.join(&file),
                &format!("{name}: {metric} against {field} (mean ± std over seeds)"),
                field,
                metric,
                &[Series {
                    name: name.to_string(),
                    color: PALETTE[0],
                    points,
                }],
            )?;
            written.push(file);
        }
    }
    Ok(written)
}
