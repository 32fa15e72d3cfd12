//! Decoded datasets: images as u8 CHW arrays, labels, class names and a
//! content fingerprint.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The datasets of the thesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DatasetName {
    Cifar10,
    Cifar100,
}

/// Per-channel normalisation: `(pixel / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl DatasetName {
    pub const ALL: [DatasetName; 2] = [DatasetName::Cifar10, DatasetName::Cifar100];

    /// The name used on the command line and in study files.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            DatasetName::Cifar10 => 10,
            DatasetName::Cifar100 => 100,
        }
    }

    /// The per-channel mean and standard deviation of the training images,
    /// the values the reference implementations normalise with.
    pub fn normalization(self) -> Normalization {
        match self {
            DatasetName::Cifar10 => Normalization {
                mean: vec![0.4914, 0.4822, 0.4465],
                std: vec![0.2470, 0.2435, 0.2616],
            },
            DatasetName::Cifar100 => Normalization {
                mean: vec![0.5071, 0.4865, 0.4409],
                std: vec![0.2673, 0.2564, 0.2762],
            },
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cifar10" => Ok(DatasetName::Cifar10),
            "cifar100" => Ok(DatasetName::Cifar100),
            _ => Err(format!(
                "unknown dataset `{s}`; valid choices: {}",
                DatasetName::ALL.map(|d| d.as_str()).join(", ")
            )),
        }
    }
}

/// The size of every image of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const CIFAR: ImageShape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };

    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// One split (train or test): images as u8, channel-major (C, H, W) per
/// image and images back to back, and one label per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub shape: ImageShape,
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`, (C, H, W).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// How many images each class has.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A decoded dataset.
///
/// The [`fingerprint`](Dataset::fingerprint) is a SHA-256 over the decoded
/// content (class names, image shape, every label and pixel of both splits),
/// not over the files it came from: the official archive and its extracted
/// folder give the same fingerprint, the JPEG copy of CIFAR-10 a different one.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: DatasetName,
    pub classes: Vec<String>,
    pub train: Arc<Split>,
    pub test: Arc<Split>,
    pub fingerprint: Fingerprint,
}

impl Dataset {
    pub(crate) fn new(name: DatasetName, classes: Vec<String>, train: Split, test: Split) -> Self {
        let fingerprint = content_fingerprint(&classes, &train, &test);
        Dataset {
            name,
            classes,
            train: Arc::new(train),
            test: Arc::new(test),
            fingerprint,
        }
    }

    /// A dataset whose fingerprint is already known (read from the decoded cache).
    pub(crate) fn with_fingerprint(
        name: DatasetName,
        classes: Vec<String>,
        train: Split,
        test: Split,
        fingerprint: Fingerprint,
    ) -> Self {
        Dataset {
            name,
            classes,
            train: Arc::new(train),
            test: Arc::new(test),
            fingerprint,
        }
    }

    pub fn shape(&self) -> ImageShape {
        self.train.shape
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Recomputes the content fingerprint from the arrays (a check that
    /// [`fingerprint`](Dataset::fingerprint) matches the data).
    pub fn compute_fingerprint(&self) -> Fingerprint {
        content_fingerprint(&self.classes, &self.train, &self.test)
    }
}

/// Version of the fingerprint's layout; changing it changes every fingerprint.
const FINGERPRINT_VERSION: &[u8] = b"samlab-dataset-v1\n";

pub(crate) fn content_fingerprint(classes: &[String], train: &Split, test: &Split) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(FINGERPRINT_VERSION);
    h.update((classes.len() as u64).to_le_bytes());
    for c in classes {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    for split in [train, test] {
        let s = split.shape;
        for d in [s.channels, s.height, s.width, split.len()] {
            h.update((d as u64).to_le_bytes());
        }
        let labels: Vec<u8> = split.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        h.update(&labels);
        h.update(&split.images);
    }
    Fingerprint(h.finalize().into())
}

/// Label names of CIFAR-10, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Fine label names of CIFAR-100, in label order (`fine_label_names.txt`).
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Coarse label names of CIFAR-100, in label order (`coarse_label_names.txt`).
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];
