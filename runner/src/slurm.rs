//! The Slurm executor: one `sbatch` job per stage the cache does not hold,
//! each running `runner STUDY --only STAGE` against the shared cache, with
//! `--dependency=afterok:` on the jobs of the stages it needs.
//!
//! Jobs are named `samlab-<first 16 hex digits of the stage key>`, so a
//! study submitted again while its jobs are queued or running finds them in
//! `squeue` and submits nothing twice. The job id of every submitted stage
//! is recorded in `<cache>/slurm/<key>.job` for `runner status STUDY`.
//! `--kill-on-invalid-dep=yes` makes Slurm cancel the dependants of a job
//! that failed; a failed job leaves no cache entry (the runner caches only
//! complete, finite results).
//!
//! Jobs are preemptible: submitted with `--requeue`, and with
//! `--signal=B:TERM@`[`SIGNAL_BEFORE_S`] so that the runner (the job's
//! batch shell, by `exec`) hears of its time limit in time to write a
//! checkpoint. A job interrupted so, or preempted (Slurm sends SIGTERM),
//! saves a rolling checkpoint at its next step, requeues itself
//! (`--requeue-on-interrupt`: `scontrol requeue`) and exits; when it runs
//! again it resumes from that checkpoint. Its dependants wait, as for any
//! job not yet complete. Logs are opened for appending, so a requeued job's
//! log holds every run of it.
//!
//! The cache directory must be on a filesystem that every node sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{Cache, write_file};
use crate::error::{ErrorKind, Result, io};
use crate::plan::{Planned, Status};
use crate::study::Study;

/// What clusters need, from the command line.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time`, e.g. `2:00:00`.
    pub time: Option<String>,
    pub cpus: Option<u32>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// `--gres`, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// More `sbatch` arguments, as given.
    pub extra: Vec<String>,
    /// Where job scripts and logs go [default: `<cache>/slurm/logs`].
    pub log_dir: Option<PathBuf>,
}

/// What a job runs: the runner binary and the arguments every job passes
/// before `--only STAGE` (the study, cache, data and device options).
#[derive(Clone, Debug)]
pub struct JobCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// How long before a job's time limit Slurm signals it (`--signal`): meant
/// to leave room for one training step and a checkpoint of a paper-scale
/// network (an allowance, not measured: no GPU run yet; docs/slurm.md).
/// A later `--sbatch-arg=--signal=...` overrides it.
pub const SIGNAL_BEFORE_S: u32 = 180;

/// One stage after submission.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub display: String,
    pub key: String,
    /// `cached`, `queued` (a job of an earlier submission) or `submitted`.
    pub action: &'static str,
    pub job: Option<String>,
}

fn slurm_err(message: String) -> crate::error::Error {
    ErrorKind::Device(format!("slurm: {message}")).into()
}

fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| slurm_err(format!("cannot run {what}: {e} (is Slurm installed here?)")))?;
    if !out.status.success() {
        return Err(slurm_err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The job name of a stage key.
pub fn job_name(key: &str) -> String {
    format!("samlab-{}", &key[..16.min(key.len())])
}

/// Jobs in the queue (pending, running, ...): job name -> (id, state).
pub fn queue() -> Result<BTreeMap<String, (String, String)>> {
    let text = run(Command::new("squeue").args(["-h", "-o", "%i|%j|%T"]))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut p = l.trim().split('|');
            let (id, name, state) = (p.next()?, p.next()?, p.next()?);
            Some((name.to_string(), (id.to_string(), state.to_string())))
        })
        .collect())
}

