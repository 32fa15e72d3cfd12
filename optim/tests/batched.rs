//! The batched paper step (`samlab_optim::batched`) against the sequential
//! form (`sgd_step_with` / `sam_step_with` with `bn_batch`), on the CPU.
//!
//! Bounds. f64: 1e-9 of each tensor's largest entry. Both forms sum the
//! same products in other orders (one convolution over 16 images against
//! four over 4, the weight gradient's groups, the mean over slices after
//! or before the backward); f64 rounds each operation by at most 2^-53 =
//! 1.1e-16, and the longest sums here (a weight gradient over 16 images of
//! 32x32 pixels, 16k products) stay near 1e-12 relative even in the
//! worst-case linear growth; 1e-9 is optim/tests/steps.rs' f64 bound, far
//! above that and far below any modelling fault (a slice's statistics
//! mixed with another's moves values by 1e-2 or more).
//! f32: these cases all normalise over ghost batches of 2 or 4 images,
//! the cases docs/numerics.md calls chaotic ("f32 momentum, ghost batches
//! of 4, SAM": 5e-2; "f32 weights, chaotic cases": 5e-3; the
//! `f32_tolerance` of optim/tests/steps.rs): a ReLU input within rounding
//! of zero may flip between two summation orders, a discrete jump no
//! rounding model sizes. The running statistics come from the first
//! pass's BatchNorm inputs, which no flip reaches in the first step; their
//! bound is the smooth cases' 1e-5. The cases run two steps, and a flip in
//! the first would move the second's statistics by about momentum x 5e-3;
//! none flipped in these cases (read: about 1e-7), so 1e-5 holds for these
//! fixed data, not for any data. Each case prints its readings
//! (`-- --nocapture`); docs/cpu-profile.md records them.

use candle_core::{DType, Device, Tensor};
use samlab_models::slices::{SliceWeights, Slices};
use samlab_models::{Arch, Model, fixtures};
use samlab_optim::*;

fn model(arch: &str, dtype: DType) -> Model {
    let m = Model::with_dtype(&arch.parse::<Arch>().unwrap(), 10, 0, &Device::Cpu, dtype).unwrap();
    fixtures::set_fixed(&m).unwrap();
    m
}

fn data(n: usize, k: u32, dtype: DType) -> (Tensor, Tensor) {
    let x = fixtures::images(n, 2000 + k, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y: Vec<u32> = (0..n as u32).map(|i| (3 * i + k) % 10).collect();
    (x, Tensor::from_vec(y, n, &Device::Cpu).unwrap())
}

/// What a case runs: SGD (`sam` None) or SAM with these settings.
#[derive(Clone, Debug)]
struct Case {
    arch: &'static str,
    batch: usize,
    bn_batch: usize,
    sam: Option<SamConfig>,
    decay: Decay,
}

fn sam(rho: f64, chunk: Option<usize>) -> Option<SamConfig> {
    let mut c = SamConfig::new(rho);
    c.chunk = chunk;
    Some(c)
}

/// Everything a step leaves and reports: per step (loss, correct,
/// perturbed correct), and at the end every weight, momentum and buffer.
struct End {
    outputs: Vec<(f64, usize, Option<usize>)>,
    tensors: Vec<(String, Tensor)>,
}

/// Settings of the batched form: SAM's `sam`, ghost batches of `bn_batch`.
fn batched(sam: &SamConfig, bn_batch: usize) -> StepSettings<'_> {
    StepSettings {
        ghost: GhostForm::Batched,
        ..StepSettings::sequential(sam, Some(bn_batch))
    }
}

fn run(case: &Case, dtype: DType, ghost: GhostForm) -> End {
    let m = model(case.arch, dtype);
    let mut opt = Sgd::new(SgdConfig {
        decay: case.decay,
        ..Default::default()
    })
    .unwrap();
    let sgd_cfg = SamConfig::new(0.0);
    let cfg = case.sam.as_ref().unwrap_or(&sgd_cfg);
    let settings = StepSettings {
        ghost,
        ..StepSettings::sequential(cfg, Some(case.bn_batch))
    };
    let mut outputs = Vec::new();
    for k in 0..2 {
        let (x, y) = data(case.batch, k, dtype);
        let out = match &case.sam {
            None => sgd_step_with(&m, &mut opt, &settings, &x, &y, 0.1),
            Some(_) => sam_step_with(&m, &mut opt, &settings, &x, &y, 0.1),
        }
        .unwrap();
        assert_eq!(out.samples, case.batch);
        outputs.push((out.loss, out.correct, out.perturbed_correct));
    }
    let mut tensors: Vec<(String, Tensor)> = m
        .params
        .all()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    for (n, v) in opt.state() {
        tensors.push((format!("momentum {n}"), v.clone()));
    }
    End { outputs, tensors }
}

