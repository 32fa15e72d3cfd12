//! Claims a study tests, each decided by a paired difference over seeds:
//! `report: (claims: [Claim(...)])`. The same seed gives both stages the
//! same initialisation and data order, so each claim compares `a` and `b`
//! seed by seed, with a Student-t interval at the claim's `level` (default
//! 95%; alpha = 1 - level; the interval of [`crate::compare::paired_at`])
//! over the seeds both completed:
//!
//! - `expect: Higher` (a > b): reproduced when the interval lies above 0,
//!   not reproduced when below, inconclusive when it holds 0; `Lower` the
//!   mirror image; `Describe`: the interval only.
//! - `expect: Same(margin: M)`: equivalence within ±M (in the units shown,
//!   after `scale`; for `LogRatio` on the log scale) by two one-sided
//!   tests (TOST) at alpha: "equivalent" when the 1 - 2 alpha interval
//!   lies inside (-M, +M) (the standard TOST decision, the same one:
//!   [`crate::stats::Tost`]); otherwise "different" when the 1 - alpha
//!   interval excludes 0; otherwise "inconclusive". Equivalent wins when
//!   both hold (a nonzero difference smaller than the margin).
//! - `family: "F"`: the claims named F are corrected together by Holm's
//!   method ([`crate::stats::holm`]), separately for the two kinds of
//!   test: the tests of a difference (every claim's two-sided p-value,
//!   which is below alpha exactly when its interval excludes 0, or its
//!   `than` bound) and the
//!   equivalence tests (the `Same` claims' TOST p-values). The corrected
//!   verdict is that rule applied to the adjusted p-values; a claim that
//!   could not be computed counts with p = 1 (the family does not shrink).
//! - `each: [...]` with `at_least: k`: one claim about the cases, "the
//!   expectation holds in at least k of the n": each case is decided with
//!   Holm's correction over the n cases; reproduced when at least k cases
//!   are confirmed (reproduced or equivalent), not reproduced when more
//!   than n - k are refuted (not reproduced or different), inconclusive
//!   otherwise. The line also counts the cases whose point estimates agree
//!   (means in the claimed order: how a paper counts "7 out of 8").
//! - `than: x` moves the bound of `Higher`/`Lower` from 0 to `x` (in the
//!   units shown; with `LogRatio` a ratio, compared as `ln x`): the
//!   interval, its p-value and the Holm correction test `a - b` against
//!   `x` ("costs at most 0.5 of SAM": `Lower`, `LogRatio`, `than: 0.5`).
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

use crate::compare::{Interval, Row, paired_at};
use crate::stats::{Tost, holm};
pub use crate::study::{Censored, Claim, Expect, Transform};

/// A claim decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// The interval on the compared scale, or why there is none.
    pub interval: Result<(Interval, usize), String>,
    pub verdict: String,
    /// Runs counted at their budget, on each side, among the seeds compared.
    pub censored: (usize, usize),
    /// The two-sided p-value of "no difference" (with an interval), or of
    /// "a - b is the bound" with `than`. `claims.csv` has no column for
    /// the bound yet: its `p_difference` is against `than` where the claim
    /// sets one (the claim's text should say so).
    pub p_difference: Option<f64>,
    /// `Same`: the equivalence test on the compared scale.
    pub tost: Option<Tost>,
}

/// A verdict after Holm's correction, with the adjusted p-values.
#[derive(Clone, Debug, PartialEq)]
pub struct Corrected {
    pub verdict: String,
    pub p_difference: f64,
    pub p_equivalence: Option<f64>,
    /// How many tests of each kind the correction was over.
    pub m: usize,
}

/// An `at_least` claim decided: its cases and the counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Each case (its claim, expanded), decided and corrected.
    pub cases: Vec<(Claim, Decided, Corrected)>,
    /// Cases confirmed and refuted after the correction.
    pub confirmed: usize,
    pub refuted: usize,
    /// Cases whose point estimate is in the claimed direction (for `Same`:
    /// inside the margin), of those computed.
    pub agree: usize,
    pub computed: usize,
    pub verdict: String,
}

impl Claim {
    /// The claims this one stands for: itself, or one per `each` value
    /// (an `at_least` claim stays one claim about its cases).
    pub fn expanded(&self) -> Vec<Claim> {
        if self.each.is_empty() || self.at_least.is_some() {
            return vec![self.clone()];
        }
        self.cases()
    }

