//! CLIP score as torchmetrics computes it, with a transformers `CLIPModel` directory the user
//! supplies (`config.json`, `model.safetensors`, `tokenizer.json`, `processor_config.json` or
//! `preprocessor_config.json`): ViT-B/32, ViT-L/14 and any other size of the same layout.
//!
//! - Images: transformers 5's default (torchvision) `CLIPImageProcessor`: the short side resized
//!   to `size.shortest_edge` with antialiased bicubic on 8-bit values (torch's integer kernel,
//!   Pillow-style), centre crop, then `(x - 255 mean) / (255 std)` in f32.
//! - Text: the tokenizer without truncation, then cut to the model's 77 positions as torchmetrics
//!   does (a longer caption loses its end token, and the pooled token is then the one
//!   transformers picks: the first `eos_token_id`, else position 0; with the legacy
//!   `eos_token_id == 2`, the largest id).
//! - Towers: the vision transformer here ([`ClipVision`]); the text transformer is
//!   `ldmscale_model::text::ClipTextModel`, shared with the diffusion models' text encoder.
//! - Score: `100 * cos(image, text)` per pair; the batch mean, clamped at 0.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::text::TokenBatch;
use ldmscale_model::text::{ClipTextConfig, ClipTextModel, TextTokenizer, TokenizerOptions};
use ldmscale_model::weights::{Naming, load_safetensors_named};
use serde::Deserialize;

use crate::error::EvalError;
use crate::preprocess::RgbImage;
use crate::vit::{
    Activation, Dense, EncoderLayer, Loader, Norm, encode, of_side, patch_tokens, pixel_batch,
    shape_problem,
};
use crate::weights::WeightMap;

/// OpenAI CLIP's normalisation mean (RGB).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation standard deviation (RGB).
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

fn quick_gelu_default() -> String {
    "quick_gelu".into()
}
fn eps_default() -> f64 {
    1e-5
}
fn channels_default() -> usize {
    3
}

/// The vision tower's settings (transformers `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipVisionConfig {
    /// Token width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "channels_default")]
    pub num_channels: usize,
    /// MLP activation: `quick_gelu` (OpenAI), `gelu`, `gelu_new`.
    #[serde(default = "quick_gelu_default")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps_default")]
    pub layer_norm_eps: f64,
}

/// A whole `CLIPModel` config.json.
#[derive(Debug, Clone)]
pub struct ClipConfig {
    /// The text tower.
    pub text: ClipTextConfig,
    /// The vision tower.
    pub vision: ClipVisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// The text config's `eos_token_id` (2 means transformers' legacy argmax pooling).
    pub eos_token_id: i64,
}

impl ClipConfig {
    /// Reads a transformers `CLIPModel` config.json; errors name the file and field.
    pub fn from_json_file(path: &Path) -> Result<Self, EvalError> {
        let bad = |message: String| EvalError::stats(path.display(), message);
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(kind) = value.get("model_type").and_then(|v| v.as_str())
            && kind != "clip"
        {
            return Err(bad(format!(
                "model_type is {kind:?}; a CLIPModel directory (model_type \"clip\") is needed"
            )));
        }
        let section = |name: &str| {
            value
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("no {name:?} (is this a CLIPModel config?)")))
        };
        let mut text_value = section("text_config")?;
        let eos_token_id = text_value
            .get("eos_token_id")
            .and_then(|v| v.as_i64())
            .unwrap_or(49407);
        // ClipTextConfig checks model_type when present; a CLIPModel's text section says so.
        if let Some(map) = text_value.as_object_mut() {
            map.entry("model_type")
                .or_insert_with(|| "clip_text_model".into());
        }
        let text: ClipTextConfig =
            serde_json::from_value(text_value).map_err(|e| bad(format!("text_config: {e}")))?;
        text.validate()
            .map_err(|e| bad(format!("text_config.{e}")))?;
        let vision: ClipVisionConfig = serde_json::from_value(section("vision_config")?)
            .map_err(|e| bad(format!("vision_config: {e}")))?;
        Activation::parse(&vision.hidden_act).map_err(|e| bad(format!("vision_config.{e}")))?;
        let v = &vision;
        let (image, patch) = (v.image_size, v.patch_size);
        if let Some(problem) = shape_problem(image, patch, v.hidden_size, v.num_attention_heads) {
            return Err(bad(format!("vision_config: {problem}")));
        }
        let projection_dim = value
            .get("projection_dim")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize;
        Ok(Self {
            text,
            vision,
            projection_dim,
            eos_token_id,
        })
    }
}

