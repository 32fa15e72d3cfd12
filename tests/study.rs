//! End-to-end tests of studies: the cache, shared prefixes, resume after
//! `kill -9`, damaged entries and concurrent runners. Tiny nets and
//! subsets keep each run to seconds.

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::path::{Path, PathBuf};

/// Two seeds of SGD, SGD->SAM from epoch 3 of 4, and an evaluation.
const STUDY: &str = r#"
// test study
Study(
    version: 1,
    dataset: "cifar10",
    blocks: {
        "base": Train(
            model: "resnet8",
            train_subset: PerClass(10),
            batch: 50,
            epochs: 4,
            lr: Cosine(lr: 0.05),
            test_subset: PerClass(5),
        ),
    },
    stages: {
        "sgd": Train(extends: "base", grid: {"seed": [0, 1]}),
        "sgd-sam": Train(
            extends: "sgd",
            method: Switch(from: Sgd, to: Sam, at: Epoch(3)),
            sam: (rho: 0.05),
        ),
        "eval": Evaluate(of: "sgd-sam", train_subset: PerClass(5), test_subset: PerClass(5)),
    },
)
"#;

fn entry_file(env: &Env, cache: &str, stage_key: &str, file: &str) -> PathBuf {
    env.path(cache).join("entries").join(stage_key).join(file)
}

/// The cache key of a stage from the results' summary table.
fn key_of(results: &Path, stage: &str) -> String {
    let text = std::fs::read_to_string(results.join("summary.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "key").unwrap();
    text.lines()
        .skip(1)
        .find(|l| l.starts_with(&format!("{stage},")))
        .map(|l| l.split(',').nth(col).unwrap().to_string())
        .unwrap_or_else(|| panic!("{stage} not in {text}"))
}

#[test]
fn second_run_trains_nothing_and_switch_reuses_the_sgd_prefix() {
    let env = Env::new();
    let study = env.write("study.ron", STUDY);
    let s = study.to_str().unwrap();
    let plan = env.run(&["plan", s], "cache");
    let (out, err) = text(&plan);
    assert!(plan.status.success(), "{err}");
    // 4 epochs x 2 steps: SGD 8 steps; SGD->SAM resumes after epoch 3 of the SGD run.
    assert!(
        out.contains("partially cached: from epoch 3 (prefix)"),
        "{out}"
    );

    let first = env.ok(&[s, "--results-dir", "r1"], "cache");
    assert_eq!(first["sgd[seed=0]"][..5], ["ran", "0", "", "8", "8"]);
    // The switch run computed only its last epoch: 2 SAM steps, 4 passes.
    assert_eq!(
        first["sgd-sam[seed=0]"][..5],
        ["ran", "3", "prefix", "2", "4"]
    );
    assert_eq!(
        first["sgd-sam[seed=1]"][..5],
        ["ran", "3", "prefix", "2", "4"]
    );
    assert_eq!(first["eval[seed=1]"][0], "ran");

    let second = env.ok(&[s, "--results-dir", "r2"], "cache");
    assert!(
        states(&second).values().all(|s| s == "cached"),
        "{second:?}"
    );
    // Same numbers both times.
    let table = |r: &str| {
        std::fs::read_to_string(env.path(r).join("summary.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string()) // drop wall_s
            .collect::<Vec<_>>()
    };
    assert_eq!(table("r1"), table("r2"));

    // The switch run from the prefix equals one trained alone in an empty cache.
    let alone = env.write(
        "alone.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "switch-only": Train(
                model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 4,
                lr: Cosine(lr: 0.05), test_subset: PerClass(5), seed: 0,
                method: Switch(from: Sgd, to: Sam, at: Fraction(0.75)), sam: (rho: 0.05),
            ),
        })"#,
    );
    let solo = env.ok(
        &[alone.to_str().unwrap(), "--results-dir", "solo"],
        "cache2",
    );
    assert_eq!(solo["switch-only"][..5], ["ran", "0", "", "8", "10"]);
    let k1 = key_of(&env.path("r1"), "sgd-sam[seed=0]");
    let k2 = key_of(&env.path("solo"), "switch-only");
    assert_eq!(
        k1, k2,
        "the same stage has the same key in both studies (Epoch(3) = Fraction(0.75) here)"
    );
    let a = std::fs::read(entry_file(&env, "cache", &k1, "model.safetensors")).unwrap();
    let b = std::fs::read(entry_file(&env, "cache2", &k2, "model.safetensors")).unwrap();
    assert!(
        a == b,
        "resuming from the shared prefix must be bit-identical"
    );
}

#[test]
fn changing_a_field_reruns_only_what_depends_on_it() {
    let env = Env::new();
    let study = env.write("study.ron", STUDY);
    let s = study.to_str().unwrap();
    env.ok(&[s, "--results-dir", "r1"], "cache");
    let changed = env.write("changed.ron", &STUDY.replace("rho: 0.05", "rho: 0.1"));
    let t = env.ok(&[changed.to_str().unwrap(), "--results-dir", "r2"], "cache");
    let st = states(&t);
    assert_eq!(st["sgd[seed=0]"], "cached");
    assert_eq!(st["sgd[seed=1]"], "cached");
    assert_eq!(st["sgd-sam[seed=0]"], "ran");
    assert_eq!(st["eval[seed=0]"], "ran");
    // A different study with the same SGD stage under another name shares it.
    let other = env.write(
        "other.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "plain": Train(model: "ResNet-8", train_subset: PerClass(10), batch: 50, epochs: 4,
                           lr: Cosine(lr: 0.05), test_subset: PerClass(5), seed: 1,
                           sam: (rho: 0.3)),
        })"#,
    );
    let t = env.ok(&[other.to_str().unwrap(), "--results-dir", "r3"], "cache");
    assert_eq!(states(&t)["plain"], "cached", "{t:?}");
    // --force recomputes, bit for bit.
    let k = key_of(&env.path("r3"), "plain");
    let before = std::fs::read(entry_file(&env, "cache", &k, "model.safetensors")).unwrap();
    let t = env.ok(
        &[
            other.to_str().unwrap(),
            "--results-dir",
            "r4",
            "--force",
            "plain",
        ],
        "cache",
    );
    assert_eq!(t["plain"][..3], ["ran", "0", ""]);
    let after = std::fs::read(entry_file(&env, "cache", &k, "model.safetensors")).unwrap();
    assert!(before == after);
}

