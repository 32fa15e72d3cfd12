//! Runs a planned study stage by stage, in dependency order, against the cache.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use samlab_data::Dataset;

use crate::cache::{Cache, Lookup, SummaryFile, Verify, read_summary, unix_time, write_file};
use crate::error::{Error, Result};
use crate::key::canonical;
use crate::plan::Planned;
use crate::progress::Progress;
use crate::stages::{Outcome, RunCtx, Summary};
use crate::study::Study;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stage names (all grid points) or display names (`name[seed=1]`) to
    /// recompute even when cached.
    pub force: Vec<String>,
    /// Carry on with independent stages after a failure.
    pub keep_going: bool,
    /// The device name, for the record.
    pub device_name: String,
    /// No progress output.
    pub quiet: bool,
    /// Compute only this stage (display name); every other stage is taken
    /// from the cache or left out. What a Slurm job runs.
    pub only: Option<String>,
    /// Compute nothing: report what the cache holds (after Slurm jobs).
    pub cache_only: Option<String>,
    /// Training: a rolling checkpoint mid-epoch once this much time has
    /// passed since the last (`--checkpoint-every`).
    pub checkpoint_every: Option<std::time::Duration>,
}

/// What happened to one stage.
#[derive(Clone, Debug)]
pub enum State {
    /// Taken from the cache.
    Cached,
    /// Computed now (possibly resuming).
    Ran,
    /// The error, kept typed (`Error::is_divergence` tells a diverged run).
    Failed(Arc<Error>),
    /// Not run because a stage it needs failed or the run stopped.
    NotRun(String),
}

#[derive(Clone, Debug)]
pub struct StageReport {
    pub index: usize,
    pub display: String,
    pub key: String,
    pub state: State,
    pub outcome: Outcome,
    pub summary: Option<Summary>,
}

/// Runs every stage of `study` that the cache does not hold.
pub fn run_study(
    study: &Study,
    plan: &[Planned],
    ds: &Dataset,
    device: &Device,
    cache: &Cache,
    opts: &RunOptions,
) -> Result<Vec<StageReport>> {
    let total_cost: f64 = plan.iter().map(|p| p.cost).sum();
    let progress = Progress::new(total_cost.round() as u64, opts.quiet);
    let mut reports: Vec<StageReport> = Vec::new();
    let mut stopped: Option<String> = None;
    // Entries hashed in full in this run (re-hashed before a stage loads
    // their weights, or written by it).
    let mut verified: std::collections::HashSet<PathBuf> = Default::default();
    for (i, stage) in study.stages.iter().enumerate() {
        if stopped.is_none()
            && let Some(signal) = crate::interrupt::requested()
        {
            stopped = Some(format!(
                "the run was interrupted by {signal}; run it again to resume"
            ));
        }
        let display = stage.display();
        let key = plan[i]
            .key
            .clone()
            .expect("keys are known when the dataset is loaded");
        let mut report = StageReport {
            index: i,
            display: display.clone(),
            key: key.clone(),
            state: State::NotRun(String::new()),
            outcome: Outcome::default(),
            summary: None,
        };
        if let Some(why) = &stopped {
            report.state = State::NotRun(why.clone());
            reports.push(report);
            continue;
        }
        if let Some((_, d)) = stage
            .deps
            .iter()
            .find(|(_, d)| !matches!(reports[*d].state, State::Cached | State::Ran))
        {
            report.state = State::NotRun(format!(
                "it needs {}, which did not complete",
                reports[*d].display
            ));
            progress.note(&format!(
                "{display}: not run: it needs {}, which did not complete",
                reports[*d].display
            ));
            reports.push(report);
            continue;
        }
        let forced = opts.force.iter().any(|f| *f == stage.name || *f == display);
        let entry = cache.entry_dir(&key);
        if forced {
            cache.discard(&entry)?;
            cache.discard(&cache.partial_dir(&key))?;
        }
        let deps: Vec<(&'static str, PathBuf)> = stage
            .deps
            .iter()
            .map(|(r, d)| (*r, cache.entry_dir(&reports[*d].key)))
            .collect();
        let skip = match (&opts.cache_only, &opts.only) {
            (Some(why), _) => Some(why.clone()),
            (None, Some(only)) if *only != display => {
                Some(format!("not part of this job ({only})"))
            }
            _ => None,
        };
        if let Some(why) = skip {
            match cached(cache, &entry, &display, &progress)? {
                Some(s) => {
                    report.state = State::Cached;
                    report.summary = Some(s);
                }
                None => report.state = State::NotRun(why),
            }
            reports.push(report);
            continue;
        }
        let result = (|| -> Result<(State, Outcome, Summary)> {
            if let Some(s) = cached(cache, &entry, &display, &progress)? {
                return Ok((State::Cached, Outcome::default(), s));
            }
            let _lock = cache.lock(&key, || {
                progress.note(&format!(
                    "{display}: another runner is computing it; waiting"
                ))
            })?;
            if let Some(s) = cached(cache, &entry, &display, &progress)? {
                return Ok((State::Cached, Outcome::default(), s));
            }
            // The plan trusted the memos of the entries it needs; their
            // weights are about to be read.
            for (role, dir) in &deps {
                if verified.contains(dir) {
                    continue;
                }
                if let Lookup::Damaged(p, why) = cache.check(dir) {
                    return Err(crate::error::stage_err(
                        &display,
                        format!(
                            "the `{role}` entry {} is damaged ({why}); run the study again to recompute it",
                            p.display()
                        ),
                    ));
                }
                verified.insert(dir.clone());
            }
            let staging = cache.staging()?;
            let ctx = RunCtx {
                cache,
                dataset: ds,
                device,
                stage: &display,
                key: &key,
                deps: deps.clone(),
                out: &staging,
                progress: &progress,
                prefix: if forced {
                    None
                } else {
                    plan[i].prefix.as_ref()
                },
                checkpoint_every: opts.checkpoint_every,
            };
            let ran = stage.spec.run(&ctx);
            let (summary, outcome) = match ran {
                Ok(x) => x,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
            };
            if let Some((name, v)) = summary.iter().find(|(_, v)| !v.is_finite()) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(crate::error::stage_err(
                    &display,
                    format!("metric {name} is {v}; not cached"),
                ));
            }
            let doc = plan[i]
                .doc
                .as_ref()
                .expect("documents are known with the dataset");
            write_file(&staging.join("spec.json"), canonical(doc).as_bytes())?;
            let sf = SummaryFile {
                kind: stage.spec.kind().into(),
                metrics: summary.clone(),
            };
            write_file(
                &staging.join("summary.json"),
                serde_json::to_string_pretty(&sf)
                    .expect("summaries serialise")
                    .as_bytes(),
            )?;
            let mut info = BTreeMap::new();
            info.insert("device".into(), opts.device_name.clone());
            info.insert("created".into(), unix_time());
            info.insert("runner".into(), env!("CARGO_PKG_VERSION").into());
            // What computed it (results pages list these: `provenance.csv`).
            info.insert("commit".into(), env!("SAMLAB_COMMIT").into());
            info.insert("numerics".into(), crate::device::numerics(device));
            info.insert(
                "precision".into(),
                format!("{:?}", stage.spec.precision()).to_lowercase(),
            );
            if cache.commit(&staging, &entry, "entry", &key, &display, info)? {
                // Its files were hashed for the manifest just now.
                verified.insert(entry.clone());
            }
            cache.discard(&cache.partial_dir(&key))?;
            Ok((State::Ran, outcome, summary))
        })();
        match result {
            Ok((state, outcome, summary)) => {
                let what = match (&state, outcome.start_epoch, outcome.start_step) {
                    (State::Cached, _, _) => "cached".to_string(),
                    (_, 0, 0) if outcome.steps_run == 0 => "done".to_string(),
                    (_, 0, 0) => format!("done ({} steps)", outcome.steps_run),
                    (_, e, 0) => format!(
                        "done ({} steps, resumed after epoch {e} from a {} checkpoint)",
                        outcome.steps_run, outcome.resumed_from
                    ),
                    (_, e, s) => format!(
                        "done ({} steps, resumed after step {s} of epoch {} from a {} checkpoint)",
                        outcome.steps_run,
                        e + 1,
                        outcome.resumed_from
                    ),
                };
                progress.note(&format!("{display}: {what}"));
                progress.advance(plan[i].cost.round() as u64);
                report.state = state;
                report.outcome = outcome;
                report.summary = Some(summary);
            }
            Err(e) if e.is_interrupted() => {
                progress.note(&format!("{display}: {e}"));
                report.state = State::Failed(Arc::new(e));
                stopped = Some("the run was interrupted; run it again to resume".into());
            }
            Err(e) => {
                progress.note(&format!("{display}: FAILED: {e}"));
                report.state = State::Failed(Arc::new(e));
                if !opts.keep_going {
                    stopped = Some(format!(
                        "the run stopped after {display} failed (--keep-going carries on)"
                    ));
                }
            }
        }
        reports.push(report);
    }
    progress.finish();
    Ok(reports)
}

