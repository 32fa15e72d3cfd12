//! Reruns one small committed stage, `pretrain` of
//! `studies/quick/escape.ron` (ResNet-8 on 500 CIFAR-10 images, 80
//! epochs), in an empty cache and compares what it writes with the
//! committed `results/quick/escape`, bit for bit where the same kernels
//! run.
//!
//! Why the bit-for-bit comparison is conditional: the f32 arithmetic is
//! summed in an order the CPU decides at run time (docs/numerics.md,
//! "Kernel paths"). samlab's direct convolution kernels run only with AVX2
//! and FMA (else im2col + gemm), the transpose uses AVX, and
//! `SAMLAB_CPU_CONV` forces other paths; gemm picks its `avx512f`, `fma`
//! or scalar microkernel by the CPU's features. The runner writes all of
//! that into each entry's numerics (`device::numerics`, in
//! `provenance.csv`): `cpu: MODEL; FEATURES; SAMLAB_CPU_CONV ...`. On
//! another instruction set or path the run sums in another order, so its
//! numbers differ in the last bits and grow apart over 800 steps; there
//! the test says so on stderr and checks only what no kernel decides.
//!
//! The processor model is the one part of the numerics allowed to differ.
//! It stands for the cache sizes, by which gemm sizes its blocks, and of
//! those only the depth block `kc` changes a sum's order. gemm 0.19
//! (`gemm_common::cache::kernel_params` and the small-matrix branch of
//! `gemm_basic_generic`) splits the depth only when it exceeds 512
//! (`kc = max(from the L1 cache, 512)`, capped at the depth). Every gemm
//! this stage calls has a depth of at most 256: ResNet-8 has at most 64
//! channels, so 3x3 convolutions larger than 1x1 run on the direct
//! kernels here, the 1x1 shortcuts' forward passes sum over at most 32
//! input channels, their weight gradients over chunks of 256 columns
//! (`MIN_COLS`), the strided input gradients over at most 64 output
//! channels (`cpu/dgrad.rs`), and the linear layer over 64 features or 50
//! images. So on this stage the caches change only how gemm tiles its
//! output, not what any element sums: a machine whose numerics match the
//! committed entry's but for the model name runs the same kernels.

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

const STAGE: &str = "pretrain";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `studies/quick/escape.ron` with only its `pretrain` stage: its header
/// (comments, version, dataset) and that stage's text as written; its
/// other stages and its report (whose baseline is one of them) dropped.
fn pretrain_only(study: &str) -> String {
    let stages = study
        .find("\n    stages: {")
        .expect("escape.ron has a `stages: {` line");
    let start = study
        .find(&format!("\"{STAGE}\":"))
        .expect("escape.ron has a pretrain stage");
    let open = start + study[start..].find('(').expect("pretrain: Train(...)");
    let mut depth = 0;
    let mut end = None;
    for (i, c) in study[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(open + i + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end.expect("pretrain's parentheses close");
    format!(
        "{}\n    stages: {{\n        {},\n    }},\n)\n",
        &study[..stages],
        &study[start..end]
    )
}

/// The rows of a CSV file (header first), fields unquoted.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// The row of `stage` (first column) of a CSV file, by column name.
fn row_of(path: &Path, stage: &str) -> BTreeMap<String, String> {
    let rows = csv_rows(path);
    let row = rows
        .iter()
        .skip(1)
        .find(|r| r[0] == stage)
        .unwrap_or_else(|| panic!("no row {stage} in {}", path.display()));
    rows[0].iter().cloned().zip(row.iter().cloned()).collect()
}

/// A per-epoch table's columns by name, each a column of text.
fn columns(path: &Path) -> BTreeMap<String, Vec<String>> {
    let rows = csv_rows(path);
    rows[0]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.clone(),
                rows[1..].iter().map(|r| r[i].clone()).collect(),
            )
        })
        .collect()
}

/// `cpu: MODEL; FEATURES; PATH` split into the model and what chooses the
/// kernels (`FEATURES; PATH`).
fn split_numerics(n: &str) -> (&str, &str) {
    let rest = n
        .strip_prefix("cpu: ")
        .unwrap_or_else(|| panic!("not CPU numerics: {n}"));
    rest.split_once("; ")
        .unwrap_or_else(|| panic!("numerics without instruction sets: {n}"))
}

