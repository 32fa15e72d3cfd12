//! A study's results folder: one CSV per stage, a summary table (CSV and
//! markdown, mean +- std over seeds), and the provenance of the numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::cache::{Cache, write_file};
use crate::error::{Result, io};
use crate::exec::{StageReport, State};
use crate::study::Study;

/// Where a study's results go by default: `results/<path below studies/>`
/// for a file under a `studies` folder (`studies/quick/escape.ron` ->
/// `results/quick/escape`), `results/<stem>` otherwise.
pub fn default_dir(study: &Path) -> PathBuf {
    let stem = study.with_extension("");
    let parts: Vec<String> = stem
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let below = match parts.iter().rposition(|p| p == "studies") {
        Some(i) if i + 1 < parts.len() => parts[i + 1..].to_vec(),
        _ => vec![parts.last().cloned().unwrap_or_else(|| "study".into())],
    };
    let mut out = PathBuf::from("results");
    out.extend(below);
    out
}

/// What produced the results.
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub command: String,
    pub commit: String,
    pub dataset: String,
    pub fingerprint: String,
    pub device: String,
    pub runner_version: String,
}

/// The commit of the working tree the runner was started in, with `-dirty`
/// when it has uncommitted changes; `unknown` outside git.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        None => "unknown".into(),
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v}")
    } else {
        format!("{v:.4}")
    }
}