/// CLIP's vision transformer with its projection: patches, class token, positions, pre-LN
/// layers, the class token's post-LN state projected to the embedding space.
#[derive(Module, Debug)]
pub struct ClipVision {
    patch_embedding: Param<Tensor<4>>,
    class_embedding: Param<Tensor<1>>,
    position_embedding: Param<Tensor<2>>,
    pre_layrnorm: Norm,
    layers: Vec<EncoderLayer>,
    post_layernorm: Norm,
    visual_projection: Dense,
    patch_size: usize,
    heads: usize,
    #[module(skip)]
    activation: Activation,
}

impl ClipVision {
    fn load(config: &ClipConfig, map: &mut WeightMap, device: &Device) -> Result<Self, EvalError> {
        let v = &config.vision;
        let d = v.hidden_size;
        let positions = (v.image_size / v.patch_size).pow(2) + 1;
        let mut l = Loader {
            map,
            device: device.clone(),
        };
        let p = "vision_model";
        let layers = (0..v.num_hidden_layers)
            .map(|i| {
                let k = format!("{p}.encoder.layers.{i}");
                Ok(EncoderLayer {
                    layer_norm1: l.norm(&format!("{k}.layer_norm1"), d, v.layer_norm_eps)?,
                    q_proj: l.dense(&format!("{k}.self_attn.q_proj"), d, d, true)?,
                    k_proj: l.dense(&format!("{k}.self_attn.k_proj"), d, d, true)?,
                    v_proj: l.dense(&format!("{k}.self_attn.v_proj"), d, d, true)?,
                    out_proj: l.dense(&format!("{k}.self_attn.out_proj"), d, d, true)?,
                    layer_norm2: l.norm(&format!("{k}.layer_norm2"), d, v.layer_norm_eps)?,
                    fc1: l.dense(&format!("{k}.mlp.fc1"), d, v.intermediate_size, true)?,
                    fc2: l.dense(&format!("{k}.mlp.fc2"), v.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        Ok(Self {
            patch_embedding: l.param(
                &format!("{p}.embeddings.patch_embedding.weight"),
                [d, v.num_channels, v.patch_size, v.patch_size],
            )?,
            class_embedding: l.param(&format!("{p}.embeddings.class_embedding"), [d])?,
            position_embedding: l.param(
                &format!("{p}.embeddings.position_embedding.weight"),
                [positions, d],
            )?,
            pre_layrnorm: l.norm(&format!("{p}.pre_layrnorm"), d, v.layer_norm_eps)?,
            layers,
            post_layernorm: l.norm(&format!("{p}.post_layernorm"), d, v.layer_norm_eps)?,
            visual_projection: l.dense("visual_projection", d, config.projection_dim, false)?,
            patch_size: v.patch_size,
            heads: v.num_attention_heads,
            activation: Activation::parse(&v.hidden_act).expect("validated"),
        })
    }

    /// Image embeddings `[batch, projection_dim]` of preprocessed `pixel_values`
    /// `[batch, 3, image_size, image_size]` (transformers' `get_image_features`).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let x = patch_tokens(
            pixel_values,
            (self.patch_embedding.val(), None),
            self.class_embedding.val(),
            self.position_embedding.val(),
            self.patch_size,
        );
        let x = self.pre_layrnorm.forward(x);
        let x = encode(&self.layers, x, self.heads, self.activation);
        let [batch, _, d] = x.dims();
        let pooled = x.slice([0..batch, 0..1, 0..d]).reshape([batch, d]);
        self.visual_projection
            .forward(self.post_layernorm.forward(pooled))
    }
}

/// How images become `pixel_values` (a transformers image-processor config).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    /// Resize so the short side has this many pixels (`size.shortest_edge`), or to exactly
    /// `(height, width)` (`size.height` / `size.width`); `None` when `do_resize` is false.
    pub resize: Option<ResizeTarget>,
    /// The resize filter (`resample`: 2 bilinear, 3 bicubic).
    pub resample: Resample,
    /// Centre crop to `(height, width)`, if `do_center_crop`.
    pub crop: Option<(usize, usize)>,
    /// `rescale_factor` if `do_rescale` (1/255).
    pub rescale: Option<f64>,
    /// `(image_mean, image_std)` if `do_normalize`.
    pub normalize: Option<([f64; 3], [f64; 3])>,
}

/// The antialiased resize filters of transformers' (torchvision) image processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Triangle filter (`resample` 2; ViT and DINO processors).
    Bilinear,
    /// Keys cubic with a = -0.5 (`resample` 3; CLIP).
    Bicubic,
}

impl Resample {
    fn parse(code: u64) -> Result<Self, String> {
        match code {
            2 => Ok(Resample::Bilinear),
            3 => Ok(Resample::Bicubic),
            other => Err(format!(
                "resample: {other} is not supported; expected bilinear (2) or bicubic (3)"
            )),
        }
    }

