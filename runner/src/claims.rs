//! Claims a study tests, each decided by a paired difference over seeds:
//! `report: (claims: [Claim(...)])`. The same seed gives both stages the
//! same initialisation and data order, so each claim compares `a` and `b`
//! seed by seed, with a 95% Student-t interval (the one of
//! [`crate::compare::paired`]) over the seeds both completed:
//!
//! - `expect: Higher` (a > b): reproduced when the interval lies above 0,
//!   not reproduced when below, inconclusive when it holds 0; `Lower` the
//!   mirror image; `Same`: no difference detected when the interval holds
//!   0 (the interval then bounds the difference), else the side found;
//!   `Describe`: the interval only.
//! - `transform: LogRatio` compares `ln a - ln b` (for positive measures
//!   on a ratio scale) and shows the ratio `a / b`.
//! - Escape steps are censored at the run's budget: with `censored:
//!   AsBudget` a run that did not escape counts as the steps it ran, and
//!   the line says how many did so (the difference is then a bound);
//!   otherwise such a claim is not computed.
//!
//! The results folder gets `claims.md` and `claims.csv`; `summary.md` and
//! the README page show the table first.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::compare::{Interval, Row, paired};
pub use crate::study::{Censored, Claim, Expect, Transform};

/// A claim decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// The interval on the compared scale, or why there is none.
    pub interval: Result<(Interval, usize), String>,
    pub verdict: String,
    /// Runs counted at their budget, on each side, among the seeds compared.
    pub censored: (usize, usize),
}

impl Claim {
    /// The claims this one stands for: itself, or one per `each` value.
    pub fn expanded(&self) -> Vec<Claim> {
        if self.each.is_empty() {
            return vec![self.clone()];
        }
        self.each
            .iter()
            .map(|v| Claim {
                claim: self.claim.replace("{each}", v),
                a: self.a.replace("{each}", v),
                b: self.b.replace("{each}", v),
                each: Vec::new(),
                ..self.clone()
            })
            .collect()
    }

    /// The rows' labels this claim names.
    pub fn labels(&self) -> [&str; 2] {
        [&self.a, &self.b]
    }

    /// Decides the claim from the study's rows.
    pub fn decide(&self, rows: &[Row]) -> Decided {
        let side = |label: &str, measure: &str| -> Result<BTreeMap<u64, (f64, bool)>, String> {
            let row = rows
                .iter()
                .find(|r| r.label() == label)
                .ok_or_else(|| format!("`{label}` has no completed runs"))?;
            self.values(row, measure)
        };
        let b_measure = self.b_measure.as_deref().unwrap_or(&self.measure);
        let sides = side(&self.a, &self.measure).and_then(|a| Ok((a, side(&self.b, b_measure)?)));
        let (a, b) = match sides {
            Ok(s) => s,
            Err(why) => {
                return Decided {
                    verdict: "not computed".into(),
                    interval: Err(why),
                    censored: (0, 0),
                };
            }
        };
        let seeds: Vec<u64> = a.keys().filter(|s| b.contains_key(s)).copied().collect();
        let t = |v: f64| match self.transform {
            Transform::Difference => v,
            Transform::LogRatio => v.ln(),
        };
        let xa: Vec<f64> = seeds.iter().map(|s| t(a[s].0)).collect();
        let xb: Vec<f64> = seeds.iter().map(|s| t(b[s].0)).collect();
        // Runs counted at their budget, among the seeds compared.
        let at_budget = |m: &BTreeMap<u64, (f64, bool)>| seeds.iter().filter(|s| m[s].1).count();
        let (ca, cb) = (at_budget(&a), at_budget(&b));
        let interval = match paired(&xa, &xb) {
            Some(i) if i.lo.is_finite() && i.hi.is_finite() => Ok((i, seeds.len())),
            Some(_) => Err("a value is not positive (log ratio)".into()),
            None => Err(format!("n = {}: too few seeds in both", seeds.len())),
        };
        let verdict = match &interval {
            Err(_) => "inconclusive".into(),
            Ok((i, _)) => verdict(self.expect, i),
        };
        Decided {
            interval,
            verdict,
            censored: (ca, cb),
        }
    }