/// The state of a job that may have left the queue (`scontrol show job`);
/// `None` when Slurm no longer knows it.
pub fn job_state(id: &str) -> Option<String> {
    let out = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .map(str::to_string)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Submits the stages of `study` that the cache does not hold.
pub fn submit(
    study: &Study,
    plan: &[Planned],
    cache: &Cache,
    opts: &SlurmOptions,
    job: &JobCommand,
) -> Result<Vec<Submitted>> {
    // The cache must be writable here (and, the user's part, seen by all nodes).
    let probe = cache
        .root
        .join("tmp")
        .join(format!("slurm-probe-{}", std::process::id()));
    write_file(&probe, b"").map_err(|e| {
        slurm_err(format!(
            "the cache {} is not writable: {e}",
            cache.root.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    let jobs_dir = cache.root.join("slurm");
    let log_dir = opts
        .log_dir
        .clone()
        .unwrap_or_else(|| jobs_dir.join("logs"));
    std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
    let mut queued = queue()?;
    let mut out: Vec<Submitted> = Vec::new();
    for (i, stage) in study.stages.iter().enumerate() {
        let display = stage.display();
        let key = plan[i]
            .key
            .clone()
            .ok_or_else(|| slurm_err(format!("{display} has no key (dataset not loaded)")))?;
        let name = job_name(&key);
        let (action, id) = if matches!(plan[i].status, Status::Cached) {
            ("cached", None)
        } else if let Some((id, _)) = queued.get(&name) {
            ("queued", Some(id.clone()))
        } else {
            let deps: Vec<String> = stage
                .deps
                .iter()
                .filter_map(|(_, d)| out[*d].job.clone())
                .collect();
            let script = log_dir.join(format!("{name}.sh"));
            let mut line = vec![quote(&job.program.to_string_lossy())];
            line.extend(job.args.iter().map(|a| quote(a)));
            line.push("--requeue-on-interrupt".into());
            line.push("--only".into());
            line.push(quote(&display));
            write_file(
                &script,
                format!(
                    "#!/bin/sh\n# samlab stage {display} (key {key})\nexec {}\n",
                    line.join(" ")
                )
                .as_bytes(),
            )?;
            let mut cmd = Command::new("sbatch");
            cmd.args(["--parsable", "--kill-on-invalid-dep=yes", "-J", &name]);
            cmd.args(["--requeue", "--open-mode=append"])
                .arg(format!("--signal=B:TERM@{SIGNAL_BEFORE_S}"));
            cmd.arg("-o")
                .arg(log_dir.join("%x-%j.out"))
                .arg("-D")
                .arg(std::env::current_dir().map_err(io(Path::new(".")))?);
            if !deps.is_empty() {
                cmd.arg(format!("--dependency=afterok:{}", deps.join(":")));
            }
            if let Some(p) = &opts.partition {
                cmd.args(["-p", p]);
            }
            if let Some(t) = &opts.time {
                cmd.args(["-t", t]);
            }
            if let Some(c) = opts.cpus {
                cmd.args(["-c", &c.to_string()]);
            }
            if let Some(m) = &opts.mem {
                cmd.arg(format!("--mem={m}"));
            }
            if let Some(g) = &opts.gres {
                cmd.arg(format!("--gres={g}"));
            }
            cmd.args(&opts.extra).arg(&script);
            let id = run(&mut cmd)?
                .trim()
                .split(';')
                .next()
                .unwrap_or_default()
                .to_string();
            if id.is_empty() {
                return Err(slurm_err(format!("sbatch gave no job id for {display}")));
            }
            write_file(
                &jobs_dir.join(format!("{key}.job")),
                format!("{id}\n").as_bytes(),
            )?;
            // A later stage with the same key (a duplicate) shares this job.
            queued.insert(name.clone(), (id.clone(), "PENDING".into()));
            ("submitted", Some(id))
        };
        out.push(Submitted {
            display,
            key,
            action,
            job: id,
        });
    }
    Ok(out)
}

/// Requeues the Slurm job this process runs in (`SLURM_JOB_ID`), after
/// its stage was interrupted with a checkpoint saved. Slurm stops the job
/// and starts it again when resources allow.
pub fn requeue_self() -> Result<String> {
    let id = std::env::var("SLURM_JOB_ID").map_err(|_| {
        slurm_err("--requeue-on-interrupt outside a Slurm job (no SLURM_JOB_ID)".into())
    })?;
    run(Command::new("scontrol").args(["requeue", &id]))?;
    Ok(id)
}

/// The job id last submitted for a key, if any.
pub fn recorded_job(cache: &Cache, key: &str) -> Option<String> {
    std::fs::read_to_string(cache.root.join("slurm").join(format!("{key}.job")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Blocks until none of `jobs` is in the queue any more, or a signal
/// ([`crate::interrupt`]) stops the wait: the jobs go on.
pub fn wait(jobs: &[String], poll: std::time::Duration) -> Result<()> {
    loop {
        let q = queue()?;
        if !q.values().any(|(id, _)| jobs.contains(id)) {
            return Ok(());
        }
        if let Some(signal) = crate::interrupt::requested() {
            return Err(ErrorKind::Usage(format!(
                "stopped waiting on {signal}; the Slurm jobs go on (`runner status STUDY` shows them, \
                 `--wait` again waits for them)"
            ))
            .into());
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_and_quoting() {
        assert_eq!(job_name("0123456789abcdef0123"), "samlab-0123456789abcdef");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