#[test]
fn damaged_entry_is_detected_and_recomputed() {
    let env = Env::new();
    let study = env.write(
        "one.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "a": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1,
                       test_subset: Off),
            "e": Evaluate(of: "a", splits: [Test], test_subset: PerClass(2)),
        })"#,
    );
    let s = study.to_str().unwrap();
    env.ok(&[s, "--results-dir", "r1"], "cache");
    let k = key_of(&env.path("r1"), "a");
    let f = entry_file(&env, "cache", &k, "model.safetensors");
    let good = std::fs::read(&f).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    std::fs::write(&f, &bad).unwrap();
    // `verify` names the file with both digests and fails, the whole cache
    // or the study's part of it alike, and removes nothing.
    for args in [vec!["verify"], vec!["verify", s]] {
        let o = env.run(&args, "cache");
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{args:?}: {out}{err}");
        assert!(out.contains("damaged  "), "{out}");
        assert!(out.contains("model.safetensors has sha256"), "{out}");
        assert!(out.contains("the manifest says"), "{out}");
        assert!(out.contains("1 damaged"), "{out}");
    }
    assert!(f.is_file());
    let plan = env.run(&["plan", s], "cache");
    let (out, _) = text(&plan);
    assert!(
        out.contains("damaged, to rerun (model.safetensors has sha256"),
        "{out}"
    );
    let o = env.run(&[s, "--results-dir", "r2"], "cache");
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is damaged (model.safetensors has sha256"),
        "{err}"
    );
    let t = last_run(&env.path("r2"));
    assert_eq!(states(&t)["a"], "ran");
    assert_eq!(std::fs::read(&f).unwrap(), good, "recomputed bit for bit");
    // The evaluation depends only on the key of `a`, which did not change.
    assert_eq!(states(&t)["e"], "cached");
    let o = env.run(&["verify"], "cache");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("2 cache directories checked") && out.contains("0 damaged"),
        "{out}"
    );
}

