//! Study files: the RON format, composition (`extends`), grids, and
//! resolution into a list of fully specified stages in dependency order.
//!
//! The format is documented with examples in `docs/studies.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use ron::extensions::Extensions;
use serde::Deserialize;

use crate::error::closest;
use crate::error::{ErrorKind, Result, io};
use crate::stages::{RawStage, StageSpec};
use samlab_data::DatasetName;

/// The study format version this runner reads.
pub const VERSION: u32 = 1;

/// A study file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Study")]
pub struct RawStudy {
    pub version: u32,
    /// `"cifar10"` or `"cifar100"`.
    pub dataset: String,
    /// `"cpu"`, `"cuda"` or `"cuda:N"` (default cpu; `--device` overrides).
    #[serde(default)]
    pub device: Option<String>,
    /// Files of shared blocks (`Blocks(...)`), relative to this file: their
    /// blocks are this study's too.
    #[serde(default)]
    pub imports: Vec<String>,
    /// Partial stages that stages (and other blocks) extend; never run.
    #[serde(default)]
    pub blocks: IndexMap<String, RawStage>,
    /// The stages, by name.
    pub stages: IndexMap<String, RawStage>,
    /// How the results page compares the stages.
    #[serde(default)]
    pub report: Option<Report>,
}

/// How a study's results compare its stages (`report: (baseline: [...])`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Report")]
pub struct Report {
    /// Stages the others are compared with: each row's baseline is the
    /// listed stage of its kind that trains the same model (say `"sgd"`,
    /// or one SGD stage per model).
    #[serde(default)]
    pub baseline: Vec<String>,
    /// Tables laid out as a paper prints them (say methods by models).
    #[serde(default)]
    pub tables: Vec<PivotTable>,
    /// Claims decided by paired intervals over seeds (`crate::claims`).
    #[serde(default)]
    pub claims: Vec<Claim>,
}

/// A table of one measure with chosen rows and columns: the cell of row
/// `r` and column `c` is the stage (or grid point, `name[rho=0.1]`) that
/// `stage` names with `{row}` and `{column}` replaced, mean ± std over its
/// seeds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Table")]
pub struct PivotTable {
    pub title: String,
    pub measure: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    /// E.g. `"{column}-{row}"` for stages named `resnet18-sam`.
    pub stage: String,
    /// The thesis' numbers beside each column (`crate::thesis`).
    #[serde(default)]
    pub thesis: Option<ThesisColumns>,
}

/// Which of the thesis' printed cells stand beside a laid-out table's:
/// the cell of row `r` and column `c` is the row of `table` for `dataset`,
/// model `columns[c]` and method `rows[r]` (`"SGD"`, `"SAM rho=0.05"`,
/// `"PSAM n=20"`; `""` where the thesis has none), from
/// `results/thesis/tables.csv`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Thesis")]
pub struct ThesisColumns {
    /// `"5.1"`, `"5.2"` or `"5.3"`.
    pub table: String,
    /// `"cifar10"` or `"cifar100"`.
    pub dataset: String,
    /// The thesis' method for each of the table's rows, in order.
    pub rows: Vec<String>,
    /// The model of each of the table's columns, in order (default: the
    /// columns themselves, which name models in the paper studies).
    #[serde(default)]
    pub columns: Vec<String>,
}

impl ThesisColumns {
    /// The model of the table's column `i` (of `columns`).
    pub fn model<'a>(&'a self, columns: &'a [String], i: usize) -> &'a str {
        self.columns.get(i).unwrap_or(&columns[i])
    }
}

impl PivotTable {
    /// The row label (`name` or `name[k=v,...]`) of the cell (r, c).
    pub fn cell(&self, row: &str, column: &str) -> String {
        self.stage.replace("{row}", row).replace("{column}", column)
    }
}