/// A valid entry's summary (its memo trusted: a stage that loads its
/// weights re-hashes it first); a damaged entry is reported and removed.
fn cached(
    cache: &Cache,
    entry: &std::path::Path,
    display: &str,
    progress: &Progress,
) -> Result<Option<Summary>> {
    match cache.check_with(entry, Verify::Memo) {
        Lookup::Valid(dir, _) => Ok(Some(read_summary(&dir)?)),
        Lookup::Damaged(dir, why) => {
            progress.note(&format!(
                "{display}: cache entry {} is damaged ({why}); recomputing",
                dir.display()
            ));
            cache.discard(&dir)?;
            Ok(None)
        }
        Lookup::Missing => Ok(None),
    }
}

/// How a run went: stages by what happened to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub not_run: usize,
    /// Failed stages whose loss became non-finite.
    pub diverged: usize,
}

impl Tally {
    pub fn of(reports: &[StageReport]) -> Tally {
        let mut t = Tally::default();
        for r in reports {
            match &r.state {
                State::Cached => t.cached += 1,
                State::Ran => t.ran += 1,
                State::Failed(e) => {
                    t.failed += 1;
                    t.diverged += e.is_divergence() as usize;
                }
                State::NotRun(_) => t.not_run += 1,
            }
        }
        t
    }

    /// Whether every stage is done.
    pub fn complete(&self) -> bool {
        self.failed + self.not_run == 0
    }

    /// One line per stage that failed or did not run, then the counts.
    pub fn report(&self, reports: &[StageReport]) -> String {
        let mut o = String::new();
        for r in reports {
            match &r.state {
                State::Failed(e) => o += &format!("FAILED   {}: {e}\n", r.display),
                State::NotRun(why) => o += &format!("NOT RUN  {}: {why}\n", r.display),
                _ => {}
            }
        }
        if self.diverged > 0 {
            o += &format!(
                "{} of the failed stages diverged (a non-finite loss): a lower `lr` or `rho` may help\n",
                self.diverged
            );
        }
        o += &format!(
            "{} stages: {} ran, {} cached, {} failed, {} not run",
            reports.len(),
            self.ran,
            self.cached,
            self.failed,
            self.not_run
        );
        o
    }
}
