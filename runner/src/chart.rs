//! Drawing and reading for plots, below every stage kind: SVG line charts
//! and heat maps (plotters), the palette, mean ± std points, and an entry's
//! `metrics.csv` as fields or numbers. `plots` composes a study's plots
//! from these; each kind draws its own (`Kind::plots`) with them.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::element::ComposedElement;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::stats::mean_std;

/// One line of a chart: its points, with an optional +- half-width each.
/// Its marker and dash come from its place in the chart ([`series_style`]).
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64, f64)>,
}

/// A vertical dashed line at `x` in `color`, labelled under the x axis
/// (`switch @ 10`): where something happens to one series.
pub struct Mark {
    pub x: f64,
    pub label: String,
    pub color: RGBColor,
}

/// A marker shape: filled or hollow (see-through, so a coinciding marker
/// shows inside it), so that eight series differ in shape alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    OpenSquare,
    Triangle,
    OpenDiamond,
    Cross,
    OpenTriangleDown,
    Square,
    OpenCircle,
}

/// A line's dash pattern: `Dashed(dash, gap)` in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dash {
    Solid,
    Dashed(i32, i32),
}

const MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::OpenSquare,
    Marker::Triangle,
    Marker::OpenDiamond,
    Marker::Cross,
    Marker::OpenTriangleDown,
    Marker::Square,
    Marker::OpenCircle,
];

const DASHES: [Dash; 4] = [
    Dash::Solid,
    Dash::Dashed(9, 5),
    Dash::Dashed(2, 4),
    Dash::Dashed(16, 5),
];

/// The marker and dash of the `i`-th series of a chart: no two of the
/// first 8 share a marker, and a series drawn over its predecessor (SGD->SAM
/// over SGD until the switch) has another dash, so both stay visible.
pub fn series_style(i: usize) -> (Marker, Dash) {
    (MARKERS[i % MARKERS.len()], DASHES[i % DASHES.len()])
}

/// At most this many markers on one series; a longer one is marked at every
/// k-th point, staggered between series so that coinciding curves show
/// both markers.
const MAX_MARKERS: usize = 16;

/// The indices of a series' points that get a marker: all of up to 20
/// points, else every k-th (at most [`MAX_MARKERS`]), starting at an offset
/// that differs by series.
fn marked(len: usize, series: usize, of: usize) -> Vec<usize> {
    if len <= 20 {
        return (0..len).collect();
    }
    let k = len.div_ceil(MAX_MARKERS);
    let phase = (series * k) / of.max(1) % k;
    (phase..len).step_by(k).collect()
}

/// A marker centred at `at` (any coordinate: the chart's or pixels): a
/// filled shape and its outline, in pixels around it.
type MarkerShape<C, DB> = ComposedElement<C, DB, Polygon<(i32, i32)>, PathElement<(i32, i32)>>;

