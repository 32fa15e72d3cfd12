use candle_core::{Device, Tensor};
use samlab_models::{Arch, ErrorKind, Model};

fn model(name: &str, seed: u64) -> Model {
    Model::new(&name.parse::<Arch>().unwrap(), 10, seed, &Device::Cpu).unwrap()
}

fn bits(m: &Model) -> Vec<(String, Vec<u32>)> {
    m.params
        .all()
        .into_iter()
        .map(|(k, v)| {
            let vals = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k.to_string(), vals.iter().map(|f| f.to_bits()).collect())
        })
        .collect()
}

#[test]
fn safetensors_round_trip_is_bit_exact_including_running_stats() {
    let a = model("resnet8", 1);
    // Move the running statistics away from their initial values.
    let x = (Tensor::arange(0f32, 4.0 * 3.0 * 32.0 * 32.0, &Device::Cpu).unwrap() * 0.37)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((4, 3, 32, 32))
        .unwrap();
    a.forward(&x, true).unwrap();
    let rm = a
        .params
        .get("bn1.running_mean")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert!(rm.iter().any(|&v| v != 0.0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    a.params.save(&path).unwrap();

    let b = model("resnet8", 2);
    assert_ne!(bits(&a), bits(&b));
    b.params.load(&path).unwrap();
    assert_eq!(bits(&a), bits(&b));
    // Same weights, same outputs.
    let ya = a
        .forward(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let yb = b
        .forward(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ya, yb);
}

#[test]
fn loading_into_the_wrong_architecture_lists_the_differences() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r8.safetensors");
    model("resnet8", 0).params.save(&path).unwrap();
    let other = model("resnet14", 0);
    let before = bits(&other);
    let err = other.params.load(&path).unwrap_err();
    let ErrorKind::CheckpointMismatch { detail, .. } = &err.kind else {
        panic!("expected a mismatch, got {err}");
    };
    assert!(detail.contains("missing [layer1.1."), "{detail}");
    assert!(detail.contains("0 unexpected"), "{detail}");
    assert_eq!(bits(&other), before, "a failed load changes nothing");

    let wider = Model::new(&"resnet8".parse().unwrap(), 100, 0, &Device::Cpu).unwrap();
    let err = wider.params.load(&path).unwrap_err().to_string();
    assert!(err.contains("2 mis-shaped [linear.bias"), "{err}");

    let err = other
        .params
        .load(&dir.path().join("none.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("none.safetensors"), "{err}");
    std::fs::write(dir.path().join("junk.safetensors"), b"junk").unwrap();
    let err = other
        .params
        .load(&dir.path().join("junk.safetensors"))
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::BadCheckpoint { .. }), "{err}");
}

#[test]
fn initialisation_is_seeded_and_follows_the_reference_rules() {
    assert_eq!(bits(&model("resnet8", 5)), bits(&model("resnet8", 5)));
    assert_ne!(bits(&model("resnet8", 5)), bits(&model("resnet8", 6)));
    let m = model("resnet20", 0);
    let get = |n: &str| {
        m.params
            .get(n)
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert!(get("layer1.0.bn1.weight").iter().all(|&v| v == 1.0));
    assert!(get("layer1.0.bn1.bias").iter().all(|&v| v == 0.0));
    assert!(get("bn1.running_var").iter().all(|&v| v == 1.0));
    // Kaiming normal, fan-out: std sqrt(2 / (32 * 9)) for layer2's 3x3 convs.
    let w = get("layer2.1.conv1.weight");
    let std = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64).sqrt();
    let want = (2.0f64 / (32.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    // PyTorch's Linear default: uniform within 1/sqrt(fan_in).
    let bound = 1.0 / 64f32.sqrt();
    assert!(get("linear.weight").iter().all(|v| v.abs() <= bound));
    // Trainable parameters and buffers are split, sorted by name.
    let names: Vec<&str> = m.params.trainable().map(|(n, _)| n).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    assert!(names.iter().all(|n| !n.contains("running")));
    assert!(
        m.params
            .buffers()
            .all(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
    );
}

#[test]
fn every_model_runs_forward_in_both_modes_for_10_and_100_classes() {
    let x = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    for name in ["resnet8", "preactresnet11", "wrn10-1", "pyramidnet8-a12"] {
        for classes in [10, 100] {
            let m = Model::new(&name.parse().unwrap(), classes, 0, &Device::Cpu).unwrap();
            for train in [true, false] {
                assert_eq!(
                    m.forward(&x, train).unwrap().dims(),
                    &[2, classes],
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn model_names_parse_and_bad_ones_list_the_choices() {
    for (name, canonical) in [
        ("ResNet-18", "resnet18"),
        ("resnet20", "resnet20"),
        ("preactresnet164", "preactresnet164"),
        ("WRN-28-10", "wrn28-10"),
        ("pyramidnet110", "pyramidnet110"),
        ("pyramidnet110-a48", "pyramidnet110-a48"),
    ] {
        assert_eq!(name.parse::<Arch>().unwrap().name(), canonical);
    }
    let err = "vgg16".parse::<Arch>().unwrap_err().to_string();
    assert!(
        err.contains("unknown model `vgg16`") && err.contains("wrn28-10"),
        "{err}"
    );
    let err = "resnet19".parse::<Arch>().unwrap_err().to_string();
    assert!(err.contains("6n+2"), "{err}");
    let err = "wrn27-2".parse::<Arch>().unwrap_err().to_string();
    assert!(err.contains("6n+4"), "{err}");
}