#[test]
fn pretrain_of_the_quick_escape_study_reproduces_its_committed_csv() {
    let committed = workspace().join("results/quick/escape");
    let provenance = row_of(&committed.join("provenance.csv"), STAGE);
    let committed_key = &provenance["key"];
    let committed_numerics = &provenance["numerics"];
    assert_eq!(provenance["precision"], "f32");
    assert_eq!(provenance["device"], "cpu");

    let env = Env::new();
    let text = std::fs::read_to_string(workspace().join("studies/quick/escape.ron")).unwrap();
    let study = env.write("pretrain.ron", &pretrain_only(&text));
    let s = study.to_str().unwrap();

    // The stage is the committed one (spec, dataset, code semantics) before
    // it spends two minutes training.
    let o = env.run(&["plan", s], "cache");
    let (out, err) = runner_env::text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let planned: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{STAGE} ")))
        .collect();
    assert_eq!(planned.len(), 1, "one pretrain stage in\n{out}");
    assert!(out.contains(": 1 stages"), "only pretrain in\n{out}");
    // The plan's key column: the one 12-digit hex word of the line.
    let short = planned[0]
        .split_whitespace()
        .find(|w| w.len() == 12 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no 12-digit key in the plan line {:?}", planned[0]));
    assert_eq!(
        short,
        &committed_key[..12],
        "pretrain of studies/quick/escape.ron is no longer the committed stage: \
         regenerate results/quick/escape\n{out}"
    );

    let here = samlab_runner::device::numerics(&Device::Cpu);
    let started = std::time::Instant::now();
    let last = env.ok(&[s, "--results-dir", "r"], "cache");
    eprintln!(
        "{STAGE}: trained in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(last[STAGE][0], "ran", "{last:?}");
    let results = env.path("r");
    let ran = row_of(&results.join("provenance.csv"), STAGE);
    assert_eq!(&ran["key"], committed_key);
    assert_eq!(
        ran["numerics"], here,
        "the runner recorded other numerics than device::numerics gives here"
    );
    assert_eq!(ran["precision"], "f32");

    let mine = columns(&results.join("stages/pretrain.csv"));
    let theirs = columns(&committed.join("stages/pretrain.csv"));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the per-epoch table's columns"
    );
    assert_eq!(theirs["epoch"].len(), 80, "the committed run has 80 epochs");
    assert_eq!(mine["epoch"].len(), theirs["epoch"].len(), "rows");
    // What the schedule alone decides, on any kernels.
    for col in ["epoch", "step", "lr", "sam_steps", "passes"] {
        assert_eq!(mine[col], theirs[col], "column {col}");
    }
    let summary = row_of(&results.join("summary.csv"), STAGE);
    let committed_summary = row_of(&committed.join("summary.csv"), STAGE);
    assert_eq!(summary["key"], committed_summary["key"]);

    let (their_model, their_kernels) = split_numerics(committed_numerics);
    let (my_model, my_kernels) = split_numerics(&here);
    if my_kernels == their_kernels {
        eprintln!(
            "{STAGE}: same kernels as the committed entry ({my_kernels}; \
             CPU `{my_model}` here, `{their_model}` there): comparing bit for bit"
        );
        for (col, values) in &theirs {
            if col != "wall_s" {
                for (epoch, (a, b)) in mine[col].iter().zip(values).enumerate() {
                    assert_eq!(
                        a,
                        b,
                        "{col} of epoch {} differs from the committed run \
                         (numerics here: {here}; committed: {committed_numerics})",
                        epoch + 1
                    );
                }
            }
        }
        for col in ["test_acc", "test_loss", "train_acc", "train_loss"] {
            assert_eq!(
                summary[col], committed_summary[col],
                "summary {col} differs from the committed run \
                 (numerics here: {here}; committed: {committed_numerics})"
            );
        }
    } else {
        eprintln!(
            "{STAGE}: NOT compared bit for bit: this machine's kernels are chosen by \
             `{my_kernels}`, the committed entry's by `{their_kernels}` (numerics here: \
             {here}; committed: {committed_numerics}), so its sums run in another \
             order; checking the key, the schedule's columns and that it fits its \
             500 images instead"
        );
        // The bound: the committed run fits all 500 images from epoch 27 of
        // 80 on (every later row is 1.0), so another summation order that
        // perturbs the trajectory still ends fitted; 0.99 allows 5 images,
        // and the im2col path (`SAMLAB_CPU_CONV=im2col`, another order on
        // this machine) passed it when the test was written.
        let last_acc: f64 = mine["train_acc"].last().unwrap().parse().unwrap();
        let committed_acc: f64 = theirs["train_acc"].last().unwrap().parse().unwrap();
        assert_eq!(committed_acc, 1.0, "the committed run fits its images");
        assert!(
            last_acc >= 0.99,
            "final train_acc {last_acc}: the committed run reached {committed_acc}"
        );
    }
}
