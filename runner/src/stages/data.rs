//! The images a stage reads: subsets of a split, evaluation splits, the
//! training and evaluation loaders (with their feed onto the device), a
//! probe's fixed indices, and the cost of evaluating.

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use samlab_data::{Dataset, Loader, PipelineConfig, Split, subset_per_class};
use samlab_models::Model;
use serde::{Deserialize, Serialize};

use super::settings::{positive, whole};
use crate::error::{Invalid, Result};

/// Which images of a split a stage uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subset {
    /// Every image.
    All,
    /// This many images of every class, chosen by the stage's `subset_seed`.
    PerClass(usize),
    /// None (only where a stage allows it: a Train stage's final test evaluation).
    Off,
}

impl Subset {
    /// Indices into `split`, or `None` for all of it.
    pub fn indices(
        self,
        split: &Split,
        classes: usize,
        seed: u64,
    ) -> samlab_data::Result<Option<Vec<u32>>> {
        match self {
            Subset::All | Subset::Off => Ok(None),
            Subset::PerClass(n) => subset_per_class(split, classes, n, seed).map(Some),
        }
    }

    /// Whether it is `Off` (for `skip_serializing_if`).
    pub fn is_off(&self) -> bool {
        *self == Subset::Off
    }

    /// How many images it selects of a split of `len` images.
    pub fn count(self, len: usize, classes: usize) -> usize {
        match self {
            Subset::All => len,
            Subset::PerClass(n) => n * classes,
            Subset::Off => 0,
        }
    }
}

/// The images a run trained on, as a stage that reads its weights sees
/// them: `train_subset` (drawn by `subset_seed`) without the images a
/// validation split held out. The split changes which images train only
/// with `train_subset: All` (a `PerClass` training subset is the same with
/// or without one), so [`TrainImages::new`] keeps `val_subset` only there;
/// `Off`, it is left out of a dependent's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TrainImages {
    pub train_subset: Subset,
    #[serde(skip_serializing_if = "Subset::is_off")]
    pub val_subset: Subset,
    pub subset_seed: u64,
}

impl TrainImages {
    pub fn new(train_subset: Subset, val_subset: Subset, subset_seed: u64) -> TrainImages {
        let val_subset = match train_subset {
            Subset::All => val_subset,
            _ => Subset::Off,
        };
        TrainImages {
            train_subset,
            val_subset,
            subset_seed,
        }
    }

    /// Indices into the training split (`None`: all of it).
    pub fn indices(&self, split: &Split, classes: usize) -> samlab_data::Result<Option<Vec<u32>>> {
        match self.val_subset {
            Subset::PerClass(v) => Ok(Some(
                samlab_data::split_per_class(split, classes, None, v, self.subset_seed)?.0,
            )),
            _ => self.train_subset.indices(split, classes, self.subset_seed),
        }
    }
}