fn marker<C, DB: DrawingBackend>(shape: Marker, at: C, color: RGBColor) -> MarkerShape<C, DB> {
    // Hollow shapes are a size larger, so that a filled marker under one
    // (a coinciding point of another series) shows inside it.
    let circle = |r: f64| -> Vec<(i32, i32)> {
        (0..16)
            .map(|k| {
                let a = k as f64 * std::f64::consts::PI / 8.0;
                ((r * a.cos()).round() as i32, (r * a.sin()).round() as i32)
            })
            .collect()
    };
    let pts: Vec<(i32, i32)> = match shape {
        Marker::Circle => circle(4.5),
        Marker::OpenCircle => circle(6.0),
        Marker::Square => vec![(-4, -4), (4, -4), (4, 4), (-4, 4)],
        Marker::OpenSquare => vec![(-6, -6), (6, -6), (6, 6), (-6, 6)],
        Marker::Triangle => vec![(0, -5), (5, 4), (-5, 4)],
        Marker::OpenTriangleDown => vec![(0, 7), (6, -4), (-6, -4)],
        Marker::OpenDiamond => vec![(0, -6), (6, 0), (0, 6), (-6, 0)],
        // Both strokes as one path, through the centre twice.
        Marker::Cross => vec![(-5, -5), (5, 5), (0, 0), (5, -5), (-5, 5)],
    };
    let fill = match shape {
        Marker::Circle | Marker::Square | Marker::Triangle => color.filled(),
        // Hollow: what lies under it (a coinciding marker) shows through.
        _ => TRANSPARENT.filled(),
    };
    let mut outline = pts.clone();
    if shape != Marker::Cross {
        outline.push(pts[0]);
    }
    EmptyElement::at(at)
        + Polygon::new(pts, fill)
        + PathElement::new(outline, color.stroke_width(2))
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

/// Whether every finite value is a whole number (epochs, steps, a period):
/// such an axis gets whole ticks only.
fn integral(mut vals: impl Iterator<Item = f64>) -> bool {
    vals.all(|v| !v.is_finite() || (v - v.round()).abs() < 1e-9)
}

/// Ticks on `[lo, hi]`: multiples of a 1-2-5 step, at most `max` of them,
/// the step at least 1 on an integer axis. Returns the ticks and the step.
fn ticks(lo: f64, hi: f64, max: usize, integer: bool) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return (vec![lo], 1.0);
    }
    let count = |s: f64| (hi / s).floor() - (lo / s).ceil() + 1.0;
    let mut base = 10f64.powf((span / max.max(1) as f64).log10().floor());
    if !(base > 0.0 && base.is_finite()) {
        return (vec![lo], 1.0);
    }
    let step = 'found: loop {
        for m in [1.0, 2.0, 5.0] {
            let s = m * base;
            if (!integer || s >= 1.0) && count(s) <= max as f64 {
                break 'found s;
            }
        }
        base *= 10.0;
    };
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    ((first..=last).map(|k| k as f64 * step).collect(), step)
}

/// A tick's label: as many decimals as the step needs, the same on every
/// tick of an axis (`0.10, 0.15, 0.20`; `5, 10, 15` on an integer axis,
/// whose step is whole), never `0.30000000000000004` or `-0`.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-(step.log10() + 1e-9).floor()).clamp(0.0, 15.0) as usize
    };
    let s = format!("{v:.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// A number in a label (`switch @ 10`, `@ 7.5`): whole numbers without
/// decimals, others to three significant decimals at most.
pub fn number_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The font sizes, as plotters takes them (it writes `size / 1.24` px).
const TITLE_FONT: f64 = 22.0;
const TICK_FONT: f64 = 18.0;
const DESC_FONT: f64 = 20.0;
const LEGEND_FONT: f64 = 18.0;
const MARK_FONT: f64 = 17.0;

/// Estimated width in pixels of `text` at plotters font size `size`
/// (a generous sans-serif average, so boxes hold their text).
fn text_width(text: &str, size: f64) -> i32 {
    (text.chars().count() as f64 * size / 1.24 * 0.62).ceil() as i32
}

/// The title's font size: smaller for a title that would not fit `width`
/// (by a tighter estimate than boxes get: a title has no border to cross).
fn title_font(title: &str, width: u32) -> f64 {
    let per_char = 0.55 / 1.24;
    let fits = (width as f64 - 30.0) / (title.chars().count().max(1) as f64 * per_char);
    TITLE_FONT.min(fits.floor()).max(12.0)
}

/// A chart's plotting area in pixels of the whole picture (y grows down).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Rect {
    fn of(r: (std::ops::Range<i32>, std::ops::Range<i32>)) -> Rect {
        Rect {
            x0: r.0.start,
            y0: r.1.start,
            x1: r.0.end,
            y1: r.1.end,
        }
    }

    /// The pixel of data point `p` on axes `xr`, `yr`.
    fn px(&self, xr: (f64, f64), yr: (f64, f64), p: (f64, f64)) -> (f64, f64) {
        let fx = (p.0 - xr.0) / (xr.1 - xr.0);
        let fy = (p.1 - yr.0) / (yr.1 - yr.0);
        (
            self.x0 as f64 + fx * (self.x1 - self.x0) as f64,
            self.y1 as f64 - fy * (self.y1 - self.y0) as f64,
        )
    }
}

