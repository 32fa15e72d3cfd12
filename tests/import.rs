//! Checkpoints in and out: a ResNet-8 trained in PyTorch
//! (tests/reference/gen_import_reference.py wrote its state_dict and its
//! logits on a fixed batch) imported by an `Import` stage, measured by the
//! stages that read weights, and written out again by `runner export`;
//! the exported file gives PyTorch's logits. Also: the key follows the
//! file's content, not its path; and bad files, prefixes and stage names
//! get errors that say what to change.

#[path = "support/runner_env.rs"]
mod runner_env;
#[path = "support/shared.rs"]
mod shared;
use runner_env::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use samlab_models::{Arch, Model};

/// Samlab's f32 logits against PyTorch's f64 logits of the same weights:
/// only samlab's f32 rounding separates them, of order `sqrt(n) u` for
/// the sums of `n <= 576` terms in ResNet-8 (`u = 2^-24`: 1.4e-6 of the
/// logits' scale), where an importer's mistake moves them by 1e-3 of it
/// or more (the script's docstring lists what each mistake does). The
/// bound is models/tests/reference.rs's for the same network and the same
/// error model (docs/numerics.md: the worst over every kernel path, with
/// its margin).
const TOL: f64 = 1e-4;

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/import")
        .join(name)
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn study(file: &str, extra: &str) -> String {
    format!(
        r#"
Study(
    version: 1,
    dataset: "cifar10",
    stages: {{
        "torch": Import(model: "resnet8", file: "{file}"{extra}),
        "eval": Evaluate(of: "torch", splits: [Test], test_subset: PerClass(2)),
        "escape": Escape(
            of: "torch", method: Sgd, lr: 0.01, batch: 20, probe: 20,
            threshold: 0.01, max_steps: 2,
        ),
        "tune": Train(
            from: "torch", model: "resnet8", train_subset: PerClass(2), batch: 20,
            epochs: 1, lr: Constant(lr: 0.01), test_subset: Off,
        ),
        "moved": Distance(w1: "torch", w2: "tune"),
    }},
)
"#
    )
}

/// `runner plan`'s key of `stage` (the first 12 hex digits).
fn planned_key(env: &Env, study: &str, cache: &str, stage: &str) -> String {
    let o = env.run(&["plan", study], cache);
    let (out, err) = text(&o);
    assert!(o.status.success(), "plan failed:\n{out}\n{err}");
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no `{stage}` in\n{out}"))
        .to_string()
}

/// A stage's `distance` in a results folder's `summary.csv`.
fn distance_of(csv: &str, stage: &str) -> f64 {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "distance").unwrap();
    let row = lines
        .find(|l| l.split(',').next() == Some(stage))
        .unwrap_or_else(|| panic!("no {stage} in {csv}"));
    row.split(',').nth(col).unwrap().parse().unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn an_imported_pytorch_checkpoint_exports_to_pytorchs_logits() {
    let env = Env::new();
    std::fs::create_dir(env.path("weights")).unwrap();
    std::fs::copy(
        reference("resnet8-torch.safetensors"),
        env.path("weights/resnet8.safetensors"),
    )
    .unwrap();
    env.write("s.ron", &study("weights/resnet8.safetensors", ""));
    let runs = env.ok(&["s.ron", "--results-dir", "out"], "cache");
    for stage in ["torch", "eval", "escape", "tune", "moved"] {
        assert_eq!(runs[stage][0], "ran", "{stage}: {:?}", runs[stage]);
    }

    // Fine-tuning starts from the imported weights (`from`): its step
    // moves them, a little (from an unrelated initialisation the distance
    // is of the order of the weights' norm: 15 between two PyTorch inits).
    let summary = std::fs::read_to_string(env.path("out/summary.csv")).unwrap();
    let distance = distance_of(&summary, "moved");
    assert!(distance > 0.0 && distance < 1.0, "distance {distance}");

    let o = env.run(
        &["export", "s.ron", "torch", "exported.safetensors"],
        "cache",
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "export failed:\n{out}\n{err}");
    assert!(out.contains("exported.safetensors"), "{out}");

    // The same tensors as PyTorch's state_dict, bit for bit, less its
    // integer `num_batches_tracked` counts.
    let torch = load(&reference("resnet8-torch.safetensors"));
    let exported = load(&env.path("exported.safetensors"));
    let floats: Vec<&String> = torch
        .keys()
        .filter(|k| !k.ends_with(".num_batches_tracked"))
        .collect();
    assert_eq!(floats.len(), exported.len(), "{:?}", exported.keys());
    assert_eq!(torch.len() - floats.len(), 9, "one count per BatchNorm");
    for k in floats {
        let (a, b) = (&torch[k], &exported[k]);
        assert_eq!(a.dims(), b.dims(), "{k}");
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k} changed on the way"
        );
    }

    // The exported network's evaluation-mode logits are PyTorch's.
    let batch = load(&reference("resnet8-batch.safetensors"));
    let arch: Arch = "resnet8".parse().unwrap();
    let model = Model::new(&arch, 10, 7, &Device::Cpu).unwrap();
    model
        .params
        .load(&env.path("exported.safetensors"))
        .unwrap();
    let got = f64s(&model.forward(&batch["images"], false).unwrap());
    let want = f64s(&batch["logits_f64"]);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= TOL * scale,
            "logit {i}: samlab {g}, PyTorch {w} (scale {scale})"
        );
    }
    // Not the logits of the initialisation the model was built with.
    let fresh = Model::new(&arch, 10, 7, &Device::Cpu).unwrap();
    let init = f64s(&fresh.forward(&batch["images"], false).unwrap());
    assert!(
        init.iter()
            .zip(&want)
            .any(|(g, w)| (g - w).abs() > 100.0 * TOL * scale),
        "the check would not notice weights left at their initialisation"
    );
}

