//! Bringing images to the training resolution: resize so the image covers the target (for a
//! square target, the shorter side becomes the target size), crop, optionally flip. Random
//! choices come from a key the caller derives from (seed, epoch, index), so a resumed run
//! repeats them exactly.

use serde::{Deserialize, Serialize};

use crate::image::Image;
use crate::rng::SplitMix64;

/// Where the crop window sits in the resized image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// Centred (evaluation, and training without augmentation).
    Center,
    /// Uniformly placed along the longer side (training augmentation).
    Random,
}

/// Resize + crop + optional horizontal flip to a fixed output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Crop placement.
    pub crop: Crop,
    /// Mirror left-right with probability 1/2. Leave off when captions name left and right
    /// (the `shapes` dataset does).
    pub flip: bool,
}

/// The concrete choices for one image: resize to `resized`, take the window at `offset`, flip
/// or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// (width, height) after resizing.
    pub resized: (u32, u32),
    /// (left, top) of the crop window in the resized image.
    pub offset: (u32, u32),
    /// Whether the crop is mirrored.
    pub flip: bool,
}

impl Transform {
    /// A square output with a centre crop and no flip (evaluation).
    pub fn center(size: u32) -> Self {
        Transform {
            width: size,
            height: size,
            crop: Crop::Center,
            flip: false,
        }
    }

    /// A square output with a random crop and optional flip (training augmentation).
    pub fn random(size: u32, flip: bool) -> Self {
        Transform {
            width: size,
            height: size,
            crop: Crop::Random,
            flip,
        }
    }

    /// The choices for a `width x height` source image under random key `key`.
    pub fn placement(&self, width: u32, height: u32, key: u64) -> Placement {
        assert!(
            width > 0 && height > 0 && self.width > 0 && self.height > 0,
            "transform of an empty image ({width}x{height} -> {}x{})",
            self.width,
            self.height
        );
        // Scale so that both sides cover the target; the covering side lands exactly on it.
        let scale = f64::max(
            self.width as f64 / width as f64,
            self.height as f64 / height as f64,
        );
        let rw = ((width as f64 * scale).round() as u32).max(self.width);
        let rh = ((height as f64 * scale).round() as u32).max(self.height);
        let (slack_x, slack_y) = (rw - self.width, rh - self.height);
        let mut rng = SplitMix64::new(key);
        let offset = match self.crop {
            Crop::Center => (slack_x / 2, slack_y / 2),
            Crop::Random => (
                rng.below(slack_x as u64 + 1) as u32,
                rng.below(slack_y as u64 + 1) as u32,
            ),
        };
        let flip = self.flip && rng.chance(0.5);
        Placement {
            resized: (rw, rh),
            offset,
            flip,
        }
    }

    /// Applies the transform with random key `key`.
    pub fn apply(&self, image: &Image, key: u64) -> Image {
        let p = self.placement(image.width(), image.height(), key);
        let resized = image.resize(p.resized.0, p.resized.1);
        let cropped = if p.resized == (self.width, self.height) {
            resized
        } else {
            resized.crop(p.offset.0, p.offset.1, self.width, self.height)
        };
        if p.flip {
            cropped.flip_horizontal()
        } else {
            cropped
        }
    }
}