/// Points along every series (its line every few pixels, its error bars'
/// ends), in data coordinates: what a legend inside the plot must not hide.
fn samples(series: &[Series], plot: Rect, xr: (f64, f64), yr: (f64, f64)) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for s in series {
        let pts: Vec<(f64, f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        for p in &pts {
            out.push((p.0, p.1));
            if p.2 > 0.0 && p.2.is_finite() {
                out.extend([(p.0, p.1 - p.2), (p.0, p.1 + p.2)]);
            }
        }
        for w in pts.windows(2) {
            let (a, b) = (
                plot.px(xr, yr, (w[0].0, w[0].1)),
                plot.px(xr, yr, (w[1].0, w[1].1)),
            );
            let n = ((b.0 - a.0).hypot(b.1 - a.1) / 3.0).ceil().min(400.0) as usize;
            for k in 1..n {
                let t = k as f64 / n as f64;
                out.push((
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                ));
            }
        }
    }
    out
}

/// Where a legend of `size` pixels goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// Inside the plot, its top-left corner here, with the y axis
    /// stretched to this range to make room (unchanged where it was free).
    Inside((i32, i32), (f64, f64)),
    /// Under the chart, which grows to hold it.
    Below,
}

/// The legend's place: the first corner (upper right, upper left, lower
/// right, lower left, then top and bottom centre and the middle of either
/// side) that covers no point of a line; else the corner that needs the
/// least headroom on the y axis (up to 40% more range); else below the
/// chart.
fn place_legend(
    pts: &[(f64, f64)],
    plot: Rect,
    xr: (f64, f64),
    yr: (f64, f64),
    size: (i32, i32),
) -> Place {
    const INSET: i32 = 10;
    let (w, h) = size;
    if w + 2 * INSET > plot.x1 - plot.x0 || h + 2 * INSET > (plot.y1 - plot.y0) / 2 {
        return Place::Below;
    }
    let (left, right) = (plot.x0 + INSET, plot.x1 - INSET - w);
    let (top, bottom) = (plot.y0 + INSET, plot.y1 - INSET - h);
    let centre = (plot.x0 + plot.x1 - w) / 2;
    let middle = (plot.y0 + plot.y1 - h) / 2;
    let corners = [(right, top), (left, top), (right, bottom), (left, bottom)];
    let others = [
        (centre, top),
        (centre, bottom),
        (right, middle),
        (left, middle),
    ];
    let covers = |(x, y): (i32, i32), yr: (f64, f64), p: &(f64, f64)| {
        let (px, py) = plot.px(xr, yr, *p);
        px >= (x - 4) as f64
            && px <= (x + w + 4) as f64
            && py >= (y - 4) as f64
            && py <= (y + h + 4) as f64
    };
    for at in corners.iter().chain(&others) {
        if !pts.iter().any(|p| covers(*at, yr, p)) {
            return Place::Inside(*at, yr);
        }
    }
    // Headroom: stretch the axis so that every point under the legend's
    // columns sits below (or above) it.
    let frac = (INSET + h + 6) as f64 / (plot.y1 - plot.y0) as f64;
    let mut best: Option<(f64, Place)> = None;
    for &(x, y) in &corners {
        let under: Vec<f64> = pts
            .iter()
            .filter(|p| {
                let px = plot.px(xr, yr, **p).0;
                px >= (x - 4) as f64 && px <= (x + w + 4) as f64
            })
            .map(|p| p.1)
            .collect();
        let stretched = if y == top {
            let v = under.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (yr.0, yr.1.max((v - frac * yr.0) / (1.0 - frac)))
        } else {
            let v = under.iter().copied().fold(f64::INFINITY, f64::min);
            (yr.0.min((v - frac * yr.1) / (1.0 - frac)), yr.1)
        };
        let ratio = (stretched.1 - stretched.0) / (yr.1 - yr.0);
        if ratio.is_finite() && ratio <= 1.4 && best.is_none_or(|(r, _)| ratio < r) {
            best = Some((ratio, Place::Inside((x, y), stretched)));
        }
    }
    best.map_or(Place::Below, |(_, p)| p)
}

