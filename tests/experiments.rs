//! End-to-end tests of the experiment stages (Escape, Interpolate,
//! Distance) on tiny data.

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::collections::BTreeMap;
use std::path::Path;

/// `summary.csv` by stage: column name to value.
fn summary(results: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(results.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let row: BTreeMap<String, String> = head
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            (row["stage"].clone(), row)
        })
        .collect()
}

fn num(s: &BTreeMap<String, BTreeMap<String, String>>, stage: &str, col: &str) -> f64 {
    s[stage][col]
        .parse()
        .unwrap_or_else(|_| panic!("{stage} {col}: {:?}", s[stage].get(col)))
}

/// A ResNet-8 trained on 100 images (no augmentation) until it fits most of them.
const PRETRAIN: &str = r#"
        "pre": Train(
            model: "resnet8",
            train_subset: PerClass(10),
            batch: 50,
            augment: false,
            epochs: 40,
            lr: Cosine(lr: 0.05),
            test_subset: Off,
        ),"#;

#[test]
fn escape_counts_steps_until_the_threshold_and_censors_runs_that_stay() {
    let env = Env::new();
    let first = env.write(
        "eval.ron",
        &format!(
            r#"Study(version: 1, dataset: "cifar10", stages: {{ {PRETRAIN}
        "eval": Evaluate(of: "pre", splits: [Train], train_subset: PerClass(10)),
    }})"#
        ),
    );
    env.ok(&[first.to_str().unwrap(), "--results-dir", "r1"], "cache");
    let acc = num(&summary(&env.path("r1")), "eval", "train_acc");
    assert!(acc > 0.5, "the pretrain fits {acc} of its images");
    // Escape below acc - 0.2: a step at a tiny lr stays above it, one at a
    // huge lr wrecks the last layer and falls to chance at once.
    let t = acc - 0.2;
    let study = env.write(
        "escape.ron",
        &format!(
            r#"Study(version: 1, dataset: "cifar10", stages: {{ {PRETRAIN}
        "stay": Escape(of: "pre", method: Sgd, lr: 1e-7, batch: 50, probe: 100, threshold: {t}, max_steps: 3),
        "jump": Escape(of: "pre", method: Sam, sam: (rho: 0.05), lr: 20.0, batch: 50, probe: 100, threshold: {t}, max_steps: 50),
        "too-high": Escape(of: "pre", method: Sgd, lr: 0.01, batch: 50, probe: 100, threshold: 1.0, max_steps: 3),
        "jump-batch": Escape(extends: "jump", measure: Batch),
    }})"#
        ),
    );
    let o = env.run(
        &[
            study.to_str().unwrap(),
            "--results-dir",
            "r2",
            "--keep-going",
        ],
        "cache",
    );
    assert!(!o.status.success(), "too-high must fail");
    let last = last_run(&env.path("r2"));
    assert_eq!(last["pre"][0], "cached");
    assert_eq!(last["stay"][0], "ran");
    assert_eq!(last["jump"][0], "ran");
    assert_eq!(last["too-high"][0], "failed");
    assert!(
        last["too-high"][5].contains("already below the threshold"),
        "{:?}",
        last["too-high"]
    );
    let s = summary(&env.path("r2"));
    // The probe is the whole training subset: its accuracy before any step
    // is what Evaluate measured.
    assert_eq!(num(&s, "stay", "start_probe_acc"), acc);
    assert_eq!(num(&s, "stay", "escaped"), 0.0);
    assert_eq!(num(&s, "stay", "steps"), 3.0);
    assert_eq!(
        s["stay"]["escape_steps"], "",
        "a censored run has no escape step"
    );
    assert_eq!(num(&s, "jump", "escaped"), 1.0);
    assert_eq!(num(&s, "jump", "escape_steps"), 1.0);
    assert_eq!(num(&s, "jump", "passes"), 2.0, "one SAM step is two passes");
    // Every reading is recorded; the threshold applies to `measure`. The
    // batch reading of step 1 is taken at the minimum, before the update
    // that wrecks it, so by that reading the same run escapes at step 2.
    assert_eq!(num(&s, "jump", "escape_steps_probe"), 1.0);
    assert_eq!(num(&s, "jump-batch", "escape_steps_probe"), 1.0);
    assert_eq!(num(&s, "jump-batch", "escape_steps_batch"), 2.0);
    assert_eq!(num(&s, "jump-batch", "escape_steps"), 2.0);
    assert_eq!(num(&s, "jump-batch", "steps"), 2.0);
    // The per-step table: a row per step after the starting row, and the
    // escape step is the first below the threshold.
    let rows = std::fs::read_to_string(env.path("r2/stages/stay.csv")).unwrap();
    let accs: Vec<f64> = rows
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(accs.len(), 4);
    assert!(accs.iter().all(|a| *a >= t), "{accs:?}");
    let jump = std::fs::read_to_string(env.path("r2/stages/jump.csv")).unwrap();
    let last_acc: f64 = jump
        .lines()
        .last()
        .unwrap()
        .rsplit(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_acc < t);
}

