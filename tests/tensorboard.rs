//! A tiny study's TensorBoard runs and long metrics table: one run per
//! stage and grid point with the stage's rows as scalars (checked against
//! the stage CSVs the results folder also holds), its summary and
//! settings; the same bytes again from `runner report`; and what
//! TensorBoard's own Python reader sees (tests/reference/read_tensorboard.py;
//! skipped with a message where Python lacks the `tensorboard` package,
//! unless `SAMLAB_REQUIRE_TENSORBOARD=1`, as CI sets it).

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use samlab_tensorboard::{FILE_NAME, Reading};

/// SGD over two seeds, Escape runs over rho from each (a step series
/// without epochs or wall times), an evaluation (a table by split).
const STUDY: &str = r#"
Study(
    version: 1,
    dataset: "cifar10",
    stages: {
        "sgd": Train(
            model: "resnet8",
            train_subset: PerClass(10),
            batch: 50,
            epochs: 2,
            lr: Cosine(lr: 0.05),
            test_subset: PerClass(5),
            grid: {"seed": [0, 1]},
        ),
        "esc": Escape(
            of: "sgd", method: Sam, lr: 0.01, batch: 50, probe: 50,
            threshold: 0.01, max_steps: 3, grid: {"rho": [0.05, 0.1]},
        ),
        "eval": Evaluate(of: "sgd", splits: [Train], train_subset: PerClass(5)),
    },
)
"#;

const RUNS: [&str; 8] = [
    "esc-rho0.05-seed0",
    "esc-rho0.05-seed1",
    "esc-rho0.1-seed0",
    "esc-rho0.1-seed1",
    "eval-seed0",
    "eval-seed1",
    "sgd-seed0",
    "sgd-seed1",
];

/// The same stages as `runner` shows them (`summary.csv`'s first column).
const DISPLAYS: [&str; 8] = [
    "esc[rho=0.05;seed=0]",
    "esc[rho=0.05;seed=1]",
    "esc[rho=0.1;seed=0]",
    "esc[rho=0.1;seed=1]",
    "eval[seed=0]",
    "eval[seed=1]",
    "sgd[seed=0]",
    "sgd[seed=1]",
];

/// A CSV file as its header and rows of fields.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
    (lines.next().unwrap(), lines.collect())
}

/// `summary.csv`'s value of `col` for the stage shown as `display`.
fn summary_value(results: &Path, display: &str, col: &str) -> f64 {
    let (head, rows) = csv(&results.join("summary.csv"));
    let c = head.iter().position(|h| h == col).unwrap();
    let row = rows.iter().find(|r| r[0] == display).unwrap();
    row[c].parse().unwrap()
}

fn summary_key(results: &Path, display: &str) -> String {
    let (head, rows) = csv(&results.join("summary.csv"));
    let c = head.iter().position(|h| h == "key").unwrap();
    rows.iter().find(|r| r[0] == display).unwrap()[c].clone()
}

/// Scalars of one run by tag: (step, wall time, value).
type Scalars = BTreeMap<String, Vec<(i64, f64, f32)>>;

fn read_run(dir: &Path) -> (Scalars, BTreeMap<String, Vec<String>>) {
    let mut scalars = Scalars::new();
    let mut text = BTreeMap::new();
    for (step, wall, tag, r) in samlab_tensorboard::read_values(&dir.join(FILE_NAME)).unwrap() {
        match r {
            Reading::Scalar(v) => scalars.entry(tag).or_default().push((step, wall, v)),
            Reading::Text(t) => {
                assert_eq!(step, 0);
                text.insert(tag, t);
            }
            Reading::Other => panic!("{tag}: neither scalar nor text"),
        }
    }
    (scalars, text)
}