    /// One claim per `each` value, `{each}` replaced.
    fn cases(&self) -> Vec<Claim> {
        self.each
            .iter()
            .map(|v| Claim {
                claim: self.claim.replace("{each}", v),
                a: self.a.replace("{each}", v),
                b: self.b.replace("{each}", v),
                each: Vec::new(),
                at_least: None,
                ..self.clone()
            })
            .collect()
    }

    /// The rows' labels this claim names (every case's).
    pub fn labels(&self) -> Vec<String> {
        if self.each.is_empty() {
            return vec![self.a.clone(), self.b.clone()];
        }
        self.cases().into_iter().flat_map(|c| [c.a, c.b]).collect()
    }

    fn alpha(&self) -> f64 {
        1.0 - self.level
    }

    /// The margin on the compared scale (`Same` only).
    fn margin(&self) -> Option<f64> {
        match self.expect {
            Expect::Same { margin } => Some(match self.transform {
                Transform::Difference => margin / self.scale,
                Transform::LogRatio => margin,
            }),
            _ => None,
        }
    }

    /// The bound of `Higher`/`Lower` on the compared scale: 0, or `than`.
    fn bound(&self) -> f64 {
        match (self.than, self.transform) {
            (None, _) => 0.0,
            (Some(t), Transform::Difference) => t / self.scale,
            (Some(t), Transform::LogRatio) => t.ln(),
        }
    }

