//! The comparison table of a study, as a paper would print it: one row per
//! stage and grid point (folded over seeds), the kind's headline measures
//! as mean ± std with n, and, where the study names baselines
//! (`report: (baseline: [...])`), each row's difference to its baseline
//! with a 95% interval over seeds: paired by seed where the seeds match,
//! Welch's otherwise. Escape steps are censored data: a row where a run
//! did not escape shows how many did, and its difference is not computed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::exec::StageReport;
use crate::stages::Censoring;
use crate::study::{Coords, Study};

/// Mean, sample standard deviation and n.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(xs: &[f64]) -> Stats {
        let (mean, std) = crate::stats::mean_std(xs);
        Stats {
            mean,
            std,
            n: xs.len(),
        }
    }
}

/// A difference with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
    /// Paired by seed (else Welch).
    pub paired: bool,
    /// Degrees of freedom of the t quantile.
    pub df: f64,
    /// The standard error of `diff`.
    pub se: f64,
}

impl Interval {
    /// Whether the interval excludes 0.
    pub fn resolved(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// The difference as an estimate, for tests beyond the interval.
    pub fn estimate(&self) -> crate::stats::Estimate {
        crate::stats::Estimate {
            mean: self.diff,
            se: self.se,
            df: self.df,
        }
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
fn t975(df: f64) -> f64 {
    crate::stats::t_quantile(0.975, df)
}

/// The 95% paired-t interval of the mean of `a_i - b_i` (n >= 2).
pub fn paired(a: &[f64], b: &[f64]) -> Option<Interval> {
    paired_at(a, b, 0.95)
}

/// The paired-t interval at confidence `level` (0 < level < 1).
pub fn paired_at(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let s = Stats::of(&d);
    let df = (s.n - 1) as f64;
    let se = s.std / (s.n as f64).sqrt();
    let e = crate::stats::Estimate {
        mean: s.mean,
        se,
        df,
    };
    let (lo, hi) = e.interval(level);
    Some(Interval {
        diff: s.mean,
        lo,
        hi,
        paired: true,
        df,
        se,
    })
}

/// Welch's 95% interval of `mean(a) - mean(b)` (each n >= 2).
pub fn welch(a: &[f64], b: &[f64]) -> Option<Interval> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (sa, sb) = (Stats::of(a), Stats::of(b));
    let (va, vb) = (sa.std * sa.std / sa.n as f64, sb.std * sb.std / sb.n as f64);
    let se = (va + vb).sqrt();
    let diff = sa.mean - sb.mean;
    if se == 0.0 {
        return Some(Interval {
            diff,
            lo: diff,
            hi: diff,
            paired: false,
            df: f64::INFINITY,
            se,
        });
    }
    let df = (va + vb).powi(2) / (va * va / (sa.n - 1) as f64 + vb * vb / (sb.n - 1) as f64);
    let h = t975(df) * se;
    Some(Interval {
        diff,
        lo: diff - h,
        hi: diff + h,
        paired: false,
        df,
        se,
    })
}

/// One row: a stage at one grid point besides the seed, its runs by seed.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    /// The grid point without the seed.
    pub point: Coords,
    pub kind: &'static str,
    /// Its kind's censored measure, if any (`Kind::CENSORING`).
    pub censoring: Option<Censoring>,
    pub model: String,
    pub headline: &'static [&'static str],
    /// Seed (or 0 without a seed grid) to the run's summary, completed runs only.
    pub runs: BTreeMap<u64, BTreeMap<String, f64>>,
    /// Runs of the row in the study, complete or not.
    pub planned: usize,
}

impl Row {
    /// `name` or `name[rho=0.1]`.
    pub fn label(&self) -> String {
        crate::study::labelled(&self.name, &self.point)
    }

    /// The completed runs of this row among `reports`.
    pub fn members<'a>(&self, study: &Study, reports: &'a [StageReport]) -> Vec<&'a StageReport> {
        reports
            .iter()
            .filter(|r| r.summary.is_some())
            .filter(|r| {
                let st = &study.stages[r.index];
                st.name == self.name && st.point() == self.point
            })
            .collect()
    }

    /// The values of `measure` by seed (runs that have it).
    pub fn values(&self, measure: &str) -> BTreeMap<u64, f64> {
        self.runs
            .iter()
            .filter_map(|(s, m)| Some((*s, *m.get(measure)?)))
            .collect()
    }

    /// A kind with a censored measure: runs that reached it, of those
    /// completed, and what reaching it is called.
    fn reached(&self) -> Option<(usize, usize, &'static str)> {
        self.censoring.map(|c| {
            let k = self
                .runs
                .values()
                .filter(|m| m.get(c.reached).copied() == Some(1.0))
                .count();
            (k, self.runs.len(), c.verb)
        })
    }
}

