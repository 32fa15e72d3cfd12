//! `Landscape`: the training loss around one Train stage's final weights
//! `w`, along one direction (`w + a x`) or over a plane (`w + a x + b y`),
//! as Li et al. draw it (Visualizing the Loss Landscape of Neural Nets,
//! 2018), and the valley's asymmetry along each axis (He et al., Asymmetric
//! Valleys, 2019; the thesis' Theorem 3.3.2 says SAM settles on the flat
//! side of such a valley).
//!
//! Directions:
//! - `Random`: Gaussian with Li et al.'s filter normalisation (each filter
//!   rescaled to the norm of the same filter of `w`; BatchNorm's scale and
//!   shift and biases not moved), drawn from the stage's `seed` (x and y
//!   from two streams), so a grid over `seed` samples random directions;
//! - `Eigenvector(i)`: the i-th Hessian eigenvector of a Sharpness stage
//!   (`sharpness:`) measured at the same weights, scaled to the norm a
//!   filter-normalised direction has (that of `w`'s filters), so `a` means
//!   the same distance on both kinds of axis.
//!
//! The loss is read on the Sharpness probe (the first `images` of the Train
//! stage's training images in a fixed random order), BatchNorm in
//! evaluation mode with `w`'s running statistics. Asymmetry along an axis
//! through `w`: `A = sum_a (L(w + a u) - L(w - a u)) / sum_a (L(w + a u) +
//! L(w - a u) - 2 L(w))` over the grid's pairs `a, -a` (a > 0): 0 for a
//! symmetric valley, +-1 where one side does not rise at all; `|A|` is the
//! asymmetry summarised over random directions (the sign of a random
//! direction is arbitrary). Writes `metrics.csv` (`a, b, loss, error`) and
//! `summary.json`.

use std::fmt::Write as _;

use candle_core::DType;
use samlab_data::DatasetName;
use samlab_models::Arch;
use samlab_optim::curvature::{Flat, LossSurface, filter_normalized_random, norm};
use serde::{Deserialize, Serialize};

use super::data::{forward_cost};
use super::settings::{AlphaGrid, Grid, whole};
use super::link::{Probe, weights_dep, dep_file, dep_model};
use super::{
    Deps, Done, Kind, KindPlan, Outcome, Partial, PlanInput, PlotOut, RunCtx, StageSpec, Summary,
};
use crate::cache::write_file;
use crate::chart::{Series, heat_map, line_chart};
use crate::error::{Invalid, Result, stage_err};

/// A direction in weight space (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Random,
    Eigenvector(usize),
}

/// A Landscape stage as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Landscape")]
pub struct LandscapePartial {
    pub extends: Option<String>,
    /// The Train stage at the centre.
    pub of: Option<String>,
    /// The Sharpness stage whose eigenvectors `Eigenvector` directions take.
    pub sharpness: Option<String>,
    pub x: Option<Direction>,
    /// A second direction makes a plane.
    pub y: Option<Direction>,
    /// The values of `a` (and `b`).
    pub range: Option<AlphaGrid>,
    pub images: Option<usize>,
    pub batch: Option<usize>,
    pub seed: Option<u64>,
    pub grid: Option<Grid>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LandscapeSpec {
    pub x: Direction,
    pub y: Option<Direction>,
    pub range: AlphaGrid,
    #[serde(flatten)]
    pub probe: Probe,
    pub seed: u64,
}

impl Partial for LandscapePartial {
    type Spec = LandscapeSpec;
    const GRID_FIELDS: &'static [&'static str] = &["seed", "images"];

    fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    fn refs(&self) -> Vec<(&'static str, &str)> {
        let mut r: Vec<(&'static str, &str)> = self.of.iter().map(|f| ("of", f.as_str())).collect();
        if let Some(s) = &self.sharpness {
            r.push(("sharpness", s.as_str()));
        }
        r
    }

    fn grid(&self) -> Option<&Grid> {
        self.grid.as_ref()
    }

    fn set_grid(&mut self, field: &str, v: f64) -> Result<(), Invalid> {
        match field {
            "seed" => self.seed = Some(whole(v)?),
            "images" => self.images = Some(whole(v)? as usize),
            _ => return Err(Invalid::UnknownGridField(field.to_string())),
        }
        Ok(())
    }

    fn finish(&self, _dataset: DatasetName, deps: &Deps) -> Result<LandscapeSpec, Invalid> {
        if self.of.is_none() {
            return Err(Invalid::Missing {
                field: "of",
                hint: ": name the Train stage at the centre",
            });
        }
        let x = self.x.unwrap_or(Direction::Random);
        let eigen = [Some(x), self.y]
            .iter()
            .flatten()
            .any(|d| matches!(d, Direction::Eigenvector(_)));
        if eigen && self.sharpness.is_none() {
            return Err(Invalid::Value(
                "an `Eigenvector` direction needs `sharpness:` naming the Sharpness stage of the same weights".into(),
            ));
        }
        for d in [Some(x), self.y].into_iter().flatten() {
            if d == Direction::Eigenvector(0) {
                return Err(Invalid::Value(
                    "eigenvectors count from 1 (`Eigenvector(1)` is the top one)".into(),
                ));
            }
        }
        if self.y.is_some() && self.y == Some(x) && x != Direction::Random {
            return Err(Invalid::Value(format!(
                "`x` and `y` are the same direction ({x:?})"
            )));
        }
        let range = self.range.unwrap_or(AlphaGrid {
            start: -1.0,
            end: 1.0,
            points: 21,
        });
        if range.points < 2 || !range.start.is_finite() || !range.end.is_finite() {
            return Err(Invalid::Value(format!(
                "`range` needs finite `start` and `end` and `points` >= 2, not {range:?}"
            )));
        }
        let centre: Vec<_> = deps.iter().filter(|(r, _)| *r == "of").copied().collect();
        let probe = Probe::new(self.images, self.batch, 500, weights_dep(&centre)?)?;
        check_sharpness(x, self.y, &probe.model, deps)?;
        Ok(LandscapeSpec {
            x,
            y: self.y,
            range,
            probe,
            seed: self.seed.unwrap_or(0),
        })
    }
}

/// The Sharpness stage `sharpness` names (if any) measures the same
/// weights (`model`) and keeps every eigenvector `x` and `y` use.
fn check_sharpness(
    x: Direction,
    y: Option<Direction>,
    model: &Arch,
    deps: &Deps,
) -> Result<(), Invalid> {
        if let Some((role, d)) = deps.iter().find(|(r, _)| *r == "sharpness") {
            match d {
                StageSpec::Sharpness(s) => {
                    if s.probe.model != *model {
                        return Err(Invalid::Value(format!(
                            "`sharpness` measures {} and `of` trains {}: the eigenvectors must be of the same weights",
                            s.probe.model, model
                        )));
                    }
                    let k = [Some(x), y]
                        .into_iter()
                        .flatten()
                        .filter_map(|d| match d {
                            Direction::Eigenvector(i) => Some(i),
                            Direction::Random => None,
                        })
                        .max()
                        .unwrap_or(0);
                    if k > s.k {
                        return Err(Invalid::Value(format!(
                            "`Eigenvector({k})`, but the Sharpness stage keeps {} eigenvectors (`eigen: (k: ..)`)",
                            s.k
                        )));
                    }
                }
                other => {
                    return Err(Invalid::Value(format!(
                        "`{role}` must name a Sharpness stage, not a {} stage",
                        other.kind()
                    )));
                }
            }
        }
        Ok(())
    }

impl LandscapeSpec {
    fn points(&self) -> usize {
        self.range.points
            * if self.y.is_some() {
                self.range.points
            } else {
                1
            }
    }
}

impl Kind for LandscapeSpec {
    const NAME: &'static str = "landscape";
    const HEADLINE: &'static [&'static str] = &["asymmetry_x", "loss_rise_max"];
    const INDEX: &'static [&'static str] = &["a", "b"];
    const SWEEPS: bool = false;

    fn model(&self) -> &Arch {
        &self.probe.model
    }

    fn length(&self) -> String {
        format!("{}pt", self.points())
    }

    fn plan(&self, _input: &PlanInput) -> Result<KindPlan, Invalid> {
        let per_point = self.probe.batches_per_pass();
        Ok(KindPlan::plain(
            self,
            forward_cost(per_point * (self.points() + 1)),
        ))
    }

    fn run(&self, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
        run(self, ctx)
    }

    /// 1-D: loss and error along `a`; 2-D: the loss as a heat map.
    fn plots(done: &[Done<'_, Self>], out: &PlotOut) -> Result<Vec<String>> {
        let mut written = Vec::new();
        for d in done {
            let (_, rows) = crate::chart::fields(out.cache, d.key);
            let parsed: Vec<(f64, Option<f64>, f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    Some((
                        r.first()?.parse().ok()?,
                        r.get(1)?.parse().ok(),
                        r.get(2)?.parse().ok()?,
                        r.get(3)?.parse().ok()?,
                    ))
                })
                .collect();
            let stem = d.stem.clone();
            if d.spec.y.is_none() {
                for (what, pick) in [("loss", 2usize), ("error", 3)] {
                    let points: Vec<(f64, f64, f64)> = parsed
                        .iter()
                        .map(|p| (p.0, if pick == 2 { p.2 } else { p.3 }, 0.0))
                        .collect();
                    if points.len() < 2 {
                        continue;
                    }
                    let name = format!("{stem}-{what}.svg");
                    line_chart(
                        &out.dir.join(&name),
                        &format!("{}: train {what} along w + a x ({:?})", d.display, d.spec.x),
                        "a",
                        what,
                        &[Series {
                            name: "train".into(),
                            color: plotters::style::RED,
                            points,
                        }],
                    )?;
                    written.push(name);
                }
            } else {
                let xs = d.spec.range.values();
                let ys = xs.clone();
                let mut grid = vec![vec![f64::NAN; ys.len()]; xs.len()];
                for (i, j, p) in parsed
                    .iter()
                    .enumerate()
                    .map(|(n, p)| (n / ys.len(), n % ys.len(), p))
                {
                    if i < xs.len() {
                        grid[i][j] = p.2;
                    }
                }
                let name = format!("{stem}-loss.svg");
                heat_map(
                    &out.dir.join(&name),
                    &format!("{}: train loss", d.display),
                    (
                        &format!("a ({:?})", d.spec.x),
                        &format!("b ({:?})", d.spec.y.unwrap_or(Direction::Random)),
                    ),
                    &xs,
                    &ys,
                    &grid,
                    true,
                )?;
                written.push(name);
            }
        }
        Ok(written)
    }
}

