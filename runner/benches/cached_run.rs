//! How long a study takes when everything is cached: the goal is under 2 s
//! (the runner loads the dataset from its decoded cache, plans, checks every
//! entry's manifest and writes the results folder). Prints the first
//! (training) run, the cached runs and their ratio, all from this command.
//!
//! `cargo bench -p samlab-runner --bench cached_run`

#[path = "../../tests/support/shared.rs"]
mod shared;

use std::process::Command;
use std::time::Instant;

const STUDY: &str = r#"Study(version: 1, dataset: "cifar10",
    blocks: { "base": Train(model: "resnet8", train_subset: PerClass(10), batch: 50, epochs: 2,
                            test_subset: PerClass(5)) },
    stages: {
        "sgd": Train(extends: "base", grid: {"seed": [0, 1, 2, 3]}),
        "sam": Train(extends: "sgd", method: Always(Sam), grid: {"rho": [0.05, 0.1]}),
        "eval": Evaluate(of: "sam", test_subset: PerClass(5), train_subset: PerClass(5)),
    })"#;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("bench.ron");
    std::fs::write(&study, STUDY).unwrap();
    let data = dir.path().join("data");
    let run = || {
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg(&study)
            .args(["--results-dir", "results", "-q"])
            .current_dir(dir.path())
            .env("SAMLAB_DATA_DIR", &data)
            .env("SAMLAB_CIFAR10", shared::cifar10_jpeg_archive())
            .env("SAMLAB_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (first, out) = run();
    print!("first run: {out}");
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let (t, out) = run();
            assert!(out.contains(" 0 ran, 20 cached"), "{out}");
            t
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[2];
    println!("20 stages (12 training runs, 8 evaluations)");
    println!("first run (trains, decodes the dataset): {first:.2} s");
    println!("cached run, median of 5:                 {median:.3} s (goal < 2 s)");
    println!(
        "cached / first:                          {:.4}",
        median / first
    );
}