/// The entry `k` in caches `a` and `b` holds the same weights, optimiser
/// state and metric rows (wall times aside); returns its metric rows.
fn same_entry(env: &Env, k: &str, a: &str, b: &str, after: &str) -> Vec<String> {
    for f in ["model.safetensors", "optim.safetensors"] {
        let x = std::fs::read(entry_file(env, a, k, f)).unwrap();
        let y = std::fs::read(entry_file(env, b, k, f)).unwrap();
        assert!(x == y, "{f} differs after {after}");
    }
    let metrics = |c: &str| {
        std::fs::read_to_string(entry_file(env, c, k, "metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    let rows = metrics(a);
    assert_eq!(rows, metrics(b), "metrics differ after {after}");
    rows
}

const LONG: &str = r#"Study(version: 1, dataset: "cifar10", stages: {
    "long": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 12,
                  lr: Cosine(lr: 0.05), test_subset: PerClass(2),
                  method: Psam(period: 3, until: Fraction(0.5))),
})"#;

#[test]
fn kill_9_then_rerun_continues_and_matches_an_uninterrupted_run() {
    let env = Env::new();
    let study = env.write("long.ron", LONG);
    let s = study.to_str().unwrap();
    let mut child = env
        .command(&[s, "--results-dir", "r1", "-q"], "cache")
        .spawn()
        .unwrap();
    // Wait for a rolling checkpoint, then kill without warning.
    let partial = env.path("cache/partial");
    let t0 = std::time::Instant::now();
    loop {
        let any = std::fs::read_dir(&partial)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| std::fs::read_dir(d.path()).into_iter().flatten().count() > 0);
        if any {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "no rolling checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let t = env.ok(&[s, "--results-dir", "r2"], "cache");
    let start: u64 = t["long"][1].parse().unwrap();
    assert_eq!(t["long"][2], "partial");
    assert!((1..12).contains(&start), "{t:?}");
    env.ok(&[s, "--results-dir", "r3"], "clean");
    let k = key_of(&env.path("r2"), "long");
    let rows = same_entry(&env, &k, "cache", "clean", "resuming");
    assert_eq!(rows.len(), 13);
    // The rolling checkpoints are gone once the entry exists.
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 0);
}

/// 50 steps an epoch, so that a signal lands mid-epoch.
const STEPS: &str = r#"Study(version: 1, dataset: "cifar10", stages: {
    "steps": Train(model: "resnet8", train_subset: PerClass(50), batch: 10, epochs: 3,
                   lr: Cosine(lr: 0.05), test_subset: PerClass(2),
                   method: Psam(period: 3, until: Fraction(0.7))),
})"#;

