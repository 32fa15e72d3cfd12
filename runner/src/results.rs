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
/// `last-run.csv` (what this invocation computed and what it took from the cache),
/// `metrics-long.csv` (every number in one long table) and `tensorboard/` (one
/// TensorBoard run per completed stage).
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
    let tables = stage_tables(study, reports, cache)?;
    let long = dir.join(LONG_FILE);
    write_file(
        &long,
        &long_csv(study, reports, &tables).map_err(io(&long))?,
    )?;
    write_tensorboard(dir, study, reports, cache, &tables)?;
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
        comparison = format!(
            "**Claims** (paired intervals over seeds; the notes under the table say how \
             `Same` and Holm's correction decide)\n\n{claims}\n{comparison}"
        );
    }
    let (computed_by, computed_csv) = entry_provenance(reports, cache);
    write_file(&dir.join("provenance.csv"), computed_csv.as_bytes())?;
    comparison = format!("{computed_by}\n{comparison}");
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

/// What computed each complete stage, from its cache entry's manifest
/// (commit, numerics, precision, device): `provenance.csv`, and a paragraph
/// for the page that says which combinations computed how many entries and
/// warns when a study mixes commits, numerics or devices (their numbers
/// round differently; the key leaves them out).
fn entry_provenance(reports: &[StageReport], cache: &Cache) -> (String, String) {
    let field = |m: &Option<crate::cache::Manifest>, k: &str| {
        m.as_ref()
            .and_then(|m| m.info.get(k).cloned())
            .unwrap_or_else(|| "unrecorded".into())
    };
    let quote = |v: &str| format!("\"{}\"", v.replace('"', "'"));
    let mut csv = String::from("stage,key,commit,numerics,precision,device,created\n");
    let mut groups: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.summary.is_some()) {
        let m = cache.manifest(&cache.entry_dir(&r.key));
        let (commit, numerics, precision) = (
            field(&m, "commit"),
            field(&m, "numerics"),
            field(&m, "precision"),
        );
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            quote(&r.display),
            r.key,
            commit,
            quote(&numerics),
            precision,
            field(&m, "device"),
            field(&m, "created")
        );
        *groups.entry((commit, numerics, precision)).or_default() += 1;
    }
    let mut md = String::from("**Computed by** (each entry's manifest; `provenance.csv`):");
    for ((commit, numerics, precision), n) in &groups {
        // Twelve digits, and the build's `+dirty` mark where it has one.
        let short = match commit.split_once('+') {
            Some((c, mark)) => format!("{}+{mark}", c.get(..12).unwrap_or(c)),
            None => commit.get(..12).unwrap_or(commit).to_string(),
        };
        let _ = write!(md, " {n} by commit `{short}` on {numerics} ({precision});");
    }
    md.pop();
    md.push_str(".\n");
    let distinct = |f: fn(&(String, String, String)) -> &String| {
        groups.keys().map(f).collect::<BTreeSet<_>>().len()
    };
    if distinct(|g| &g.1) > 1 {
        md.push_str(
            "\n**This study mixes numerics**: its entries were computed with different \
             processors, instruction sets, kernel paths or devices, which round differently; \
             a number may move in its last digits when recomputed elsewhere.\n",
        );
    }
    if distinct(|g| &g.0) > 1 {
        md.push_str(
            "\n**This study mixes code versions**: its entries were computed by different \
             commits (a cache entry is reused while its key holds).\n",
        );
    }
    (md, csv)
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
         rows (per epoch or step): `stages/`; every number of every stage in one long table \
         (stage, run, seed, grid point, step, epoch, metric, value): `metrics-long.csv`; \
         TensorBoard runs (`tensorboard --logdir tensorboard`): `tensorboard/`; the \
         comparison as CSV: `comparison.csv`; what this invocation computed: `last-run.csv`.\n",
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

/// The study's long metrics table, beside the other pages.
pub const LONG_FILE: &str = "metrics-long.csv";

/// The folder of the study's TensorBoard runs, one per completed stage.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// A completed stage's `metrics.csv`, its columns sorted by role.
#[derive(Debug)]
struct StageTable {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    step: Option<usize>,
    epoch: Option<usize>,
    /// Columns that index the rows (its kind's `Kind::INDEX` and any non-number).
    keys: Vec<usize>,
    /// The measured columns (numbers or empty), `step` and `epoch` excluded.
    values: Vec<usize>,
}

