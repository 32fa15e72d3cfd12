//! End-to-end tests of the `runner` binary.

#[path = "support/shared.rs"]
mod shared;

use std::process::{Command, Output};

fn runner(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .env("SAMLAB_DATA_DIR", data_dir)
        .env_remove("SAMLAB_CIFAR10")
        .env_remove("SAMLAB_CIFAR100")
        .output()
        .expect("runner starts")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn data_command_loads_and_fingerprints_the_shared_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = shared::cifar10_jpeg_archive();
    let args = ["data", "cifar10", "--cifar10", archive.to_str().unwrap()];
    let first = runner(&args, dir.path());
    let (out, err) = text(&first);
    assert!(first.status.success(), "{out}\n{err}");
    assert!(
        out.contains(
            "fingerprint    f654ceae8b5964d5b4e9f5a2c0a07ca667491b113085ad748c822163135b0c61"
        ),
        "{out}"
    );
    assert!(
        out.contains("train          50000 images of 3x32x32, 5000..5000 per class"),
        "{out}"
    );
    assert!(out.contains("(written)"), "{out}");
    let second = runner(&args, dir.path());
    let (out2, _) = text(&second);
    assert!(out2.contains("(hit)"), "{out2}");
}

#[test]
fn missing_dataset_without_download_names_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["data", "cifar100", "--no-download"], dir.path());
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("cifar-100-binary.tar.gz") && err.contains("downloads are off"),
        "{err}"
    );
}

#[test]
fn unknown_dataset_lists_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["data", "mnist"], dir.path());
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("valid choices: cifar10, cifar100"), "{err}");
}

#[test]
fn bad_source_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["data", "--cifar10", "/no/such/place"], dir.path());
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("/no/such/place"), "{err}");
}

#[test]
fn models_command_lists_the_thesis_models_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["models"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for line in [
        "resnet18",
        "11173962",
        "preactresnet164",
        "1703258",
        "wrn28-10",
        "36479194",
        "pyramidnet110",
    ] {
        assert!(out.contains(line), "missing {line}:\n{out}");
    }
}

#[test]
fn device_command_checks_the_cpu_and_explains_missing_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["device", "cpu"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("cpu: ok"), "{out}");
    let o = runner(&["device", "tpu"], dir.path());
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("valid choices: cpu, cuda, cuda:N"),
        "{err}"
    );
    // Tests build without the `cuda` feature.
    let o = runner(&["device", "cuda"], dir.path());
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("built without CUDA"),
        "{err}"
    );
    // ... and says how to run on the CPU instead.
    assert!(err.contains("--device cpu"), "{err}");
}

#[test]
fn gpu_check_commands_run_on_the_cpu_and_explain_missing_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["check-parity", "cpu", "--batch", "4"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.starts_with("resnet8 f32 on cpu vs cpu f32, batch 4: logits 0.00e0"),
        "{out}"
    );
    // bf16: against the CPU's bf16 (equal here), then its f32 (rounded),
    // which the tolerance applies to.
    let bf16 = ["check-parity", "cpu", "--batch", "4", "--precision", "bf16"];
    let o = runner(&bf16, dir.path());
    let (out, err) = text(&o);
    assert!(!o.status.success(), "above the default 1e-3: {out}");
    assert!(err.contains("above the tolerance"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("resnet8 bf16 on cpu vs cpu bf16, batch 4: logits 0.00e0"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("resnet8 bf16 on cpu vs cpu f32")
            && !lines[1].contains("logits 0.00e0"),
        "{out}"
    );
    let o = runner(&[&bf16[..], &["--tolerance", "0.35"]].concat(), dir.path());
    assert!(o.status.success(), "{}", text(&o).1);
    let o = runner(&["check-parity", "cpu", "--precision", "fp8"], dir.path());
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("fp8") && err.contains("bf16"),
        "{err}"
    );
    let o = runner(
        &[
            "bench-step",
            "cpu",
            "--model",
            "resnet8",
            "--batch",
            "4",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--precision",
            "bf16",
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["model"], "resnet8");
    assert_eq!(v["precision"], "bf16");
    assert!(v["sgd_img_s"].as_f64().unwrap() > 0.0 && v["sam_img_s"].as_f64().unwrap() > 0.0);
    for cmd in ["check-parity", "bench-step"] {
        let o = runner(&[cmd, "cuda"], dir.path());
        let (_, err) = text(&o);
        assert!(
            !o.status.success() && err.contains("built without CUDA"),
            "{cmd}: {err}"
        );
    }
}

/// `runner plan` of a CUDA study says GPU-hours at measured rates, which
/// scale inversely with the rate, and names the models without one; without
/// a rates file it says there are none yet (the dataset is not needed).
#[test]
fn plan_shows_gpu_hours_from_measured_rates() {
    let dir = tempfile::tempdir().unwrap();
    let study = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../studies/table-5-2-5-3-cifar10.ron"
    );
    let hours = |rate: f64| -> (f64, String) {
        let rates = dir.path().join(format!("rates-{rate}.csv"));
        std::fs::write(
            &rates,
            format!("device,model,batch,sgd_img_s,sam_img_s,card,measured\ncuda,resnet18,256,{rate},1,test,2026-11-29\n"),
        )
        .unwrap();
        let o = runner(
            &["plan", study, "--rates", rates.to_str().unwrap()],
            dir.path(),
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("about "))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string();
        let h: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        (h, line)
    };
    let (h1, line) = hours(1000.0);
    let (h2, _) = hours(2000.0);
    assert!(h1 > 0.0 && (h1 / h2 - 2.0).abs() < 0.01, "{h1} {h2}");
    assert!(
        line.contains("no rate for preactresnet164, wrn28-10, pyramidnet110"),
        "{line}"
    );
    let o = runner(&["plan", study], dir.path());
    let (out, _) = text(&o);
    assert!(
        out.contains("GPU-hours")
            && (out.contains("no measured rates yet") || out.contains("about ")),
        "{out}"
    );
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "device,model,sgd_img_s\ncuda,resnet18,-3\n").unwrap();
    let o = runner(
        &["plan", study, "--rates", bad.to_str().unwrap()],
        dir.path(),
    );
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("bad.csv:2: "), "{err}");
}