/// The probe's indices: `n` of the training images in a fixed order.
pub fn probe_indices(train: Option<Vec<u32>>, len: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut idx = train.unwrap_or_else(|| (0..len as u32).collect());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0050_524f_4245_u64);
    for i in (1..idx.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// How a training loader draws its batches.
#[derive(Clone, Copy, Debug)]
pub struct TrainingData {
    pub batch: usize,
    /// Order and augmentation of every epoch.
    pub seed: u64,
    /// CIFAR augmentation (random crop of the padded image, flip).
    pub augment: bool,
    /// From an epoch on, order and augmentation from another seed.
    pub reshuffle: Option<samlab_data::Reshuffle>,
}

/// A shuffled training loader over `indices` (None: the whole split), with
/// at least one full batch.
pub fn training_loader(
    ds: &Dataset,
    indices: Option<Vec<u32>>,
    how: TrainingData,
    stage: &str,
) -> Result<Loader> {
    let mut cfg = PipelineConfig::train(how.batch, ds.name.normalization(), how.seed);
    cfg.reshuffle = how.reshuffle;
    if !how.augment {
        cfg.augment = samlab_data::Augment::NONE;
    }
    let loader = Loader::new(ds.train.clone(), indices, cfg)?;
    if loader.batches_per_epoch() == 0 {
        return Err(crate::error::stage_err(
            stage,
            format!(
                "{} training images make no full batch of {}",
                loader.len(),
                how.batch
            ),
        ));
    }
    Ok(loader)
}

/// A training loader's batches as tensors on the stage's device: built by
/// the CPU pipeline's thread on the CPU, assembled on the device
/// elsewhere (`samlab_data::DeviceLoader`: the split copied once, each
/// batch gathered, cropped, flipped and normalised there from the same
/// choices, so the batches are the same either way).
pub enum Feed {
    Cpu(Loader),
    Device(samlab_data::DeviceLoader),
}

impl Feed {
    pub fn new(loader: Loader, device: &Device) -> Result<Feed> {
        Ok(if device.is_cpu() {
            Feed::Cpu(loader)
        } else {
            Feed::Device(samlab_data::DeviceLoader::new(loader, device)?)
        })
    }

    /// The batches of `epoch`, in order.
    pub fn epoch<'a>(
        &'a self,
        epoch: u64,
        device: &'a Device,
    ) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 'a> {
        self.epoch_from(epoch, 0, device)
    }

    /// The batches of `epoch` from batch `first` on (a run resumed
    /// mid-epoch): the same batches as those of [`Feed::epoch`] from there.
    pub fn epoch_from<'a>(
        &'a self,
        epoch: u64,
        first: usize,
        device: &'a Device,
    ) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 'a> {
        match self {
            Feed::Cpu(l) => Box::new(
                l.epoch_from(epoch, first)
                    .map(move |b| Ok(b.to_tensors(device)?)),
            ),
            Feed::Device(d) => Box::new(d.epoch_from(epoch, first).map(|r| Ok(r?))),
        }
    }
}

/// Mean loss and number of correct predictions of `model` (evaluation
/// mode) over the images `loader` yields: (loss, correct, images).
pub fn evaluate_loader(
    model: &Model,
    loader: &Loader,
    device: &Device,
) -> Result<(f64, usize, usize)> {
    let mut loss_sum = 0.0f64;
    let mut correct = 0usize;
    let mut n = 0usize;
    for batch in loader.epoch(0) {
        let (x, y) = batch.to_tensors(device)?;
        // Inference mode: evaluation-mode logits, bit for bit, no graph.
        let logits = model.infer(&x)?;
        let b = y.dims1()?;
        let loss = samlab_models::cross_entropy(&logits, &y)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let pred = logits.argmax(1)?;
        let hits = pred
            .eq(&y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        loss_sum += loss * b as f64;
        correct += hits as usize;
        n += b;
    }
    Ok((
        if n > 0 { loss_sum / n as f64 } else { f64::NAN },
        correct,
        n,
    ))
}

/// Which split a loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitName {
    Train,
    Test,
}

impl SplitName {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Test => "test",
        }
    }
}

/// A loader over (a subset of) a split for evaluation.
pub fn eval_loader(
    ds: &Dataset,
    split: SplitName,
    subset: Subset,
    subset_seed: u64,
    batch: usize,
) -> Result<Loader> {
    let data = match split {
        SplitName::Train => &ds.train,
        SplitName::Test => &ds.test,
    };
    let indices = subset.indices(data, ds.num_classes(), subset_seed)?;
    Ok(Loader::new(
        data.clone(),
        indices,
        PipelineConfig::eval(batch, ds.name.normalization()),
    )?)
}

/// Sets one of the grid fields every evaluating stage (Evaluate,
/// Interpolate) has: `train_per_class`, `test_per_class`, `subset_seed`.
pub fn set_eval_grid(
    field: &str,
    v: f64,
    train_subset: &mut Option<Subset>,
    test_subset: &mut Option<Subset>,
    subset_seed: &mut Option<u64>,
) -> Result<(), Invalid> {
    match field {
        "train_per_class" => *train_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "test_per_class" => *test_subset = Some(Subset::PerClass(whole(v)? as usize)),
        "subset_seed" => *subset_seed = Some(whole(v)?),
        _ => return Err(Invalid::UnknownGridField(field.to_string())),
    }
    Ok(())
}

/// What every evaluating stage resolves the same way: which splits, which
/// images of each, and the batch size. Specs flatten it, so its fields sit
/// in their key spec as their own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalFields {
    pub splits: Vec<SplitName>,
    pub train_subset: Subset,
    pub test_subset: Subset,
    pub batch: usize,
}

