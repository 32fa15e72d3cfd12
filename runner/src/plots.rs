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
use crate::chart::{PALETTE, Series, Table, line_chart, mean_std_points, table};
use crate::error::Result;
use crate::exec::StageReport;
use crate::stages::{Done, PlotOut, StageSpec};
use crate::study::Study;

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
    let finished: Vec<Done<'_, StageSpec>> = done
        .iter()
        .map(|r| {
            let stage = &study.stages[r.index];
            Done {
                name: &stage.name,
                stem: stage.file_stem(),
                display: &r.display,
                key: &r.key,
                summary: r.summary.as_ref(),
                spec: &stage.spec,
            }
        })
        .collect();
    written.extend(crate::stages::plots(&finished, &PlotOut { dir, cache })?);

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