    /// Half the filter's support at scale 1.
    fn half_width(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Resample::Bilinear => (1.0 - x.abs()).max(0.0),
            Resample::Bicubic => aa_bicubic(x),
        }
    }
}

/// The `size` of an image-processor config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Short side to this length, aspect ratio kept.
    ShortestEdge(usize),
    /// Exactly `(height, width)`.
    Exact(usize, usize),
}

impl Default for ClipImageProcessor {
    /// OpenAI CLIP at 224 pixels.
    fn default() -> Self {
        Self {
            resize: Some(ResizeTarget::ShortestEdge(224)),
            resample: Resample::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }
}

impl ClipImageProcessor {
    /// Reads `processor_config.json` (transformers 5, settings under `image_processor`) or
    /// `preprocessor_config.json` (older) from a model directory; the defaults where neither
    /// exists.
    pub fn from_dir(dir: &Path) -> Result<Self, EvalError> {
        Self::from_dir_with_defaults(dir, &serde_json::json!({}))
    }

    /// As [`Self::from_dir`], with the settings `defaults` names where the file lacks them
    /// (another processor class's defaults than CLIP's).
    pub fn from_dir_with_defaults(
        dir: &Path,
        defaults: &serde_json::Value,
    ) -> Result<Self, EvalError> {
        let with_defaults = |mut settings: serde_json::Value| {
            if let (Some(map), Some(d)) = (settings.as_object_mut(), defaults.as_object()) {
                for (k, v) in d {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            settings
        };
        let candidates = [
            (dir.join("processor_config.json"), Some("image_processor")),
            (dir.join("preprocessor_config.json"), None),
        ];
        for (path, section) in candidates {
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EvalError::stats(path.display(), format!("not JSON: {e}")))?;
            let settings = match section {
                Some(s) => match value.get(s) {
                    Some(v) => v.clone(),
                    None => continue,
                },
                None => value,
            };
            return Self::from_json(&with_defaults(settings))
                .map_err(|message| EvalError::stats(path.display(), message));
        }
        match defaults.as_object().is_some_and(|d| !d.is_empty()) {
            true => Self::from_json(defaults)
                .map_err(|message| EvalError::stats(dir.display(), message)),
            false => Ok(Self::default()),
        }
    }

    /// Parses image-processor settings; the error names the field.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let flag = |name: &str| v.get(name).and_then(|x| x.as_bool()).unwrap_or(true);
        let dim = |obj: &serde_json::Value, key: &str| {
            obj.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
        };
        let resample = match v.get("resample").and_then(|x| x.as_u64()) {
            Some(code) => Resample::parse(code)?,
            None => Resample::Bicubic,
        };
        let resize = if flag("do_resize") {
            let size = v
                .get("size")
                .cloned()
                .unwrap_or(serde_json::json!({"shortest_edge": 224}));
            Some(
                match (
                    dim(&size, "shortest_edge"),
                    dim(&size, "height"),
                    dim(&size, "width"),
                ) {
                    (Some(s), _, _) => ResizeTarget::ShortestEdge(s),
                    (None, Some(h), Some(w)) => ResizeTarget::Exact(h, w),
                    _ => {
                        return Err(format!(
                            "size: {size} has neither shortest_edge nor height and width"
                        ));
                    }
                },
            )
        } else {
            None
        };
        let crop = if flag("do_center_crop") {
            let size = v
                .get("crop_size")
                .cloned()
                .unwrap_or(serde_json::json!({"height": 224, "width": 224}));
            match (dim(&size, "height"), dim(&size, "width")) {
                (Some(h), Some(w)) => Some((h, w)),
                _ => return Err(format!("crop_size: {size} lacks height and width")),
            }
        } else {
            None
        };
        let rescale = flag("do_rescale").then(|| {
            v.get("rescale_factor")
                .and_then(|x| x.as_f64())
                .unwrap_or(1.0 / 255.0)
        });
        let triple = |name: &str, default: [f64; 3]| -> Result<[f64; 3], String> {
            match v.get(name) {
                None => Ok(default),
                Some(x) => {
                    let values: Vec<f64> = x
                        .as_array()
                        .map(|a| a.iter().filter_map(|e| e.as_f64()).collect())
                        .unwrap_or_default();
                    values
                        .try_into()
                        .map_err(|_| format!("{name}: {x} is not three numbers"))
                }
            }
        };
        let normalize = if flag("do_normalize") {
            Some((
                triple("image_mean", CLIP_MEAN)?,
                triple("image_std", CLIP_STD)?,
            ))
        } else {
            None
        };
        Ok(Self {
            resize,
            resample,
            crop,
            rescale,
            normalize,
        })
    }

