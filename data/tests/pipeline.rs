//! The input pipeline: determinism, augmentation, normalisation, batching.

use std::sync::Arc;

use samlab_data::*;

/// A split of `n` 3x8x8 images whose pixels encode (image, channel, y, x).
fn split(n: usize, classes: u16) -> Arc<Split> {
    let shape = ImageShape {
        channels: 3,
        height: 8,
        width: 8,
    };
    let mut images = Vec::new();
    for i in 0..n {
        for c in 0..3 {
            for y in 0..8 {
                for x in 0..8 {
                    images.push((i * 3 + c * 50 + y * 8 + x) as u8);
                }
            }
        }
    }
    let labels = (0..n).map(|i| (i as u16) % classes).collect();
    Arc::new(Split {
        shape,
        images,
        labels,
    })
}

fn norm() -> Normalization {
    Normalization {
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.25, 0.2, 0.1],
    }
}

fn collect(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).collect()
}

#[test]
fn same_seed_and_epoch_give_identical_batches() {
    let s = split(100, 10);
    let cfg = PipelineConfig::train(16, norm(), 42);
    let a = Loader::new(s.clone(), None, cfg.clone()).unwrap();
    let b = Loader::new(s.clone(), None, cfg.clone()).unwrap();
    assert_eq!(collect(&a, 3), collect(&b, 3));
    assert_ne!(collect(&a, 3), collect(&a, 4));
    let other = Loader::new(s, None, PipelineConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(collect(&a, 3), collect(&other, 3));
}

/// A reshuffle from epoch 2 to seed 43: epochs 0-1 are seed 42's, epochs
/// from 2 on seed 43's (order and augmentation alike).
#[test]
fn a_reshuffle_takes_another_seed_from_its_epoch_on() {
    let s = split(100, 10);
    let cfg = PipelineConfig::train(16, norm(), 42);
    let base = Loader::new(s.clone(), None, cfg.clone()).unwrap();
    let other = Loader::new(
        s.clone(),
        None,
        PipelineConfig {
            seed: 43,
            ..cfg.clone()
        },
    )
    .unwrap();
    let fork = PipelineConfig {
        reshuffle: Some(samlab_data::Reshuffle { epoch: 2, seed: 43 }),
        ..cfg
    };
    let forked = Loader::new(s, None, fork).unwrap();
    for e in 0..2 {
        assert_eq!(collect(&forked, e), collect(&base, e), "epoch {e}");
    }
    for e in 2..4 {
        assert_eq!(collect(&forked, e), collect(&other, e), "epoch {e}");
        assert_ne!(collect(&forked, e), collect(&base, e), "epoch {e}");
    }
}

#[test]
fn augmentation_of_an_image_does_not_depend_on_the_batch_size() {
    let s = split(64, 4);
    let mk = |bs| Loader::new(s.clone(), None, PipelineConfig::train(bs, norm(), 9)).unwrap();
    let flat = |bs: usize| -> Vec<(u32, Vec<f32>)> {
        let l = mk(bs);
        let order = l.order(2);
        let mut out = Vec::new();
        for b in l.epoch(2) {
            for k in 0..b.labels.len() {
                let id = order[b.index * bs + k];
                out.push((id, b.images[k * 192..(k + 1) * 192].to_vec()));
            }
        }
        out.sort_by_key(|p| p.0);
        out
    };
    assert_eq!(flat(8), flat(32));
}

#[test]
fn eval_batches_are_the_normalised_images_in_order() {
    let s = split(10, 10);
    let l = Loader::new(s.clone(), None, PipelineConfig::eval(4, norm())).unwrap();
    let batches = collect(&l, 0);
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].shape, [2, 3, 8, 8]);
    assert_eq!(batches[1].labels, vec![4, 5, 6, 7]);
    let b = &batches[1];
    // image 5, channel 2, y 3, x 6
    let v = b.images[192 + 2 * 64 + 3 * 8 + 6];
    let px = s.image(5)[2 * 64 + 3 * 8 + 6] as f32;
    assert!((v - (px / 255.0 - 0.3) / 0.1).abs() < 1e-6);
}

#[test]
fn crops_are_shifted_windows_of_the_zero_padded_image_and_flips_mirror() {
    let s = split(200, 2);
    let cfg = PipelineConfig {
        shuffle: false,
        ..PipelineConfig::train(200, norm(), 5)
    };
    let l = Loader::new(s.clone(), None, cfg).unwrap();
    let b = l.epoch(0).next().unwrap();
    let lut = |c: usize, v: u8| (v as f32 / 255.0 - norm().mean[c]) / norm().std[c];
    let (mut flips, mut shifts) = (0, std::collections::BTreeSet::new());
    for i in 0..200 {
        let img = &b.images[i * 192..(i + 1) * 192];
        let src = s.image(i);
        // Find the (dx, dy, flip) in [-4, 4]^2 x {no, yes} that explains the output.
        let mut found = None;
        for flip in [false, true] {
            for dy in -4i32..=4 {
                for dx in -4i32..=4 {
                    let ok = (0..3).all(|c| {
                        (0..8).all(|y| {
                            (0..8).all(|x| {
                                let cx = if flip { 7 - x } else { x };
                                let (sx, sy) = (cx + dx, y + dy);
                                let want = if (0..8).contains(&sx) && (0..8).contains(&sy) {
                                    lut(c as usize, src[(c * 64 + sy * 8 + sx) as usize])
                                } else {
                                    lut(c as usize, 0)
                                };
                                img[(c * 64 + y * 8 + x) as usize] == want
                            })
                        })
                    });
                    if ok && found.is_none() {
                        found = Some((dx, dy, flip));
                    }
                }
            }
        }
        let (dx, dy, flip) =
            found.unwrap_or_else(|| panic!("image {i} is no crop/flip of its source"));
        flips += flip as usize;
        shifts.insert((dx, dy));
    }
    assert!((60..140).contains(&flips), "flips: {flips} of 200");
    assert!(shifts.len() > 40, "only {} distinct offsets", shifts.len());
}