impl EvalFields {
    pub fn resolve(
        splits: &Option<Vec<SplitName>>,
        train_subset: Option<Subset>,
        test_subset: Option<Subset>,
        batch: Option<usize>,
    ) -> Result<EvalFields, Invalid> {
        let splits = splits
            .clone()
            .unwrap_or(vec![SplitName::Train, SplitName::Test]);
        if splits.is_empty() {
            return Err(Invalid::Value("`splits` is empty".into()));
        }
        let batch = batch.unwrap_or(500);
        positive("batch", batch as u64)?;
        let train_subset = train_subset.unwrap_or(Subset::All);
        let test_subset = test_subset.unwrap_or(Subset::All);
        for s in [train_subset, test_subset] {
            if s == Subset::Off || s == Subset::PerClass(0) {
                return Err(Invalid::Value("subsets must be All or PerClass(n) with n >= 1; leave a split out of `splits` instead".into()));
            }
        }
        Ok(EvalFields {
            splits,
            train_subset,
            test_subset,
            batch,
        })
    }

    /// `(split, subset)` of each split read.
    fn parts(&self) -> impl Iterator<Item = (SplitName, Subset)> + '_ {
        self.splits.iter().map(move |s| match s {
            SplitName::Train => (*s, self.train_subset),
            SplitName::Test => (*s, self.test_subset),
        })
    }

    /// Batches in one evaluation of the splits.
    pub fn batches(&self, classes: usize, data: &super::DataShape) -> usize {
        self.parts()
            .map(|(split, sub)| {
                let len = match split {
                    SplitName::Train => data.train_len,
                    SplitName::Test => data.test_len,
                };
                sub.count(len, classes).div_ceil(self.batch)
            })
            .sum()
    }

    /// One evaluation loader per split, by split name.
    pub fn loaders(&self, ds: &Dataset, subset_seed: u64) -> Result<Vec<(&'static str, Loader)>> {
        self.parts()
            .map(|(split, sub)| {
                Ok((
                    split.as_str(),
                    eval_loader(ds, split, sub, subset_seed, self.batch)?,
                ))
            })
            .collect()
    }
}

/// Forward passes of evaluation, in SGD-step equivalents: a forward pass is
/// about a third of a training step.
pub fn forward_cost(batches: usize) -> f64 {
    (batches as u64).div_ceil(3) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use samlab_data::ImageShape;

    fn split(n: usize, classes: u16) -> Split {
        let shape = ImageShape {
            channels: 1,
            height: 1,
            width: 1,
        };
        Split {
            shape,
            images: (0..n).map(|i| i as u8).collect(),
            labels: (0..n).map(|i| (i as u16) % classes).collect(),
        }
    }

    /// A stage that reads a run's weights sees the images it trained on:
    /// with `train_subset: All`, without those its validation split held
    /// out; with `PerClass`, the same images with or without a split (so
    /// the split is dropped, and stays out of the dependent's key).
    #[test]
    fn the_images_a_run_trained_on_leave_out_its_validation_split() {
        let s = split(100, 5);
        let (train, held) = samlab_data::split_per_class(&s, 5, None, 4, 7).unwrap();
        let all = TrainImages::new(Subset::All, Subset::PerClass(4), 7);
        let idx = all.indices(&s, 5).unwrap().unwrap();
        assert_eq!(idx, train);
        assert_eq!(idx.len(), 80);
        assert!(idx.iter().all(|i| !held.contains(i)));
        assert_eq!(
            TrainImages::new(Subset::All, Subset::Off, 7)
                .indices(&s, 5)
                .unwrap(),
            None
        );
        let per_class = TrainImages::new(Subset::PerClass(10), Subset::PerClass(4), 7);
        assert_eq!(per_class.val_subset, Subset::Off);
        assert_eq!(
            per_class.indices(&s, 5).unwrap(),
            Subset::PerClass(10).indices(&s, 5, 7).unwrap()
        );
        let key = |t: TrainImages| serde_json::to_value(t).unwrap();
        assert!(key(per_class).get("val_subset").is_none());
        assert_eq!(key(all)["val_subset"], serde_json::json!({"PerClass": 4}));
    }
}