/// Starts the study of `STEPS` and returns it once its first rolling
/// checkpoint (after epoch 1) is there.
fn started_past_epoch_1(env: &Env, s: &str, cache: &str) -> std::process::Child {
    let mut child = env
        .command(&[s, "--results-dir", "r1", "-q"], cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = env.path(cache).join("partial");
    let t0 = std::time::Instant::now();
    loop {
        let there = std::fs::read_dir(&partial)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("epoch-000001").is_dir());
        if there {
            return child;
        }
        assert!(
            t0.elapsed().as_secs() < 180,
            "no rolling checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM mid-epoch: the run saves a checkpoint at that step and exits
/// with 75 ("interrupted, resumable"), leaving its lock free and no
/// results; run again, it resumes there and ends with the bits of a run
/// never interrupted.
#[test]
fn sigterm_mid_epoch_saves_the_step_and_resumes_to_the_same_bits() {
    sigterm_mid_epoch_resumes(STEPS);
}

/// The same with a step kind that keeps state between steps: PSAM whose
/// SAM steps are LookSAM's (k = 2), so the checkpoint lands between a
/// LookSAM step that stored its direction and one that reuses it.
#[test]
fn a_stateful_step_kind_resumes_mid_epoch_to_the_same_bits() {
    let study = STEPS.replace(
        "method: Psam(period: 3, until: Fraction(0.7))",
        "method: Psam(period: 3, until: Fraction(0.7), with: LookSam), kinds: (look_sam: (k: 2))",
    );
    assert_ne!(study, STEPS);
    sigterm_mid_epoch_resumes(&study);
}

fn sigterm_mid_epoch_resumes(study: &str) {
    let env = Env::new();
    let study = env.write("steps.ron", study);
    let s = study.to_str().unwrap();
    let child = started_past_epoch_1(&env, s, "cache");
    // A few steps into epoch 2 (of 50).
    std::thread::sleep(std::time::Duration::from_millis(60));
    signal(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(err.contains("interrupted by SIGTERM after step"), "{err}");
    assert!(err.contains("run it again to resume"), "{err}");
    assert!(
        !env.path("r1").exists(),
        "an interrupted run writes no results"
    );
    let runs: Vec<_> = std::fs::read_dir(env.path("cache/partial"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    let saved: Vec<String> = std::fs::read_dir(runs[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(saved.len(), 1, "older checkpoints are removed: {saved:?}");
    assert!(
        saved[0].starts_with("epoch-000001-step-"),
        "a mid-epoch checkpoint: {saved:?}"
    );
    let plan = env.run(&["plan", s], "cache");
    let (out, _) = text(&plan);
    assert!(out.contains("partially cached: from step"), "{out}");

    let t = env.ok(&[s, "--results-dir", "r2"], "cache");
    assert_eq!(t["steps"][..3], ["ran", "1", "partial"], "{t:?}");
    assert!(t["steps"][5].contains("resumed mid-epoch"), "{t:?}");
    let step: u64 = saved[0].rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(t["steps"][3], (150 - 50 - step).to_string(), "{t:?}");
    env.ok(&[s, "--results-dir", "r3"], "clean");
    let k = key_of(&env.path("r2"), "steps");
    same_entry(&env, &k, "cache", "clean", "resuming mid-epoch");
    assert_eq!(
        summary_without_wall(&env.path("r2")),
        summary_without_wall(&env.path("r3"))
    );
}

/// A second signal ends the run at once (128 + its number), and what the
/// cache holds is still whole: a rerun finishes. The two are different
/// signals sent microseconds apart (two of the same kind sent so fast may
/// reach the process as one: Unix does not queue them).
#[test]
fn a_second_signal_exits_at_once() {
    let env = Env::new();
    let study = env.write("steps.ron", STEPS);
    let s = study.to_str().unwrap();
    let child = started_past_epoch_1(&env, s, "cache");
    let sent = std::process::Command::new("sh")
        .args([
            "-c",
            "kill -INT $0 && kill -TERM $0",
            &child.id().to_string(),
        ])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let code = o.status.code();
    assert!(
        code == Some(128 + 2) || code == Some(128 + 15),
        "{code:?}: {:?}",
        text(&o)
    );
    let t = env.ok(&[s, "--results-dir", "r2"], "cache");
    assert_eq!(t["steps"][0], "ran");
    assert_eq!(t["steps"][2], "partial", "{t:?}");
}

/// `--checkpoint-every`: rolling checkpoints mid-epoch by the clock; the
/// run's bits do not depend on where they fell.
#[test]
fn checkpoints_by_the_clock_change_no_bits() {
    let env = Env::new();
    let study = env.write("steps.ron", STEPS);
    let s = study.to_str().unwrap();
    let o = env.run(
        &[s, "--results-dir", "r1", "--checkpoint-every", "0.05s"],
        "cache",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.ok(&[s, "--results-dir", "r2"], "clean");
    let k = key_of(&env.path("r1"), "steps");
    same_entry(&env, &k, "cache", "clean", "clock checkpoints");
    assert_eq!(
        summary_without_wall(&env.path("r1")),
        summary_without_wall(&env.path("r2"))
    );
    let bad = env.run(
        &[s, "--results-dir", "r3", "--checkpoint-every", "10d"],
        "cache",
    );
    let (_, err) = text(&bad);
    assert!(!bad.status.success() && err.contains("`10d`"), "{err}");
}

#[test]
fn two_runners_on_one_cache_compute_each_stage_once() {
    let env = Env::new();
    let study = env.write("study.ron", STUDY);
    let s = study.to_str().unwrap();
    let a = env
        .command(&[s, "--results-dir", "ra", "-q"], "cache")
        .spawn()
        .unwrap();
    let b = env
        .command(&[s, "--results-dir", "rb", "-q"], "cache")
        .spawn()
        .unwrap();
    for (name, child) in [("a", a), ("b", b)] {
        let o = child.wait_with_output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "runner {name} failed:\n{out}\n{err}");
    }
    let (ta, tb) = (last_run(&env.path("ra")), last_run(&env.path("rb")));
    for stage in ta.keys() {
        let ran = [&ta, &tb].iter().filter(|t| t[stage][0] == "ran").count();
        assert_eq!(ran, 1, "{stage} ran {ran} times: {ta:?} {tb:?}");
    }
    let third = env.ok(&[s, "--results-dir", "rc"], "cache");
    assert!(states(&third).values().all(|s| s == "cached"), "{third:?}");
}

#[test]
fn a_diverging_stage_fails_without_a_cache_entry_and_keep_going_runs_the_rest() {
    let env = Env::new();
    let study = env.write(
        "nan.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "boom": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                          lr: Constant(lr: 1e30), test_subset: Off),
            "after": Evaluate(of: "boom", splits: [Test], test_subset: PerClass(2)),
            "fine": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1,
                          test_subset: Off),
        })"#,
    );
    let s = study.to_str().unwrap();
    let o = env.run(&[s, "--results-dir", "r1"], "cache");
    assert!(!o.status.success());
    let t = last_run(&env.path("r1"));
    assert_eq!(t["boom"][0], "failed");
    assert!(
        t["boom"][5].contains("non-finite")
            || t["boom"][5].contains("NaN")
            || t["boom"][5].contains("inf"),
        "{t:?}"
    );
    assert_eq!(t["after"][0], "not run");
    assert_eq!(
        t["fine"][0], "not run",
        "without --keep-going the run stops"
    );
    let entries = env.path("cache/entries");
    assert_eq!(std::fs::read_dir(&entries).unwrap().count(), 0);

    let o = env.run(&[s, "--results-dir", "r2", "--keep-going"], "cache");
    assert!(!o.status.success(), "a failed stage fails the run");
    let t = last_run(&env.path("r2"));
    assert_eq!(t["boom"][0], "failed");
    assert_eq!(t["after"][0], "not run");
    assert_eq!(t["fine"][0], "ran");
    assert_eq!(std::fs::read_dir(&entries).unwrap().count(), 1);
}

#[test]
fn status_and_gc() {
    let env = Env::new();
    let study = env.write(
        "one.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "a": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1, test_subset: Off),
            "b": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1, test_subset: Off, seed: 1),
        })"#,
    );
    env.ok(&[study.to_str().unwrap(), "--results-dir", "r1"], "cache");
    let o = env.run(&["status"], "cache");
    let (out, _) = text(&o);
    assert!(out.contains("2 entries"), "{out}");
    let just_a = env.write(
        "a.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "a": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1, test_subset: Off),
        })"#,
    );
    let o = env.run(&["gc", just_a.to_str().unwrap()], "cache");
    let (out, _) = text(&o);
    assert!(out.contains("1 unreachable cache directories"), "{out}");
    assert_eq!(
        std::fs::read_dir(env.path("cache/entries"))
            .unwrap()
            .count(),
        2,
        "dry run"
    );
    let o = env.run(&["gc", just_a.to_str().unwrap(), "--delete"], "cache");
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_dir(env.path("cache/entries"))
            .unwrap()
            .count(),
        1
    );
    let t = env.ok(&[just_a.to_str().unwrap(), "--results-dir", "r2"], "cache");
    assert_eq!(states(&t)["a"], "cached");
}