/// The study's rows, in the order of its stages.
pub fn rows(study: &Study, reports: &[StageReport]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in reports {
        let stage = &study.stages[r.index];
        let point = stage.point();
        let seed = stage.coords.get("seed").map_or(0, |s| *s as u64);
        let i = match out
            .iter()
            .position(|row| row.name == stage.name && row.point == point)
        {
            Some(i) => i,
            None => {
                out.push(Row {
                    name: stage.name.clone(),
                    point,
                    kind: stage.spec.kind(),
                    censoring: stage.spec.censoring(),
                    model: stage.spec.model().to_string(),
                    headline: stage.spec.headline(),
                    runs: BTreeMap::new(),
                    planned: 0,
                });
                out.len() - 1
            }
        };
        out[i].planned += 1;
        if let Some(s) = &r.summary {
            out[i].runs.insert(seed, s.clone());
        }
    }
    out
}

/// The baseline row of `row`: a row of a baseline stage of the same kind
/// and model (not the row itself), agreeing on the grid fields both have.
pub fn baseline_of<'a>(row: &Row, rows: &'a [Row], baselines: &[String]) -> Option<&'a Row> {
    rows.iter().find(|b| {
        baselines.contains(&b.name)
            && b.name != row.name
            && b.kind == row.kind
            && b.model == row.model
            && b.point
                .iter()
                .all(|(k, v)| row.point.get(k).is_none_or(|w| w == v))
    })
}

/// The difference of `measure` between a row and its baseline, or why not.
pub fn difference(row: &Row, base: &Row, measure: &str) -> Result<Interval, String> {
    if let (Some((k, n, verb)), Some((kb, nb, _))) = (row.reached(), base.reached())
        && (k < n || kb < nb)
    {
        return Err(format!("censored ({k}/{n} and {kb}/{nb} {verb})"));
    }
    let (a, b) = (row.values(measure), base.values(measure));
    let same_seeds = a.len() >= 2 && a.keys().eq(b.keys());
    let (xa, xb): (Vec<f64>, Vec<f64>) =
        (a.values().copied().collect(), b.values().copied().collect());
    let interval = if same_seeds {
        paired(&xa, &xb)
    } else {
        welch(&xa, &xb)
    };
    interval.ok_or_else(|| format!("n = {} and {}: too few runs", xa.len(), xb.len()))
}

/// A number as tables show it: 4 significant decimals, whole numbers as such.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// A cell: `mean ± std (n)`; escape steps with the share that escaped.
fn cell(row: &Row, measure: &str) -> String {
    let xs: Vec<f64> = row.values(measure).into_values().collect();
    let reached = row
        .reached()
        .filter(|_| row.censoring.is_some_and(|c| c.applies_to(measure)));
    if xs.is_empty() {
        return match reached {
            Some((0, n, verb)) if n > 0 => format!("none {verb} (0/{n})"),
            _ => "–".into(),
        };
    }
    let s = Stats::of(&xs);
    let base = if s.n > 1 {
        format!("{} ± {} (n={})", num(s.mean), num(s.std), s.n)
    } else {
        format!("{} (n=1)", num(s.mean))
    };
    match reached {
        Some((k, n, verb)) if k < n => format!("{base}; {k}/{n} {verb}, the rest censored"),
        _ => base,
    }
}