    /// `measure` of `row` by seed, each with whether it is a run counted
    /// at its budget.
    fn values(&self, row: &Row, measure: &str) -> Result<BTreeMap<u64, (f64, bool)>, String> {
        let mut out = BTreeMap::new();
        let censoring = row.censoring.filter(|c| c.applies_to(measure));
        for (seed, m) in &row.runs {
            let reached = censoring.and_then(|c| Some((c, *m.get(c.reached)?)));
            match (m.get(measure), reached) {
                (_, Some((c, r))) if r != 1.0 => match self.censored {
                    Censored::Refuse => {
                        return Err(format!(
                            "`{}`: a run did not reach `{}` (seed {seed}: not {}); `censored: AsBudget` counts it as its `{}`",
                            row.label(),
                            c.measure,
                            c.verb,
                            c.budget
                        ));
                    }
                    Censored::AsBudget => {
                        let steps = m.get(c.budget).copied().ok_or_else(|| {
                            format!("`{}`: no `{}` for seed {seed}", row.label(), c.budget)
                        })?;
                        out.insert(*seed, (steps, true));
                    }
                },
                (Some(v), _) => {
                    out.insert(*seed, (*v, false));
                }
                (None, _) => {}
            }
        }
        if out.is_empty() {
            return Err(format!("`{}` has no `{measure}`", row.label()));
        }
        Ok(out)
    }

    /// The interval as shown, scaled or as a ratio, its three numbers with
    /// the decimals that give the largest four significant digits.
    fn show(&self, i: &Interval, n: usize) -> String {
        let f = |v: f64| match self.transform {
            Transform::Difference => v * self.scale,
            Transform::LogRatio => v.exp(),
        };
        let largest = [i.diff, i.lo, i.hi]
            .iter()
            .fold(0f64, |m, v| m.max(f(*v).abs()));
        let d = if largest > 0.0 {
            (3 - largest.log10().floor() as i32).clamp(0, 8) as usize
        } else {
            3
        };
        let g = |v: f64| match self.transform {
            Transform::Difference => format!("{:+.*}", d, f(v)),
            Transform::LogRatio => format!("{:.*}", d, f(v)),
        };
        let unit = match (self.transform, self.unit.is_empty()) {
            (Transform::LogRatio, _) => " (ratio)".to_string(),
            (_, true) => String::new(),
            (_, false) => format!(" {}", self.unit),
        };
        format!("{}{unit} [{}, {}] (n = {n})", g(i.diff), g(i.lo), g(i.hi))
    }
}

/// The verdict of an interval under `expect` (module docs).
pub fn verdict(expect: Expect, i: &Interval) -> String {
    let (above, below) = (i.lo > 0.0, i.hi < 0.0);
    match expect {
        Expect::Higher if above => "reproduced",
        Expect::Higher if below => "not reproduced",
        Expect::Lower if below => "reproduced",
        Expect::Lower if above => "not reproduced",
        Expect::Higher | Expect::Lower => "inconclusive",
        Expect::Same if above => "not reproduced (a higher)",
        Expect::Same if below => "not reproduced (a lower)",
        Expect::Same => "no difference detected (the interval bounds it)",
        Expect::Describe => "descriptive",
    }
    .to_string()
}

