//! The input pipeline: subsets, shuffling, augmentation, normalisation and
//! batching, produced on a background thread.
//!
//! # Determinism
//! Everything random is a function of `(seed, epoch)`:
//! - the order of an epoch is a Fisher-Yates shuffle driven by ChaCha8
//!   seeded from `(seed, epoch)`;
//! - the crop offset and flip of an image depend only on `(seed, epoch,
//!   image index in the split)`, through a counter-based hash, so they do
//!   not change with the batch size, the subset or the thread that fills
//!   the batch.
//!
//! The same `(split, indices, config, epoch)` gives bit-identical batches.
//! A [`Reshuffle`] replaces the seed from one epoch on (a fork of a run:
//! the same epochs before it, another order and augmentation after).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::dataset::{Normalization, Split};
use crate::error::{Error, Result};

/// Training augmentation: a random crop of the zero-padded image and a
/// random horizontal flip (the standard CIFAR recipe is padding 4, flip on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the random crop; 0 turns cropping off.
    pub crop_padding: usize,
    /// Flip each image left-right with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub const NONE: Augment = Augment {
        crop_padding: 0,
        horizontal_flip: false,
    };
    /// The CIFAR recipe: 4-pixel padding, random crop, random flip.
    pub const CIFAR: Augment = Augment {
        crop_padding: 4,
        horizontal_flip: true,
    };
}

/// What happens to the images left over when the epoch's size is not a
/// multiple of the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastBatch {
    /// Leave them out (training: every step sees a full batch).
    Drop,
    /// Yield them as a smaller last batch (evaluation: every image counts).
    Keep,
}

/// Settings of a [`Loader`].
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    pub batch_size: usize,
    /// Shuffle the order every epoch; off keeps the index order.
    pub shuffle: bool,
    pub augment: Augment,
    pub normalization: Normalization,
    pub last_batch: LastBatch,
    /// The root of all randomness of the pipeline.
    pub seed: u64,
    /// From an epoch on, another seed (`None`: `seed` throughout).
    pub reshuffle: Option<Reshuffle>,
    /// How many batches the background thread may prepare ahead.
    pub prefetch: usize,
}

/// From epoch `epoch` (counted from 0) on, the order and the
/// augmentation are drawn from `seed` instead of the config's seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reshuffle {
    pub epoch: u64,
    pub seed: u64,
}

impl PipelineConfig {
    /// The seed that draws `epoch`'s order and augmentation.
    pub fn seed_at(&self, epoch: u64) -> u64 {
        match self.reshuffle {
            Some(r) if epoch >= r.epoch => r.seed,
            _ => self.seed,
        }
    }

    /// Training: shuffled, CIFAR augmentation, last partial batch dropped.
    pub fn train(batch_size: usize, normalization: Normalization, seed: u64) -> Self {
        PipelineConfig {
            batch_size,
            shuffle: true,
            augment: Augment::CIFAR,
            normalization,
            last_batch: LastBatch::Drop,
            seed,
            reshuffle: None,
            prefetch: 4,
        }
    }

    /// Evaluation: fixed order, no augmentation, every image kept.
    pub fn eval(batch_size: usize, normalization: Normalization) -> Self {
        PipelineConfig {
            batch_size,
            shuffle: false,
            augment: Augment::NONE,
            normalization,
            last_batch: LastBatch::Keep,
            seed: 0,
            reshuffle: None,
            prefetch: 4,
        }
    }
}

/// One batch: images as f32 (N, C, H, W), row-major, and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of the batch within its epoch.
    pub index: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// (N, C, H, W).
    pub shape: [usize; 4],
}

impl Batch {
    /// The images as an (N, C, H, W) f32 tensor and the labels as an (N,)
    /// u32 tensor on `device`.
    pub fn to_tensors(
        self,
        device: &candle_core::Device,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let n = self.labels.len();
        let x = candle_core::Tensor::from_vec(self.images, &self.shape, device)?;
        let y = candle_core::Tensor::from_vec(self.labels, n, device)?;
        Ok((x, y))
    }
}

/// `n_per_class` images of every class, chosen by `seed`, as sorted indices
/// into the split. Fails when a class has fewer images.
pub fn subset_per_class(
    split: &Split,
    num_classes: usize,
    n_per_class: usize,
    seed: u64,
) -> Result<Vec<u32>> {
    Ok(split_per_class(split, num_classes, Some(n_per_class), 0, seed)?.0)
}