/// SGD epochs do not depend on SAM's settings: SGD->SAM runs with any rho
/// start from the SGD run's checkpoint; SAM runs with different rho share
/// nothing.
#[test]
fn switch_runs_with_any_rho_share_the_sgd_prefix() {
    let env = Env::new();
    let study = env.write(
        "rho.ron",
        r#"Study(version: 1, dataset: "cifar10",
    blocks: {
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 4,
                      lr: Cosine(lr: 0.05), test_subset: Off),
    },
    stages: {
        "sgd": Train(extends: "base"),
        "switch": Train(extends: "base", method: Switch(from: Sgd, to: Sam, at: Epoch(3)),
                        grid: {"rho": [0.05, 0.1]}),
        "sam": Train(extends: "base", method: Always(Sam), grid: {"rho": [0.05, 0.1]}),
    },
)"#,
    );
    let t = env.ok(&[study.to_str().unwrap(), "--results-dir", "r"], "cache");
    assert_eq!(t["sgd"][..5], ["ran", "0", "", "8", "8"]);
    for rho in ["0.05", "0.1"] {
        assert_eq!(
            t[&format!("switch[rho={rho}]")][..5],
            ["ran", "3", "prefix", "2", "4"],
            "{t:?}"
        );
        assert_eq!(
            t[&format!("sam[rho={rho}]")][..5],
            ["ran", "0", "", "8", "16"],
            "{t:?}"
        );
    }
}