#[test]
fn interpolation_ends_are_the_two_solutions_and_distance_agrees() {
    let env = Env::new();
    let study = env.write(
        "landscape.ron",
        r#"Study(version: 1, dataset: "cifar10",
    blocks: {
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                      lr: Cosine(lr: 0.05), test_subset: Off),
    },
    stages: {
        "a": Train(extends: "base", seed: 0),
        "b": Train(extends: "base", seed: 1),
        "eval-a": Evaluate(of: "a", train_subset: PerClass(5), test_subset: PerClass(5)),
        "eval-b": Evaluate(of: "b", train_subset: PerClass(5), test_subset: PerClass(5)),
        "line": Interpolate(w1: "a", w2: "b", alpha: (start: -0.5, end: 1.5, points: 5),
                            train_subset: PerClass(5), test_subset: PerClass(5)),
        "recomputed": Interpolate(w1: "a", w2: "b", alpha: (start: 0.0, end: 1.0, points: 2),
                                  bn: Recomputed(batches: 2), batch: 50, splits: [Test], test_subset: PerClass(5)),
        "dist": Distance(w1: "a", w2: "b"),
        "self": Distance(w1: "a", w2: "a"),
    },
)"#,
    );
    env.ok(&[study.to_str().unwrap(), "--results-dir", "r"], "cache");
    let s = summary(&env.path("r"));
    let curve = std::fs::read_to_string(env.path("r/stages/line.csv")).unwrap();
    let at = |alpha: &str, split: &str| -> Vec<String> {
        curve
            .lines()
            .find(|l| l.starts_with(&format!("{alpha},{split},")))
            .unwrap_or_else(|| panic!("no {alpha} {split} in\n{curve}"))
            .split(',')
            .map(str::to_string)
            .collect()
    };
    assert_eq!(curve.lines().count(), 1 + 5 * 2);
    for split in ["train", "test"] {
        // a = 0 is w1 and a = 1 is w2, exactly.
        assert_eq!(at("0", split)[3], s["eval-a"][&format!("{split}_loss")]);
        assert_eq!(at("1", split)[3], s["eval-b"][&format!("{split}_loss")]);
        assert_eq!(
            num(&s, "line", &format!("{split}_error_w1")),
            num(&s, "eval-a", &format!("{split}_error"))
        );
    }
    let d = num(&s, "dist", "distance");
    assert!(d > 1.0, "two seeds' solutions are far apart: {d}");
    assert_eq!(num(&s, "line", "distance"), d);
    assert_eq!(num(&s, "self", "distance"), 0.0);
    // Re-estimated BatchNorm statistics change the evaluation of w1.
    let r = std::fs::read_to_string(env.path("r/stages/recomputed.csv")).unwrap();
    assert_eq!(r.lines().count(), 3);
    let l0: f64 = r
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(l0.is_finite());
    assert_ne!(l0.to_string(), s["eval-a"]["test_loss"]);
}