/// A split divided into disjoint training and held-out images, per class:
/// each class's images are shuffled by `seed` (the shuffle of
/// [`subset_per_class`]); the training images are the first `n_train` of
/// it (`None`: every image not held out) and the held-out images its last
/// `n_held`. So a training subset of `n` per class is the same images
/// whether or not images are held out. Sorted indices; fails when a class
/// has fewer images than asked for.
pub fn split_per_class(
    split: &Split,
    num_classes: usize,
    n_train: Option<usize>,
    n_held: usize,
    seed: u64,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); num_classes];
    for (i, &l) in split.labels.iter().enumerate() {
        by_class[l as usize].push(i as u32);
    }
    let (mut train, mut held) = (Vec::new(), Vec::with_capacity(n_held * num_classes));
    for (class, mut members) in by_class.into_iter().enumerate() {
        let len = members.len();
        let n = n_train.unwrap_or(len.saturating_sub(n_held));
        if n + n_held > len {
            return Err(Error::config(match n_held {
                0 => format!(
                    "class {class} has {len} images, fewer than the {n} per class asked for"
                ),
                _ => format!(
                    "class {class} has {len} images, fewer than the {n} for training and {n_held} held out asked for"
                ),
            }));
        }
        let mut rng = chacha(mix(seed, STREAM_SUBSET, class as u64));
        shuffle(&mut members, &mut rng);
        train.extend_from_slice(&members[..n]);
        held.extend_from_slice(&members[len - n_held..]);
    }
    train.sort_unstable();
    held.sort_unstable();
    Ok((train, held))
}

/// Produces the batches of a split (or of a subset of it), epoch by epoch.
#[derive(Clone, Debug)]
pub struct Loader {
    split: Arc<Split>,
    indices: Arc<[u32]>,
    config: PipelineConfig,
    /// Per channel, the normalised value of each of the 256 pixel values.
    lut: Arc<[[f32; 256]]>,
}