/// One row of a legend: its text, colour and style.
struct Entry<'s> {
    label: &'s str,
    color: RGBColor,
    style: (Marker, Dash),
}

const LEGEND_ROW: i32 = 24;
const LEGEND_PAD: i32 = 8;
const LEGEND_SAMPLE: i32 = 44;

/// The width of one legend column and the legend's size with `cols`
/// columns.
fn legend_size(entries: &[Entry], cols: usize) -> (i32, (i32, i32)) {
    let text = entries
        .iter()
        .map(|e| text_width(e.label, LEGEND_FONT))
        .max()
        .unwrap_or(0);
    let col = LEGEND_SAMPLE + 8 + text + 14;
    let rows = entries.len().div_ceil(cols.max(1)) as i32;
    (
        col,
        (
            col * cols as i32 - 14 + 2 * LEGEND_PAD,
            rows * LEGEND_ROW + 2 * LEGEND_PAD - 4,
        ),
    )
}

/// A line sample in a legend: its dash, with its marker in the middle.
fn draw_sample(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    (x, y): (i32, i32),
    color: RGBColor,
    (shape, dash): (Marker, Dash),
) -> std::result::Result<(), String> {
    let line = vec![(x, y), (x + LEGEND_SAMPLE, y)];
    let style = color.stroke_width(2);
    match dash {
        Dash::Solid => root.draw(&PathElement::new(line, style)),
        Dash::Dashed(d, g) => root.draw(&DashedPathElement::new(line, d, g, style)),
    }
    .map_err(|e| e.to_string())?;
    root.draw(&marker(shape, (x + LEGEND_SAMPLE / 2, y), color))
        .map_err(|e| e.to_string())
}