/// The largest `|a - b|` over a tensor, relative to its largest `|b|`.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (fixtures::f64s(a).unwrap(), fixtures::f64s(b).unwrap());
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The bounds of a dtype (module docs): (loss, weights, momentum, running
/// statistics).
fn bounds(dtype: DType) -> (f64, f64, f64, f64) {
    match dtype {
        DType::F64 => (1e-9, 1e-9, 1e-9, 1e-9),
        _ => (5e-3, 5e-3, 5e-2, 1e-5),
    }
}

fn check(case: &Case, dtype: DType) {
    let seq = run(case, dtype, GhostForm::Sequential);
    let bat = run(case, dtype, GhostForm::Batched);
    let (lb, wb, mb, rb) = bounds(dtype);
    let mut worst = [0f64; 4];
    for ((ls, cs, ps), (lb2, cb, pb)) in seq.outputs.iter().zip(&bat.outputs) {
        let e = (ls - lb2).abs() / ls.abs();
        worst[0] = worst[0].max(e);
        if dtype == DType::F64 {
            assert_eq!((cs, ps), (cb, pb), "{case:?}: correct predictions");
        }
    }
    assert_eq!(
        seq.tensors.len(),
        bat.tensors.len(),
        "{case:?}: both forms leave the same tensors"
    );
    assert!(
        seq.tensors.iter().any(|(n, _)| n.starts_with("momentum")),
        "{case:?}: the steps left momentum to compare"
    );
    for ((name, s), (name2, b)) in seq.tensors.iter().zip(&bat.tensors) {
        assert_eq!(name, name2);
        let e = rel(b, s);
        let i = if name.starts_with("momentum") {
            2
        } else if name.contains("running") {
            3
        } else {
            1
        };
        worst[i] = worst[i].max(e);
    }
    println!(
        "{dtype:?} {} batch {} bn_batch {} sam {:?} decay {:?}: loss {:.2e} weights {:.2e} momentum {:.2e} running {:.2e}",
        case.arch,
        case.batch,
        case.bn_batch,
        case.sam
            .as_ref()
            .map(|c| (c.rho, c.chunk, c.adaptive, c.scope)),
        case.decay,
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
    for (w, (b, what)) in worst.iter().zip([
        (lb, "loss"),
        (wb, "weights"),
        (mb, "momentum"),
        (rb, "running statistics"),
    ]) {
        assert!(
            *w <= b,
            "{dtype:?} {case:?}: {what} differ by {w:.3e} > {b:.0e}"
        );
    }
}

/// The tiny fixture's cases (ResNet-8 with fixed weights, batch 8) and
/// the paper protocol scaled down (batch 16 as 4 devices of 4, m = 4).
fn cases() -> Vec<Case> {
    let base = Case {
        arch: "resnet8",
        batch: 8,
        bn_batch: 4,
        sam: None,
        decay: Decay::Update,
    };
    let mut asam = SamConfig::new(0.5);
    asam.chunk = Some(4);
    asam.adaptive = true;
    let mut norm = SamConfig::new(0.05);
    norm.chunk = Some(4);
    norm.scope = Scope::Norm;
    vec![
        // SGD with ghost batches: one pass, BatchNorm per slice.
        Case { ..base.clone() },
        // SAM, one perturbation for the batch over ghost batches.
        Case {
            sam: sam(0.05, None),
            ..base.clone()
        },
        // SAM per device: m = bn_batch (the thesis' m = 32 on 32 a device).
        Case {
            sam: sam(0.05, Some(4)),
            ..base.clone()
        },
        // Chunks of two slices each, decay in the loss.
        Case {
            sam: sam(0.05, Some(4)),
            bn_batch: 2,
            decay: Decay::Loss,
            ..base.clone()
        },
        Case {
            sam: Some(asam),
            ..base.clone()
        },
        Case {
            sam: Some(norm),
            ..base.clone()
        },
        // The paper protocol scaled down: 16 images as 4 devices of 4.
        Case {
            batch: 16,
            sam: sam(0.05, Some(4)),
            ..base.clone()
        },
        Case {
            batch: 16,
            ..base.clone()
        },
    ]
}

#[test]
fn batched_steps_match_the_sequential_form_in_f64() {
    for case in cases() {
        check(&case, DType::F64);
    }
}

#[test]
fn batched_steps_match_the_sequential_form_in_f32() {
    for case in cases() {
        check(&case, DType::F32);
    }
}

/// Other families, in the paper protocol scaled down: WideResNet (the
/// thesis' WRN-28-10 at depth 10, width 1), PreAct-ResNet (pre-activation
/// blocks) and PyramidNet (zero-padded shortcuts).
#[test]
fn other_families_match_the_sequential_form() {
    for arch in ["wrn10-1", "preactresnet11", "pyramidnet8-a16"] {
        for dtype in [DType::F64, DType::F32] {
            let case = Case {
                arch,
                batch: 16,
                bn_batch: 4,
                sam: sam(0.05, Some(4)),
                decay: Decay::Update,
            };
            check(&case, dtype);
        }
    }
}

/// One sliced pass with the model's own weights: logits equal the
/// per-slice passes', and so do the running statistics, to 1e-5 in f32
/// (the fused BatchNorm sums each slice's channel in the order a pass over
/// that slice alone does; the convolutions before it may group images
/// otherwise on other CPUs, so equal bits are read here, not asserted;
/// docs in `samlab_models::slices`).
#[test]
fn a_sliced_pass_is_the_slices_passes() {
    for dtype in [DType::F64, DType::F32] {
        let (x, _) = data(16, 5, dtype);
        let a = model("resnet8", dtype);
        let start = a.params.snapshot_buffers().unwrap();
        let mut logits = Vec::new();
        let mut running = Vec::new();
        for s in 0..4 {
            a.params.restore_buffers(&start).unwrap();
            logits.push(a.forward(&x.narrow(0, 4 * s, 4).unwrap(), true).unwrap());
            running.push(a.params.snapshot_buffers().unwrap());
        }
        let b = model("resnet8", dtype);
        let sliced = b
            .forward_sliced(&x, Slices::new(4), &SliceWeights::shared())
            .unwrap();
        let e = rel(&sliced, &Tensor::cat(&logits, 0).unwrap());
        // One forward pass, no step: a ReLU input within rounding of zero
        // that flips changes its output by that rounding only (the jumps
        // of the chaotic cases come from steps taken after a flip), so the
        // smooth bounds hold. f64: sums of at most 576 products per output
        // (3x3x64) round by far less than 1e-12 relative; f32: the smooth
        // cases' 1e-5 of docs/numerics.md (the per-slice passes and the
        // sliced one group images into convolutions differently).
        let bound = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        assert!(e <= bound, "{dtype:?}: logits differ by {e:.3e}");
        let n = running.len() as f64;
        for (i, got) in b.params.snapshot_buffers().unwrap().iter().enumerate() {
            let sum = running[1..]
                .iter()
                .fold(running[0][i].clone(), |acc, r| (&acc + &r[i]).unwrap());
            let want = (sum / n).unwrap();
            let e = rel(got, &want);
            println!("{dtype:?} buffer {i}: {e:.2e}");
            assert!(e <= bound, "{dtype:?}: buffer {i} differs by {e:.3e}");
        }
    }
}

#[test]
fn bad_settings_are_typed_errors() {
    let m = model("resnet8", DType::F32);
    let (x, y) = data(8, 0, DType::F32);
    let before = m.params.snapshot_buffers().unwrap();
    let weights: Vec<Vec<f32>> = m
        .params
        .trainable()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let msg = |r: Result<StepOutput>| r.unwrap_err().to_string();
    let sgd = SamConfig::new(0.0);
    let with = batched;
    let e = msg(sgd_step_with(&m, &mut opt, &with(&sgd, 3), &x, &y, 0.1));
    assert!(
        e.contains("bn_batch) 3 does not divide the batch of 8"),
        "{e}"
    );
    let e = msg(sgd_step_with(&m, &mut opt, &with(&sgd, 0), &x, &y, 0.1));
    assert!(e.contains("bn_batch must be at least 1"), "{e}");
    let chunk4 = sam(0.05, Some(4)).unwrap();
    let e = msg(sam_step_with(&m, &mut opt, &with(&chunk4, 3), &x, &y, 0.1));
    assert!(
        e.contains("bn_batch) 3 does not divide the batch of 4"),
        "{e}"
    );
    let chunk3 = sam(0.05, Some(3)).unwrap();
    let e = msg(sam_step_with(&m, &mut opt, &with(&chunk3, 1), &x, &y, 0.1));
    assert!(e.contains("chunk 3 does not divide the batch of 8"), "{e}");
    let negative = SamConfig::new(-1.0);
    let e = msg(sam_step_with(
        &m,
        &mut opt,
        &with(&negative, 4),
        &x,
        &y,
        0.1,
    ));
    assert!(e.contains("rho"), "{e}");
    // The models' own checks.
    let e = m
        .forward_sliced(&x, Slices::new(3), &SliceWeights::shared())
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 slices do not divide the batch of 8"), "{e}");
    let e = m
        .forward_sliced(
            &x,
            Slices {
                count: 4,
                per_group: 3,
            },
            &SliceWeights::shared(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("groups of 3"), "{e}");
    let copies = SliceWeights::copies(&m.params, 2).unwrap();
    let e = m
        .forward_sliced(&x, Slices::new(4), &copies)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 rows for a pass of 4 slices"), "{e}");
    let rows = std::collections::BTreeMap::new();
    let e = SliceWeights::per_slice(&m.params, 2, rows)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no rows for"), "{e}");
    // Nothing changed.
    for (a, b) in before.iter().zip(m.params.snapshot_buffers().unwrap()) {
        assert_eq!(rel(a, &b), 0.0);
    }
    for (w, (_, v)) in weights.iter().zip(m.params.trainable()) {
        let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(w, &now);
    }
    assert!(opt.state().is_empty());
}

/// A non-finite loss fails the step and changes nothing (as the
/// sequential form's `non_finite_loss_fails_the_step`: a NaN bias).
#[test]
fn a_non_finite_loss_fails_the_batched_step() {
    let m = model("resnet8", DType::F32);
    let (x, y) = data(8, 0, DType::F32);
    let bias = m.params.get("linear.bias").unwrap();
    bias.set(&Tensor::full(f32::NAN, 10, &Device::Cpu).unwrap())
        .unwrap();
    let bits = |m: &Model| fixtures::param_bits(m).unwrap();
    let before = bits(&m);
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    for chunk in [Some(4), None] {
        let cfg = sam(0.05, chunk).unwrap();
        let e = sam_step_with(&m, &mut opt, &batched(&cfg, 4), &x, &y, 0.1).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NonFinite { .. }), "{e}");
    }
    let sgd = SamConfig::new(0.0);
    let e = sgd_step_with(&m, &mut opt, &batched(&sgd, 4), &x, &y, 0.1).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::NonFinite { .. }), "{e}");
    assert!(bits(&m) == before, "a failed step changes nothing");
    assert!(opt.state().is_empty());
}