/// A file of shared blocks that studies import.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Blocks")]
pub struct RawBlocks {
    /// Further files of blocks, relative to this one.
    #[serde(default)]
    pub imports: Vec<String>,
    pub blocks: IndexMap<String, RawStage>,
}

/// A grid coordinate: the value of one grid field, e.g. `seed = 3`.
pub type Coords = BTreeMap<String, f64>;

/// One runnable stage: a study stage at one point of its grid.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The stage's name in the study.
    pub name: String,
    /// Its grid point (own grid and the grids of the stages it refers to).
    pub coords: Coords,
    pub spec: StageSpec,
    /// The stages it needs, by role (`from`, `of`), as indices into [`Study::stages`].
    pub deps: Vec<(&'static str, usize)>,
    /// The line of the stage in the study file.
    pub line: Option<usize>,
}

impl Stage {
    /// `name` or `name[rho=0.1,seed=2]`.
    pub fn display(&self) -> String {
        labelled(&self.name, &self.coords)
    }

    /// File-name form: `sgd`, `sgd-seed1`, `sam-rho0.1-seed2`.
    pub fn file_stem(&self) -> String {
        use std::fmt::Write as _;
        let mut s = self.name.clone();
        for (k, v) in &self.coords {
            let _ = write!(s, "-{k}{v}");
        }
        s
    }

    /// Its grid point without the seed (what tables fold over).
    pub fn point(&self) -> Coords {
        let mut p = self.coords.clone();
        p.remove("seed");
        p
    }

    /// `name` or `name[rho=0.1]`: the stage at its point, seeds folded.
    pub fn label(&self) -> String {
        labelled(&self.name, &self.point())
    }
}

/// `name` or `name[k=v,...]`.
pub fn labelled(name: &str, coords: &Coords) -> String {
    if coords.is_empty() {
        name.to_string()
    } else {
        format!("{name}{}", show_coords(coords))
    }
}

/// A resolved study.
#[derive(Clone, Debug)]
pub struct Study {
    pub file: PathBuf,
    pub dataset: DatasetName,
    pub device: String,
    /// Every expanded stage, each after the stages it depends on.
    pub stages: Vec<Stage>,
    pub report: Report,
    /// The comment lines that open the file (what the study is for), without `//`.
    pub header: Vec<String>,
}

impl Study {
    /// An error of stage `stage` found after resolution (planning), with
    /// the file and line.
    pub fn stage_error(&self, stage: &Stage, problem: impl std::fmt::Display) -> crate::Error {
        ErrorKind::Study {
            file: self.file.display().to_string(),
            line: stage.line,
            message: format!("stage {}: {problem}", stage.display()),
        }
        .into()
    }