/// `runner plan --why` names, for each stage to run, the fields of the key
/// document that differ from the nearest cached entry of its kind, the way
/// cargo explains a dirty crate; a stage whose dependency changed names it.
#[test]
fn plan_why_names_the_changed_field_with_old_and_new_values() {
    let env = Env::new();
    let study = |rho: &str| {
        format!(
            r#"Study(version: 1, dataset: "cifar10",
    stages: {{
        "sam": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 1,
                     lr: Cosine(lr: 0.05), test_subset: Off, method: Always(Sam), sam: (rho: {rho})),
        "eval": Evaluate(of: "sam", splits: [Test], test_subset: PerClass(2)),
    }},
)"#
        )
    };
    let first = env.write("a.ron", &study("0.05"));
    env.ok(&[first.to_str().unwrap(), "--results-dir", "r"], "cache");
    let cached = env.run(&["plan", first.to_str().unwrap(), "--why"], "cache");
    let (out, err) = text(&cached);
    assert!(cached.status.success(), "{err}");
    assert!(out.contains("every stage is cached"), "{out}");

    let second = env.write("b.ron", &study("0.1"));
    let o = env.run(&["plan", second.to_str().unwrap(), "--why"], "cache");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let why = out.split("why each stage").nth(1).unwrap_or_default();
    assert!(
        why.contains("sam: nearest cached entry") && why.contains("differs in 1 field:"),
        "{out}"
    );
    assert!(why.contains("sam.rho: 0.05 -> 0.1"), "{out}");
    // The evaluation differs only in its dependency, which it names.
    assert!(
        why.contains("deps.of: ") && why.contains("(its `of` stage sam changed)"),
        "{out}"
    );
}

/// `runner report` rebuilds the results folder from the cache alone (the
/// page with the comparison table against the baseline, the curves), and
/// fails, naming the stage and writing nothing, when one is not cached.
#[test]
fn report_rebuilds_results_from_the_cache_and_names_missing_stages() {
    let env = Env::new();
    let study_text = |extra: &str| {
        format!(
            r#"Study(version: 1, dataset: "cifar10",
    blocks: {{
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                      lr: Cosine(lr: 0.05), test_subset: PerClass(5), grid: {{"seed": [0, 1]}}),
    }},
    stages: {{
        "sgd": Train(extends: "base"),
        "sam": Train(extends: "base", method: Always(Sam)),
        {extra}
    }},
    report: (baseline: ["sgd"]),
)"#
        )
    };
    let study = env.write("r.ron", &study_text(""));
    let s = study.to_str().unwrap();
    env.ok(&[s, "--results-dir", "r1"], "cache");
    let o = env.run(&["report", s, "--results-dir", "r2"], "cache");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("4 stages from the cache"), "{out}");
    let page = std::fs::read_to_string(env.path("r2/README.md")).unwrap();
    assert!(
        page.contains("## Comparison") && page.contains("| sam | 2/2 |"),
        "{page}"
    );
    assert!(page.contains("vs sgd, paired"), "{page}");
    assert!(page.contains("curves-train_loss.svg"), "{page}");
    assert!(env.path("r2/plots/curves-train_loss.svg").is_file());
    // Cost against accuracy, a point per row with its seeds counted.
    for f in ["cost-accuracy.svg", "time-accuracy.svg"] {
        assert!(page.contains(f), "{page}");
        let svg = std::fs::read_to_string(env.path("r2/plots").join(f)).unwrap();
        assert!(
            svg.contains("sgd (n=2)") && svg.contains("sam (n=2)"),
            "{f}"
        );
    }
    // The same tables as the run wrote.
    for f in ["summary.csv", "comparison.csv"] {
        assert_eq!(
            std::fs::read_to_string(env.path(&format!("r1/{f}"))).unwrap(),
            std::fs::read_to_string(env.path(&format!("r2/{f}"))).unwrap(),
            "{f}"
        );
    }
    let more = env.write(
        "more.ron",
        &study_text(r#""sgd-long": Train(extends: "base", epochs: 3),"#),
    );
    let o = env.run(
        &["report", more.to_str().unwrap(), "--results-dir", "r3"],
        "cache",
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("2 of 6 stages are not in the cache") && err.contains("sgd-long[seed=0]"),
        "{err}"
    );
    assert!(!env.path("r3").exists(), "nothing written");
}

