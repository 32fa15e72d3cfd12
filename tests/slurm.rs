//! The Slurm executor end to end, on a one-node cluster that this test
//! starts on the machine (`scripts/slurm-local.sh`: Debian's slurm-wlm and
//! munge, installed when missing; needs root) and stops when it ends.

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-local.sh")
}

/// A running cluster; stopped (by its pid files) when dropped.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let ok = |args: &[&str]| {
            let o = Command::new(script()).args(args).output().unwrap();
            assert!(
                o.status.success(),
                "slurm-local.sh {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ok(&["install"]);
        let c = Cluster {
            dir: dir.to_path_buf(),
        };
        ok(&["start", dir.to_str().unwrap()]);
        c
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

/// Runs the runner with the cluster's configuration.
fn slurm_run(env: &Env, c: &Cluster, args: &[&str], cache: &str) -> (bool, String, String) {
    let o = env
        .command(args, cache)
        .env("SLURM_CONF", c.conf())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const STUDY: &str = r#"Study(version: 1, dataset: "cifar10",
    blocks: {
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                      lr: Cosine(lr: 0.05), test_subset: PerClass(5), grid: {"seed": [0, 1]}),
    },
    stages: {
        "sgd": Train(extends: "base"),
        "sam": Train(extends: "base", from: "sgd", epochs: 1, method: Always(Sam), lr: Constant(lr: 0.01)),
        "eval": Evaluate(of: "sam", train_subset: PerClass(5), test_subset: PerClass(5)),
    },
)"#;