/// A run's `ghost: Batched` (`Trainer::with_ghost`) takes the batched
/// steps: a Switch SGD->SAM trainer's two steps leave the bits the batched
/// steps leave when called directly, in f32, where the sequential form's
/// bits differ (so the test sees which form ran).
#[test]
fn a_batched_trainer_takes_the_batched_steps() {
    let mut cfg = SamConfig::new(0.05);
    cfg.chunk = Some(4);
    let schedule = StepSchedule::Switch {
        from: Method::Sgd,
        to: Method::Sam,
        at: Point::Step(1),
    };
    let trained = |ghost: GhostForm| -> Vec<u32> {
        let m = model("resnet8", DType::F32);
        let mut t = Trainer::new(
            SgdConfig::default(),
            cfg.clone(),
            LrSchedule::Constant { lr: 0.1 },
            &schedule,
            2,
            2,
        )
        .and_then(|t| t.with_bn_batch(Some(4)))
        .and_then(|t| t.with_ghost(ghost))
        .unwrap();
        for k in 0..2 {
            let (x, y) = data(16, k, DType::F32);
            let out = t.train_step(&m, &x, &y).unwrap();
            assert_eq!(out.perturbed(), k == 1);
        }
        fixtures::param_bits(&m).unwrap()
    };
    let direct = {
        let m = model("resnet8", DType::F32);
        let mut opt = Sgd::new(SgdConfig::default()).unwrap();
        let sgd_cfg = SamConfig::new(0.0);
        let (x, y) = data(16, 0, DType::F32);
        sgd_step_with(&m, &mut opt, &batched(&sgd_cfg, 4), &x, &y, 0.1).unwrap();
        let (x, y) = data(16, 1, DType::F32);
        sam_step_with(&m, &mut opt, &batched(&cfg, 4), &x, &y, 0.1).unwrap();
        fixtures::param_bits(&m).unwrap()
    };
    let (batched, sequential) = (trained(GhostForm::Batched), trained(GhostForm::Sequential));
    assert_eq!(batched, direct, "the trainer ran the batched steps");
    // On any CPU kind: the SGD step's batched form takes the gradient of
    // the slices' mean loss in one backward pass, the sequential form the
    // mean of four backward passes' gradients, two f32 sums in different
    // orders, so at least one of ResNet-8's 78k weights rounds apart.
    assert_ne!(sequential, direct, "the forms' f32 bits differ here");
}