#[test]
fn an_imports_key_follows_the_files_content_not_its_path() {
    let env = Env::new();
    std::fs::copy(
        reference("resnet8-torch.safetensors"),
        env.path("a.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        reference("resnet8-torch.safetensors"),
        env.path("b.safetensors"),
    )
    .unwrap();
    env.write("a.ron", &study("a.safetensors", ""));
    env.write("b.ron", &study("b.safetensors", ""));
    let a = planned_key(&env, "a.ron", "cache", "torch");
    assert_eq!(a, planned_key(&env, "b.ron", "cache", "torch"));
    // The dependants' keys follow.
    assert_eq!(
        planned_key(&env, "a.ron", "cache", "eval"),
        planned_key(&env, "b.ron", "cache", "eval")
    );

    // Other content: another key. The same tensors with an extra prefix.
    let prefixed: HashMap<String, Tensor> = load(&env.path("a.safetensors"))
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    candle_core::safetensors::save(&prefixed, env.path("c.safetensors")).unwrap();
    env.write(
        "c.ron",
        &study("c.safetensors", ", strip_prefix: \"module.\""),
    );
    assert_ne!(a, planned_key(&env, "c.ron", "cache", "torch"));

    // A missing file is named at planning.
    env.write("d.ron", &study("missing.safetensors", ""));
    let o = env.run(&["plan", "d.ron"], "cache");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn bad_checkpoints_and_stage_names_say_what_to_change() {
    let env = Env::new();
    let torch = load(&reference("resnet8-torch.safetensors"));

    // A DataParallel prefix: the error says to strip it; stripping it imports.
    let prefixed: HashMap<String, Tensor> = torch
        .iter()
        .map(|(k, v)| (format!("module.{k}"), v.clone()))
        .collect();
    candle_core::safetensors::save(&prefixed, env.path("dp.safetensors")).unwrap();
    env.write("dp.ron", &study("dp.safetensors", ""));
    let o = env.run(&["dp.ron", "--results-dir", "out"], "cache");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("strip_prefix: \"module.\""), "{out}\n{err}");
    env.write(
        "dp2.ron",
        &study("dp.safetensors", ", strip_prefix: \"module.\""),
    );
    let runs = env.ok(&["dp2.ron", "--results-dir", "out2"], "cache");
    assert_eq!(runs["torch"][0], "ran");

    // Another model's file: the names that do not fit.
    let mut missing = torch.clone();
    missing.remove("linear.bias");
    candle_core::safetensors::save(&missing, env.path("nobias.safetensors")).unwrap();
    env.write("nobias.ron", &study("nobias.safetensors", ""));
    let o = env.run(&["nobias.ron", "--results-dir", "out3"], "cache");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("linear.bias") && err.contains("resnet8"),
        "{err}"
    );

    // Not safetensors at all.
    std::fs::write(env.path("junk.safetensors"), b"not a checkpoint").unwrap();
    env.write("junk.ron", &study("junk.safetensors", ""));
    let o = env.run(&["junk.ron", "--results-dir", "out4"], "cache");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("junk.safetensors"), "{err}");

    // Export: a typo, a stage without a network, a file already there.
    for (stage, file, says) in [
        ("trch", "x.safetensors", "did you mean `torch`?"),
        ("eval", "x.safetensors", "leaves no network"),
        ("torch", "dp.safetensors", "exists"),
        ("torch[seed=3]", "x.safetensors", "no run of `torch`"),
    ] {
        let o = env.run(&["export", "dp2.ron", stage, file], "cache");
        let (_, err) = text(&o);
        assert!(!o.status.success(), "export {stage}");
        assert!(err.contains(says), "export {stage}: {err}");
    }
    assert!(!env.path("x.safetensors").exists());
    // The file that was there is untouched.
    assert_eq!(load(&env.path("dp.safetensors")).len(), prefixed.len());
}