/// `model.safetensors` of every entry, by key.
fn weights(cache: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(cache.join("entries")).unwrap() {
        let e = e.unwrap();
        let f = e.path().join("model.safetensors");
        if f.is_file() {
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(f).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

/// One cluster for both scenarios (a second one would need other ports).
#[test]
fn slurm_executor() {
    let env = Env::new();
    let cluster = Cluster::start(&env.path("slurm"));
    study_as_dependent_jobs_with_local_results(&env, &cluster);
    nothing_submitted_twice_and_a_failed_job_leaves_its_dependants_unrun(&env, &cluster);
    a_preempted_job_requeues_resumes_and_its_dependant_waits(&env, &cluster);
}

fn study_as_dependent_jobs_with_local_results(env: &Env, cluster: &Cluster) {
    let study = env.write("study.ron", STUDY);
    let s = study.to_str().unwrap();

    // The local executor, for reference.
    env.ok(&[s, "--results-dir", "local"], "cache-local");

    // Slurm: six jobs (three dependent stages, two seeds), then the results.
    let (ok, out, err) = slurm_run(
        env,
        cluster,
        &[s, "--executor", "slurm", "--wait", "--results-dir", "slurm"],
        "cache-slurm",
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("6 jobs submitted"), "{out}");
    let last = last_run(&env.path("slurm"));
    assert!(last.values().all(|r| r[0] == "cached"), "{last:?}");
    // Bit for bit the local results: every weight file, every summary number.
    let (a, b) = (
        weights(&env.path("cache-local")),
        weights(&env.path("cache-slurm")),
    );
    assert_eq!(a.len(), 4);
    assert!(
        a == b,
        "the Slurm run's weights differ from the local run's"
    );
    assert_eq!(
        summary_without_wall(&env.path("local")),
        summary_without_wall(&env.path("slurm"))
    );
    // Submitting again finds everything cached.
    let (ok, out, _) = slurm_run(env, cluster, &[s, "--executor", "slurm"], "cache-slurm");
    assert!(ok && out.contains("0 jobs submitted"), "{out}");
    // status names each stage's job.
    let (ok, out, err) = slurm_run(env, cluster, &["status", s], "cache-slurm");
    assert!(ok, "{err}");
    assert!(
        out.lines().filter(|l| l.contains("cached")).count() == 6,
        "{out}"
    );
}

fn nothing_submitted_twice_and_a_failed_job_leaves_its_dependants_unrun(
    env: &Env,
    cluster: &Cluster,
) {
    let study = env.write(
        "fail.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "long": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 6,
                          test_subset: Off),
            "boom": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                          lr: Constant(lr: 1e30), test_subset: Off),
            "after": Evaluate(of: "boom", splits: [Test], test_subset: PerClass(2)),
            "after-long": Evaluate(of: "long", splits: [Test], test_subset: PerClass(2)),
        })"#,
    );
    let s = study.to_str().unwrap();
    let (ok, out, err) = slurm_run(env, cluster, &[s, "--executor", "slurm"], "cache");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("4 jobs submitted"), "{out}");
    // While those are queued or running, a second submission finds them.
    let (ok, again, err) = slurm_run(env, cluster, &[s, "--executor", "slurm"], "cache");
    assert!(ok, "{again}\n{err}");
    assert!(again.contains("0 jobs submitted"), "{again}");
    assert!(again.contains("queued"), "{again}");
    // Then wait for them: the diverging stage fails, its dependant never runs.
    let (ok, out, _) = slurm_run(
        env,
        cluster,
        &[s, "--executor", "slurm", "--wait", "--results-dir", "r"],
        "cache",
    );
    assert!(!ok, "a failed stage fails the study: {out}");
    let last = last_run(&env.path("r"));
    assert_eq!(last["long"][0], "cached");
    assert_eq!(last["after-long"][0], "cached");
    assert_eq!(last["boom"][0], "not run", "{last:?}");
    assert_eq!(last["after"][0], "not run", "{last:?}");
    // Only the two good stages are in the cache.
    let entries = std::fs::read_dir(env.path("cache/entries"))
        .unwrap()
        .count();
    assert_eq!(entries, 2);
    // The failed job's log says why.
    let logs: String = std::fs::read_dir(env.path("cache/slurm/logs"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect();
    assert!(
        logs.contains("non-finite") || logs.contains("NaN") || logs.contains("inf"),
        "{logs}"
    );
}

/// Preemption: a job signalled as Slurm does before preempting it or at
/// its time limit (SIGTERM to the batch shell) saves a checkpoint mid-epoch,
/// requeues itself and, run again, resumes there; its dependant waits for
/// it; the study's results equal the local executor's bit for bit.
fn a_preempted_job_requeues_resumes_and_its_dependant_waits(env: &Env, cluster: &Cluster) {
    let study = env.write(
        "preempt.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "steps": Train(model: "resnet8", train_subset: PerClass(50), batch: 10, epochs: 3,
                           lr: Cosine(lr: 0.05), test_subset: PerClass(2),
                           method: Psam(period: 3, until: Fraction(0.7))),
            "after": Evaluate(of: "steps", splits: [Test], test_subset: PerClass(2)),
        })"#,
    );
    let s = study.to_str().unwrap();
    env.ok(&[s, "--results-dir", "pre-local"], "pre-local");
    let (ok, out, err) = slurm_run(env, cluster, &[s, "--executor", "slurm"], "pre-slurm");
    assert!(ok && out.contains("2 jobs submitted"), "{out}\n{err}");
    let job = out
        .lines()
        .find(|l| l.starts_with("steps "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    // Into its second epoch (of 50 steps), then the signal.
    let partial = env.path("pre-slurm/partial");
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&partial)
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| d.path().join("epoch-000001").is_dir())
    {
        assert!(t0.elapsed().as_secs() < 300, "the job made no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(60));
    let o = Command::new("scancel")
        .args(["--signal=TERM", "--batch", &job])
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Waiting finds both jobs queued (the first requeued) and submits nothing.
    let (ok, out, err) = slurm_run(
        env,
        cluster,
        &[
            s,
            "--executor",
            "slurm",
            "--wait",
            "--results-dir",
            "pre-slurm-r",
        ],
        "pre-slurm",
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 jobs submitted"), "{out}");
    let show = Command::new("scontrol")
        .args(["show", "job", &job])
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("Restarts=1"), "{show}");
    assert!(show.contains("JobState=COMPLETED"), "{show}");
    let logs: String = std::fs::read_dir(env.path("pre-slurm/slurm/logs"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{job}.out"))
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(logs.contains("interrupted by SIGTERM after step"), "{logs}");
    assert!(
        logs.contains(&format!("requeued Slurm job {job}")),
        "{logs}"
    );
    assert!(logs.contains("steps: done"), "{logs}");
    let last = last_run(&env.path("pre-slurm-r"));
    assert!(last.values().all(|r| r[0] == "cached"), "{last:?}");
    assert!(
        weights(&env.path("pre-local")) == weights(&env.path("pre-slurm")),
        "the preempted run's weights differ from the local run's"
    );
    assert_eq!(
        summary_without_wall(&env.path("pre-local")),
        summary_without_wall(&env.path("pre-slurm-r"))
    );
}