/// `ghost: Batched` with a kind that has no batched form is refused where
/// the trainer is built, naming the kinds that have one.
#[test]
fn kinds_without_a_batched_form_refuse_it() {
    for schedule in [
        StepSchedule::Always(Method::LookSam),
        StepSchedule::Psam {
            period: 2,
            until: Point::Step(2),
            with: Method::Esam,
        },
    ] {
        let e = Trainer::new(
            SgdConfig::default(),
            SamConfig::new(0.05),
            LrSchedule::Constant { lr: 0.1 },
            &schedule,
            4,
            2,
        )
        .and_then(|t| t.with_bn_batch(Some(4)))
        .and_then(|t| t.with_ghost(GhostForm::Batched))
        .err()
        .unwrap_or_else(|| panic!("{schedule:?} took `ghost: Batched`"))
        .to_string();
        assert!(
            e.contains("`ghost: Batched` is built for the Sgd and Sam kinds only"),
            "{e}"
        );
    }
    // A step whose context asks for it is refused too (a context built by
    // hand, not through a checked trainer), and nothing changes.
    let m = model("resnet8", DType::F32);
    let before = fixtures::param_bits(&m).unwrap();
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let cfg = SamConfig::new(0.05);
    let (x, y) = data(16, 0, DType::F32);
    let ctx = StepCtx {
        model: &m,
        opt: &mut opt,
        settings: batched(&cfg, 4),
        x: &x,
        y: &y,
        lr: 0.1,
    };
    let e = KindStates::default()
        .step(Method::LookSam, &KindSettings::default(), ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`ghost: Batched` is built for"), "{e}");
    let after = fixtures::param_bits(&m).unwrap();
    assert_eq!(before, after);
}

/// `ghost: Batched` with nothing to batch (no ghost batches, and for SAM
/// no m-sharpness chunks either) is refused; SAM's chunks alone suffice.
#[test]
fn a_batched_run_needs_slices() {
    let trainer = |m: Method, chunk: Option<usize>, bn: Option<usize>| {
        let mut cfg = SamConfig::new(0.05);
        cfg.chunk = chunk;
        Trainer::new(
            SgdConfig::default(),
            cfg,
            LrSchedule::Constant { lr: 0.1 },
            &StepSchedule::Always(m),
            4,
            2,
        )
        .and_then(|t| t.with_bn_batch(bn))
        .and_then(|t| t.with_ghost(GhostForm::Batched))
    };
    for (m, chunk) in [(Method::Sgd, Some(4)), (Method::Sam, None)] {
        let e = trainer(m, chunk, None).err().unwrap().to_string();
        assert!(
            e.contains("`ghost: Batched` has nothing to batch"),
            "{m:?}: {e}"
        );
    }
    assert!(trainer(Method::Sam, Some(4), None).is_ok());
    assert!(trainer(Method::Sgd, None, Some(4)).is_ok());
}