/// The claims table as markdown and CSV (text fields quoted).
pub fn table(claims: &[Claim], rows: &[Row]) -> (String, String) {
    let mut md = String::from(
        "| claim | compared | a − b [95% interval] (n seeds) | verdict |\n|---|---|---|---|\n",
    );
    let mut csv = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::NonNumeric)
        .from_writer(Vec::new());
    let header = [
        "claim",
        "a",
        "b",
        "measure",
        "b_measure",
        "transform",
        "diff",
        "lo",
        "hi",
        "n",
        "verdict",
        "censored_a",
        "censored_b",
    ];
    let mut record = |fields: &[String]| {
        csv.write_record(fields)
            .expect("writing CSV to memory cannot fail")
    };
    record(&header.map(String::from));
    for c in claims {
        let d = c.decide(rows);
        let bm = c.b_measure.as_deref().unwrap_or(&c.measure);
        let compared = if bm == c.measure {
            format!("{}: {} − {}", c.measure, c.a, c.b)
        } else {
            format!("{} of {} − {bm} of {}", c.measure, c.a, c.b)
        };
        let compared = match c.transform {
            Transform::Difference => compared,
            Transform::LogRatio => format!("ln ratio, {compared}"),
        };
        let mut shown = match &d.interval {
            Ok((i, n)) => c.show(i, *n),
            Err(why) => why.clone(),
        };
        if d.censored != (0, 0) {
            let _ = write!(
                shown,
                "; runs that did not escape counted at their budget: {} and {} (a bound)",
                d.censored.0, d.censored.1
            );
        }
        let _ = writeln!(md, "| {} | {compared} | {shown} | {} |", c.claim, d.verdict);
        let (diff, lo, hi, n) = match &d.interval {
            Ok((i, n)) => (
                i.diff.to_string(),
                i.lo.to_string(),
                i.hi.to_string(),
                n.to_string(),
            ),
            Err(_) => Default::default(),
        };
        record(&[
            c.claim.clone(),
            c.a.clone(),
            c.b.clone(),
            c.measure.clone(),
            bm.to_string(),
            format!("{:?}", c.transform),
            diff,
            lo,
            hi,
            n,
            d.verdict,
            d.censored.0.to_string(),
            d.censored.1.to_string(),
        ]);
    }
    let bytes = csv.into_inner().expect("an in-memory CSV writer flushes");
    (md, String::from_utf8(bytes).expect("the fields are UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::Coords;

    fn row(name: &str, runs: &[(u64, &[(&str, f64)])]) -> Row {
        Row {
            name: name.into(),
            point: Coords::new(),
            kind: "escape",
            censoring: <crate::stages::escape::EscapeSpec as crate::stages::Kind>::CENSORING,
            model: "resnet8".into(),
            headline: &[],
            runs: runs
                .iter()
                .map(|(s, m)| (*s, m.iter().map(|(k, v)| (k.to_string(), *v)).collect()))
                .collect(),
            planned: runs.len(),
        }
    }

    fn claim(a: &str, b: &str, measure: &str, expect: Expect) -> Claim {
        Claim {
            claim: format!("{a} vs {b}"),
            a: a.into(),
            b: b.into(),
            measure: measure.into(),
            b_measure: None,
            expect,
            transform: Transform::Difference,
            scale: 1.0,
            unit: String::new(),
            censored: Censored::Refuse,
            each: Vec::new(),
        }
    }

    #[test]
    fn each_expands_a_claim_per_value() {
        let mut c = claim("{each}-sam", "{each}-sgd", "test_acc", Expect::Higher);
        c.claim = "SAM > SGD, {each}".into();
        c.each = vec!["resnet18".into(), "wrn28-10".into()];
        let e = c.expanded();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[1].claim.as_str(), e[1].a.as_str(), e[1].b.as_str()),
            ("SAM > SGD, wrn28-10", "wrn28-10-sam", "wrn28-10-sgd")
        );
        assert!(e.iter().all(|x| x.each.is_empty()));
    }

    /// Paired by seed over the seeds both have: differences 1, 2, 3, 4
    /// (seed 9 only in `a`, left out) give 2.5 ± 2.0543 (the hand
    /// computation of `compare::tests`), above 0.
    #[test]
    fn a_claim_is_decided_by_the_paired_interval() {
        let rows = [
            row(
                "sam",
                &[
                    (0, &[("acc", 11.0)]),
                    (1, &[("acc", 22.0)]),
                    (2, &[("acc", 33.0)]),
                    (3, &[("acc", 44.0)]),
                    (9, &[("acc", 0.0)]),
                ],
            ),
            row(
                "sgd",
                &[
                    (0, &[("acc", 10.0)]),
                    (1, &[("acc", 20.0)]),
                    (2, &[("acc", 30.0)]),
                    (3, &[("acc", 40.0)]),
                ],
            ),
        ];
        let d = claim("sam", "sgd", "acc", Expect::Higher).decide(&rows);
        let (i, n) = d.interval.clone().unwrap();
        assert_eq!(n, 4);
        assert!(
            (i.diff - 2.5).abs() < 1e-12 && (i.hi - i.diff - 2.0543).abs() < 1e-4,
            "{i:?}"
        );
        assert_eq!(d.verdict, "reproduced");
        assert_eq!(
            claim("sam", "sgd", "acc", Expect::Lower)
                .decide(&rows)
                .verdict,
            "not reproduced"
        );
        assert_eq!(
            claim("sgd", "sam", "acc", Expect::Same)
                .decide(&rows)
                .verdict,
            "not reproduced (a lower)"
        );
        let (md, csv) = table(&[claim("sam", "sgd", "acc", Expect::Higher)], &rows);
        assert!(
            md.contains("| +2.500 [+0.446, +4.554] (n = 4) | reproduced |"),
            "{md}"
        );
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .contains(",4,\"reproduced\",0,0"),
            "{csv}"
        );
        // One common seed: no interval.
        let d = claim("sam", "missing", "acc", Expect::Higher).decide(&rows);
        assert!(d.interval.unwrap_err().contains("`missing`"));
    }

    /// An interval holding 0: inconclusive for a direction, "no difference
    /// detected" for `Same`.
    #[test]
    fn an_interval_holding_zero() {
        let rows = [
            row(
                "a",
                &[(0, &[("m", 1.0)]), (1, &[("m", 2.0)]), (2, &[("m", 3.0)])],
            ),
            row(
                "b",
                &[(0, &[("m", 1.5)]), (1, &[("m", 1.5)]), (2, &[("m", 3.5)])],
            ),
        ];
        assert_eq!(
            claim("a", "b", "m", Expect::Higher).decide(&rows).verdict,
            "inconclusive"
        );
        assert!(
            claim("a", "b", "m", Expect::Same)
                .decide(&rows)
                .verdict
                .starts_with("no difference")
        );
        assert_eq!(
            claim("a", "b", "m", Expect::Describe).decide(&rows).verdict,
            "descriptive"
        );
    }

    /// A run that did not escape: refused by default; with `AsBudget`
    /// counted as the steps it ran, and the count is reported.
    #[test]
    fn censored_escapes_count_at_their_budget_only_when_asked() {
        let esc = |s: f64| -> Vec<(&str, f64)> {
            vec![("escaped", 1.0), ("escape_steps", s), ("steps", s)]
        };
        let stuck: Vec<(&str, f64)> = vec![("escaped", 0.0), ("steps", 200.0)];
        let (e1, e2, e3) = (esc(20.0), esc(30.0), esc(25.0));
        let (f1, f2, f3) = (esc(2.0), esc(3.0), esc(4.0));
        let rows = [
            row("sgd", &[(0, &e1), (1, &e2), (2, &stuck), (3, &e3)]),
            row("sam", &[(0, &f1), (1, &f2), (2, &f3), (3, &f1)]),
        ];
        let mut c = claim("sgd", "sam", "escape_steps", Expect::Higher);
        let d = c.decide(&rows);
        assert!(
            d.interval
                .unwrap_err()
                .contains("did not reach `escape_steps`")
        );
        c.censored = Censored::AsBudget;
        let d = c.decide(&rows);
        assert_eq!(d.censored, (1, 0));
        let (i, n) = d.interval.unwrap();
        assert_eq!(n, 4);
        assert!((i.diff - (18.0 + 27.0 + 196.0 + 23.0) / 4.0).abs() < 1e-12);
        let (md, _) = table(&[c], &rows);
        assert!(
            md.contains("counted at their budget: 1 and 0 (a bound)"),
            "{md}"
        );
    }

    /// Two measures of one stage, as a log ratio: ratios 0.5, 0.5, 0.5
    /// give exactly 0.5 (zero width), below 1.
    #[test]
    fn log_ratio_of_two_measures_of_one_stage() {
        let rows = [row(
            "line",
            &[
                (0, &[("w1", 2.0), ("w2", 1.0)]),
                (1, &[("w1", 4.0), ("w2", 2.0)]),
                (2, &[("w1", 6.0), ("w2", 3.0)]),
            ],
        )];
        let mut c = claim("line", "line", "w2", Expect::Lower);
        c.b_measure = Some("w1".into());
        c.transform = Transform::LogRatio;
        let (md, _) = table(std::slice::from_ref(&c), &rows);
        assert!(
            md.contains("0.5000 (ratio) [0.5000, 0.5000] (n = 3)"),
            "{md}"
        );
        assert!(md.contains("ln ratio, w2 of line − w1 of line"), "{md}");
        // A zero-width interval strictly below 0 is resolved.
        assert_eq!(c.decide(&rows).verdict, "reproduced");
    }
}
