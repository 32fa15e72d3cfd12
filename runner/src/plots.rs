//! Plots of a study's results (SVG, with plotters), written beside its
//! tables under `plots/`:
//!
//! - each kind's own plots (`Kind::plots`: Train's training curves,
//!   Interpolate's curves along `a`, Escape's steps against rho and its
//!   readings per step);
//! - every stage gridded over one field besides `seed` (a sweep): each of
//!   its kind's headline measures (`Kind::HEADLINE`) against that field,
//!   mean +- std over seeds.
//!
//! Plots only read the summaries and the entries' `metrics.csv`; a plot that
//! has fewer than two points, or only one value, is left out.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cache::Cache;
use crate::chart::{PALETTE, Series, line_chart, mean_std_points};
use crate::error::Result;
use crate::exec::StageReport;
use crate::stages::{Done, PlotOut, StageSpec};
use crate::study::Study;

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
                label: crate::study::labelled(&stage.name, &stage.point()),
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