    /// Decides the claim from the study's rows (an `at_least` claim: see
    /// [`Claim::aggregate`]).
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
                    p_difference: None,
                    tost: None,
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
        let interval = match paired_at(&xa, &xb, self.level) {
            Some(i) if i.lo.is_finite() && i.hi.is_finite() => Ok((i, seeds.len())),
            Some(_) => Err("a value is not positive (log ratio)".into()),
            None => Err(format!("n = {}: too few seeds in both", seeds.len())),
        };
        // `Higher`/`Lower` test the difference against their bound.
        let bound = self.bound();
        let against = |i: &Interval| Interval {
            diff: i.diff - bound,
            lo: i.lo - bound,
            hi: i.hi - bound,
            ..*i
        };
        let (p_difference, tost) = match &interval {
            Ok((i, _)) => (
                Some(against(i).estimate().p_two_sided()),
                self.margin().map(|m| i.estimate().tost(m, self.alpha())),
            ),
            Err(_) => (None, None),
        };
        let verdict = match &interval {
            Err(_) => "inconclusive".into(),
            Ok((i, _)) => verdict(self.expect, &against(i), tost.as_ref()),
        };
        Decided {
            interval,
            verdict,
            censored: (ca, cb),
            p_difference,
            tost,
        }
    }

    /// Decides an `at_least` claim: each case, Holm over the cases.
    pub fn aggregate(&self, rows: &[Row]) -> Aggregate {
        let cases: Vec<Claim> = self.cases();
        let decided: Vec<Decided> = cases.iter().map(|c| c.decide(rows)).collect();
        let refs: Vec<(&Claim, &Decided)> = cases.iter().zip(&decided).collect();
        let corrected = correct(&refs);
        let confirmed = corrected.iter().filter(|c| confirms(&c.verdict)).count();
        let refuted = corrected.iter().filter(|c| refutes(&c.verdict)).count();
        let estimates: Vec<f64> = decided
            .iter()
            .filter_map(|d| d.interval.as_ref().ok().map(|(i, _)| i.diff))
            .collect();
        let (margin, bound) = (self.margin(), self.bound());
        let agree = estimates
            .iter()
            .filter(|&&d| match self.expect {
                Expect::Higher => d > bound,
                Expect::Lower => d < bound,
                Expect::Same { .. } => d.abs() < margin.unwrap_or(0.0),
                Expect::Describe => false,
            })
            .count();
        let (n, k) = (cases.len(), self.at_least.unwrap_or(cases.len()));
        let verdict = if confirmed >= k {
            "reproduced"
        } else if refuted > n.saturating_sub(k) {
            "not reproduced"
        } else {
            "inconclusive"
        }
        .to_string();
        Aggregate {
            cases: cases
                .into_iter()
                .zip(decided)
                .zip(corrected)
                .map(|((c, d), k)| (c, d, k))
                .collect(),
            confirmed,
            refuted,
            agree,
            computed: estimates.len(),
            verdict,
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

    /// A value on the compared scale as shown: scaled, or as a ratio.
    fn shown(&self, v: f64) -> f64 {
        match self.transform {
            Transform::Difference => v * self.scale,
            Transform::LogRatio => v.exp(),
        }
    }

    /// The decimals that give the largest of `vs` (as shown) four
    /// significant digits.
    fn decimals(&self, vs: &[f64]) -> usize {
        let largest = vs.iter().fold(0f64, |m, v| m.max(self.shown(*v).abs()));
        if largest > 0.0 {
            (3 - largest.log10().floor() as i32).clamp(0, 8) as usize
        } else {
            3
        }
    }

    fn fmt(&self, v: f64, d: usize) -> String {
        match self.transform {
            Transform::Difference => format!("{:+.*}", d, self.shown(v)),
            Transform::LogRatio => format!("{:.*}", d, self.shown(v)),
        }
    }

    /// The interval as shown, scaled or as a ratio, its three numbers with
    /// the decimals that give the largest four significant digits; for
    /// `Same`, also the margin and the 1 - 2 alpha interval.
    fn show(&self, i: &Interval, n: usize, tost: Option<&Tost>) -> String {
        let d = self.decimals(&[i.diff, i.lo, i.hi]);
        let unit = match (self.transform, self.unit.is_empty()) {
            (Transform::LogRatio, _) => " (ratio)".to_string(),
            (_, true) => String::new(),
            (_, false) => format!(" {}", self.unit),
        };
        let level = if (self.level - 0.95).abs() > 1e-12 {
            format!(", {}% interval", pct(self.level))
        } else {
            String::new()
        };
        let mut out = format!(
            "{}{unit} [{}, {}] (n = {n}{level})",
            self.fmt(i.diff, d),
            self.fmt(i.lo, d),
            self.fmt(i.hi, d)
        );
        if self.than.is_some() {
            let d = self.decimals(&[self.bound()]);
            let _ = write!(out, "; against {}", self.fmt(self.bound(), d));
        }
        if let (Some(t), Some(m)) = (tost, self.margin()) {
            let d = self.decimals(&[t.lo, t.hi, m]);
            let band = match self.transform {
                Transform::Difference => format!("±{:.*}", d, m * self.scale),
                Transform::LogRatio => {
                    format!("[{:.*}, {:.*}]", d, (-m).exp(), d, m.exp())
                }
            };
            let _ = write!(
                out,
                "; margin {band}: {}% interval [{}, {}]",
                pct(1.0 - 2.0 * self.alpha()),
                self.fmt(t.lo, d),
                self.fmt(t.hi, d)
            );
        }
        out
    }
}

/// A level as a percentage without trailing zeros (95, 90, 97.5).
fn pct(level: f64) -> String {
    let s = format!("{:.4}", level * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn confirms(verdict: &str) -> bool {
    matches!(verdict, "reproduced" | "equivalent")
}

fn refutes(verdict: &str) -> bool {
    matches!(verdict, "not reproduced" | "different")
}

/// The verdict of an interval under `expect` (module docs); `tost` is the
/// equivalence test of a `Same` claim.
pub fn verdict(expect: Expect, i: &Interval, tost: Option<&Tost>) -> String {
    let (above, below) = (i.lo > 0.0, i.hi < 0.0);
    match expect {
        Expect::Higher if above => "reproduced",
        Expect::Higher if below => "not reproduced",
        Expect::Lower if below => "reproduced",
        Expect::Lower if above => "not reproduced",
        Expect::Higher | Expect::Lower => "inconclusive",
        Expect::Same { .. } if tost.is_some_and(|t| t.equivalent) => "equivalent",
        Expect::Same { .. } if above || below => "different",
        Expect::Same { .. } => "inconclusive",
        Expect::Describe => "descriptive",
    }
    .to_string()
}

/// The verdict from p-values (adjusted ones after Holm): the rule of
/// [`verdict`] with "p below alpha" for "the interval excludes 0" and
/// "is equivalent".
fn verdict_from_p(expect: Expect, diff: f64, p_diff: f64, p_eq: Option<f64>, alpha: f64) -> String {
    let resolved = p_diff < alpha;
    match expect {
        Expect::Higher | Expect::Lower if !resolved => "inconclusive",
        Expect::Higher if diff > 0.0 => "reproduced",
        Expect::Lower if diff < 0.0 => "reproduced",
        Expect::Higher | Expect::Lower => "not reproduced",
        Expect::Same { .. } if p_eq.is_some_and(|p| p < alpha) => "equivalent",
        Expect::Same { .. } if resolved => "different",
        Expect::Same { .. } => "inconclusive",
        Expect::Describe => "descriptive",
    }
    .to_string()
}

/// Holm's correction over a family of decided claims (one level): the
/// difference tests over all of them, the equivalence tests over the
/// `Same` ones; a claim without an interval counts with p = 1.
fn correct(family: &[(&Claim, &Decided)]) -> Vec<Corrected> {
    let p_diff: Vec<f64> = family
        .iter()
        .map(|(_, d)| d.p_difference.unwrap_or(1.0))
        .collect();
    let adj_diff = holm(&p_diff);
    let same: Vec<usize> = (0..family.len())
        .filter(|&i| matches!(family[i].0.expect, Expect::Same { .. }))
        .collect();
    let p_eq: Vec<f64> = same
        .iter()
        .map(|&i| family[i].1.tost.map_or(1.0, |t| t.p))
        .collect();
    let adj_eq = holm(&p_eq);
    family
        .iter()
        .enumerate()
        .map(|(i, (c, d))| {
            let p_equivalence = same.iter().position(|&j| j == i).map(|k| adj_eq[k]);
            let verdict = match &d.interval {
                Err(_) => "inconclusive".to_string(),
                Ok((iv, _)) => verdict_from_p(
                    c.expect,
                    iv.diff - c.bound(),
                    adj_diff[i],
                    p_equivalence,
                    c.alpha(),
                ),
            };
            Corrected {
                verdict,
                p_difference: adj_diff[i],
                p_equivalence,
                m: family.len(),
            }
        })
        .collect()
}

/// A p-value as tables show it.
fn show_p(p: f64) -> String {
    if p < 0.0001 {
        "< 0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

/// The corrected cell: verdict, with the raw and adjusted p-values.
fn show_corrected(d: &Decided, k: &Corrected, over: &str) -> String {
    let mut s = k.verdict.clone();
    let raw = d.p_difference.map_or("–".to_string(), show_p);
    let _ = write!(s, " (difference p = {raw}, Holm {}", show_p(k.p_difference));
    if let (Some(t), Some(p)) = (d.tost, k.p_equivalence) {
        let _ = write!(s, "; equivalence p = {}, Holm {}", show_p(t.p), show_p(p));
    }
    let _ = write!(s, "; over {over})");
    s
}

/// The claims table as markdown and CSV (text fields quoted).
pub fn table(claims: &[Claim], rows: &[Row]) -> (String, String) {
    let holm_column = claims
        .iter()
        .any(|c| c.family.is_some() || c.at_least.is_some());
    let mut md = String::from("| claim | compared | a − b [95% interval] (n seeds) | verdict |");
    if holm_column {
        md.push_str(" corrected (Holm) |\n|---|---|---|---|---|\n");
    } else {
        md.push_str("\n|---|---|---|---|\n");
    }
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
        "level",
        "margin",
        "lo_equivalence",
        "hi_equivalence",
        "p_difference",
        "p_equivalence",
        "family",
        "at_least",
        "holm_verdict",
        "p_difference_holm",
        "p_equivalence_holm",
    ];
    let mut records: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];

    // Every plain claim decided once; families corrected together.
    let decided: Vec<Option<Decided>> = claims
        .iter()
        .map(|c| c.at_least.is_none().then(|| c.decide(rows)))
        .collect();
    let mut corrected: Vec<Option<(Corrected, String)>> = vec![None; claims.len()];
    let mut families: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in claims.iter().enumerate() {
        if let (Some(f), Some(_)) = (&c.family, &decided[i]) {
            families.entry(f).or_default().push(i);
        }
    }
    for (f, members) in &families {
        let refs: Vec<(&Claim, &Decided)> = members
            .iter()
            .map(|&i| {
                (
                    &claims[i],
                    decided[i].as_ref().expect("plain claims are decided"),
                )
            })
            .collect();
        for (&i, k) in members.iter().zip(correct(&refs)) {
            let over = format!("the {} claims of family `{f}`", members.len());
            corrected[i] = Some((k, over));
        }
    }

    for (i, c) in claims.iter().enumerate() {
        match &decided[i] {
            Some(d) => {
                let k = corrected[i].as_ref();
                let cell = k.map(|(k, over)| show_corrected(d, k, over));
                line(
                    &mut md,
                    &mut records,
                    c,
                    d,
                    holm_column,
                    cell,
                    k.map(|(k, _)| k),
                    c.family.clone(),
                );
            }
            None => {
                let agg = c.aggregate(rows);
                let n = agg.cases.len();
                let k = c.at_least.unwrap_or(n);
                let bm = c.b_measure.as_deref().unwrap_or(&c.measure);
                let compared = format!("{}: {} − {}, {n} cases", c.measure, c.a, c.b);
                let summary = format!(
                    "confirmed in {} of {n}, refuted in {} (each case Holm-corrected over the {n}); \
                     point estimates in the claimed direction in {} of {} computed",
                    agg.confirmed, agg.refuted, agg.agree, agg.computed
                );
                let _ = write!(
                    md,
                    "| {} (at least {k} of {n}) | {compared} | {summary} | {} |",
                    c.claim, agg.verdict
                );
                if holm_column {
                    md.push_str(" (its cases, below) |");
                }
                md.push('\n');
                records.push(vec![
                    c.claim.clone(),
                    c.a.clone(),
                    c.b.clone(),
                    c.measure.clone(),
                    bm.to_string(),
                    format!("{:?}", c.transform),
                    String::new(),
                    String::new(),
                    String::new(),
                    n.to_string(),
                    agg.verdict.clone(),
                    String::new(),
                    String::new(),
                    c.level.to_string(),
                    c.margin().map_or(String::new(), |m| m.to_string()),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    k.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                for ((case, d, kc), value) in agg.cases.iter().zip(&c.each) {
                    let over = format!("the {n} cases");
                    let cell = show_corrected(d, kc, &over);
                    let mut shown = case.clone();
                    // The case by its `each` value (or the claim, where it names it).
                    shown.claim = if c.claim.contains("{each}") {
                        format!("· {}", case.claim)
                    } else {
                        format!("· {value}")
                    };
                    line(
                        &mut md,
                        &mut records,
                        &shown,
                        d,
                        holm_column,
                        Some(cell),
                        Some(kc),
                        Some(format!("cases of: {}", c.claim)),
                    );
                }
            }
        }
    }
    let notes = notes(claims);
    if !notes.is_empty() {
        md.push('\n');
        md.push_str(&notes);
    }
    for r in &records {
        csv.write_record(r)
            .expect("writing CSV to memory cannot fail");
    }
    let bytes = csv.into_inner().expect("an in-memory CSV writer flushes");
    (md, String::from_utf8(bytes).expect("the fields are UTF-8"))
}

/// One claim's markdown line and CSV record.
#[allow(clippy::too_many_arguments)]
fn line(
    md: &mut String,
    records: &mut Vec<Vec<String>>,
    c: &Claim,
    d: &Decided,
    holm_column: bool,
    corrected_cell: Option<String>,
    corrected: Option<&Corrected>,
    family: Option<String>,
) {
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
        Ok((i, n)) => c.show(i, *n, d.tost.as_ref()),
        Err(why) => why.clone(),
    };
    if d.censored != (0, 0) {
        let _ = write!(
            shown,
            "; runs that did not escape counted at their budget: {} and {} (a bound)",
            d.censored.0, d.censored.1
        );
    }
    let _ = write!(md, "| {} | {compared} | {shown} | {} |", c.claim, d.verdict);
    if holm_column {
        let _ = write!(md, " {} |", corrected_cell.unwrap_or_else(|| "–".into()));
    }
    md.push('\n');
    let (diff, lo, hi, n) = match &d.interval {
        Ok((i, n)) => (
            i.diff.to_string(),
            i.lo.to_string(),
            i.hi.to_string(),
            n.to_string(),
        ),
        Err(_) => Default::default(),
    };
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    records.push(vec![
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
        d.verdict.clone(),
        d.censored.0.to_string(),
        d.censored.1.to_string(),
        c.level.to_string(),
        opt(c.margin()),
        opt(d.tost.map(|t| t.lo)),
        opt(d.tost.map(|t| t.hi)),
        opt(d.p_difference),
        opt(d.tost.map(|t| t.p)),
        family.unwrap_or_default(),
        String::new(),
        corrected.map_or(String::new(), |k| k.verdict.clone()),
        opt(corrected.map(|k| k.p_difference)),
        opt(corrected.and_then(|k| k.p_equivalence)),
    ]);
}

/// What the verdicts mean, for the kinds of claim the table has.
fn notes(claims: &[Claim]) -> String {
    let mut out = String::new();
    if claims
        .iter()
        .any(|c| matches!(c.expect, Expect::Same { .. }))
    {
        out.push_str(
            "`Same(margin)`: two one-sided tests at alpha = 1 − level (0.05 unless the line \
             says otherwise): **equivalent** when the 1 − 2 alpha interval (90%) lies inside \
             ±margin, **different** when the 1 − alpha interval (95%) excludes 0, \
             **inconclusive** otherwise.\n",
        );
    }
    if claims
        .iter()
        .any(|c| c.family.is_some() || c.at_least.is_some())
    {
        out.push_str(
            "Corrected: Holm's step-down method over the claims of a family (or the cases of \
             an \"at least k of n\" claim), separately for the difference tests and the \
             equivalence tests; the uncorrected verdict stands beside it.\n",
        );
    }
    out
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

    /// `sam` 11, 22, 33, 44 and `sgd` 10, 20, 30, 40 on seeds 0-3 (their
    /// differences 1, 2, 3, 4, their ratios all 1.1); `sam` also has a
    /// seed 9, which pairing leaves out.
    fn paired_rows() -> [Row; 2] {
        [
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
        ]
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
            at_least: None,
            family: None,
            level: 0.95,
            than: None,
        }
    }

    /// `than` moves the bound: the differences 1, 2, 3, 4 (2.5 [0.446,
    /// 4.554], as in the test below) are above 0.4, undecided against 1
    /// and 4.5, below 5; the ratios a / b, all 1.1 (no spread; seed 9 unpaired), are below
    /// 1.2 and above 1.05. Holm's correction tests against the bound too.
    #[test]
    fn than_moves_the_bound_of_higher_and_lower() {
        let rows = paired_rows();
        let with = |expect, than: f64, transform| Claim {
            than: Some(than),
            transform,
            ..claim("sam", "sgd", "acc", expect)
        };
        let d = Transform::Difference;
        let r = Transform::LogRatio;
        for (expect, than, transform, verdict) in [
            (Expect::Higher, 0.4, d, "reproduced"),
            (Expect::Higher, 1.0, d, "inconclusive"),
            (Expect::Lower, 4.5, d, "inconclusive"),
            (Expect::Lower, 5.0, d, "reproduced"),
            (Expect::Higher, 5.0, d, "not reproduced"),
            (Expect::Lower, 1.2, r, "reproduced"),
            (Expect::Lower, 1.05, r, "not reproduced"),
            (Expect::Higher, 1.05, r, "reproduced"),
        ] {
            let c = with(expect, than, transform);
            let decided = c.decide(&rows);
            assert_eq!(
                decided.verdict, verdict,
                "{expect:?} than {than} {transform:?}"
            );
            let corrected = correct(&[(&c, &decided)]);
            assert_eq!(
                corrected[0].verdict, verdict,
                "Holm, {expect:?} than {than}"
            );
        }
        // With `scale`, `than` is in the units shown: 100 x (a - b) =
        // 250 [45, 455] points is above 40 points and undecided against 100.
        for (than, verdict) in [(40.0, "reproduced"), (100.0, "inconclusive")] {
            let c = Claim {
                scale: 100.0,
                ..with(Expect::Higher, than, d)
            };
            assert_eq!(c.decide(&rows).verdict, verdict, "scale 100, than {than}");
        }
        // The interval shown is a - b's; the bound is said beside it.
        let c = with(Expect::Lower, 0.5, r);
        let (i, n) = c.decide(&rows).interval.unwrap();
        assert!((i.diff - 1.1f64.ln()).abs() < 1e-12, "{i:?}");
        let shown = c.show(&i, n, None);
        assert!(
            shown.starts_with("1.100 (ratio)") && shown.ends_with("; against 0.5000"),
            "{shown}"
        );
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
        let rows = paired_rows();
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
        // Resolved below 0 and far outside a margin of 0.5: different.
        assert_eq!(
            claim("sgd", "sam", "acc", Expect::Same { margin: 0.5 })
                .decide(&rows)
                .verdict,
            "different"
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

    /// An interval holding 0: inconclusive for a direction; for `Same`,
    /// equivalent only where the margin holds the 90% interval.
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
        // Differences -0.5, 0.5, -0.5: mean -1/6, sd 0.57735, se 1/3,
        // df 2; the 90% interval is -1/6 ± 2.919986 / 3 = [-1.1400,
        // +0.8067] (stats::tests has the quantile's closed form).
        let same = |m: f64| claim("a", "b", "m", Expect::Same { margin: m }).decide(&rows);
        assert_eq!(same(1.0).verdict, "inconclusive");
        assert_eq!(same(1.15).verdict, "equivalent");
        let t = same(1.15).tost.unwrap();
        assert!(
            (t.lo + 1.140_0).abs() < 1e-4 && (t.hi - 0.806_7).abs() < 1e-4,
            "{t:?}"
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

    /// Rows `a`, `b` with one measure per seed.
    fn pair(a: &[f64], b: &[f64]) -> [Row; 2] {
        let mk = |name: &str, xs: &[f64]| {
            let ms: Vec<[(&str, f64); 1]> = xs.iter().map(|v| [("m", *v)]).collect();
            let runs: Vec<(u64, &[(&str, f64)])> = ms
                .iter()
                .enumerate()
                .map(|(s, m)| (s as u64, m.as_slice()))
                .collect();
            row(name, &runs)
        };
        [mk("a", a), mk("b", b)]
    }

    /// `Same(margin)` on the table: the margin in the units shown (points
    /// with `scale: 100`), the 90% interval beside the 95% one, and the
    /// same verdict as the p-value rule. Differences 0.001, 0.003, 0.002
    /// (accuracy as a fraction): +0.2 points, se 0.1 / sqrt(3) points; the
    /// hand computation of `stats::tests` with margin 0.5 points:
    /// equivalent, 90% interval [+0.0314, +0.3686] points
    /// (tests/reference/tost_holm.py).
    #[test]
    fn same_with_a_margin_is_an_equivalence_test() {
        let rows = pair(&[0.501, 0.503, 0.502], &[0.5, 0.5, 0.5]);
        let mut c = claim("a", "b", "m", Expect::Same { margin: 0.5 });
        c.scale = 100.0;
        c.unit = "points".into();
        let d = c.decide(&rows);
        assert_eq!(d.verdict, "equivalent");
        let t = d.tost.unwrap();
        assert!((t.lo * 100.0 - 0.031414).abs() < 1e-5, "{t:?}");
        assert!((t.p - 0.0175494).abs() < 1e-6, "{t:?}");
        let (md, csv) = table(std::slice::from_ref(&c), &rows);
        assert!(
            md.contains("margin ±0.5000: 90% interval [+0.0314, +0.3686]"),
            "{md}"
        );
        assert!(
            md.contains("| equivalent |") && md.contains("two one-sided tests"),
            "{md}"
        );
        assert!(
            csv.lines().nth(1).unwrap().contains("\"equivalent\""),
            "{csv}"
        );
        // A margin of 0.3 points: the 90% interval reaches +0.369.
        c.expect = Expect::Same { margin: 0.3 };
        assert_eq!(c.decide(&rows).verdict, "inconclusive");
        // The same claim at level 0.9 (alpha 0.1): the 80% interval is
        // narrower, 0.2 ± 1.885618 se = [+0.0911, +0.3089]: still outside
        // the margin, while the 90% interval, [+0.0314, +0.3686], now the
        // 1 - alpha one, excludes 0: different.
        c.level = 0.9;
        let d = c.decide(&rows);
        let t = d.tost.unwrap();
        assert!((t.hi * 100.0 - 0.308866).abs() < 1e-5, "{t:?}");
        assert_eq!(d.verdict, "different");
        let (md, _) = table(std::slice::from_ref(&c), &rows);
        assert!(
            md.contains("(n = 3, 90% interval)") && md.contains("80% interval"),
            "{md}"
        );
    }

    /// A log-ratio `Same`: the margin on the log scale, shown as a band
    /// of ratios.
    #[test]
    fn same_on_a_log_ratio_shows_the_band_of_ratios() {
        let rows = pair(&[1.01, 2.02, 2.97], &[1.0, 2.0, 3.0]);
        let mut c = claim("a", "b", "m", Expect::Same { margin: 0.05 });
        c.transform = Transform::LogRatio;
        let (md, _) = table(std::slice::from_ref(&c), &rows);
        assert!(md.contains("margin [0.951, 1.051]"), "{md}");
        assert_eq!(c.decide(&rows).verdict, "equivalent");
    }

    /// Holm over a family: four claims whose uncorrected intervals all
    /// exclude 0; after the correction only those with the smaller
    /// p-values stay reproduced, and the page shows both.
    #[test]
    fn a_family_is_corrected_by_holm() {
        // Differences with mean 1 and growing spread (n = 3): p-values
        // rise with the spread.
        let spreads = [0.05, 0.2, 0.3, 0.35];
        let mut rows = Vec::new();
        let mut claims = Vec::new();
        for (k, s) in spreads.iter().enumerate() {
            let [mut a, mut b] = pair(&[1.0 + s, 1.0, 1.0 - s], &[0.0, 0.0, 0.0]);
            a.name = format!("a{k}");
            b.name = format!("b{k}");
            rows.extend([a, b]);
            let mut c = claim(&format!("a{k}"), &format!("b{k}"), "m", Expect::Higher);
            c.family = Some("F".into());
            claims.push(c);
        }
        let decided: Vec<Decided> = claims.iter().map(|c| c.decide(&rows)).collect();
        assert!(
            decided.iter().all(|d| d.verdict == "reproduced"),
            "{decided:?}"
        );
        let p: Vec<f64> = decided.iter().map(|d| d.p_difference.unwrap()).collect();
        let adj = crate::stats::holm(&p);
        let refs: Vec<(&Claim, &Decided)> = claims.iter().zip(&decided).collect();
        let k = correct(&refs);
        let hand = [0.0033292, 0.0392174, 0.0574283, 0.0574283];
        for i in 0..4 {
            assert_eq!(k[i].p_difference, adj[i]);
            assert!((adj[i] - hand[i]).abs() < 1e-6, "{adj:?}");
            let want = if adj[i] < 0.05 {
                "reproduced"
            } else {
                "inconclusive"
            };
            assert_eq!(k[i].verdict, want, "{i}: p {} adjusted {}", p[i], adj[i]);
        }
        // sd s, se = s / sqrt(3), t = sqrt(3) / s, df 2, so p = 1 - t /
        // sqrt(2 + t^2) (the closed form of stats::tests): 0.00083, 0.0131,
        // 0.0287, 0.0385; Holm 0.0033, 0.0392, 0.0574, 0.0574 (by hand, and
        // tests/reference/tost_holm.py): the first two survive.
        let verdicts: Vec<&str> = k.iter().map(|k| k.verdict.as_str()).collect();
        assert_eq!(
            verdicts,
            ["reproduced", "reproduced", "inconclusive", "inconclusive"]
        );
        let (md, csv) = table(&claims, &rows);
        assert!(md.contains("| corrected (Holm) |"), "{md}");
        assert!(
            md.contains("| reproduced | inconclusive (difference p = "),
            "{md}"
        );
        assert!(md.contains("over the 4 claims of family `F`"), "{md}");
        assert!(csv.contains("\"F\",\"\",\"inconclusive\""), "{csv}");
    }

    /// "At least k of n" (the thesis' "7 out of 8"): cases decided with
    /// Holm over the n, counted; reproduced at k confirmed, not reproduced
    /// when more than n - k are refuted.
    #[test]
    fn an_aggregate_claim_counts_its_cases() {
        let mut rows = Vec::new();
        // Cases x, y: a clearly above b; z: a clearly below; w: unresolved.
        for (name, d) in [
            ("x", [1.0, 1.1, 0.9]),
            ("y", [2.0, 2.1, 1.9]),
            ("z", [-1.0, -1.1, -0.9]),
            ("w", [0.5, -0.6, 0.2]),
        ] {
            let [mut a, mut b] = pair(&d, &[0.0, 0.0, 0.0]);
            a.name = format!("{name}-a");
            b.name = format!("{name}-b");
            rows.extend([a, b]);
        }
        let mut c = claim("{each}-a", "{each}-b", "m", Expect::Higher);
        c.claim = "a > b".into();
        c.each = ["x", "y", "z", "w"].map(String::from).to_vec();
        c.at_least = Some(2);
        assert_eq!(c.expanded().len(), 1);
        assert_eq!(c.labels().len(), 8);
        let agg = c.aggregate(&rows);
        assert_eq!(
            (agg.confirmed, agg.refuted, agg.agree, agg.computed),
            (2, 1, 3, 4)
        );
        assert_eq!(agg.verdict, "reproduced");
        c.at_least = Some(3);
        assert_eq!(c.aggregate(&rows).verdict, "inconclusive");
        // k = 4: one refuted case already rules it out.
        c.at_least = Some(4);
        assert_eq!(c.aggregate(&rows).verdict, "not reproduced");
        let (md, csv) = table(std::slice::from_ref(&c), &rows);
        assert!(
            md.contains("| a > b (at least 4 of 4) | m: {each}-a − {each}-b, 4 cases | confirmed in 2 of 4, refuted in 1"),
            "{md}"
        );
        assert!(
            md.contains("| · x | m: x-a − x-b |") && md.contains("| · w |"),
            "{md}"
        );
        assert!(md.contains("over the 4 cases)"), "{md}");
        assert_eq!(csv.lines().count(), 1 + 1 + 4, "{csv}");
        assert!(csv.contains("\"cases of: a > b\""), "{csv}");
    }
}