    /// `pixel_values` `[3, h, w]` of one image.
    pub fn pixel_values(&self, image: &RgbImage) -> (Vec<f32>, usize, usize) {
        let mut img = image.clone();
        if let Some(target) = self.resize {
            let (h, w) = match target {
                ResizeTarget::Exact(h, w) => (h, w),
                ResizeTarget::ShortestEdge(s) => shortest_edge_size(img.height, img.width, s),
            };
            img = resize_u8_antialias(&img, h, w, self.resample);
        }
        if let Some((ch, cw)) = self.crop {
            img = center_crop(&img, ch, cw);
        }
        let (h, w) = (img.height, img.width);
        // transformers fuses rescale into normalisation: mean and std scaled by 1/rescale in f32.
        let (mean, std) = match (self.rescale, self.normalize) {
            (Some(r), Some((m, s))) => {
                let k = (1.0 / r) as f32;
                (m.map(|x| x as f32 * k), s.map(|x| x as f32 * k))
            }
            (None, Some((m, s))) => (m.map(|x| x as f32), s.map(|x| x as f32)),
            (Some(r), None) => ([0.0; 3], [(1.0 / r) as f32; 3]),
            (None, None) => ([0.0; 3], [1.0; 3]),
        };
        let mut out = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            out.extend(
                img.data
                    .iter()
                    .skip(c)
                    .step_by(3)
                    .map(|&v| (v as f32 - mean[c]) / std[c]),
            );
        }
        (out, h, w)
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: short side to `s`, long
/// side `int(s * long / short)`.
fn shortest_edge_size(h: usize, w: usize, s: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (s as f64 * long as f64 / short as f64) as usize;
    if w <= h { (new_long, s) } else { (s, new_long) }
}

/// transformers' centre crop: top-left at `int((H - h) / 2)`, zero padding where the image is
/// smaller than the crop.
fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let pad_top = ch.saturating_sub(img.height) / 2;
    let pad_left = cw.saturating_sub(img.width) / 2;
    let (ph, pw) = (img.height.max(ch), img.width.max(cw));
    // The padded image (identity when it is already large enough).
    let padded = |y: usize, x: usize| -> [u8; 3] {
        if y < pad_top || x < pad_left || y - pad_top >= img.height || x - pad_left >= img.width {
            return [0; 3];
        }
        let i = ((y - pad_top) * img.width + (x - pad_left)) * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    };
    let top = ((ph - ch) as f64 / 2.0) as usize;
    let left = ((pw - cw) as f64 / 2.0) as usize;
    let mut data = Vec::with_capacity(ch * cw * 3);
    for y in 0..ch {
        for x in 0..cw {
            data.extend_from_slice(&padded(top + y, left + x));
        }
    }
    RgbImage {
        width: cw,
        height: ch,
        data,
    }
}

/// torch's antialiasing bicubic kernel (a = -0.5, as Pillow).
fn aa_bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Per output position the first source index and int16 weights, and the fixed-point
/// precision: torch's `_compute_index_ranges_int16_weights` for its uint8 antialiased kernels
/// (weights in f64 as Pillow's, then scaled by the largest power of two that keeps the biggest
/// weight below 2^15).
fn int16_taps(in_size: usize, out_size: usize, filter: Resample) -> (Vec<(usize, Vec<i32>)>, u32) {
    let scale = in_size as f64 / out_size as f64;
    let half = filter.half_width();
    let (support, inv) = if scale >= 1.0 {
        (half * scale, 1.0 / scale)
    } else {
        (half, 1.0)
    };
    let mut wt_max = 0.0f64;
    let taps: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| filter.weight((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                    wt_max = wt_max.max(*v);
                }
            }
            (xmin, w)
        })
        .collect();
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = (1u64 << precision) as f64;
    let taps = taps
        .into_iter()
        .map(|(xmin, w)| {
            let q = w
                .iter()
                .map(|&v| {
                    let s = v * unit;
                    (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (xmin, q)
        })
        .collect();
    (taps, precision)
}

fn fixed_point_to_u8(acc: i64, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// `torchvision.transforms.v2.functional.resize(uint8_image, [out_h, out_w], BICUBIC,
/// antialias=True)` on the CPU (see [`resize_u8_antialias`]).
pub fn resize_u8_bicubic_antialias(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    resize_u8_antialias(img, out_h, out_w, Resample::Bicubic)
}

/// `torchvision.transforms.v2.functional.resize(uint8_image, [out_h, out_w], filter,
/// antialias=True)` on the CPU: torch's integer kernel, a horizontal then a vertical pass each
/// rounding to 8 bits.
pub fn resize_u8_antialias(
    img: &RgbImage,
    out_h: usize,
    out_w: usize,
    filter: Resample,
) -> RgbImage {
    if img.height == out_h && img.width == out_w {
        return img.clone();
    }
    let mut current = img.clone();
    if out_w != img.width {
        let (taps, precision) = int16_taps(img.width, out_w, filter);
        let mut data = Vec::with_capacity(img.height * out_w * 3);
        for y in 0..img.height {
            let row = &current.data[y * img.width * 3..(y + 1) * img.width * 3];
            for (xmin, w) in &taps {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (precision - 1);
                    for (k, &wk) in w.iter().enumerate() {
                        acc += row[(xmin + k) * 3 + c] as i64 * wk as i64;
                    }
                    data.push(fixed_point_to_u8(acc, precision));
                }
            }
        }
        current = RgbImage {
            width: out_w,
            height: img.height,
            data,
        };
    }
    if out_h != img.height {
        let (taps, precision) = int16_taps(img.height, out_h, filter);
        let w = current.width;
        let mut data = Vec::with_capacity(out_h * w * 3);
        for (ymin, wts) in &taps {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (precision - 1);
                    for (k, &wk) in wts.iter().enumerate() {
                        acc += current.data[((ymin + k) * w + x) * 3 + c] as i64 * wk as i64;
                    }
                    data.push(fixed_point_to_u8(acc, precision));
                }
            }
        }
        current = RgbImage {
            width: w,
            height: out_h,
            data,
        };
    }
    current
}