/// A validation split holds training images out, disjoint from those a
/// per-class training subset draws, and leaves that subset as it was: the
/// run with one trains on the same images in the same order (the same
/// training loss and test accuracy, to the bit) under another key, and
/// reports `val_loss`/`val_acc`.
#[test]
fn a_validation_split_is_held_out_and_reported() {
    let env = Env::new();
    let study = env.write(
        "val.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
    "plain": Train(model: "resnet8", train_subset: PerClass(5), batch: 10, epochs: 2,
                   lr: Cosine(lr: 0.05), test_subset: PerClass(2)),
    "val": Train(model: "resnet8", train_subset: PerClass(5), val_subset: PerClass(3), batch: 10,
                 epochs: 2, lr: Cosine(lr: 0.05), test_subset: PerClass(2)),
    "curves": Train(model: "resnet8", train_subset: PerClass(5), val_subset: PerClass(3), batch: 10,
                 epochs: 2, lr: Cosine(lr: 0.05), test_subset: PerClass(2), eval_every: 1),
})"#,
    );
    env.ok(&[study.to_str().unwrap(), "--results-dir", "r"], "cache");
    let text = std::fs::read_to_string(env.path("r").join("summary.csv")).unwrap();
    let head: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let row = |stage: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{stage},")))
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let (plain, val) = (row("plain"), row("val"));
    for m in ["train_loss", "test_acc"] {
        assert_eq!(plain[col(m)], val[col(m)], "{m}");
    }
    let acc: f64 = val[col("val_acc")].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    assert!(plain[col("val_acc")].is_empty(), "{plain:?}");
    assert_ne!(plain[col("key")], val[col("key")]);

    // Evaluation every epoch changes nothing of the training; its rows
    // carry validation and test figures, the last ones the summary's.
    let curves = row("curves");
    for m in ["train_loss", "val_acc", "test_acc"] {
        assert_eq!(curves[col(m)], val[col(m)], "{m}");
    }
    let rows = std::fs::read_to_string(env.path("r").join("stages/curves.csv")).unwrap();
    let lines: Vec<&str> = rows.lines().collect();
    assert!(
        lines[0].ends_with(",wall_s,val_loss,val_acc,test_loss,test_acc"),
        "{rows}"
    );
    assert_eq!(lines.len(), 3, "{rows}");
    let last: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(last[9], curves[col("val_acc")]);
    assert_eq!(last[11], curves[col("test_acc")]);
    assert!(!lines[1].split(',').nth(9).unwrap().is_empty(), "{rows}");
    let plots = env.path("r").join("plots");
    assert!(plots.join("curves-val_acc.svg").is_file());
    assert!(plots.join("curves-test_acc.svg").is_file());

    // What computed each entry: its commit, numerics and precision, from
    // its manifest, listed per entry and summed up on the page.
    let prov = std::fs::read_to_string(env.path("r").join("provenance.csv")).unwrap();
    let lines: Vec<&str> = prov.lines().collect();
    assert_eq!(
        lines[0],
        "stage,key,commit,numerics,precision,device,created"
    );
    assert_eq!(lines.len(), 4, "{prov}");
    for l in &lines[1..] {
        assert!(l.contains(",\"cpu: "), "{l}");
        assert!(l.contains(",f32,cpu,"), "{l}");
        assert!(!l.contains("unrecorded"), "{l}");
    }
    let page = std::fs::read_to_string(env.path("r").join("README.md")).unwrap();
    assert!(page.contains("**Computed by**"), "{page}");
    assert!(page.contains(" 3 by commit `"), "{page}");
    assert!(!page.contains("mixes numerics"), "{page}");

    // One more stage computed on another kernel path, beside the cached
    // ones: the page says the study mixes numerics.
    let more = std::fs::read_to_string(&study).unwrap().replace(
        "})",
        r#"    "other": Train(model: "resnet8", train_subset: PerClass(5), batch: 10, epochs: 2,
                   lr: Cosine(lr: 0.05), test_subset: PerClass(2), seed: 1),
})"#,
    );
    let study2 = env.write("val2.ron", &more);
    let o = env
        .command(&[study2.to_str().unwrap(), "--results-dir", "r2"], "cache")
        .env("SAMLAB_CPU_CONV", "im2col")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(env.path("r2").join("README.md")).unwrap();
    assert!(page.contains("SAMLAB_CPU_CONV=im2col"), "{page}");
    assert!(page.contains("**This study mixes numerics**"), "{page}");
}