fn draw_legend(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    (x, y): (i32, i32),
    entries: &[Entry],
    cols: usize,
) -> std::result::Result<(), String> {
    let (col, (w, h)) = legend_size(entries, cols);
    root.draw(&Rectangle::new(
        [(x, y), (x + w, y + h)],
        WHITE.mix(0.9).filled(),
    ))
    .map_err(|e| e.to_string())?;
    root.draw(&Rectangle::new([(x, y), (x + w, y + h)], BLACK.mix(0.45)))
        .map_err(|e| e.to_string())?;
    let rows = entries.len().div_ceil(cols.max(1));
    let font = ("sans-serif", LEGEND_FONT)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, e) in entries.iter().enumerate() {
        let (c, r) = ((i / rows) as i32, (i % rows) as i32);
        let (ex, ey) = (
            x + LEGEND_PAD + c * col,
            y + LEGEND_PAD + r * LEGEND_ROW + LEGEND_ROW / 2 - 2,
        );
        draw_sample(root, (ex, ey), e.color, e.style)?;
        root.draw(&Text::new(
            e.label,
            (ex + LEGEND_SAMPLE + 8, ey),
            font.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The marks with one line per place and label: rows that all switch at
/// the same epoch (a grid over rho) share one, grey where their colours
/// differ.
fn merged(marks: &[Mark]) -> Vec<Mark> {
    let mut out: Vec<Mark> = Vec::new();
    for m in marks {
        match out.iter_mut().find(|o| o.x == m.x && o.label == m.label) {
            Some(o) if o.color != m.color => o.color = RGBColor(90, 90, 90),
            Some(_) => {}
            None => out.push(Mark {
                x: m.x,
                label: m.label.clone(),
                color: m.color,
            }),
        }
    }
    out
}

/// Rows of the marks' labels under the x axis: each label's row, the
/// first where it overlaps no label already placed (`xs`: its pixel x).
fn mark_rows(marks: &[Mark], xs: &[i32]) -> Vec<usize> {
    let mut taken: Vec<Vec<(i32, i32)>> = Vec::new();
    let mut rows = Vec::new();
    for (m, &x) in marks.iter().zip(xs) {
        let w = text_width(&m.label, MARK_FONT);
        let span = (x - w / 2 - 3, x + w / 2 + 3);
        let row = (0..)
            .find(|&r| {
                taken.get(r).is_none_or(|t: &Vec<(i32, i32)>| {
                    t.iter().all(|o| span.1 < o.0 || span.0 > o.1)
                })
            })
            .unwrap_or(0);
        if taken.len() <= row {
            taken.resize(row + 1, Vec::new());
        }
        taken[row].push(span);
        rows.push(row);
    }
    rows
}

/// An f64 axis with the ticks [`ticks`] chose (plotters' own may land on
/// 2.5 on an axis of epochs) and no light mesh lines.
struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(lo: f64, hi: f64, max: usize, integer: bool) -> Ticked {
        Ticked {
            inner: (lo..hi).into(),
            ticks: ticks(lo, hi, max, integer).0,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

type Axes = Cartesian2d<Ticked, Ticked>;

/// A chart's frame: its title, label areas and axes with their ticks.
struct Frame<'t> {
    title: &'t str,
    size: (u32, u32),
    x_area: u32,
    y_area: u32,
    x: (f64, f64, bool),
    y: (f64, f64, bool),
}

fn build<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    f: &Frame,
) -> std::result::Result<ChartContext<'a, SVGBackend<'b>, Axes>, String> {
    ChartBuilder::on(area)
        .caption(f.title, ("sans-serif", title_font(f.title, f.size.0)))
        .margin(14)
        .x_label_area_size(f.x_area)
        .y_label_area_size(f.y_area)
        .build_cartesian_2d(
            Ticked::new(f.x.0, f.x.1, 9, f.x.2),
            Ticked::new(f.y.0, f.y.1, 8, f.y.2),
        )
        .map_err(|e| e.to_string())
}

/// The pixel rectangle a frame's plot gets (drawn into a string, thrown away).
fn plot_rect(f: &Frame) -> std::result::Result<Rect, String> {
    let mut sink = String::new();
    let root = SVGBackend::with_string(&mut sink, f.size).into_drawing_area();
    let chart = build(&root, f)?;
    Ok(Rect::of(chart.plotting_area().get_pixel_range()))
}

/// A line chart with points and error bars, as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    line_chart_marked(path, title, x_label, y_label, series, &[])
}

/// A line chart as a paper prints it, as SVG: each series with its colour,
/// marker and dash ([`series_style`]; up to [`MAX_MARKERS`] markers on a
/// long one, whose spread is a band, error bars on a short one), whole
/// ticks on an axis of whole numbers, a legend where it hides no line (or
/// under the chart), and `marks` as dashed vertical lines labelled under
/// the x axis.
pub fn line_chart_marked(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    marks: &[Mark],
) -> Result<()> {
    draw_line_chart(path, title, (x_label, y_label), series, marks).map_err(|e| plot_err(path, e))
}

fn draw_line_chart(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    marks: &[Mark],
) -> std::result::Result<(), String> {
    const SIZE: (u32, u32) = (760, 500);
    let marks = &merged(marks);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let xs = || all().map(|p| p.0).chain(marks.iter().map(|m| m.x));
    let x_int = integral(xs());
    let y_int = integral(all().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let xr = range(xs());
    let mut yr = range(all().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let mut frame = Frame {
        title,
        size: SIZE,
        x_area: 58,
        y_area: 80,
        x: (xr.0, xr.1, x_int),
        y: (yr.0, yr.1, y_int),
    };
    // The marks' labels take rows under the tick labels.
    let plot = plot_rect(&frame)?;
    let mark_xs: Vec<i32> = marks
        .iter()
        .map(|m| plot.px(xr, yr, (m.x, yr.0)).0.round() as i32)
        .collect();
    let rows = mark_rows(marks, &mark_xs);
    let mark_lines = rows.iter().max().map_or(0, |r| r + 1) as u32;
    frame.x_area += 22 * mark_lines;
    let plot = plot_rect(&frame)?;

    let entries: Vec<Entry> = series
        .iter()
        .enumerate()
        .map(|(i, s)| Entry {
            label: &s.name,
            color: s.color,
            style: series_style(i),
        })
        .collect();
    let mut legend = None;
    let mut height = SIZE.1;
    if series.len() > 1 {
        let (_, size) = legend_size(&entries, 1);
        match place_legend(&samples(series, plot, xr, yr), plot, xr, yr, size) {
            Place::Inside(at, stretched) => {
                yr = stretched;
                legend = Some((at, 1));
            }
            Place::Below => {
                let width = (plot.x1 - plot.x0) as usize;
                let (col, _) = legend_size(&entries, 1);
                let cols = (width / col.max(1) as usize).clamp(1, entries.len());
                let (_, (w, h)) = legend_size(&entries, cols);
                let x = ((plot.x0 + plot.x1 - w) / 2).max(4);
                legend = Some(((x, SIZE.1 as i32), cols));
                height += h as u32 + 12;
            }
        }
    }
    frame.y = (yr.0, yr.1, y_int);

    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, _) = root.split_vertically(SIZE.1);
    let mut chart = build(&top, &frame)?;
    let (_, xstep) = ticks(xr.0, xr.1, 9, x_int);
    let (_, ystep) = ticks(yr.0, yr.1, 8, y_int);
    let xf = move |v: &f64| tick_label(*v, xstep);
    let yf = move |v: &f64| tick_label(*v, ystep);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .label_style(("sans-serif", TICK_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .bold_line_style(BLACK.mix(0.1))
        .draw()
        .map_err(|e| e.to_string())?;

    let finite = |s: &Series| -> Vec<(f64, f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect()
    };
    // Spreads first (bands under every line), then the marks, lines, error
    // bars and markers, each over all series.
    for s in series.iter().filter(|s| s.points.len() > 12) {
        let pts = finite(s);
        let spread = |p: &(f64, f64, f64)| if p.2.is_finite() { p.2 } else { 0.0 };
        if pts.iter().all(|p| spread(p) == 0.0) {
            continue;
        }
        let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + spread(p))).collect();
        band.extend(pts.iter().rev().map(|p| (p.0, p.1 - spread(p))));
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                s.color.mix(0.15).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    for m in marks {
        chart
            .draw_series(std::iter::once(DashedPathElement::new(
                vec![(m.x, yr.0), (m.x, yr.1)],
                7,
                5,
                m.color.stroke_width(2),
            )))
            .map_err(|e| e.to_string())?;
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = finite(s).iter().map(|p| (p.0, p.1)).collect();
        let style = s.color.stroke_width(2);
        match series_style(i).1 {
            Dash::Solid => chart.draw_series(LineSeries::new(pts, style)),
            Dash::Dashed(d, g) => chart.draw_series(DashedLineSeries::new(pts, d, g, style)),
        }
        .map_err(|e| e.to_string())?;
    }
    for s in series {
        let pts = finite(s);
        if pts.len() <= 12 {
            // Error bars: a line with caps (plotters' own rings the mean,
            // which would read as another marker).
            let style = s.color.stroke_width(1);
            let bars: Vec<(f64, f64, f64)> = pts
                .iter()
                .copied()
                .filter(|p| p.2 > 0.0 && p.2.is_finite())
                .collect();
            chart
                .draw_series(
                    bars.iter()
                        .map(|p| PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], style)),
                )
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    bars.iter()
                        .flat_map(|p| [(p.0, p.1 - p.2), (p.0, p.1 + p.2)])
                        .map(|c| {
                            EmptyElement::at(c) + PathElement::new(vec![(-4, 0), (4, 0)], style)
                        }),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    for (i, s) in series.iter().enumerate() {
        let pts = finite(s);
        let shape = series_style(i).0;
        chart
            .draw_series(
                marked(pts.len(), i, series.len())
                    .into_iter()
                    .map(|j| marker(shape, (pts[j].0, pts[j].1), s.color)),
            )
            .map_err(|e| e.to_string())?;
    }
    // The marks' labels, under the tick labels, each in its row.
    let font = TextStyle::from(("sans-serif", MARK_FONT).into_font())
        .pos(Pos::new(HPos::Center, VPos::Top));
    for ((m, &x), row) in marks.iter().zip(&mark_xs).zip(&rows) {
        let y = plot.y1 + 30 + 22 * *row as i32;
        root.draw(&PathElement::new(
            vec![(x, plot.y1), (x, plot.y1 + 8)],
            m.color.stroke_width(3),
        ))
        .map_err(|e| e.to_string())?;
        root.draw(&Text::new(m.label.clone(), (x, y), font.color(&m.color)))
            .map_err(|e| e.to_string())?;
    }
    if let Some((at, cols)) = legend {
        draw_legend(&root, at, &entries, cols)?;
    }
    root.present().map_err(|e| e.to_string())
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
    let root = SVGBackend::new(path, (620, 580)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let caption = format!(
        "{title} ({lo:.3} dark to {hi:.3} light{})",
        if log { ", log" } else { "" }
    );
    let (x_int, y_int) = (integral(xs.iter().copied()), integral(ys.iter().copied()));
    let (xstep, ystep) = (ticks(x0, x1, 7, x_int).1, ticks(y0, y1, 7, y_int).1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            &caption,
            ("sans-serif", title_font(&caption, 620).min(19.0)),
        )
        .margin(14)
        .x_label_area_size(58)
        .y_label_area_size(75)
        .build_cartesian_2d(Ticked::new(x0, x1, 7, x_int), Ticked::new(y0, y1, 7, y_int))
        .map_err(|e| plot_err(path, e))?;
    let xf = move |v: &f64| tick_label(*v, xstep);
    let yf = move |v: &f64| tick_label(*v, ystep);
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .label_style(("sans-serif", TICK_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
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

/// Mean ± std over runs of column `y` against column `x`, at each x that
/// at least one run reached.
pub fn mean_curve(runs: &[Table], x: &str, y: &str) -> Vec<(f64, f64, f64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_axes_get_whole_ticks_and_others_clean_decimals() {
        // Epochs 1..=30 padded: whole ticks, labelled without decimals.
        let (lo, hi) = range((1..=30).map(f64::from));
        assert!(integral((1..=30).map(f64::from)));
        let (t, step) = ticks(lo, hi, 9, true);
        let labels: Vec<String> = t.iter().map(|v| tick_label(*v, step)).collect();
        assert_eq!(labels, ["0", "5", "10", "15", "20", "25", "30"]);
        assert_eq!(tick_label(5.0, 5.0), "5");
        // Four epochs: no 1.5 or 2.5 tick on a whole axis, but on a real one.
        let (lo, hi) = range((1..=4).map(f64::from));
        let (t, _) = ticks(lo, hi, 9, true);
        assert_eq!(t, [1.0, 2.0, 3.0, 4.0]);
        assert!(ticks(lo, hi, 9, false).0.contains(&1.5));
        assert!(!integral([0.0, 0.05, 0.1].into_iter()));
        // Other axes: the step's decimals, the same on every tick.
        assert_eq!(tick_label(0.1 + 0.2, 0.1), "0.3");
        assert_eq!(tick_label(0.30000000000000004, 0.05), "0.30");
        assert_eq!(tick_label(-0.0, 0.2), "0.0");
        assert_eq!(tick_label(-1e-17, 1.0), "0");
        let (t, step) = ticks(-0.62, 0.62, 7, false);
        let labels: Vec<String> = t.iter().map(|v| tick_label(*v, step)).collect();
        assert_eq!(labels, ["-0.6", "-0.4", "-0.2", "0.0", "0.2", "0.4", "0.6"]);
        assert_eq!(number_label(10.0), "10");
        assert_eq!(number_label(7.5), "7.5");
    }

    #[test]
    fn series_differ_in_marker_and_from_their_neighbour_in_dash() {
        let styles: Vec<(Marker, Dash)> = (0..8).map(series_style).collect();
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(
                    styles[i].0, styles[j].0,
                    "series {i} and {j} share a marker"
                );
            }
            if i > 0 {
                assert_ne!(
                    styles[i].1,
                    styles[i - 1].1,
                    "series {i} has its neighbour's dash"
                );
            }
        }
        // Colour (6), marker (8) and dash (4) repeat together only after 24.
        for i in 0..24 {
            for j in 0..i {
                assert!(
                    PALETTE[i % 6] != PALETTE[j % 6] || styles[i % 8] != styles[j % 8],
                    "series {i} and {j} look alike"
                );
            }
        }
    }

    #[test]
    fn long_series_get_a_few_staggered_markers() {
        assert_eq!(marked(12, 1, 3), (0..12).collect::<Vec<_>>());
        let a = marked(300, 0, 2);
        let b = marked(300, 1, 2);
        assert!(a.len() <= MAX_MARKERS && b.len() <= MAX_MARKERS && a.len() >= 10);
        assert!(
            a.iter().all(|i| !b.contains(i)),
            "markers of two series coincide"
        );
        assert!(a.iter().chain(&b).all(|&i| i < 300));
    }

    #[test]
    fn the_legend_avoids_the_lines() {
        let plot = Rect {
            x0: 80,
            y0: 40,
            x1: 740,
            y1: 440,
        };
        let (xr, yr) = ((0.0, 10.0), (0.0, 1.0));
        // A line falling from the upper left to the lower right: the upper
        // right corner is free.
        let falling = Series {
            name: "a".into(),
            color: PALETTE[0],
            points: (0..=10)
                .map(|i| (i as f64, 1.0 - i as f64 / 10.0, 0.0))
                .collect(),
        };
        let pts = samples(&[falling], plot, xr, yr);
        let Place::Inside((x, y), same) = place_legend(&pts, plot, xr, yr, (200, 60)) else {
            panic!("no room for the legend");
        };
        assert_eq!(same, yr);
        assert!(x > 400 && y < 100, "upper right, not {x},{y}");
        // Lines across the whole plot at 0.1 and 0.9: no corner is free,
        // the axis grows or the legend goes under the chart.
        let flat = |y: f64| Series {
            name: "b".into(),
            color: PALETTE[1],
            points: vec![(0.0, y, 0.0), (10.0, y, 0.0)],
        };
        let pts = samples(&[flat(0.05), flat(0.5), flat(0.95)], plot, xr, yr);
        match place_legend(&pts, plot, xr, yr, (200, 60)) {
            Place::Inside(at, stretched) => {
                assert!(
                    stretched.1 > yr.1 || stretched.0 < yr.0,
                    "{at:?} covers a line"
                );
                assert!(pts.iter().all(|p| {
                    let (px, py) = plot.px(xr, stretched, *p);
                    !(px >= at.0 as f64
                        && px <= (at.0 + 200) as f64
                        && py >= at.1 as f64
                        && py <= (at.1 + 60) as f64)
                }));
            }
            Place::Below => {}
        }
        // A legend taller than half the plot goes under it.
        assert_eq!(place_legend(&[], plot, xr, yr, (200, 300)), Place::Below);
    }

    #[test]
    fn a_chart_with_marks_and_many_series_is_written() {
        let dir = std::env::temp_dir().join(format!("samlab-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let series: Vec<Series> = (0..7)
            .map(|k| Series {
                name: format!("series {k} with a rather long label (SAM {k}0% of steps)"),
                color: PALETTE[k % PALETTE.len()],
                points: (1..=200)
                    .map(|e| (e as f64, (k as f64 + e as f64).sqrt(), 0.1))
                    .collect(),
            })
            .collect();
        let marks = [
            Mark {
                x: 50.0,
                label: "switch @ 50".into(),
                color: PALETTE[1],
            },
            Mark {
                x: 52.0,
                label: "E @ 52".into(),
                color: PALETTE[2],
            },
            // Another row switching at the same epoch: one label, not two.
            Mark {
                x: 50.0,
                label: "switch @ 50".into(),
                color: PALETTE[3],
            },
        ];
        line_chart_marked(&path, "a title", "epoch", "value", &series, &marks).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(svg.matches("switch @ 50").count(), 1);
        assert!(svg.contains("E @ 52"));
        assert!(
            svg.contains(">\n50\n<") && !svg.contains(">\n50.0\n<"),
            "whole ticks"
        );
        assert!(svg.contains("series 6 with a rather long label"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