/// Tensor names of a `CLIPModel` file the text tower does not read.
const TEXT_NAMING: Naming = Naming {
    prefix: "text_model.",
    renames: &[],
    ignored: &[
        "text_model.embeddings.position_ids",
        "text_projection.",
        "vision_model.",
        "visual_projection.",
        "logit_scale",
    ],
    legacy: &[],
};

/// A loaded `CLIPModel` with its tokenizer and image processor.
#[derive(Debug)]
pub struct ClipModel {
    /// The config.
    pub config: ClipConfig,
    /// How images are prepared.
    pub processor: ClipImageProcessor,
    vision: ClipVision,
    text: ClipTextModel,
    text_projection: Dense,
    tokenizer: TextTokenizer,
    device: Device,
}

/// Weights file inside a transformers model directory.
pub const CLIP_WEIGHTS_FILE: &str = "model.safetensors";

impl ClipModel {
    /// Loads a transformers `CLIPModel` directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EvalError> {
        let config = ClipConfig::from_json_file(&dir.join("config.json"))?;
        let weights_file: PathBuf = dir.join(CLIP_WEIGHTS_FILE);
        // The text tower is loaded from the same file by the model crate.
        let mut map = WeightMap::from_safetensors_where(&weights_file, |k| {
            (k.starts_with("vision_model.")
                || k.starts_with("visual_projection.")
                || k.starts_with("text_projection."))
                && k != "vision_model.embeddings.position_ids"
        })?;
        let vision = ClipVision::load(&config, &mut map, device)?;
        let text_projection = Loader {
            map: &mut map,
            device: device.clone(),
        }
        .dense(
            "text_projection",
            config.text.hidden_size,
            config.projection_dim,
            false,
        )?;
        map.finish()?;
        let model_error = |e: ldmscale_model::ModelError| EvalError::Archive {
            file: weights_file.display().to_string(),
            message: e.to_string(),
        };
        let text = load_safetensors_named(
            ClipTextModel::new(&config.text, device),
            &weights_file,
            device,
            &TEXT_NAMING,
        )
        .map_err(model_error)?;
        // No truncation here: torchmetrics cuts the ids afterwards (see `tokenize`).
        let tokenizer = TextTokenizer::from_file(
            &dir.join("tokenizer.json"),
            &TokenizerOptions::longest(1 << 20),
        )
        .map_err(|e| EvalError::stats(dir.join("tokenizer.json").display(), e.to_string()))?;
        let processor = ClipImageProcessor::from_dir(dir)?;
        Ok(Self {
            config,
            processor,
            vision,
            text,
            text_projection,
            tokenizer,
            device: device.clone(),
        })
    }

    /// The vision tower.
    pub fn vision(&self) -> &ClipVision {
        &self.vision
    }

    /// `[n, 3, h, w]` pixel values of `images`.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Tensor<4> {
        pixel_batch(&self.processor, images, &self.device)
    }

    /// Projected image embeddings `[n, projection_dim]` (not normalised).
    pub fn image_embeddings(&self, images: &[RgbImage]) -> Result<Tensor<2>, EvalError> {
        let x = of_side(
            self.pixel_values(images),
            self.config.vision.image_size,
            "vision tower",
        )?;
        Ok(self.vision.forward(x))
    }

    /// Token ids as torchmetrics feeds them: untruncated tokenizer output, padded to the
    /// longest caption, then cut to `max_position_embeddings`.
    pub fn tokenize(&self, captions: &[&str]) -> Result<TokenBatch, EvalError> {
        let batch = self
            .tokenizer
            .tokenize(captions)
            .map_err(|e| EvalError::Input(e.to_string()))?;
        let max = self.config.text.max_position_embeddings;
        let rows: Vec<Vec<u32>> = (0..batch.batch)
            .map(|i| {
                let row = batch.row(i);
                row[..row.len().min(max)].to_vec()
            })
            .collect();
        // Rows are already padded to the longest caption; the cut keeps them rectangular.
        Ok(TokenBatch::from_rows(&rows, self.tokenizer.pad_id(), None))
    }

    /// Projected text embeddings `[n, projection_dim]` (not normalised).
    pub fn text_embeddings(&self, captions: &[&str]) -> Result<Tensor<2>, EvalError> {
        let tokens = self.tokenize(captions)?;
        let (n, len) = (tokens.batch, tokens.len);
        let hidden = self.text.forward(tokens.ids_tensor(&self.device), None);
        let [_, _, d] = hidden.dims();
        let pooled: Vec<i64> = (0..n)
            .map(|i| (i * len + pooled_position(tokens.row(i), self.config.eos_token_id)) as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(pooled, [n]), &self.device);
        let states = hidden.reshape([n * len, d]).select(0, index);
        Ok(self.text_projection.forward(states))
    }
}