#[test]
fn last_batch_policy() {
    let s = split(50, 5);
    let drop = Loader::new(s.clone(), None, PipelineConfig::train(16, norm(), 1)).unwrap();
    assert_eq!(drop.batches_per_epoch(), 3);
    let b = collect(&drop, 0);
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|b| b.labels.len() == 16));
    let keep = Loader::new(
        s,
        None,
        PipelineConfig {
            last_batch: LastBatch::Keep,
            ..PipelineConfig::train(16, norm(), 1)
        },
    )
    .unwrap();
    let b = collect(&keep, 0);
    assert_eq!(b.len(), 4);
    assert_eq!(b[3].labels.len(), 2);
    // Every image appears exactly once over the epoch.
    let mut all: Vec<u32> = keep.order(0);
    all.sort_unstable();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
}

/// Held-out images are disjoint from the training images, per class, and
/// holding some out leaves a per-class training subset as it was.
#[test]
fn held_out_images_are_disjoint_and_leave_the_training_subset_alone() {
    let s = split(100, 10);
    let (train, held) = split_per_class(&s, 10, Some(4), 3, 7).unwrap();
    assert_eq!(train, subset_per_class(&s, 10, 4, 7).unwrap());
    assert_eq!(held.len(), 30);
    assert!(held.iter().all(|i| !train.contains(i)));
    let mut counts = [0; 10];
    for &i in &held {
        counts[s.labels[i as usize] as usize] += 1;
    }
    assert_eq!(counts, [3; 10]);
    // Every image not held out trains; another seed holds out others.
    let (rest, held2) = split_per_class(&s, 10, None, 3, 7).unwrap();
    assert_eq!((rest.len(), held2), (70, held.clone()));
    assert!(rest.iter().all(|i| !held.contains(i)));
    assert_ne!(split_per_class(&s, 10, None, 3, 8).unwrap().1, held);
    let err = split_per_class(&s, 10, Some(8), 3, 7).unwrap_err();
    assert!(
        err.to_string()
            .contains("10 images, fewer than the 8 for training and 3 held out"),
        "{err}"
    );
}

#[test]
fn subsets_are_per_class_deterministic_and_checked() {
    let s = split(100, 10);
    let a = subset_per_class(&s, 10, 4, 7).unwrap();
    assert_eq!(a, subset_per_class(&s, 10, 4, 7).unwrap());
    assert_ne!(a, subset_per_class(&s, 10, 4, 8).unwrap());
    assert_eq!(a.len(), 40);
    let mut counts = [0; 10];
    for &i in &a {
        counts[s.labels[i as usize] as usize] += 1;
    }
    assert_eq!(counts, [4; 10]);
    let err = subset_per_class(&s, 10, 11, 7).unwrap_err();
    assert!(
        err.to_string().contains("fewer than the 11 per class"),
        "{err}"
    );

    let l = Loader::new(s, Some(a.clone()), PipelineConfig::train(8, norm(), 0)).unwrap();
    let mut seen: Vec<u32> = l.order(0);
    seen.sort_unstable();
    assert_eq!(seen, a);
}

#[test]
fn bad_settings_are_errors() {
    let s = split(10, 2);
    let bad = |cfg: PipelineConfig, idx: Option<Vec<u32>>| {
        Loader::new(s.clone(), idx, cfg).unwrap_err().to_string()
    };
    assert!(bad(PipelineConfig::train(0, norm(), 0), None).contains("batch size"));
    let two = Normalization {
        mean: vec![0.0; 2],
        std: vec![1.0; 2],
    };
    assert!(bad(PipelineConfig::train(2, two, 0), None).contains("3 channels"));
    let zero = Normalization {
        mean: vec![0.0; 3],
        std: vec![1.0, 0.0, 1.0],
    };
    assert!(bad(PipelineConfig::train(2, zero, 0), None).contains("not positive"));
    assert!(bad(PipelineConfig::train(2, norm(), 0), Some(vec![3, 10])).contains("index 10"));
}

#[test]
fn dropping_an_epoch_early_stops_its_thread() {
    let s = split(1000, 10);
    let cfg = PipelineConfig {
        prefetch: 1,
        ..PipelineConfig::train(10, norm(), 0)
    };
    let l = Loader::new(s, None, cfg).unwrap();
    let mut it = l.epoch(0);
    assert_eq!(it.size_hint(), (100, Some(100)));
    it.next().unwrap();
    drop(it); // must return (joins the producer) rather than hang
}

#[test]
fn batches_become_candle_tensors() {
    let s = split(6, 3);
    let l = Loader::new(s, None, PipelineConfig::eval(4, norm())).unwrap();
    let b = l.epoch(0).next().unwrap();
    let (x, y) = b.clone().to_tensors(&candle_core::Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[4, 3, 8, 8]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), b.labels);
    assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.images);
}