/// The norm of `w` over the tensors a filter-normalised direction moves.
fn filter_norm(w: &[f64], shapes: &[Vec<usize>]) -> f64 {
    let mut at = 0;
    let mut sq = 0.0;
    for s in shapes {
        let n: usize = s.iter().product();
        if s.len() >= 2 {
            sq += w[at..at + n].iter().map(|x| x * x).sum::<f64>();
        }
        at += n;
    }
    sq.sqrt()
}

/// The Sharpness stage's eigenvectors, read (and checked to be of the
/// weights measured) once however many axes take one.
struct Eigenvectors {
    path: std::path::PathBuf,
    tensors: std::collections::HashMap<String, candle_core::Tensor>,
}

impl Eigenvectors {
    fn load(ctx: &RunCtx, w: &[f64]) -> Result<Eigenvectors> {
        let path = dep_file(ctx, "sharpness", "eigenvectors.safetensors")?;
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
        let eig = Eigenvectors { path, tensors };
        let at = eig.get(ctx, "w")?;
        let same = at.len() == w.len() && at.iter().zip(w).all(|(a, b)| (*a as f32) == (*b as f32));
        if !same {
            return Err(stage_err(
                ctx.stage,
                "the Sharpness stage measured other weights than `of`'s: name the Sharpness stage of the same Train stage",
            ));
        }
        Ok(eig)
    }

    fn get(&self, ctx: &RunCtx, name: &str) -> Result<Flat> {
        let t = self.tensors.get(name).ok_or_else(|| {
            stage_err(
                ctx.stage,
                format!("{} holds no `{name}`", self.path.display()),
            )
        })?;
        Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    }
}

fn direction(
    spec: &LandscapeSpec,
    ctx: &RunCtx,
    d: Direction,
    axis: u64,
    (w, shapes): (&[f64], &[Vec<usize>]),
    eigenvectors: &mut Option<Eigenvectors>,
) -> Result<Flat> {
    match d {
        Direction::Random => Ok(filter_normalized_random(
            w,
            shapes,
            spec.seed.wrapping_mul(2).wrapping_add(axis),
        )?),
        Direction::Eigenvector(i) => {
            let eig = match eigenvectors {
                Some(e) => e,
                None => eigenvectors.insert(Eigenvectors::load(ctx, w)?),
            };
            let v = eig.get(ctx, &format!("v{i}"))?;
            let scale = filter_norm(w, shapes) / norm(&v).max(f64::MIN_POSITIVE);
            Ok(v.iter().map(|x| x * scale).collect())
        }
    }
}

/// `A` of the module docs along one axis: `rise(a)` is the loss at `a`
/// minus the centre's, over the axis' values `xs`.
pub fn asymmetry(xs: &[f64], rise: &[f64]) -> Option<f64> {
    let scale = xs.iter().fold(0f64, |m, x| m.max(x.abs()));
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &a) in xs.iter().enumerate() {
        if a <= 0.0 {
            continue;
        }
        if let Some(j) = xs.iter().position(|&b| (a + b).abs() <= 1e-9 * scale) {
            num += rise[i] - rise[j];
            den += rise[i] + rise[j];
        }
    }
    (den > 0.0).then(|| num / den)
}