impl Loader {
    /// A loader over `indices` of `split` (all of it when `None`).
    pub fn new(
        split: Arc<Split>,
        indices: Option<Vec<u32>>,
        config: PipelineConfig,
    ) -> Result<Self> {
        let c = split.shape.channels;
        if config.batch_size == 0 {
            return Err(Error::config("batch size must be at least 1"));
        }
        if config.normalization.mean.len() != c || config.normalization.std.len() != c {
            return Err(Error::config(format!(
                "normalisation has {} means and {} stds for {c} channels",
                config.normalization.mean.len(),
                config.normalization.std.len()
            )));
        }
        if let Some(bad) = config
            .normalization
            .std
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return Err(Error::config(format!(
                "normalisation std {bad} is not positive"
            )));
        }
        let indices: Vec<u32> = match indices {
            Some(ix) => {
                if let Some(bad) = ix.iter().find(|&&i| i as usize >= split.len()) {
                    return Err(Error::config(format!(
                        "index {bad} is past the split's {} images",
                        split.len()
                    )));
                }
                ix
            }
            None => (0..split.len() as u32).collect(),
        };
        let lut: Vec<[f32; 256]> = (0..c)
            .map(|ch| {
                let (m, s) = (config.normalization.mean[ch], config.normalization.std[ch]);
                std::array::from_fn(|v| (v as f32 / 255.0 - m) / s)
            })
            .collect();
        Ok(Loader {
            split,
            indices: indices.into(),
            config,
            lut: lut.into(),
        })
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// How many images an epoch covers (before dropping a partial batch).
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.indices.len(), self.config.batch_size);
        match self.config.last_batch {
            LastBatch::Drop => n / b,
            LastBatch::Keep => n.div_ceil(b),
        }
    }

    /// The order of the images in `epoch`, as indices into the split.
    pub fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order = self.indices.to_vec();
        if self.config.shuffle {
            let mut rng = chacha(mix(self.config.seed_at(epoch), STREAM_SHUFFLE, epoch));
            shuffle(&mut order, &mut rng);
        }
        order
    }

    /// Builds batch `b` of an epoch whose order is `order`.
    pub fn make_batch(&self, epoch: u64, order: &[u32], b: usize) -> Batch {
        let bs = self.config.batch_size;
        let ids = &order[b * bs..((b + 1) * bs).min(order.len())];
        let s = self.split.shape;
        let n_img = s.len();
        let mut images = vec![0f32; ids.len() * n_img];
        for (out, &id) in images.chunks_exact_mut(n_img).zip(ids) {
            let (dx, dy, flip) = self.draw(epoch, id);
            self.fill(out, self.split.image(id as usize), dx, dy, flip);
        }
        Batch {
            index: b,
            images,
            labels: ids
                .iter()
                .map(|&i| self.split.labels[i as usize] as u32)
                .collect(),
            shape: [ids.len(), s.channels, s.height, s.width],
        }
    }

    /// The split it reads.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// Per channel, the normalised value of each of the 256 pixel values.
    pub fn lut(&self) -> &[[f32; 256]] {
        &self.lut
    }

    /// Crop offsets (in the padded image) and flip of image `id` (an index
    /// into the split) in `epoch`.
    pub fn draw(&self, epoch: u64, id: u32) -> (usize, usize, bool) {
        let aug = self.config.augment;
        let h = mix(
            self.config.seed_at(epoch),
            STREAM_AUGMENT ^ epoch.rotate_left(17),
            id as u64,
        );
        let span = (2 * aug.crop_padding + 1) as u64;
        let dx = (((h & 0xffff_ffff) * span) >> 32) as usize;
        let dy = (((h >> 32) * span) >> 32) as usize;
        let flip = aug.horizontal_flip && (splitmix64(h) & 1) == 1;
        (dx, dy, flip)
    }

    /// Writes one augmented, normalised image (C, H, W) into `out`.
    fn fill(&self, out: &mut [f32], src: &[u8], dx: usize, dy: usize, flip: bool) {
        let s = self.split.shape;
        let (h, w, pad) = (s.height, s.width, self.config.augment.crop_padding);
        for ch in 0..s.channels {
            let lut = &self.lut[ch];
            let zero = lut[0];
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let row = &mut out[(ch * h + y) * w..(ch * h + y + 1) * w];
                // Row y of the crop is row y + dy - pad of the image.
                let sy = (y + dy).wrapping_sub(pad);
                if sy >= h {
                    row.fill(zero);
                    continue;
                }
                let srow = &plane[sy * w..(sy + 1) * w];
                // Column x of the crop is column x + dx - pad of the image
                // (mirrored first when flipped).
                for (x, o) in row.iter_mut().enumerate() {
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = (cx + dx).wrapping_sub(pad);
                    *o = if sx < w { lut[srow[sx] as usize] } else { zero };
                }
            }
        }
    }

    /// The batches of `epoch`, prepared on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on, the same as those of
    /// [`Loader::epoch`] from there (a run resumed mid-epoch); the batches
    /// before it are not built.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochIter {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let loader = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("samlab-data-epoch-{epoch}"))
            .spawn(move || loader.produce(epoch, first, tx))
            .expect("spawning the data thread");
        EpochIter {
            rx: Some(rx),
            handle: Some(handle),
            remaining: self.batches_per_epoch().saturating_sub(first),
        }
    }

    fn produce(&self, epoch: u64, first: usize, tx: SyncSender<Batch>) {
        let order = self.order(epoch);
        for b in first..self.batches_per_epoch() {
            if tx.send(self.make_batch(epoch, &order, b)).is_err() {
                return; // the consumer went away
            }
        }
    }
}

/// The batches of one epoch; dropping it early stops the background thread.
pub struct EpochIter {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for EpochIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let batch = self.rx.as_ref()?.recv().ok();
        self.remaining = self.remaining.saturating_sub(1);
        batch
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

const STREAM_SHUFFLE: u64 = 0x5348_5546_464c_4531; // "SHUFFLE1"
const STREAM_AUGMENT: u64 = 0x4155_474d_454e_5431; // "AUGMENT1"
const STREAM_SUBSET: u64 = 0x5355_4253_4554_3031; // "SUBSET01"

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes a seed, a stream constant and a counter into one 64-bit value.
fn mix(seed: u64, stream: u64, counter: u64) -> u64 {
    splitmix64(splitmix64(seed ^ stream) ^ counter.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

fn chacha(seed: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A uniform integer in `0..n` (Lemire's method with rejection).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Fisher-Yates, spelled out so the order never depends on a crate's version.
fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_hits_every_value() {
        let mut rng = chacha(7);
        let mut seen = [0usize; 9];
        for _ in 0..9000 {
            seen[below(&mut rng, 9) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        shuffle(&mut v, &mut chacha(3));
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