impl StageTable {
    /// `path`, or `None` when the stage writes no table (Distance).
    fn read(path: &Path, index: &[&str]) -> Result<Option<StageTable>> {
        if !path.is_file() {
            return Ok(None);
        }
        let bad = |e: csv::Error| crate::error::cache_err(path, e.to_string());
        let mut rd = csv::ReaderBuilder::new().from_path(path).map_err(bad)?;
        let header: Vec<String> = rd
            .headers()
            .map_err(bad)?
            .iter()
            .map(String::from)
            .collect();
        let mut rows = Vec::new();
        for rec in rd.records() {
            rows.push(
                rec.map_err(bad)?
                    .iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            );
        }
        let col = |n: &str| header.iter().position(|h| h == n);
        let (step, epoch) = (col("step"), col("epoch"));
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (i, h) in header.iter().enumerate() {
            if Some(i) == step || Some(i) == epoch {
                continue;
            }
            let text = rows
                .iter()
                .any(|r| !r[i].is_empty() && r[i].parse::<f64>().is_err());
            if text || index.contains(&h.as_str()) {
                keys.push(i);
            } else {
                values.push(i);
            }
        }
        Ok(Some(StageTable {
            header,
            rows,
            step,
            epoch,
            keys,
            values,
        }))
    }

    /// Rows over training or steps: a `step` or an `epoch` column.
    fn is_series(&self) -> bool {
        self.step.or(self.epoch).is_some()
    }

    /// A row's global step: its `step`, else its `epoch`.
    fn x(&self, row: &[String]) -> Option<i64> {
        let v = &row[self.step.or(self.epoch)?];
        v.parse::<i64>().ok().or_else(|| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        })
    }

    /// The `step` and `epoch` fields of the last row of a series.
    fn last(&self) -> (String, String) {
        let row = self.rows.last().filter(|_| self.is_series());
        let get = |c: Option<usize>| match (row, c) {
            (Some(r), Some(c)) => r[c].clone(),
            _ => String::new(),
        };
        (get(self.step), get(self.epoch))
    }
}

/// Each completed stage's table, in the order of `reports`.
fn stage_tables(
    study: &Study,
    reports: &[StageReport],
    cache: &Cache,
) -> Result<Vec<Option<StageTable>>> {
    reports
        .iter()
        .map(|r| match r.summary {
            Some(_) => StageTable::read(
                &cache.entry_dir(&r.key).join("metrics.csv"),
                study.stages[r.index].spec.index_columns(),
            ),
            None => Ok(None),
        })
        .collect()
}

/// One run name per report: the stage's file stem (`sam-rho0.1-seed2`,
/// as in `stages/`) with any character outside letters, digits and
/// `._=,+-` replaced by `_`; a name already taken gets `_2`, `_3`...
fn run_names(study: &Study, reports: &[StageReport]) -> Vec<String> {
    let mut taken = BTreeSet::new();
    reports
        .iter()
        .map(|r| {
            let base = safe_run_name(&study.stages[r.index].file_stem());
            let mut name = base.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{base}_{n}");
            }
            name
        })
        .collect()
}