#[test]
fn sharpness_and_landscape_measure_the_trained_weights() {
    let env = Env::new();
    let study = env.write(
        "sharp.ron",
        r#"Study(version: 1, dataset: "cifar10",
    blocks: {
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                      lr: Cosine(lr: 0.05), test_subset: Off),
    },
    stages: {
        "a": Train(extends: "base", seed: 0),
        "b": Train(extends: "base", seed: 1),
        "sharp": Sharpness(of: "a", images: 40, batch: 20, eigen: (k: 2, steps: 8),
                           trace: (samples: 4), rho: 0.05, ascent: 2),
        "sharp-b": Sharpness(extends: "sharp", of: "b", eigen: (k: 1, steps: 4), trace: (samples: 0)),
        "line": Landscape(of: "a", images: 40, batch: 20, range: (start: -1.0, end: 1.0, points: 5),
                          grid: {"seed": [0, 1]}),
        "plane": Landscape(of: "a", sharpness: "sharp", x: Eigenvector(1), y: Random,
                           images: 40, batch: 20, range: (start: -0.5, end: 0.5, points: 3)),
    },
)"#,
    );
    env.ok(&[study.to_str().unwrap(), "--results-dir", "r"], "cache");
    let s = summary(&env.path("r"));
    let (l1, l2) = (num(&s, "sharp", "lambda_1"), num(&s, "sharp", "lambda_2"));
    assert!(l1 >= l2, "eigenvalues in order: {l1} {l2}");
    assert_eq!(num(&s, "sharp", "lambda_max"), l1);
    assert!(num(&s, "sharp", "residual_1").is_finite());
    assert!(num(&s, "sharp", "trace").is_finite() && num(&s, "sharp", "trace_se") >= 0.0);
    // the ascent starts from the first-order point and keeps the best
    assert!(num(&s, "sharp", "sam_sharpness") >= num(&s, "sharp", "sam_sharpness_first_order"));
    assert_eq!(s["sharp-b"]["trace"], "");
    // the same probe, weights and ops in one process: the loss at the
    // centre is the same bits (the CPU kernels split work by shape only,
    // models/tests/threads.rs; docs/numerics.md)
    let centre = num(&s, "plane", "loss_centre");
    assert_eq!(centre, num(&s, "sharp", "loss"));
    assert_eq!(num(&s, "line[seed=0]", "loss_centre"), centre);
    // two random directions differ; the plane has 3 x 3 points
    assert_ne!(
        s["line[seed=0]"]["asymmetry_x_signed"],
        s["line[seed=1]"]["asymmetry_x_signed"]
    );
    let asym = num(&s, "line[seed=1]", "asymmetry_x");
    assert!((0.0..=1.0).contains(&asym), "{asym}");
    let plane = std::fs::read_to_string(env.path("r/stages/plane.csv")).unwrap();
    assert_eq!(plane.lines().count(), 1 + 9);
    assert!(env.path("r/plots/plane-loss.svg").is_file());
    assert!(env.path("r/plots/line-seed0-loss.svg").is_file());

    // Eigenvectors of other weights are refused at run time.
    let bad = env.write(
        "bad.ron",
        r#"Study(version: 1, dataset: "cifar10",
    blocks: {
        "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                      lr: Cosine(lr: 0.05), test_subset: Off),
    },
    stages: {
        "a": Train(extends: "base", seed: 0),
        "b": Train(extends: "base", seed: 1),
        "sharp-b": Sharpness(of: "b", images: 40, batch: 20, eigen: (k: 1, steps: 4), trace: (samples: 0), ascent: 0),
        "mixed": Landscape(of: "a", sharpness: "sharp-b", x: Eigenvector(1), images: 40, batch: 20,
                           range: (start: -0.5, end: 0.5, points: 3)),
    },
)"#,
    );
    let o = env.run(&[bad.to_str().unwrap(), "--results-dir", "r2"], "cache");
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("measured other weights"), "{out}\n{err}");
}