/// Writes `dir`: `stages/*.csv`, `summary.csv`, `summary.md`, `provenance.json`,
/// and `last-run.csv` (what this invocation computed and what it took from the cache).
pub fn write(
    dir: &Path,
    study: &Study,
    reports: &[StageReport],
    cache: &Cache,
    prov: &Provenance,
) -> Result<()> {
    let stages_dir = dir.join("stages");
    std::fs::create_dir_all(&stages_dir).map_err(io(&stages_dir))?;
    let metric_names: BTreeSet<String> = reports
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .flat_map(|s| s.keys().cloned())
        .collect();
    let coord_names: BTreeSet<String> = study
        .stages
        .iter()
        .flat_map(|s| s.coords.keys().cloned())
        .collect();
    let mut csv = String::from("stage,name");
    for c in &coord_names {
        let _ = write!(csv, ",{c}");
    }
    csv.push_str(",state,key");
    for m in &metric_names {
        let _ = write!(csv, ",{m}");
    }
    csv.push('\n');
    for r in reports {
        let stage = &study.stages[r.index];
        let _ = write!(csv, "{},{}", r.display.replace(',', ";"), stage.name);
        for c in &coord_names {
            let _ = write!(
                csv,
                ",{}",
                stage
                    .coords
                    .get(c)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
        }
        let state = match &r.state {
            State::Cached | State::Ran => "ok",
            State::Failed(_) => "failed",
            State::NotRun(_) => "not run",
        };
        let _ = write!(csv, ",{state},{}", r.key);
        for m in &metric_names {
            let v = r.summary.as_ref().and_then(|s| s.get(m));
            let _ = write!(csv, ",{}", v.map(|v| v.to_string()).unwrap_or_default());
        }
        csv.push('\n');
        let src = cache.entry_dir(&r.key).join("metrics.csv");
        if r.summary.is_some() && src.is_file() {
            let dst = stages_dir.join(format!("{}.csv", stage.file_stem()));
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    write_file(&dir.join("summary.csv"), csv.as_bytes())?;
    let mut last =
        String::from("stage,state,start_epoch,resumed_from,steps_run,passes_run,detail\n");
    for r in reports {
        let (state, detail) = match &r.state {
            State::Cached => ("cached", String::new()),
            State::Ran if r.outcome.start_step > 0 => (
                "ran",
                format!(
                    "resumed mid-epoch: after step {} of epoch {}",
                    r.outcome.start_step,
                    r.outcome.start_epoch + 1
                ),
            ),
            State::Ran => ("ran", String::new()),
            State::Failed(e) => ("failed", e.to_string()),
            State::NotRun(why) => ("not run", why.clone()),
        };
        let o = &r.outcome;
        let _ = writeln!(
            last,
            "{},{state},{},{},{},{},\"{}\"",
            r.display.replace(',', ";"),
            o.start_epoch,
            o.resumed_from,
            o.steps_run,
            o.passes_run,
            detail.replace('"', "'")
        );
    }
    write_file(&dir.join("last-run.csv"), last.as_bytes())?;
    let plots = crate::plots::write_all(&dir.join("plots"), study, reports, cache)?;
    let rows = crate::compare::rows(study, reports);

    let (mut comparison, comparison_csv) = crate::compare::tables(&rows, &study.report.baseline);
    if !study.report.tables.is_empty() {
        comparison = format!(
            "{}\n{comparison}",
            crate::compare::pivots(&rows, &study.report.tables)
        );
    }
    write_file(&dir.join("comparison.csv"), comparison_csv.as_bytes())?;
    if !study.report.claims.is_empty() {
        let (claims, claims_csv) = crate::claims::table(&study.report.claims, &rows);
        write_file(&dir.join("claims.md"), claims.as_bytes())?;
        write_file(&dir.join("claims.csv"), claims_csv.as_bytes())?;
        comparison =
            format!("**Claims** (paired 95% intervals over seeds)\n\n{claims}\n{comparison}");
    }
    write_file(
        &dir.join("README.md"),
        page(study, reports, prov, &comparison, &plots).as_bytes(),
    )?;
    let mut md = markdown(study, reports, prov);
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for p in &plots {
            let _ = writeln!(md, "![{p}](plots/{p})\n");
        }
    }
    write_file(&dir.join("summary.md"), md.as_bytes())?;
    write_file(
        &dir.join("provenance.json"),
        serde_json::to_string_pretty(prov)
            .expect("serialises")
            .as_bytes(),
    )?;
    Ok(())
}

/// The study's page (`README.md`, which GitHub renders): provenance, the
/// comparison table, every plot, and where the rest is.
fn page(
    study: &Study,
    reports: &[StageReport],
    prov: &Provenance,
    comparison: &str,
    plots: &[String],
) -> String {
    let mut md = String::new();
    let title = study
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(md, "# {title}\n");
    if !study.header.is_empty() {
        let _ = writeln!(md, "{}\n", study.header.join(" "));
    }
    let done = reports.iter().filter(|r| r.summary.is_some()).count();
    let _ = writeln!(
        md,
        "Study `{}`; {done} of {} stages complete. Made by `{}` at commit `{}` on {} \
         (dataset fingerprint `{}`), device {}, runner {}. `runner report {}` rebuilds this \
         folder from the cache.\n",
        study.file.display(),
        reports.len(),
        prov.command,
        prov.commit,
        prov.dataset,
        prov.fingerprint,
        prov.device,
        prov.runner_version,
        study.file.display(),
    );
    md.push_str("## Comparison\n\nMean ± sample std over seeds, n = runs completed.\n\n");
    md.push_str(comparison);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in plots {
            let _ = writeln!(md, "![{p}](plots/{p})\n");
        }
    }
    md.push_str(
        "\nEvery run's numbers: [summary.md](summary.md) and `summary.csv`; each stage's \
         rows (per epoch or step): `stages/`; the comparison as CSV: `comparison.csv`; \
         what this invocation computed: `last-run.csv`.\n",
    );
    md
}

/// Per study stage: one row per grid point, then mean +- std over seeds
/// for every setting of the other grid fields.
fn markdown(study: &Study, reports: &[StageReport], prov: &Provenance) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Results of {}\n", study.file.display());
    let _ = writeln!(
        md,
        "Command `{}`, commit `{}`, dataset {} (fingerprint `{}`), device {}.\n",
        prov.command, prov.commit, prov.dataset, prov.fingerprint, prov.device
    );
    let mut names: Vec<&str> = Vec::new();
    for s in &study.stages {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    for name in names {
        let rs: Vec<&StageReport> = reports
            .iter()
            .filter(|r| study.stages[r.index].name == name)
            .collect();
        let coords: BTreeSet<&String> = rs
            .iter()
            .flat_map(|r| study.stages[r.index].coords.keys())
            .collect();
        let metrics: BTreeSet<&String> = rs
            .iter()
            .filter_map(|r| r.summary.as_ref())
            .flat_map(|s| s.keys())
            .collect();
        let _ = writeln!(
            md,
            "## {name} ({})\n",
            study.stages[rs[0].index].spec.kind()
        );
        let mut head = String::from("|");
        for c in &coords {
            let _ = write!(head, " {c} |");
        }
        for m in &metrics {
            let _ = write!(head, " {m} |");
        }
        let _ = writeln!(md, "{head}");
        let _ = writeln!(md, "|{}", "---|".repeat(coords.len() + metrics.len()));
        for r in &rs {
            let st = &study.stages[r.index];
            let mut row = String::from("|");
            for c in &coords {
                let _ = write!(
                    row,
                    " {} |",
                    st.coords.get(*c).map(|v| v.to_string()).unwrap_or_default()
                );
            }
            for m in &metrics {
                let v = match (&r.summary, &r.state) {
                    (Some(s), _) => s.get(*m).map(|v| fmt(*v)).unwrap_or_default(),
                    (None, State::Failed(_)) => "failed".into(),
                    (None, _) => "not run".into(),
                };
                let _ = write!(row, " {v} |");
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');
        if coords.contains(&"seed".to_string()) && rs.len() > 1 {
            let mut groups: BTreeMap<Vec<String>, Vec<&StageReport>> = BTreeMap::new();
            for r in &rs {
                let st = &study.stages[r.index];
                let g: Vec<String> = coords
                    .iter()
                    .filter(|c| c.as_str() != "seed")
                    .map(|c| st.coords.get(*c).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                groups.entry(g).or_default().push(r);
            }
            let other: Vec<&&String> = coords.iter().filter(|c| c.as_str() != "seed").collect();
            let _ = writeln!(md, "Mean ± std over seeds:\n");
            let mut head = String::from("|");
            for c in &other {
                let _ = write!(head, " {c} |");
            }
            let _ = write!(head, " seeds |");
            for m in &metrics {
                let _ = write!(head, " {m} |");
            }
            let _ = writeln!(md, "{head}");
            let _ = writeln!(md, "|{}", "---|".repeat(other.len() + 1 + metrics.len()));
            for (g, members) in groups {
                let mut row = String::from("|");
                for v in &g {
                    let _ = write!(row, " {v} |");
                }
                let done: Vec<&&StageReport> =
                    members.iter().filter(|r| r.summary.is_some()).collect();
                let _ = write!(row, " {}/{} |", done.len(), members.len());
                for m in &metrics {
                    let xs: Vec<f64> = done
                        .iter()
                        .filter_map(|r| r.summary.as_ref()?.get(*m).copied())
                        .collect();
                    if xs.is_empty() {
                        row.push_str(" |");
                    } else {
                        let (mean, sd) = crate::stats::mean_std(&xs);
                        let _ = write!(row, " {} ± {} |", fmt(mean), fmt(sd));
                    }
                }
                let _ = writeln!(md, "{row}");
            }
            md.push('\n');
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_folder_follows_the_studies_tree() {
        assert_eq!(
            default_dir(Path::new("studies/quick/escape.ron")),
            PathBuf::from("results/quick/escape")
        );
        assert_eq!(
            default_dir(Path::new("/x/studies/escape.ron")),
            PathBuf::from("results/escape")
        );
        assert_eq!(
            default_dir(Path::new("/tmp/my.ron")),
            PathBuf::from("results/my")
        );
    }

    #[test]
    fn sample_std() {
        let (m, s) = crate::stats::mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
    }
}