/// `stem` with every character outside letters, digits and `._=,+-`
/// replaced by `_`, and `_` before a leading `.` (or as the whole name).
fn safe_run_name(stem: &str) -> String {
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// `metrics-long.csv`: one row per number, columns `stage, run, seed`,
/// the study's grid axes but the seed (one column each, sorted), `step,
/// epoch`, the index columns of the stages' tables (`split`, `alpha`...,
/// only those the study's tables have), `metric, value`. A summary value
/// is `summary/NAME` at the stage's last step and epoch. Values are the
/// entries' text, unchanged; an axis or index column whose name another
/// column has gets `grid_` or `table_` before it.
fn long_csv(
    study: &Study,
    reports: &[StageReport],
    tables: &[Option<StageTable>],
) -> std::io::Result<Vec<u8>> {
    const FIXED: &[&str] = &["stage", "run", "seed", "step", "epoch", "metric", "value"];
    let axes: BTreeSet<&String> = study
        .stages
        .iter()
        .flat_map(|s| s.coords.keys())
        .filter(|k| k.as_str() != "seed")
        .collect();
    let keys: BTreeSet<&str> = tables
        .iter()
        .flatten()
        .flat_map(|t| t.keys.iter().map(|&i| t.header[i].as_str()))
        .collect();
    let mut header: Vec<String> = vec!["stage".into(), "run".into(), "seed".into()];
    for a in &axes {
        let clash = FIXED.contains(&a.as_str()) || keys.contains(a.as_str());
        header.push(if clash {
            format!("grid_{a}")
        } else {
            a.to_string()
        });
    }
    header.extend(["step".into(), "epoch".into()]);
    for k in &keys {
        let clash = FIXED.contains(k);
        header.push(if clash {
            format!("table_{k}")
        } else {
            k.to_string()
        });
    }
    header.extend(["metric".into(), "value".into()]);
    let names = run_names(study, reports);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    for ((r, table), run) in reports.iter().zip(tables).zip(&names) {
        let Some(summary) = &r.summary else {
            continue;
        };
        let stage = &study.stages[r.index];
        let mut lead: Vec<String> = vec![stage.name.clone(), run.clone()];
        lead.push(
            stage
                .coords
                .get("seed")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
        for a in &axes {
            lead.push(
                stage
                    .coords
                    .get(*a)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            );
        }
        let mut record = |step: &str, epoch: &str, at: &BTreeMap<&str, &str>, m: &str, v: &str| {
            let mut rec = lead.clone();
            rec.push(step.into());
            rec.push(epoch.into());
            for k in &keys {
                rec.push(at.get(k).copied().unwrap_or_default().into());
            }
            rec.push(m.into());
            rec.push(v.into());
            w.write_record(&rec)
        };
        if let Some(t) = table {
            let cell =
                |row: &[String], c: Option<usize>| c.map(|c| row[c].clone()).unwrap_or_default();
            for row in &t.rows {
                let at: BTreeMap<&str, &str> = t
                    .keys
                    .iter()
                    .map(|&i| (t.header[i].as_str(), row[i].as_str()))
                    .collect();
                let (step, epoch) = (cell(row, t.step), cell(row, t.epoch));
                for &i in &t.values {
                    if !row[i].is_empty() {
                        record(&step, &epoch, &at, &t.header[i], &row[i])?;
                    }
                }
            }
        }
        let (step, epoch) = table.as_ref().map(StageTable::last).unwrap_or_default();
        for (m, v) in summary {
            record(
                &step,
                &epoch,
                &BTreeMap::new(),
                &format!("summary/{m}"),
                &v.to_string(),
            )?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())
}

fn tb_err(stage: &str) -> impl FnOnce(samlab_tensorboard::Error) -> crate::error::Error + '_ {
    move |e| match e {
        samlab_tensorboard::Error::Io { path, source } => io(&path)(source),
        e => crate::error::stage_err(stage, format!("TensorBoard run: {e}")),
    }
}

/// `tensorboard/RUN/` for every completed stage (names from [`run_names`]):
/// the entry's `spec.json` as text `settings` at step 0; every numeric
/// column of a table with a `step` or `epoch` column as scalars at that
/// step (the `step` column when there is one), tagged by the column's
/// name (and `/VALUE` of each index column the table has); the summary
/// as `summary/NAME` at the last step. Wall times are the running sum of
/// the table's `wall_s` (0 without one), never the clock, so the same
/// cache writes the same bytes. Written beside the folder, then swapped
/// in (runs of stages no longer in the study go).
fn write_tensorboard(
    dir: &Path,
    study: &Study,
    reports: &[StageReport],
    cache: &Cache,
    tables: &[Option<StageTable>],
) -> Result<()> {
    use samlab_tensorboard::EventWriter;
    let out = dir.join(TENSORBOARD_DIR);
    let tmp = dir.join(format!(".{TENSORBOARD_DIR}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let names = run_names(study, reports);
    for ((r, table), run) in reports.iter().zip(tables).zip(&names) {
        let Some(summary) = &r.summary else {
            continue;
        };
        let err = || tb_err(&r.display);
        let mut w = EventWriter::create(&tmp, run).map_err(err())?;
        let spec_path = cache.entry_dir(&r.key).join("spec.json");
        let spec = std::fs::read_to_string(&spec_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| serde_json::to_string_pretty(&v).expect("JSON values serialise"));
        let mut text = format!(
            "Stage `{}` ({}), cache entry `{}`.\n\n",
            r.display,
            study.stages[r.index].spec.kind(),
            r.key
        );
        match spec {
            Some(json) => {
                for line in json.lines() {
                    let _ = writeln!(text, "    {line}");
                }
            }
            None => text.push_str("(no readable spec.json in the entry)\n"),
        }
        w.add_text("settings", 0, &text, 0.0).map_err(err())?;
        let (mut last_step, mut wall) = (0i64, 0.0f64);
        if let Some(t) = table.as_ref().filter(|t| t.is_series()) {
            let wall_col = t.header.iter().position(|h| h == "wall_s");
            let index: Vec<usize> = t
                .keys
                .iter()
                .copied()
                .filter(|&i| {
                    study.stages[r.index]
                        .spec
                        .index_columns()
                        .contains(&t.header[i].as_str())
                })
                .collect();
            let mut scalars: Vec<usize> = t.values.clone();
            if t.step.is_some() {
                scalars.extend(t.epoch);
                scalars.sort();
            }
            for row in &t.rows {
                let Some(x) = t.x(row) else { continue };
                if let Some(dt) = wall_col.and_then(|c| row[c].parse::<f64>().ok())
                    && dt.is_finite()
                {
                    wall += dt;
                }
                last_step = last_step.max(x);
                let suffix: String = index.iter().map(|&i| format!("/{}", row[i])).collect();
                for &c in &scalars {
                    if let Ok(v) = row[c].parse::<f64>() {
                        let tag = format!("{}{suffix}", t.header[c]);
                        w.add_scalar(&tag, x, v as f32, wall).map_err(err())?;
                    }
                }
            }
        }
        for (m, v) in summary {
            w.add_scalar(&format!("summary/{m}"), last_step, *v as f32, wall)
                .map_err(err())?;
        }
        w.close().map_err(err())?;
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io(&out))?;
    }
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(())
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
    fn run_names_are_one_safe_folder_name() {
        assert_eq!(safe_run_name("sam-rho0.1-seed2"), "sam-rho0.1-seed2");
        assert_eq!(safe_run_name("a b/c\\d[é]"), "a_b_c_d___");
        assert_eq!(safe_run_name(".x"), "_.x");
        assert_eq!(safe_run_name(""), "_");
        for s in ["sam-rho0.1-seed2", "a b/c", ".x", "", "..", "x:y*?"] {
            assert!(samlab_tensorboard::valid_run_name(&safe_run_name(s)), "{s}");
        }
    }

    #[test]
    fn stage_table_columns_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        write_file(
            &p,
            b"alpha,split,images,loss,error\n-0.5,train,20,1.5,0.5\n-0.5,test,20,1.6,\n",
        )
        .unwrap();
        // Interpolate's index columns: `alpha` is a number, but indexes.
        let interpolate = <crate::stages::interpolate::InterpSpec as crate::stages::Kind>::INDEX;
        let t = StageTable::read(&p, interpolate).unwrap().unwrap();
        assert_eq!((t.step, t.epoch, t.is_series()), (None, None, false));
        assert_eq!(t.keys, [0, 1]);
        assert_eq!(t.values, [2, 3, 4]);
        // Read as another kind's table, it is a measure.
        let t = StageTable::read(&p, &[]).unwrap().unwrap();
        assert_eq!(t.keys, [1]);
        assert_eq!(t.last(), (String::new(), String::new()));

        write_file(&p, b"epoch,step,method,loss\n1,10,sgd,2.5\n2,20.0,sam,\n").unwrap();
        let t = StageTable::read(&p, &[]).unwrap().unwrap();
        assert!(t.is_series());
        // A column of words indexes rows; the step may be written as a float.
        assert_eq!((t.keys.clone(), t.values.clone()), (vec![2], vec![3]));
        assert_eq!(t.x(&t.rows[1]), Some(20));
        assert_eq!(t.last(), ("20.0".into(), "2".into()));

        assert!(
            StageTable::read(&dir.path().join("none.csv"), &[])
                .unwrap()
                .is_none()
        );
        write_file(&p, b"step,loss\n1,2\n2\n").unwrap();
        let e = StageTable::read(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("metrics.csv") && e.contains("line: 3"), "{e}");
    }

    #[test]
    fn sample_std() {
        let (m, s) = crate::stats::mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
    }
}
