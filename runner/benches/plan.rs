//! Planning a paper-scale cache: `runner plan` (and the start of every
//! run) checks each entry a study relies on against its manifest. Without
//! the memo that meant re-hashing every checkpoint: a paper study's cache
//! is about 200 WRN-28-10-sized entries with their optimiser state (~290 MB
//! each, ~60 GB). This bench builds a cache of synthetic entries under the
//! keys of a real study (`plan::plan` of 200 Train stages), then times, in
//! one command, the plan that hashes every file (the first: no memo yet)
//! against the plans that trust the memo, and prints their ratio and the
//! projection to the paper's sizes at the hashing rate it measured.
//!
//! `cargo bench -p samlab-runner --bench plan`; `SAMLAB_BENCH_ENTRIES`
//! (default 200) and `SAMLAB_BENCH_ENTRY_MB` (default 4; 290 is the paper's
//! size, needing ~60 GB of disk) set the cache. Hashing reads files the
//! kernel has just written, so from its page cache: a cold cache on a
//! network file system hashes slower still, which the memo skips as well.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use samlab_runner::cache::{Cache, hashed_bytes, write_file};
use samlab_runner::plan::{self, DataInfo, Status};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let entries = env_or("SAMLAB_BENCH_ENTRIES", 200);
    let mb = env_or("SAMLAB_BENCH_ENTRY_MB", 4);
    let seeds: Vec<String> = (0..entries).map(|s| s.to_string()).collect();
    let text = format!(
        r#"Study(version: 1, dataset: "cifar10", stages: {{
            "wrn": Train(model: "wrn28-10", epochs: 200, bn_batch: 32, method: Always(Sam),
                         grid: {{"seed": [{}]}}),
        }})"#,
        seeds.join(", ")
    );
    let study = samlab_runner::study::parse(&text, Path::new("bench.ron")).unwrap();
    let info = DataInfo {
        fingerprint: "f".repeat(64),
        train_len: 50_000,
        test_len: 10_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let keys: Vec<String> = plan::plan(&study, Some(&info), None)
        .unwrap()
        .into_iter()
        .map(|p| p.key.unwrap())
        .collect();
    let t = Instant::now();
    // Two thirds weights, one third optimiser state, as for SGD momentum.
    let (model, optim) = (mb * (1 << 20) * 2 / 3, mb * (1 << 20) / 3);
    for (i, key) in keys.iter().enumerate() {
        let s = cache.staging().unwrap();
        let fill = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|j| (j as u64 * 2654435761 + i as u64) as u8)
                .collect()
        };
        write_file(&s.join("model.safetensors"), &fill(model)).unwrap();
        write_file(&s.join("optim.safetensors"), &fill(optim)).unwrap();
        write_file(
            &s.join("summary.json"),
            br#"{"kind": "train", "metrics": {}}"#,
        )
        .unwrap();
        cache
            .commit(
                &s,
                &cache.entry_dir(key),
                "entry",
                key,
                "wrn",
                BTreeMap::new(),
            )
            .unwrap();
    }
    let bytes = (entries * (model + optim)) as f64;
    println!(
        "cache: {entries} entries of {mb} MB ({:.2} GB), written in {:.1} s",
        bytes / 1e9,
        t.elapsed().as_secs_f64()
    );
    // Files changed in the last 2 s are not memoised (racily clean).
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let timed = || {
        let h = hashed_bytes();
        let t = Instant::now();
        let p = plan::plan(&study, Some(&info), Some(&cache)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(p.iter().all(|p| p.status == Status::Cached));
        (secs, (hashed_bytes() - h) as f64)
    };
    let (full, full_hashed) = timed();
    let memo: Vec<(f64, f64)> = (0..5).map(|_| timed()).collect();
    let mut memo_t: Vec<f64> = memo.iter().map(|m| m.0).collect();
    memo_t.sort_by(f64::total_cmp);
    let med = memo_t[2];
    let rate = full_hashed / full;
    println!(
        "plan, every file hashed (no memo yet): {full:.3} s, {:.2} GB hashed ({:.0} MB/s)",
        full_hashed / 1e9,
        rate / 1e6
    );
    println!(
        "plan, memo trusted, median of 5:       {med:.4} s, {:.0} bytes hashed",
        memo.iter().map(|m| m.1).fold(0.0, f64::max)
    );
    println!("memo / full:                           {:.5}", med / full);
    let paper = 200.0 * 290e6;
    println!(
        "projected for 200 entries of 290 MB (58 GB): {:.0} s hashing at {:.0} MB/s, against {:.3} s with the memo (its cost is per file, not per byte)",
        paper / rate,
        rate / 1e6,
        med * 200.0 / entries as f64
    );
}
