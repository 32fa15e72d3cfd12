//! The input pipeline on an accelerator: the decoded split lives on the
//! device as bytes, and each batch is gathered, cropped, flipped and
//! normalised there, so a GPU never waits on the CPU threads that fill
//! [`Loader`] batches. Every choice comes from the [`Loader`] it wraps: the
//! epoch's order (the same `(seed, epoch)` shuffle) and each image's crop
//! offsets and flip ([`Loader::draw`]); normalisation reads the same
//! per-channel table of 256 values. The batches are therefore the CPU
//! pipeline's, value for value (`tests` below checks it on the CPU device).
//!
//! Per batch only the image indices and each image's row and column maps
//! (N x H and N x W u32) cross to the device.

use candle_core::{DType, Device, Tensor};

use crate::pipeline::Loader;

/// A [`Loader`] whose batches are assembled on `device`.
pub struct DeviceLoader {
    loader: Loader,
    device: Device,
    /// The whole split, (N, C, H, W) u8.
    images: Tensor,
    /// (N,) u32.
    labels: Tensor,
    /// (C * 256,) f32: channel c's value for pixel v at c * 256 + v.
    lut: Tensor,
}

impl DeviceLoader {
    /// Copies `loader`'s split to `device` once.
    pub fn new(loader: Loader, device: &Device) -> candle_core::Result<Self> {
        let split = loader.split();
        let s = split.shape;
        let images = Tensor::from_slice(
            &split.images,
            (split.len(), s.channels, s.height, s.width),
            device,
        )?;
        let labels: Vec<u32> = split.labels.iter().map(|&l| l as u32).collect();
        let labels = Tensor::from_vec(labels, split.len(), device)?;
        let lut: Vec<f32> = loader.lut().iter().flatten().copied().collect();
        let lut = Tensor::from_vec(lut, s.channels * 256, device)?;
        Ok(DeviceLoader {
            loader,
            device: device.clone(),
            images,
            labels,
            lut,
        })
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Batch `b` of an epoch whose order is `order` ([`Loader::order`]):
    /// images (N, C, H, W) f32 and labels (N,) u32 on the device.
    pub fn batch(
        &self,
        epoch: u64,
        order: &[u32],
        b: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let bs = self.loader.config().batch_size;
        let ids = &order[b * bs..((b + 1) * bs).min(order.len())];
        let n = ids.len();
        let s = self.loader.split().shape;
        let (c, h, w) = (s.channels, s.height, s.width);
        let pad = self.loader.config().augment.crop_padding;
        let idx = Tensor::from_slice(ids, n, &self.device)?;
        let x = self.images.index_select(&idx, 0)?;
        let y = self.labels.index_select(&idx, 0)?;
        let x = if pad > 0 {
            x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?
        } else {
            x
        };
        // Row y of the crop is padded row y + dy; column x is padded column
        // (flip ? w - 1 - x : x) + dx, as Loader::fill reads them.
        let mut rows = Vec::with_capacity(n * h);
        let mut cols = Vec::with_capacity(n * w);
        for &id in ids {
            let (dx, dy, flip) = self.loader.draw(epoch, id);
            rows.extend((0..h).map(|y| (y + dy) as u32));
            cols.extend((0..w).map(|x| (if flip { w - 1 - x } else { x } + dx) as u32));
        }
        let wp = w + 2 * pad;
        let rows = Tensor::from_vec(rows, (n, 1, h, 1), &self.device)?
            .broadcast_as((n, c, h, wp))?
            .contiguous()?;
        let x = x.contiguous()?.gather(&rows, 2)?;
        let cols = Tensor::from_vec(cols, (n, 1, 1, w), &self.device)?
            .broadcast_as((n, c, h, w))?
            .contiguous()?;
        let x = x.gather(&cols, 3)?;
        // pixel value + 256 * channel, looked up in the table
        let offset: Vec<u32> = (0..c as u32).map(|ch| ch * 256).collect();
        let offset = Tensor::from_vec(offset, (1, c, 1, 1), &self.device)?;
        let at = x.to_dtype(DType::U32)?.broadcast_add(&offset)?;
        let x = self
            .lut
            .index_select(&at.flatten_all()?, 0)?
            .reshape((n, c, h, w))?;
        Ok((x, y))
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(
        &self,
        epoch: u64,
    ) -> impl Iterator<Item = candle_core::Result<(Tensor, Tensor)>> + '_ {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (a run resumed mid-epoch).
    pub fn epoch_from(
        &self,
        epoch: u64,
        first: usize,
    ) -> impl Iterator<Item = candle_core::Result<(Tensor, Tensor)>> + '_ {
        let order = self.loader.order(epoch);
        (first..self.loader.batches_per_epoch()).map(move |b| self.batch(epoch, &order, b))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dataset::Normalization;
    use crate::dataset::{ImageShape, Split};
    use crate::pipeline::PipelineConfig;

    fn split() -> Arc<Split> {
        let shape = ImageShape {
            channels: 3,
            height: 8,
            width: 6,
        };
        let n = 23;
        let images = (0..n * shape.len())
            .map(|i| ((i * 37 + i / 7) % 256) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u16).collect();
        Arc::new(Split {
            shape,
            images,
            labels,
        })
    }

    fn norm() -> Normalization {
        Normalization {
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
        }
    }

    /// The device path (here on the CPU device) gives the CPU pipeline's
    /// batches bit for bit: same order, crops, flips and normalised values,
    /// training (augmented, shuffled, a subset) and evaluation alike.
    #[test]
    fn device_batches_equal_the_cpu_pipelines() {
        let subset: Vec<u32> = (0..23).filter(|i| i % 4 != 1).collect();
        for (cfg, indices) in [
            (PipelineConfig::train(5, norm(), 7), Some(subset)),
            (PipelineConfig::eval(4, norm()), None),
        ] {
            let loader = Loader::new(split(), indices, cfg).unwrap();
            let dev = DeviceLoader::new(loader.clone(), &Device::Cpu).unwrap();
            for epoch in 0..3 {
                let cpu: Vec<_> = loader.epoch(epoch).collect();
                let gpu: Vec<_> = dev.epoch(epoch).map(Result::unwrap).collect();
                assert_eq!(cpu.len(), gpu.len());
                for (c, (x, y)) in cpu.into_iter().zip(gpu) {
                    assert_eq!(x.dims(), &c.shape);
                    assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), c.images);
                    assert_eq!(y.to_vec1::<u32>().unwrap(), c.labels);
                }
            }
        }
    }

    /// A run resumed mid-epoch sees the rest of the epoch's batches: both
    /// paths from batch `first` on give those of the whole epoch from there.
    #[test]
    fn an_epoch_from_a_batch_is_the_rest_of_the_epoch() {
        let loader = Loader::new(split(), None, PipelineConfig::train(5, norm(), 3)).unwrap();
        let dev = DeviceLoader::new(loader.clone(), &Device::Cpu).unwrap();
        let whole: Vec<_> = loader.epoch(2).collect();
        assert_eq!(whole.len(), 4);
        for first in 0..=whole.len() {
            let rest: Vec<_> = loader.epoch_from(2, first).collect();
            assert_eq!(rest.len(), whole.len() - first);
            for (a, b) in rest.iter().zip(&whole[first..]) {
                assert_eq!(
                    (a.index, &a.images, &a.labels),
                    (b.index, &b.images, &b.labels)
                );
            }
            let on_device: Vec<_> = dev.epoch_from(2, first).map(Result::unwrap).collect();
            assert_eq!(on_device.len(), whole.len() - first);
            for ((x, _), b) in on_device.iter().zip(&whole[first..]) {
                assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.images);
            }
        }
    }
}