fn run(spec: &LandscapeSpec, ctx: &RunCtx) -> Result<(Summary, Outcome)> {
    let model = dep_model(ctx, &spec.probe.model, "of")?;
    let batches = spec.probe.batches(ctx, DType::F32)?;
    let surface = LossSurface::new(&model, batches, 1e-3)?;
    let w = surface.weights()?;
    let shapes = surface.shapes();
    let mut eigenvectors = None;
    let at = (w.as_slice(), shapes.as_slice());
    let dx = direction(spec, ctx, spec.x, 0, at, &mut eigenvectors)?;
    let dy = match spec.y {
        Some(d) => Some(direction(spec, ctx, d, 1, at, &mut eigenvectors)?),
        None => None,
    };
    let centre = surface.read(false)?;
    let xs = spec.range.values();
    let ys = if dy.is_some() { xs.clone() } else { vec![0.0] };
    let bar = ctx
        .progress
        .stage_bar(ctx.stage, (xs.len() * ys.len()) as u64, 0);
    let mut csv = String::from("a,b,loss,error\n");
    let mut loss = vec![vec![0.0; ys.len()]; xs.len()];
    let mut d = vec![0.0; w.len()];
    for (i, &a) in xs.iter().enumerate() {
        for (j, &b) in ys.iter().enumerate() {
            for (k, v) in d.iter_mut().enumerate() {
                *v = a * dx[k] + dy.as_ref().map_or(0.0, |y| b * y[k]);
            }
            let r = surface.read_at(Some(&d), 1.0, false)?;
            loss[i][j] = r.loss;
            match &dy {
                Some(_) => writeln!(csv, "{a},{b},{},{}", r.loss, 1.0 - r.accuracy),
                None => writeln!(csv, "{a},,{},{}", r.loss, 1.0 - r.accuracy),
            }
            .expect("a String takes writes");
            bar.inc(1);
        }
    }
    surface.restore()?;
    bar.finish();
    let mut summary = Summary::new();
    summary.insert("loss_centre".into(), centre.loss);
    summary.insert("error_centre".into(), 1.0 - centre.accuracy);
    let max = loss
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    summary.insert("loss_rise_max".into(), max - centre.loss);
    let centre_j = ys.iter().position(|&b| b == 0.0);
    if let Some(j) = centre_j {
        let rise: Vec<f64> = loss.iter().map(|col| col[j] - centre.loss).collect();
        if let Some(a) = asymmetry(&xs, &rise) {
            summary.insert("asymmetry_x".into(), a.abs());
            summary.insert("asymmetry_x_signed".into(), a);
        }
    }
    if dy.is_some()
        && let Some(i) = xs.iter().position(|&a| a == 0.0)
    {
        let rise: Vec<f64> = loss[i].iter().map(|l| l - centre.loss).collect();
        if let Some(a) = asymmetry(&ys, &rise) {
            summary.insert("asymmetry_y".into(), a.abs());
            summary.insert("asymmetry_y_signed".into(), a);
        }
    }
    summary.insert("direction_norm_x".into(), norm(&dx));
    write_file(&ctx.out.join("metrics.csv"), csv.as_bytes())?;
    Ok((summary, Outcome::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetry_is_zero_for_a_symmetric_valley_and_signed_otherwise() {
        let xs = [-1.0, -0.5, 0.0, 0.5, 1.0];
        let sym: Vec<f64> = xs.iter().map(|a| a * a).collect();
        assert_eq!(asymmetry(&xs, &sym), Some(0.0));
        // rises only on the + side
        let one: Vec<f64> = xs.iter().map(|&a: &f64| a.max(0.0)).collect();
        assert_eq!(asymmetry(&xs, &one), Some(1.0));
        let other: Vec<f64> = xs.iter().map(|&a: &f64| (-a).max(0.0)).collect();
        assert_eq!(asymmetry(&xs, &other), Some(-1.0));
        // steeper on the + side: between 0 and 1
        let steep: Vec<f64> = xs
            .iter()
            .map(|&a: &f64| if a > 0.0 { 3.0 * a * a } else { a * a })
            .collect();
        assert_eq!(asymmetry(&xs, &steep), Some(0.5));
        // flat everywhere: undefined
        assert_eq!(asymmetry(&xs, &[0.0; 5]), None);
    }
}