    /// The index of the run that `which` names: a stage's name with its
    /// grid point as `runner plan` shows it (`sam[rho=0.1,seed=2]`, fields
    /// in any order), or with part of it, or none, where that leaves one run.
    /// The error says what is wrong and lists the choices.
    pub fn find(&self, which: &str) -> std::result::Result<usize, String> {
        let (name, coords) = match which.split_once('[') {
            None => (which, Coords::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix(']').ok_or_else(|| {
                    format!("`{which}`: a grid point is written `name[field=value,...]`")
                })?;
                let mut c = Coords::new();
                for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (k, v) = part
                        .split_once('=')
                        .ok_or_else(|| format!("`{which}`: `{part}` is not `field=value`"))?;
                    let v: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{which}`: `{}` is not a number", v.trim()))?;
                    c.insert(k.trim().to_string(), v);
                }
                (name, c)
            }
        };
        let runs: Vec<usize> = (0..self.stages.len())
            .filter(|&i| self.stages[i].name == name)
            .collect();
        if runs.is_empty() {
            let mut names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
            names.dedup();
            let hint = closest(name, &names)
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            return Err(format!(
                "the study has no stage `{name}`; {hint}its stages: {}",
                names.join(", ")
            ));
        }
        let matching: Vec<usize> = runs
            .iter()
            .copied()
            .filter(|&i| {
                coords
                    .iter()
                    .all(|(k, v)| self.stages[i].coords.get(k) == Some(v))
            })
            .collect();
        let list = |ix: &[usize]| {
            ix.iter()
                .map(|&i| self.stages[i].display())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match matching.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "`{which}` is no run of `{name}`; its runs: {}",
                list(&runs)
            )),
            many => Err(format!(
                "`{which}` names {} runs: {}; name one",
                many.len(),
                list(many)
            )),
        }
    }
}

/// Where a study-level problem is, for messages.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Ctx<'_> {
    /// The line on which `"name":` appears.
    pub fn line_of(&self, name: &str) -> Option<usize> {
        let quoted = format!("\"{name}\"");
        self.text
            .lines()
            .position(|l| {
                l.find(&quoted)
                    .is_some_and(|i| l[i + quoted.len()..].trim_start().starts_with(':'))
            })
            .map(|i| i + 1)
    }

    /// The first line on which `field: "value"` appears (a claim or a
    /// table by its text).
    pub fn line_of_field(&self, field: &str, value: &str) -> Option<usize> {
        let quoted = format!("\"{value}\"");
        self.text
            .lines()
            .position(|l| {
                l.match_indices(&quoted).any(|(i, _)| {
                    l[..i]
                        .trim_end()
                        .strip_suffix(':')
                        .is_some_and(|b| b.trim_end().ends_with(field))
                })
            })
            .map(|i| i + 1)
    }

    /// An error at a line found by [`Ctx::line_of_field`].
    pub fn err_at(&self, line: Option<usize>, message: impl Into<String>) -> crate::Error {
        ErrorKind::Study {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
        .into()
    }

    pub fn err(&self, name: Option<&str>, message: impl Into<String>) -> crate::Error {
        ErrorKind::Study {
            file: self.file.to_string(),
            line: name.and_then(|n| self.line_of(n)),
            message: message.into(),
        }
        .into()
    }
}

/// Reads and resolves a study file.
pub fn load(path: &Path) -> Result<Study> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse(&text, path)
}

fn ron_options() -> ron::Options {
    ron::Options::default()
        .with_default_extension(Extensions::IMPLICIT_SOME | Extensions::UNWRAP_VARIANT_NEWTYPES)
}

/// Parses and resolves study text; `path` names it in messages and is kept
/// in the result (it never reaches a cache key).
pub fn parse(text: &str, path: &Path) -> Result<Study> {
    let file = path.display().to_string();
    let mut raw: RawStudy = from_ron(text, &file)?;
    let ctx = Ctx { file: &file, text };
    let mut seen = vec![path.canonicalize().unwrap_or_else(|_| path.to_path_buf())];
    let imported = import_blocks(&raw.imports, path, &ctx, &mut seen)?;
    for (name, (block, from)) in imported {
        if raw.blocks.contains_key(&name) || raw.stages.contains_key(&name) {
            return Err(ctx.err(
                Some(&name),
                format!("`{name}` is defined here and in {}", from.display()),
            ));
        }
        raw.blocks.insert(name, block);
    }
    resolve(raw, &ctx, path)
}

fn from_ron<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T> {
    ron_options().from_str(text).map_err(|e| {
        let (line, col) = (e.span.start.line, e.span.start.col);
        let message = match e.code {
            ron::Error::ExpectedStructLike if bare_same(text, line, col) => {
                "`expect: Same` without a margin is no longer accepted: it passed whenever \
                 the interval held 0, so fewer seeds made it easier to pass. Write \
                 `expect: Same(margin: X)`, X the largest difference that counts as \
                 the same, in the units the claim shows (after `scale`), justified in a \
                 comment; it is decided by two one-sided tests (docs/studies.md, claims)"
                    .to_string()
            }
            code => code.to_string(),
        };
        ErrorKind::Syntax {
            file: file.to_string(),
            line,
            col,
            message,
        }
        .into()
    })
}

/// Whether the text just before (line, col) (1-based; RON's position
/// after the variant) reads `expect: Same`.
fn bare_same(text: &str, line: usize, col: usize) -> bool {
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return false;
    };
    let before: String = l.chars().take(col.saturating_sub(1)).collect();
    before
        .trim_end()
        .strip_suffix("Same")
        .and_then(|b| b.trim_end().strip_suffix(':'))
        .is_some_and(|b| b.trim_end().ends_with("expect"))
}

/// The blocks of the files `imports` names (relative to `from`), with
/// the file each came from; nested imports are followed, a cycle or a name
/// defined twice is an error.
fn import_blocks(
    imports: &[String],
    from: &Path,
    ctx: &Ctx,
    seen: &mut Vec<PathBuf>,
) -> Result<IndexMap<String, (RawStage, PathBuf)>> {
    let dir = from.parent().unwrap_or(Path::new("."));
    let mut out: IndexMap<String, (RawStage, PathBuf)> = IndexMap::new();
    for name in imports {
        let path = dir.join(name);
        // One name per file, however the import spells it.
        let canonical = path.canonicalize().map_err(io(&path))?;
        if seen.contains(&canonical) {
            return Err(ctx.err(
                None,
                format!("imports go round in a cycle at {}", path.display()),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let raw: RawBlocks = from_ron(&text, &path.display().to_string())?;
        seen.push(canonical);
        let nested = import_blocks(&raw.imports, &path, ctx, seen)?;
        seen.pop();
        for (n, (block, file)) in nested
            .into_iter()
            .chain(raw.blocks.into_iter().map(|(n, b)| (n, (b, path.clone()))))
        {
            if let Some((_, other)) = out.get(&n)
                && *other != file
            {
                return Err(ctx.err(
                    None,
                    format!(
                        "block `{n}` is defined in both {} and {}",
                        other.display(),
                        file.display()
                    ),
                ));
            }
            out.insert(n, (block, file));
        }
    }
    Ok(out)
}

fn resolve(raw: RawStudy, ctx: &Ctx, path: &Path) -> Result<Study> {
    if raw.version != VERSION {
        return Err(ctx.err(
            None,
            format!(
                "study version {} is not supported; this runner reads version {VERSION}",
                raw.version
            ),
        ));
    }
    let dataset: DatasetName = raw.dataset.parse().map_err(|_| {
        ctx.err(
            None,
            format!(
                "unknown dataset `{}`; valid choices: cifar10, cifar100",
                raw.dataset
            ),
        )
    })?;
    let device = raw.device.clone().unwrap_or_else(|| "cpu".into());
    if raw.stages.is_empty() {
        return Err(ctx.err(None, "the study has no stages"));
    }
    for name in raw.stages.keys() {
        if raw.blocks.contains_key(name) {
            return Err(ctx.err(Some(name), format!("`{name}` is both a block and a stage")));
        }
        if name.is_empty() || name.contains(['[', ']', '/', '\\']) {
            return Err(ctx.err(
                Some(name),
                format!("stage name `{name}` must be non-empty and free of [ ] / \\"),
            ));
        }
    }

    // 1. Composition: merge every stage with the chain of what it extends.
    let mut merged: IndexMap<String, RawStage> = IndexMap::new();
    for name in raw.stages.keys() {
        merged.insert(name.clone(), flatten(name, &raw, ctx)?);
    }

    // 2. Dependency order of the study's stages.
    let order = topo_order(&merged, ctx)?;

    // 3. Expansion over grids, in dependency order.
    let mut stages: Vec<Stage> = Vec::new();
    let mut expansions: HashMap<String, Vec<usize>> = HashMap::new();
    for name in order {
        let stage = &merged[&name];
        let own = stage.grid().cloned().unwrap_or_default();
        for (field, values) in &own {
            if values.is_empty() {
                return Err(ctx.err(Some(&name), format!("grid field `{field}` has no values")));
            }
            let valid = stage.grid_fields();
            // A short name, or the path of any numeric setting: tried on
            // the stage with the axis' first value.
            let by_path = if valid.contains(field) {
                Ok(())
            } else {
                stage.clone().set_grid(field, values[0])
            };
            if let Err(why) = by_path {
                let hint = closest(field, &valid)
                    .map(|c| format!("did you mean `{c}`? "))
                    .unwrap_or_default();
                return Err(ctx.err(
                    Some(&name),
                    format!(
                        "`{field}` cannot be a grid field of a {} stage: {why}; {hint}short names: {}, or any numeric setting by its path (`sam.rho`)",
                        stage.kind(),
                        valid.join(", ")
                    ),
                ));
            }
        }
        let mut points: Vec<Coords> = vec![Coords::new()];
        for (field, values) in &own {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert(field.clone(), *v);
                        q
                    })
                })
                .collect();
        }
        // Inherit the grid points of the stages referred to.
        let refs = stage.refs();
        for (_, target) in &refs {
            let theirs = &expansions[*target];
            let mut next = Vec::new();
            for p in &points {
                let mut matched = false;
                for &t in theirs {
                    let tc = &stages[t].coords;
                    if agrees(p, tc) {
                        matched = true;
                        let mut q = p.clone();
                        q.extend(tc.iter().map(|(k, v)| (k.clone(), *v)));
                        if !next.contains(&q) {
                            next.push(q);
                        }
                    }
                }
                if !matched {
                    return Err(ctx.err(
                        Some(&name),
                        format!(
                            "stage `{name}` at {} refers to `{target}`, which has no run with those grid values",
                            show_coords(p)
                        ),
                    ));
                }
            }
            points = next;
        }
        let mut mine = Vec::new();
        for p in points {
            let mut s = stage.clone();
            for (field, v) in &p {
                if own.contains_key(field) {
                    s.set_grid(field, *v)
                        .map_err(|m| ctx.err(Some(&name), format!("grid `{field}`: {m}")))?;
                }
            }
            let deps: Vec<(&'static str, usize)> = refs
                .iter()
                .map(|(role, target)| {
                    let t = expansions[*target]
                        .iter()
                        .copied()
                        .find(|&t| agrees(&p, &stages[t].coords))
                        .expect("every point came from a matching target");
                    (*role, t)
                })
                .collect();
            let dep_specs: Vec<(&'static str, &StageSpec)> =
                deps.iter().map(|(r, t)| (*r, &stages[*t].spec)).collect();
            let mut spec = s
                .finish(dataset, &dep_specs)
                .map_err(|m| ctx.err(Some(&name), format!("stage `{name}`: {m}")))?;
            spec.resolve_paths(path.parent().unwrap_or(Path::new(".")));
            mine.push(stages.len());
            stages.push(Stage {
                name: name.clone(),
                coords: p,
                spec,
                deps,
                line: ctx.line_of(&name),
            });
        }
        expansions.insert(name.clone(), mine);
    }
    let mut report = raw.report.clone().unwrap_or_default();
    check_claims(&report.claims, ctx)?;
    report.claims = report.claims.iter().flat_map(|c| c.expanded()).collect();
    for t in &report.tables {
        check_thesis_columns(t, ctx)?;
        for r in &t.rows {
            for c in &t.columns {
                let want = t.cell(r, c);
                let known = stages.iter().any(|st| st.label() == want);
                if !known {
                    return Err(ctx.err(
                        None,
                        format!(
                            "report: table `{}` names `{want}` (row `{r}`, column `{c}`), which is no stage or grid point of this study",
                            t.title
                        ),
                    ));
                }
            }
        }
    }
    for c in &report.claims {
        for want in c.labels() {
            if !stages.iter().any(|st| st.label() == want) {
                return Err(ctx.err(
                    None,
                    format!(
                        "report: claim `{}` names `{want}`, which is no stage or grid point of this study",
                        c.claim
                    ),
                ));
            }
        }
    }
    for b in &report.baseline {
        if !raw.stages.contains_key(b) {
            let choices: Vec<&str> = raw.stages.keys().map(String::as_str).collect();
            return Err(ctx.err(
                None,
                format!(
                    "report: baseline `{b}` is not a stage; valid choices: {}",
                    choices.join(", ")
                ),
            ));
        }
    }
    let header = ctx
        .text
        .lines()
        .take_while(|l| l.starts_with("//"))
        .map(|l| l.trim_start_matches('/').trim().to_string())
        .collect();
    Ok(Study {
        file: path.to_path_buf(),
        dataset,
        device,
        stages,
        report,
        header,
    })
}

/// A claim's settings, before `each` expands it: a margin that is a
/// positive number, a level in (0.5, 1), a `than` bound only on `Higher`
/// and `Lower` (a positive ratio with `LogRatio`), `at_least` k of the `each`
/// values (1 <= k <= their number), a family of tests at one level.
fn check_claims(claims: &[Claim], ctx: &Ctx) -> Result<()> {
    let mut levels: BTreeMap<&str, f64> = BTreeMap::new();
    for c in claims {
        let line = ctx.line_of_field("claim", &c.claim);
        let bad = |m: String| ctx.err_at(line, format!("report: claim `{}`: {m}", c.claim));
        if let Expect::Same { margin } = c.expect
            && !(margin.is_finite() && margin > 0.0)
        {
            return Err(bad(format!(
                "margin {margin} is not a positive number; `Same(margin: X)` takes the largest \
                 difference that counts as the same, in the units shown"
            )));
        }
        if !(c.level > 0.5 && c.level < 1.0) {
            return Err(bad(format!(
                "level {} is not in (0.5, 1): it is the confidence of the two-sided interval \
                 (0.95: alpha 0.05; `Same` uses the 1 - 2 alpha interval)",
                c.level
            )));
        }
        if !(c.scale.is_finite() && c.scale > 0.0) {
            return Err(bad(format!("scale {} is not a positive number", c.scale)));
        }
        if let Some(t) = c.than {
            if !matches!(c.expect, Expect::Higher | Expect::Lower) {
                return Err(bad(format!(
                    "than: {t} bounds a `Higher` or `Lower` claim; `Same` has its margin and \
                     `Describe` tests nothing"
                )));
            }
            let ratio = c.transform == Transform::LogRatio;
            if !t.is_finite() || (ratio && t <= 0.0) {
                return Err(bad(format!(
                    "than: {t} is not {}",
                    if ratio {
                        "a positive ratio (with `LogRatio` it bounds a / b)"
                    } else {
                        "a finite number"
                    }
                )));
            }
        }
        if let Some(k) = c.at_least {
            if c.each.is_empty() {
                return Err(bad(
                    "`at_least` counts the cases of `each`, which this claim does not have".into(),
                ));
            }
            if k == 0 || k > c.each.len() {
                return Err(bad(format!(
                    "at_least: {k} is not between 1 and the {} values of `each`",
                    c.each.len()
                )));
            }
            if c.family.is_some() {
                return Err(bad(
                    "an `at_least` claim corrects its own cases (Holm); it takes no `family`"
                        .into(),
                ));
            }
        }
        if c.expect == Expect::Describe && (c.at_least.is_some() || c.family.is_some()) {
            return Err(bad(
                "`Describe` tests nothing, so it takes neither `at_least` nor `family`".into(),
            ));
        }
        if let Some(f) = &c.family {
            match levels.get(f.as_str()) {
                Some(l) if *l != c.level => {
                    return Err(bad(format!(
                        "family `{f}` mixes levels {l} and {}: Holm corrects tests at one level",
                        c.level
                    )));
                }
                _ => {
                    levels.insert(f, c.level);
                }
            }
        }
    }
    Ok(())
}

/// A table's thesis columns name rows of `results/thesis/tables.csv`.
fn check_thesis_columns(t: &PivotTable, ctx: &Ctx) -> Result<()> {
    let Some(th) = &t.thesis else {
        return Ok(());
    };
    let line = ctx.line_of_field("title", &t.title);
    let bad = |m: String| ctx.err_at(line, format!("report: table `{}`: thesis: {m}", t.title));
    if th.rows.len() != t.rows.len() {
        return Err(bad(format!(
            "{} rows for the table's {}",
            th.rows.len(),
            t.rows.len()
        )));
    }
    if !th.columns.is_empty() && th.columns.len() != t.columns.len() {
        return Err(bad(format!(
            "{} columns for the table's {}",
            th.columns.len(),
            t.columns.len()
        )));
    }
    for (i, _) in t.columns.iter().enumerate() {
        let model = th.model(&t.columns, i);
        for method in th.rows.iter().filter(|m| !m.is_empty()) {
            if crate::thesis::find(&th.table, &th.dataset, model, method).is_none() {
                let known: Vec<String> = crate::thesis::rows()
                    .iter()
                    .filter(|r| r.table == th.table && r.dataset == th.dataset && r.model == model)
                    .map(|r| r.label())
                    .collect();
                return Err(bad(format!(
                    "Table {} has no row `{method}` for {model} on {} (results/thesis/tables.csv); valid choices: {}",
                    th.table,
                    th.dataset,
                    if known.is_empty() {
                        "none (no such table, dataset or model)".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    Ok(())
}

fn show_coords(c: &Coords) -> String {
    let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("[{}]", parts.join(","))
}

/// Whether two grid points agree on the fields they share.
fn agrees(a: &Coords, b: &Coords) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// A stage merged with everything it extends (nearest wins).
fn flatten(name: &str, raw: &RawStudy, ctx: &Ctx) -> Result<RawStage> {
    let mut chain = vec![name.to_string()];
    let lookup = |n: &str| raw.stages.get(n).or_else(|| raw.blocks.get(n));
    let mut current = lookup(name).expect("name comes from the study").clone();
    while let Some(parent) = current.extends().map(str::to_string) {
        if chain.contains(&parent) {
            chain.push(parent);
            return Err(ctx.err(
                Some(name),
                format!("`extends` goes round in a cycle: {}", chain.join(" -> ")),
            ));
        }
        let Some(p) = lookup(&parent) else {
            let mut choices: Vec<&str> = raw.blocks.keys().map(String::as_str).collect();
            choices.extend(raw.stages.keys().map(String::as_str));
            return Err(ctx.err(
                Some(chain.last().expect("non-empty")),
                format!(
                    "`{}` extends unknown `{parent}`; valid choices: {}",
                    chain.last().expect("non-empty"),
                    choices.join(", ")
                ),
            ));
        };
        current = current
            .merge_parent(p)
            .map_err(|m| ctx.err(Some(chain.last().expect("non-empty")), m.to_string()))?;
        chain.push(parent);
    }
    Ok(current)
}

/// The study's stages, each after the ones its `from`/`of` name.
fn topo_order(stages: &IndexMap<String, RawStage>, ctx: &Ctx) -> Result<Vec<String>> {
    for (name, s) in stages {
        for (role, target) in s.refs() {
            if !stages.contains_key(target) {
                let choices: Vec<&str> = stages.keys().map(String::as_str).collect();
                return Err(ctx.err(
                    Some(name),
                    format!(
                        "stage `{name}`: `{role}` names unknown stage `{target}`; valid choices: {}",
                        choices.join(", ")
                    ),
                ));
            }
        }
    }
    let mut order = Vec::new();
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 visiting, 2 done
    fn visit<'a>(
        n: &'a str,
        stages: &'a IndexMap<String, RawStage>,
        state: &mut HashMap<&'a str, u8>,
        order: &mut Vec<String>,
        path: &mut Vec<&'a str>,
        ctx: &Ctx,
    ) -> Result<()> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(_) => {
                path.push(n);
                return Err(ctx.err(
                    Some(n),
                    format!(
                        "stages depend on each other in a cycle: {}",
                        path.join(" -> ")
                    ),
                ));
            }
            None => {}
        }
        state.insert(n, 1);
        path.push(n);
        for (_, t) in stages[n].refs() {
            visit(t, stages, state, order, path, ctx)?;
        }
        path.pop();
        state.insert(n, 2);
        order.push(n.to_string());
        Ok(())
    }
    for n in stages.keys() {
        visit(n, stages, &mut state, &mut order, &mut Vec::new(), ctx)?;
    }
    Ok(order)
}

// Claims as a study writes them; `crate::claims` decides them.

/// One claim, as a study writes it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Claim")]
pub struct Claim {
    /// What is claimed, with where the thesis says it (`"SAM > SGD (Table 5.2)"`).
    pub claim: String,
    /// The stage (or grid point, `escape-sam[rho=0.1]`) on the left.
    pub a: String,
    /// The stage (or grid point) on the right.
    pub b: String,
    /// The summary measure compared (`test_acc`, `escape_steps`, ...).
    pub measure: String,
    /// `b`'s measure when it differs from `a`'s (two readings of one stage).
    #[serde(default)]
    pub b_measure: Option<String>,
    pub expect: Expect,
    #[serde(default)]
    pub transform: Transform,
    /// Multiplies differences as shown (100: accuracy in points).
    #[serde(default = "one")]
    pub scale: f64,
    /// What the shown numbers are in (`"points"`).
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub censored: Censored,
    /// One claim per value, `{each}` in `claim`, `a` and `b` replaced by
    /// it (`each: ["resnet18", "wrn28-10"]`, `a: "{each}-sam"`).
    #[serde(default)]
    pub each: Vec<String>,
    /// With `each`: one claim about its cases, that the expectation holds
    /// in at least this many of them (each case tested, Holm-corrected
    /// over the cases): the thesis' "7 out of 8 cases".
    #[serde(default)]
    pub at_least: Option<usize>,
    /// Claims that share a family name are corrected together for
    /// multiple testing (Holm's method); the page shows the corrected
    /// verdict beside the uncorrected interval.
    #[serde(default)]
    pub family: Option<String>,
    /// The confidence of the two-sided interval (default 0.95, alpha =
    /// 1 - level).
    #[serde(default = "level95")]
    pub level: f64,
    /// `Higher`/`Lower` against a bound other than no difference: `a - b`
    /// above or below `than` (in the units shown, after `scale`), or with
    /// `LogRatio` the ratio `a / b` above or below `than` ("costs at most
    /// half of SAM's": `Lower`, `LogRatio`, `than: 0.5`).
    #[serde(default)]
    pub than: Option<f64>,
}

fn one() -> f64 {
    1.0
}

fn level95() -> f64 {
    0.95
}

/// What a claim expects of `a - b`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Expect {
    Higher,
    Lower,
    /// Equivalence within ±`margin` (in the units shown: after `scale`;
    /// for `LogRatio`, of the log ratio), by two one-sided tests.
    Same {
        margin: f64,
    },
    Describe,
}

/// What is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Transform {
    /// `a - b`.
    #[default]
    Difference,
    /// `ln a - ln b`, shown as the ratio `a / b`.
    LogRatio,
}

/// How runs that did not escape count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Censored {
    /// Not at all: a claim on censored escape steps is not computed.
    #[default]
    Refuse,
    /// As the steps they ran (a lower bound on their escape steps).
    AsBudget,
}