/// The token whose state transformers' `CLIPTextTransformer` pools: with the legacy
/// `eos_token_id == 2`, the (first) largest id; otherwise the first `eos_token_id`, or position 0
/// when there is none (a caption cut at 77 tokens).
pub fn pooled_position(ids: &[u32], eos_token_id: i64) -> usize {
    if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&t| t == max).unwrap_or(0)
    } else {
        ids.iter()
            .position(|&t| t as i64 == eos_token_id)
            .unwrap_or(0)
    }
}

/// `100 * cos(a_i, b_i)` for each row pair of `a` and `b` (`n x d` each), in f64.
pub fn pair_scores(a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
            100.0 * dot / (nx * ny)
        })
        .collect()
}

/// torchmetrics' CLIP score of per-pair scores: their mean, clamped at 0.
pub fn clip_score(pair_scores: &[f64]) -> f64 {
    if pair_scores.is_empty() {
        return 0.0;
    }
    (pair_scores.iter().sum::<f64>() / pair_scores.len() as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_sizes_follow_transformers() {
        assert_eq!(shortest_edge_size(48, 80, 32), (32, 53));
        assert_eq!(shortest_edge_size(50, 30, 32), (53, 32));
        assert_eq!(shortest_edge_size(64, 64, 224), (224, 224));
    }

    #[test]
    fn pooling_picks_the_end_token() {
        assert_eq!(pooled_position(&[49406, 320, 49407, 49407], 49407), 2);
        assert_eq!(pooled_position(&[49406, 320, 1000], 49407), 0);
        assert_eq!(pooled_position(&[49406, 320, 49407, 49407], 2), 2);
    }

    #[test]
    fn score_is_a_clamped_mean_of_cosines() {
        let s = pair_scores(&[1.0, 0.0, 0.0, 2.0], &[2.0, 0.0, 0.0, -1.0], 2);
        assert_eq!(s, vec![100.0, -100.0]);
        assert_eq!(clip_score(&s), 0.0);
        assert!((clip_score(&[30.0, 10.0]) - 20.0).abs() < 1e-12);
    }

    #[test]
    fn constant_images_resize_to_constants() {
        let img = RgbImage::new(7, 5, vec![200; 7 * 5 * 3]).unwrap();
        for (h, w) in [(12, 3), (2, 9)] {
            for filter in [Resample::Bilinear, Resample::Bicubic] {
                let out = resize_u8_antialias(&img, h, w, filter);
                assert!(out.data.iter().all(|&v| v == 200), "{h}x{w} {filter:?}");
            }
        }
    }
}