/// The comparison tables, as markdown and as CSV: one table per kind.
pub fn tables(rows: &[Row], baselines: &[String]) -> (String, String) {
    let mut md = String::new();
    let mut csv =
        String::from("stage,kind,measure,mean,std,n,baseline,diff,lo,hi,paired,resolved\n");
    let mut kinds: Vec<&'static str> = Vec::new();
    for r in rows {
        if !kinds.contains(&r.kind) {
            kinds.push(r.kind);
        }
    }
    for kind in kinds {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.kind == kind).collect();
        let measures: Vec<&str> = mine[0]
            .headline
            .iter()
            .copied()
            .filter(|m| mine.iter().any(|r| !r.values(m).is_empty()) || *m == "escape_steps")
            .collect();
        if measures.is_empty() {
            continue;
        }
        let compare = !baselines.is_empty()
            && mine
                .iter()
                .any(|r| baseline_of(r, rows, baselines).is_some());
        let _ = write!(md, "| {kind} stage | runs |");
        for m in &measures {
            let _ = write!(md, " {m} |");
        }
        if compare {
            let _ = write!(md, " {} − baseline [95% interval] |", measures[0]);
        }
        md.push('\n');
        let cols = 2 + measures.len() + compare as usize;
        let _ = writeln!(md, "|{}", "---|".repeat(cols));
        for r in &mine {
            // The row's baseline and its difference, computed once.
            let versus =
                baseline_of(r, rows, baselines).map(|b| (b, difference(r, b, measures[0])));
            let _ = write!(md, "| {} | {}/{} |", r.label(), r.runs.len(), r.planned);
            for m in &measures {
                let _ = write!(md, " {} |", cell(r, m));
                let xs: Vec<f64> = r.values(m).into_values().collect();
                if xs.is_empty() {
                    continue;
                }
                let s = Stats::of(&xs);
                let field = |t: String| t.replace(',', ";");
                let _ = write!(
                    csv,
                    "{},{kind},{m},{},{},{},",
                    field(r.label()),
                    s.mean,
                    s.std,
                    s.n
                );
                let _ = match (m == &measures[0], &versus) {
                    (true, Some((b, Ok(i)))) => writeln!(
                        csv,
                        "{},{},{},{},{},{}",
                        field(b.label()),
                        i.diff,
                        i.lo,
                        i.hi,
                        i.paired,
                        i.resolved()
                    ),
                    (true, Some((b, Err(_)))) => writeln!(csv, "{},,,,,", field(b.label())),
                    _ => writeln!(csv, ",,,,,"),
                };
            }
            if compare {
                let text = match &versus {
                    None => "–".to_string(),
                    Some((b, Ok(i))) => {
                        let t = format!(
                            "{}{} [{}, {}] vs {}{}",
                            if i.diff >= 0.0 { "+" } else { "" },
                            num(i.diff),
                            num(i.lo),
                            num(i.hi),
                            b.label(),
                            if i.paired { ", paired" } else { ", Welch" }
                        );
                        if i.resolved() { format!("**{t}**") } else { t }
                    }
                    Some((_, Err(why))) => why.clone(),
                };
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
    if !baselines.is_empty() {
        md.push_str(
            "Differences in **bold** have a 95% interval that excludes 0 (t intervals over \
             seeds: paired where both rows ran the same seeds, Welch's otherwise); the others \
             cannot be told from seed-to-seed noise at this n.\n",
        );
    }
    (md, csv)
}

/// The study's laid-out tables (`report: (tables: [...])`) as markdown;
/// a table with `thesis:` gets, beside each column, the thesis' printed
/// cell (`crate::thesis`, `results/thesis/tables.csv`) in its own units.
pub fn pivots(rows: &[Row], tables: &[crate::study::PivotTable]) -> String {
    let mut md = String::new();
    for t in tables {
        let _ = writeln!(
            md,
            "**{}** ({}, mean ± std over seeds, n)\n",
            t.title, t.measure
        );
        let _ = write!(md, "| |");
        for c in &t.columns {
            let _ = write!(md, " {c} |");
            if let Some(th) = &t.thesis {
                let _ = write!(md, " thesis ({}) |", crate::thesis::unit(&th.table));
            }
        }
        md.push('\n');
        let per = if t.thesis.is_some() { 2 } else { 1 };
        let _ = writeln!(md, "|{}", "---|".repeat(per * t.columns.len() + 1));
        for (ri, r) in t.rows.iter().enumerate() {
            let _ = write!(md, "| {r} |");
            for (ci, c) in t.columns.iter().enumerate() {
                let label = t.cell(r, c);
                let text = rows
                    .iter()
                    .find(|row| row.label() == label)
                    .map_or("–".to_string(), |row| cell(row, &t.measure));
                let _ = write!(md, " {text} |");
                if let Some(th) = &t.thesis {
                    let _ = write!(md, " {} |", thesis_cell(th, &t.columns, ri, ci));
                }
            }
            md.push('\n');
        }
        if let Some(th) = &t.thesis {
            let _ = writeln!(
                md,
                "\nThesis columns: Table {} as printed ({}, mean ± std over n seeds; \
                 `results/thesis/tables.csv`, where its README says what the text leaves open).",
                th.table, th.dataset
            );
        }
        md.push('\n');
    }
    md
}

/// The thesis' cell beside row `ri`, column `ci` of a laid-out table.
fn thesis_cell(
    th: &crate::study::ThesisColumns,
    columns: &[String],
    ri: usize,
    ci: usize,
) -> String {
    let Some(method) = th.rows.get(ri).filter(|m| !m.is_empty()) else {
        return "–".into();
    };
    let model = th.model(columns, ci);
    match crate::thesis::find(&th.table, &th.dataset, model, method) {
        Some(r) => format!("{:.2} ± {:.2} (n={})", r.mean, r.std, r.n),
        None => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paired t interval computed by hand: differences 1, 2, 3, 4 have
    /// mean 2.5, sd sqrt(5/3) = 1.2910, se 0.6455, t(3, 0.975) = 3.1824:
    /// 2.5 ± 2.0543. (The t quantiles here come from
    /// tests/reference/t_quantiles.py, which integrates the t density
    /// itself.)
    #[test]
    fn paired_interval_matches_the_hand_computation() {
        let a = [11.0, 22.0, 33.0, 44.0];
        let b = [10.0, 20.0, 30.0, 40.0];
        let i = paired(&a, &b).unwrap();
        assert!((i.diff - 2.5).abs() < 1e-12);
        assert!((i.hi - i.diff - 2.0543).abs() < 1e-4, "{i:?}");
        assert!((i.diff - i.lo - 2.0543).abs() < 1e-4);
        assert!(i.resolved() && i.paired && i.df == 3.0);
        // Two seeds: t(1, 0.975) = 12.706.
        let i = paired(&[1.0, 2.0], &[0.0, 0.0]).unwrap();
        let h = 12.7062 * (0.5f64).sqrt() / 2f64.sqrt();
        assert!((i.hi - 1.5 - h).abs() < 1e-3, "{i:?}");
        assert!(paired(&[1.0], &[0.0]).is_none());
    }

    /// Welch by hand: a = (1, 2, 3), b = (4, 6, 8, 10): means 2 and 7, variances
    /// 1 and 6.6667, se^2 = 1/3 + 6.6667/4 = 2.0, df = 4 / (1/9/2 + 1.6667^2/3)
    /// = 4 / 0.98148 = 4.0755, t(4.0755, 0.975) = 2.75628 -> -5 ± 3.89798.
    #[test]
    fn welch_interval_matches_the_hand_computation() {
        let i = welch(&[1.0, 2.0, 3.0], &[4.0, 6.0, 8.0, 10.0]).unwrap();
        assert!((i.diff + 5.0).abs() < 1e-12);
        assert!((i.df - 4.0755).abs() < 1e-3, "{i:?}");
        assert!((i.hi - i.diff - 3.89798).abs() < 1e-4, "{i:?}");
        assert!(!i.paired && i.resolved());
    }

    fn row(name: &str, kind: &'static str, runs: &[(u64, &[(&str, f64)])]) -> Row {
        Row {
            name: name.into(),
            point: Coords::new(),
            kind,
            censoring: if kind == "escape" {
                <crate::stages::escape::EscapeSpec as crate::stages::Kind>::CENSORING
            } else {
                None
            },
            model: "resnet8".into(),
            headline: if kind == "escape" {
                &["escape_steps", "escaped"]
            } else {
                &["test_acc"]
            },
            runs: runs
                .iter()
                .map(|(s, m)| (*s, m.iter().map(|(k, v)| (k.to_string(), *v)).collect()))
                .collect(),
            planned: runs.len(),
        }
    }

    /// A censored escape row is never averaged as if it escaped: its cell
    /// says how many escaped and the difference is not computed.
    #[test]
    fn censored_escape_runs_are_not_compared() {
        let sgd = row(
            "sgd",
            "escape",
            &[
                (0, &[("escaped", 0.0)]),
                (1, &[("escaped", 1.0), ("escape_steps", 150.0)]),
            ],
        );
        let sam = row(
            "sam",
            "escape",
            &[
                (0, &[("escaped", 1.0), ("escape_steps", 3.0)]),
                (1, &[("escaped", 1.0), ("escape_steps", 5.0)]),
            ],
        );
        assert!(
            cell(&sgd, "escape_steps").contains("1/2 escaped"),
            "{}",
            cell(&sgd, "escape_steps")
        );
        let e = difference(&sam, &sgd, "escape_steps").unwrap_err();
        assert!(e.contains("censored"), "{e}");
        let rows = vec![sgd, sam];
        let (md, _) = tables(&rows, &["sgd".to_string()]);
        assert!(md.contains("censored (2/2 and 1/2 escaped)"), "{md}");
        // None escaped: said, not averaged.
        let none = row("x", "escape", &[(0, &[("escaped", 0.0)])]);
        assert_eq!(cell(&none, "escape_steps"), "none escaped (0/1)");
    }

    /// A paper-style table: methods by models, from stage names.
    #[test]
    fn pivot_tables_lay_out_rows_by_columns() {
        let rows = vec![
            row(
                "r8-sgd",
                "train",
                &[(0, &[("test_acc", 0.5)]), (1, &[("test_acc", 0.7)])],
            ),
            row("r8-sam", "train", &[(0, &[("test_acc", 0.6)])]),
            row("w-sgd", "train", &[(0, &[("test_acc", 0.8)])]),
        ];
        let t = crate::study::PivotTable {
            title: "Table 5.2".into(),
            measure: "test_acc".into(),
            rows: vec!["sgd".into(), "sam".into()],
            columns: vec!["r8".into(), "w".into()],
            stage: "{column}-{row}".into(),
            thesis: None,
        };
        let md = pivots(&rows, &[t]);
        assert!(md.contains("| | r8 | w |"), "{md}");
        assert!(
            md.contains("| sgd | 0.6000 ± 0.1414 (n=2) | 0.8000 (n=1) |"),
            "{md}"
        );
        assert!(md.contains("| sam | 0.6000 (n=1) | – |"), "{md}");
    }

    /// A table with the thesis' numbers: each column followed by the
    /// thesis' printed cell (Table 5.2, CIFAR-10: SGD 95.40 ± 0.14, SAM
    /// 96.13 ± 0.08 for ResNet-18), "–" where the thesis has no row.
    #[test]
    fn pivot_tables_show_the_thesis_beside_each_column() {
        let rows = vec![
            row(
                "resnet18-sgd",
                "train",
                &[(0, &[("test_acc", 0.5)]), (1, &[("test_acc", 0.7)])],
            ),
            row("resnet18-sam", "train", &[(0, &[("test_acc", 0.6)])]),
        ];
        let t = crate::study::PivotTable {
            title: "Table 5.2".into(),
            measure: "test_acc".into(),
            rows: vec!["sgd".into(), "sam".into(), "other".into()],
            columns: vec!["resnet18".into()],
            stage: "{column}-{row}".into(),
            thesis: Some(crate::study::ThesisColumns {
                table: "5.2".into(),
                dataset: "cifar10".into(),
                rows: vec!["SGD".into(), "SAM".into(), "".into()],
                columns: vec![],
            }),
        };
        let md = pivots(&rows, &[t]);
        assert!(
            md.contains("| | resnet18 | thesis (%) |\n|---|---|---|"),
            "{md}"
        );
        assert!(
            md.contains("| sgd | 0.6000 ± 0.1414 (n=2) | 95.40 ± 0.14 (n=5) |"),
            "{md}"
        );
        assert!(
            md.contains("| sam | 0.6000 (n=1) | 96.13 ± 0.08 (n=5) |"),
            "{md}"
        );
        assert!(md.contains("| other | – | – |"), "{md}");
        assert!(
            md.contains("Thesis columns: Table 5.2 as printed (cifar10"),
            "{md}"
        );
    }

    #[test]
    fn rows_compare_with_the_baseline_of_their_model_and_mark_resolved_differences() {
        let sgd = row(
            "sgd",
            "train",
            &[(0, &[("test_acc", 0.50)]), (1, &[("test_acc", 0.52)])],
        );
        let sam = row(
            "sam",
            "train",
            &[(0, &[("test_acc", 0.60)]), (1, &[("test_acc", 0.62)])],
        );
        let mut other = row("wrn-sgd", "train", &[(0, &[("test_acc", 0.7)])]);
        other.model = "wrn16-2".into();
        let rows = vec![sgd, sam, other];
        let (md, csv) = tables(&rows, &["sgd".to_string()]);
        // Paired differences 0.10 and 0.10: zero spread, resolved.
        assert!(
            md.contains("**+0.1000 [0.1000, 0.1000] vs sgd, paired**"),
            "{md}"
        );
        assert!(baseline_of(&rows[2], &rows, &["sgd".to_string()]).is_none());
        assert!(
            csv.lines()
                .any(|l| l.starts_with("sam,train,test_acc,") && l.ends_with(",true,true")),
            "{csv}"
        );
    }
}