/// `studies/escape.ron`, the laptop-sized escape study the README runs,
/// shares its SGD minimum with `studies/quick/escape.ron`: one cache entry
/// serves both (the same key in both plans).
#[test]
fn the_escape_study_shares_its_minimum_with_the_quick_one() {
    let env = Env::new();
    let studies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../studies");
    let pretrain_key = |study: &str| -> String {
        let o = env.run(&["plan", studies.join(study).to_str().unwrap()], "cache");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("pretrain "))
            .unwrap_or_else(|| panic!("no pretrain stage in\n{out}"));
        line.split_whitespace().nth(5).unwrap().to_string()
    };
    let k = pretrain_key("escape.ron");
    assert_eq!(k.len(), 12, "{k}");
    assert_eq!(k, pretrain_key("quick/escape.ron"));
}

/// A fork (`reshuffle`): the run's first 2 epochs come from the SGD run's
/// prefix checkpoint; from epoch 2 on its batches are drawn from another
/// seed, so its last epochs and its weights differ from the SGD run's,
/// and a fork trained alone in an empty cache gives the same bits.
#[test]
fn a_reshuffled_fork_shares_the_prefix_and_then_draws_other_batches() {
    let env = Env::new();
    let study = env.write(
        "fork.ron",
        &STUDY.replace(
            r#""eval": Evaluate(of: "sgd-sam", train_subset: PerClass(5), test_subset: PerClass(5)),"#,
            r#""fork": Train(extends: "base", reshuffle: (epoch: 2, seed: 9)),
        "dist": Distance(w1: "sgd", w2: "fork"),"#,
        ),
    );
    let s = study.to_str().unwrap();
    let plan = env.run(&["plan", s], "cache");
    let (out, err) = text(&plan);
    assert!(plan.status.success(), "{err}");
    assert!(
        out.lines().any(
            |l| l.starts_with("fork ") && l.contains("partially cached: from epoch 2 (prefix)")
        ),
        "{out}"
    );
    let first = env.ok(&[s, "--results-dir", "r1"], "cache");
    // Epochs 3 and 4 only: 2 steps each.
    assert_eq!(first["fork"][..5], ["ran", "2", "prefix", "4", "4"]);
    let rows = |name: &str| -> Vec<String> {
        std::fs::read_to_string(env.path("r1").join("stages").join(format!("{name}.csv")))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.rsplit_once(',').unwrap().0.to_string()) // drop wall_s
            .collect()
    };
    let (sgd, fork) = (rows("sgd-seed0"), rows("fork"));
    assert_eq!(sgd.len(), 4);
    assert_eq!(fork[..2], sgd[..2], "the shared epochs");
    assert_ne!(fork[2], sgd[2], "epoch 3 draws other batches");
    assert_ne!(fork[3], sgd[3]);
    let text = std::fs::read_to_string(env.path("r1").join("summary.csv")).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("dist[seed=0],")),
        "{text}"
    );

    // Alone, in an empty cache: the same key and the same bits.
    let alone = env.write(
        "alone.ron",
        r#"Study(version: 1, dataset: "cifar10", stages: {
            "fork-only": Train(
                model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 4,
                lr: Cosine(lr: 0.05), test_subset: PerClass(5), reshuffle: (epoch: 2, seed: 9),
            ),
        })"#,
    );
    let solo = env.ok(
        &[alone.to_str().unwrap(), "--results-dir", "solo"],
        "cache2",
    );
    assert_eq!(solo["fork-only"][..5], ["ran", "0", "", "8", "8"]);
    let (k1, k2) = (
        key_of(&env.path("r1"), "fork"),
        key_of(&env.path("solo"), "fork-only"),
    );
    assert_eq!(k1, k2);
    assert_ne!(k1, key_of(&env.path("r1"), "sgd[seed=0]"));
    let a = std::fs::read(entry_file(&env, "cache", &k1, "model.safetensors")).unwrap();
    let b = std::fs::read(entry_file(&env, "cache2", &k2, "model.safetensors")).unwrap();
    assert!(
        a == b,
        "a fork resumed from the shared prefix must be bit-identical"
    );
}