fn files_below(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.insert(
                p.strip_prefix(dir).unwrap().into(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

#[test]
fn a_study_writes_one_tensorboard_run_per_stage_and_a_long_table() {
    let env = Env::new();
    let study = env.write("study.ron", STUDY);
    let s = study.to_str().unwrap();
    env.ok(&[s, "--results-dir", "r1"], "cache");
    let r1 = env.path("r1");
    let tb = r1.join("tensorboard");

    let mut runs: Vec<String> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(runs, RUNS);

    // Train: every column of each epoch's row at its global step, wall
    // time the running sum of wall_s; the summary at the last step.
    let (head, rows) = csv(&r1.join("stages/sgd-seed0.csv"));
    assert_eq!(rows.len(), 2, "2 epochs");
    let (scalars, text) = read_run(&tb.join("sgd-seed0"));
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    let mut wall = 0.0;
    let mut walls = Vec::new();
    for r in &rows {
        wall += r[col("wall_s")].parse::<f64>().unwrap();
        walls.push(wall);
    }
    for name in head.iter().filter(|h| *h != "step") {
        let want: Vec<(i64, f64, f32)> = rows
            .iter()
            .zip(&walls)
            .map(|(r, w)| {
                let v: f64 = r[col(name)].parse().unwrap();
                (r[col("step")].parse().unwrap(), *w, v as f32)
            })
            .collect();
        assert_eq!(scalars[name.as_str()], want, "{name}");
    }
    let last_step: i64 = rows[1][col("step")].parse().unwrap();
    assert_eq!(last_step, 4, "2 steps an epoch");
    let acc = summary_value(&r1, "sgd[seed=0]", "test_acc");
    assert_eq!(scalars["summary/test_acc"], [(4, wall, acc as f32)]);
    let settings = &text["settings"][0];
    assert!(
        settings.starts_with("Stage `sgd[seed=0]` (train), cache entry `"),
        "{settings}"
    );
    let json: String = settings
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .collect::<Vec<_>>()
        .join("\n");
    let spec: serde_json::Value = serde_json::from_str(&json).unwrap();
    let key = summary_key(&r1, "sgd[seed=0]");
    assert!(settings.contains(&key), "{settings}");
    assert!(json.contains("\"resnet8\""), "{spec}");

    // Escape: its step column as the step, no epochs, no wall time.
    let (head, rows) = csv(&r1.join("stages/esc-rho0.1-seed1.csv"));
    let (scalars, _) = read_run(&tb.join("esc-rho0.1-seed1"));
    assert!(!scalars.contains_key("epoch"));
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    let steps: Vec<i64> = rows
        .iter()
        .map(|r| r[col("step")].parse().unwrap())
        .collect();
    let probe: Vec<(i64, f64, f32)> = rows
        .iter()
        .map(|r| {
            let v: f64 = r[col("probe_acc")].parse().unwrap();
            (r[col("step")].parse().unwrap(), 0.0, v as f32)
        })
        .collect();
    assert_eq!(scalars["probe_acc"], probe);
    let last = *steps.iter().max().unwrap();
    assert!(scalars["summary/passes"].iter().all(|s| s.0 == last));

    // Evaluate (rows by split): settings and summary only, at step 0.
    let (scalars, text) = read_run(&tb.join("eval-seed1"));
    assert!(text.contains_key("settings"));
    assert!(!scalars.is_empty());
    assert!(
        scalars.keys().all(|t| t.starts_with("summary/")),
        "{scalars:?}"
    );
    assert!(scalars.values().flatten().all(|s| s.0 == 0 && s.1 == 0.0));

    // The long table: fixed columns around the grid axis and the index column.
    let (head, long) = csv(&r1.join("metrics-long.csv"));
    assert_eq!(
        head,
        [
            "stage", "run", "seed", "rho", "step", "epoch", "split", "metric", "value"
        ]
    );
    let find = |run: &str, metric: &str| -> Vec<Vec<String>> {
        long.iter()
            .filter(|r| r[1] == run && r[7] == metric)
            .cloned()
            .collect()
    };
    let (th, trows) = csv(&r1.join("stages/sgd-seed1.csv"));
    let c = th.iter().position(|h| h == "train_loss").unwrap();
    let got = find("sgd-seed1", "train_loss");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0][..7], ["sgd", "sgd-seed1", "1", "", "2", "1", ""]);
    assert_eq!(
        got[1][8], trows[1][c],
        "values copied as the entry wrote them"
    );
    let sm = find("sgd-seed1", "summary/train_loss");
    assert_eq!(sm.len(), 1);
    assert_eq!(
        sm[0][4..6],
        ["4", "2"],
        "summaries at the last step and epoch"
    );
    let e = find("esc-rho0.05-seed0", "probe_acc");
    assert_eq!(
        e[0][..7],
        ["esc", "esc-rho0.05-seed0", "0", "0.05", "0", "", ""]
    );
    let (eh, erows) = csv(&r1.join("stages/eval-seed0.csv"));
    assert_eq!(eh[0], "split");
    let ev = find("eval-seed0", "loss");
    assert_eq!(ev.len(), erows.len());
    assert_eq!(ev[0][6], "train");
    assert!(ev[0][4].is_empty() && ev[0][5].is_empty());
    // One row per non-empty measured cell of every stage table, plus one
    // per summary value (summary.csv's cells after `key`).
    let (sh, srows) = csv(&r1.join("summary.csv"));
    let first_metric = sh.iter().position(|h| h == "key").unwrap() + 1;
    let mut expected = 0;
    for (run, display) in RUNS.iter().zip(DISPLAYS) {
        let (h, rows) = csv(&r1.join(format!("stages/{run}.csv")));
        let measured: Vec<usize> = (0..h.len())
            .filter(|&i| !["step", "epoch", "split"].contains(&h[i].as_str()))
            .collect();
        expected += rows
            .iter()
            .map(|r| measured.iter().filter(|&&i| !r[i].is_empty()).count())
            .sum::<usize>();
        let srow = srows.iter().find(|r| r[0] == display).unwrap();
        expected += srow[first_metric..]
            .iter()
            .filter(|v| !v.is_empty())
            .count();
    }
    assert_eq!(long.len(), expected);

    // `runner report` rebuilds the same bytes from the cache.
    let o = env.run(&["report", s, "--results-dir", "r2"], "cache");
    assert!(o.status.success(), "{}", text_of(&o));
    let r2 = env.path("r2");
    assert_eq!(files_below(&tb), files_below(&r2.join("tensorboard")));
    assert_eq!(
        std::fs::read(r1.join("metrics-long.csv")).unwrap(),
        std::fs::read(r2.join("metrics-long.csv")).unwrap()
    );

    check_with_tensorboard_python(&tb);
}

fn text_of(o: &std::process::Output) -> String {
    let (a, b) = text(o);
    format!("{a}\n{b}")
}

/// TensorBoard's reader finds the same runs, every record of each, and
/// the scalars and text samlab's reader reads.
fn check_with_tensorboard_python(tb: &Path) {
    let have = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let msg = "python3 cannot `import tensorboard` (install it with \
                   `python3 -m pip install tensorboard`)";
        if std::env::var("SAMLAB_REQUIRE_TENSORBOARD").as_deref() == Ok("1") {
            panic!("{msg}; SAMLAB_REQUIRE_TENSORBOARD=1 makes this a failure");
        }
        eprintln!("SKIPPED: {msg}: TensorBoard's own reader not checked");
        return;
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/read_tensorboard.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(tb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text_of(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = got["runs"].as_object().unwrap();
    assert_eq!(runs.keys().collect::<Vec<_>>(), RUNS);
    for run in RUNS {
        let dir = tb.join(run);
        let records = samlab_tensorboard::read_records(&dir.join(FILE_NAME)).unwrap();
        let r = &runs[run];
        assert_eq!(r["events"], records.len(), "{run}: every record read");
        let (scalars, text) = read_run(&dir);
        let theirs: Scalars = r["scalars"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(tag, v)| {
                let pts = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_i64().unwrap(),
                            p[1].as_f64().unwrap(),
                            p[2].as_f64().unwrap() as f32,
                        )
                    })
                    .collect();
                (tag.clone(), pts)
            })
            .collect();
        assert_eq!(theirs, scalars, "{run}");
        assert_eq!(
            r["text"]["settings"][0][2].as_str().unwrap(),
            text["settings"][0],
            "{run}"
        );
    }
}
