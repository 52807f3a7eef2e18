//! LPIPS (Zhang et al. 2018) as the `lpips` 0.1.4 package computes it with `version='0.1'`:
//! inputs in [-1, 1] go through the ScalingLayer (`(x - shift) / scale`), an AlexNet or VGG16
//! trunk (torchvision's `features`, tapped after relu1..5 as `lpips.pretrained_networks` slices
//! it), each tap is normalised to unit length over channels (eps 1e-10), the squared difference
//! of the two images' taps goes through a 1x1 linear head without bias, is averaged over space
//! and summed over the five layers.
//!
//! Weights are read from safetensors only: the trunk is a torchvision `alexnet()` / `vgg16()`
//! state dict (`features.<i>.weight|bias`; `classifier.*` is ignored) that a user converts with
//! `tools/convert_lpips_trunk.py`; the heads (`lin<k>.model.1.weight`, `[1, C, 1, 1]`) are the
//! lpips wheel's `weights/v0.1/<net>.pth`, converted by `tools/fetch-assets.sh lpips`.

use std::path::{Path, PathBuf};

use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::EvalError;
use crate::preprocess::RgbImage;
use crate::weights::WeightMap;

/// The ScalingLayer's shift and scale (per RGB channel).
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Added to the channel norm before dividing (`lpips.normalize_tensor`).
const NORM_EPS: f32 = 1e-10;

/// Where `tools/fetch-assets.sh lpips` puts the v0.1 heads of `net`:
/// `$LDMSCALE_CACHE/assets/lpips/<net>.safetensors`, the cache defaulting to `~/.cache/ldmscale`.
pub fn default_heads_path(net: LpipsNet) -> PathBuf {
    let cache = std::env::var_os("LDMSCALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            home.unwrap_or_default().join(".cache").join("ldmscale")
        });
    let file = format!("{}.safetensors", net.name());
    cache.join("assets").join("lpips").join(file)
}

/// The trunk network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpipsNet {
    /// torchvision AlexNet, taps relu1..relu5 (64, 192, 384, 256, 256 channels).
    Alex,
    /// torchvision VGG16, taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64 .. 512 channels).
    Vgg,
}

/// One step of a trunk: a convolution followed by ReLU, a max pool, or a tap of the features.
#[derive(Clone, Copy, Debug)]
enum Step {
    Conv {
        index: usize,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    Pool {
        kernel: usize,
        stride: usize,
    },
    Tap,
}

const fn conv(index: usize, c_in: usize, c_out: usize, kernel: usize, stride: usize) -> Step {
    let pad = match kernel {
        11 | 5 => 2,
        _ => 1,
    };
    Step::Conv {
        index,
        c_in,
        c_out,
        kernel,
        stride,
        pad,
    }
}

/// torchvision `alexnet().features[:12]`, as lpips' slices take it.
const ALEX: [Step; 12] = [
    conv(0, 3, 64, 11, 4),
    Step::Tap,
    Step::Pool {
        kernel: 3,
        stride: 2,
    },
    conv(3, 64, 192, 5, 1),
    Step::Tap,
    Step::Pool {
        kernel: 3,
        stride: 2,
    },
    conv(6, 192, 384, 3, 1),
    Step::Tap,
    conv(8, 384, 256, 3, 1),
    Step::Tap,
    conv(10, 256, 256, 3, 1),
    Step::Tap,
];

/// VGG16's convolution widths per block.
const VGG_BLOCKS: [&[usize]; 5] = [
    &[64, 64],
    &[128, 128],
    &[256, 256, 256],
    &[512, 512, 512],
    &[512, 512, 512],
];

impl LpipsNet {
    /// The name lpips uses (`net='alex'` / `'vgg'`) and the heads' file stem.
    pub fn name(self) -> &'static str {
        match self {
            LpipsNet::Alex => "alex",
            LpipsNet::Vgg => "vgg",
        }
    }

    /// Parses `alex` or `vgg` (also `vgg16`).
    pub fn parse(text: &str) -> Result<Self, EvalError> {
        match text {
            "alex" => Ok(LpipsNet::Alex),
            "vgg" | "vgg16" => Ok(LpipsNet::Vgg),
            other => Err(EvalError::Input(format!(
                "unknown LPIPS network {other:?}: alex or vgg"
            ))),
        }
    }

    fn steps(self) -> Vec<Step> {
        match self {
            LpipsNet::Alex => ALEX.to_vec(),
            LpipsNet::Vgg => vgg_steps(),
        }
    }

    /// The channels of the five taps (the heads' input widths).
    pub fn tap_channels(self) -> Vec<usize> {
        let mut channels = Vec::new();
        let mut last = 0;
        for step in self.steps() {
            match step {
                Step::Conv { c_out, .. } => last = c_out,
                Step::Tap => channels.push(last),
                Step::Pool { .. } => {}
            }
        }
        channels
    }

    /// Every trunk tensor with its shape, in torchvision naming.
    pub fn trunk_shapes(self) -> Vec<(String, Vec<usize>)> {
        let mut shapes = Vec::new();
        for step in self.steps() {
            if let Step::Conv {
                index,
                c_in,
                c_out,
                kernel,
                ..
            } = step
            {
                shapes.push((
                    format!("features.{index}.weight"),
                    vec![c_out, c_in, kernel, kernel],
                ));
                shapes.push((format!("features.{index}.bias"), vec![c_out]));
            }
        }
        shapes
    }

    /// Every head tensor with its shape, as in the lpips wheel's `.pth`.
    pub fn head_shapes(self) -> Vec<(String, Vec<usize>)> {
        self.tap_channels()
            .into_iter()
            .enumerate()
            .map(|(k, c)| (format!("lin{k}.model.1.weight"), vec![1, c, 1, 1]))
            .collect()
    }
}

/// torchvision `vgg16().features[:30]`: 3x3 convolutions, a 2x2 pool between blocks, a tap at
/// the end of each block.
fn vgg_steps() -> Vec<Step> {
    let (mut steps, mut index, mut c_in) = (Vec::new(), 0, 3);
    for (b, widths) in VGG_BLOCKS.iter().enumerate() {
        if b > 0 {
            steps.push(Step::Pool {
                kernel: 2,
                stride: 2,
            });
            index += 1;
        }
        for &c_out in *widths {
            steps.push(conv(index, c_in, c_out, 3, 1));
            (index, c_in) = (index + 2, c_out);
        }
        steps.push(Step::Tap);
    }
    steps
}

/// A convolution of the trunk with its weights.
#[derive(Clone, Debug)]
struct ConvLayer {
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    pad: usize,
}

/// A trunk step with its weights.
#[derive(Clone, Debug)]
enum Layer {
    Conv(Box<ConvLayer>),
    Pool { kernel: usize, stride: usize },
    Tap,
}

/// The LPIPS network: trunk, ScalingLayer and linear heads on one device.
#[derive(Clone, Debug)]
pub struct Lpips {
    net: LpipsNet,
    layers: Vec<Layer>,
    steps: Vec<Step>,
    heads: Vec<Tensor<4>>,
    device: Device,
}

impl Lpips {
    /// Builds the network from a trunk and a heads map; every tensor must be present with its
    /// shape and used (`classifier.*` in the trunk excepted).
    pub fn from_weights(
        net: LpipsNet,
        mut trunk: WeightMap,
        mut heads: WeightMap,
        device: &Device,
    ) -> Result<Self, EvalError> {
        let steps = net.steps();
        let mut layers = Vec::with_capacity(steps.len());
        for &step in &steps {
            layers.push(load_step(&mut trunk, step, net, device)?);
        }
        trunk.finish()?;
        let mut head_tensors = Vec::new();
        for (key, shape) in net.head_shapes() {
            let shape: [usize; 4] = shape.try_into().expect("heads are 4-d");
            head_tensors.push(heads.take(&key, shape, device)?);
        }
        heads.finish()?;
        Ok(Self {
            net,
            layers,
            steps,
            heads: head_tensors,
            device: device.clone(),
        })
    }

    /// Loads the trunk and heads from `.safetensors` files (see the module documentation).
    pub fn load(
        net: LpipsNet,
        trunk: &Path,
        heads: &Path,
        device: &Device,
    ) -> Result<Self, EvalError> {
        let trunk_map = WeightMap::from_safetensors_where(safetensors_only(trunk)?, |k| {
            !k.starts_with("classifier.")
        })?;
        let heads_map = WeightMap::from_safetensors(safetensors_only(heads)?)?;
        Self::from_weights(net, trunk_map, heads_map, device)
    }

    /// The trunk network.
    pub fn net(&self) -> LpipsNet {
        self.net
    }

    /// LPIPS of each image pair: `in0`, `in1` are `[batch, 3, h, w]` in [-1, 1]; returns
    /// `[batch]`.
    pub fn forward(&self, in0: Tensor<4>, in1: Tensor<4>) -> Result<Tensor<1>, EvalError> {
        let layers = self.forward_layers(in0, in1)?;
        Ok(layers
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("five layers"))
    }

    /// Each layer's term (head output averaged over space) of every pair: five `[batch]`.
    pub fn forward_layers(
        &self,
        in0: Tensor<4>,
        in1: Tensor<4>,
    ) -> Result<Vec<Tensor<1>>, EvalError> {
        let [b0, c0, h0, w0] = in0.dims();
        if in1.dims() != [b0, c0, h0, w0] || c0 != 3 {
            return Err(EvalError::Input(format!(
                "LPIPS compares two [batch, 3, h, w] inputs of one shape, got {:?} and {:?}",
                in0.dims(),
                in1.dims()
            )));
        }
        // Both images through the trunk in one batch.
        let taps = self.taps(Tensor::cat(vec![in0, in1], 0))?;
        Ok(taps
            .into_iter()
            .zip(&self.heads)
            .map(|(tap, head)| layer_term(tap, head, b0))
            .collect())
    }

    /// The trunk's five taps of `[batch, 3, h, w]` inputs in [-1, 1] (after the ScalingLayer).
    pub fn taps(&self, x: Tensor<4>) -> Result<Vec<Tensor<4>>, EvalError> {
        let [_, _, h, w] = x.dims();
        check_size(&self.steps, self.net, h, w)?;
        let mut x = self.scaling_layer(x);
        let mut taps = Vec::with_capacity(5);
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(c) => {
                    let options = ConvOptions::new([c.stride; 2], [c.pad; 2], [1, 1], 1);
                    conv2d(x, c.weight.clone(), Some(c.bias.clone()), options).clamp_min(0.0)
                }
                Layer::Pool { kernel, stride } => max_pool2d(
                    x,
                    MaxPoolOptions::new([*kernel; 2]).with_stride([*stride; 2]),
                ),
                Layer::Tap => {
                    taps.push(x.clone());
                    x
                }
            };
        }
        Ok(taps)
    }

    /// `(x - shift) / scale` per channel.
    fn scaling_layer(&self, x: Tensor<4>) -> Tensor<4> {
        let per_channel = |v: [f32; 3]| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1]), &self.device)
        };
        (x - per_channel(SHIFT)) / per_channel(SCALE)
    }

    /// 8-bit RGB images as the network's `[batch, 3, h, w]` input: `x / 127.5 - 1`
    /// (`lpips.im2tensor`). All images must have one size.
    pub fn input(&self, images: &[&RgbImage]) -> Result<Tensor<4>, EvalError> {
        let first = images
            .first()
            .ok_or_else(|| EvalError::Input("LPIPS needs at least one image".into()))?;
        let (w, h) = (first.width, first.height);
        let mut values = Vec::with_capacity(images.len() * 3 * w * h);
        for image in images {
            if (image.width, image.height) != (w, h) {
                return Err(EvalError::Input(format!(
                    "one LPIPS batch holds images of one size: {w}x{h} and {}x{}",
                    image.width, image.height
                )));
            }
            for c in 0..3 {
                values.extend(
                    image
                        .data
                        .iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&v| (v as f64 / 127.5 - 1.0) as f32),
                );
            }
        }
        let shape = [images.len(), 3, h, w];
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }
}

/// `spatial_average(lin(normalize(f0) - normalize(f1))^2)` of one tap holding both images.
fn layer_term(tap: Tensor<4>, head: &Tensor<4>, batch: usize) -> Tensor<1> {
    let normalised = tap.clone() / (tap.powi_scalar(2).sum_dim(1).sqrt() + NORM_EPS);
    let f0 = normalised.clone().narrow(0, 0, batch);
    let f1 = normalised.narrow(0, batch, batch);
    let diff = (f0 - f1).powi_scalar(2);
    let lin = conv2d(
        diff,
        head.clone(),
        None,
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    );
    lin.mean_dim(3).mean_dim(2).reshape([batch])
}

/// One trunk step with its tensors taken from `trunk`.
fn load_step(
    trunk: &mut WeightMap,
    step: Step,
    net: LpipsNet,
    device: &Device,
) -> Result<Layer, EvalError> {
    Ok(match step {
        Step::Conv {
            index,
            c_in,
            c_out,
            kernel,
            stride,
            pad,
        } => {
            let hint = |e: EvalError| trunk_hint(e, net);
            let weight = trunk
                .take(
                    &format!("features.{index}.weight"),
                    [c_out, c_in, kernel, kernel],
                    device,
                )
                .map_err(hint)?;
            let bias = trunk
                .take(&format!("features.{index}.bias"), [c_out], device)
                .map_err(hint)?;
            Layer::Conv(Box::new(ConvLayer {
                weight,
                bias,
                stride,
                pad,
            }))
        }
        Step::Pool { kernel, stride } => Layer::Pool { kernel, stride },
        Step::Tap => Layer::Tap,
    })
}

/// A missing trunk tensor most likely means the file is not a torchvision state dict.
fn trunk_hint(e: EvalError, net: LpipsNet) -> EvalError {
    match e {
        EvalError::MissingTensor {
            file,
            key,
            expected,
            ..
        } => EvalError::MissingTensor {
            file,
            key,
            expected,
            hint: format!(
                "; the trunk must be a torchvision {}() state dict converted by \
                 tools/convert_lpips_trunk.py",
                match net {
                    LpipsNet::Alex => "alexnet",
                    LpipsNet::Vgg => "vgg16",
                }
            ),
        },
        other => other,
    }
}

/// Weights are read from safetensors only (no unpickling of `.pth` files at run time).
fn safetensors_only(path: &Path) -> Result<&Path, EvalError> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(path);
    }
    Err(EvalError::archive(
        path,
        "LPIPS reads .safetensors weights only: convert a torchvision trunk with \
         tools/convert_lpips_trunk.py; tools/fetch-assets.sh lpips writes the heads",
    ))
}

/// Fails when an input of `h` x `w` would shrink to nothing inside the trunk.
fn check_size(steps: &[Step], net: LpipsNet, h: usize, w: usize) -> Result<(), EvalError> {
    let (mut sh, mut sw) = (h, w);
    for step in steps {
        let (k, s, p) = match *step {
            Step::Conv {
                kernel,
                stride,
                pad,
                ..
            } => (kernel, stride, pad),
            Step::Pool { kernel, stride } => (kernel, stride, 0),
            Step::Tap => continue,
        };
        if sh + 2 * p < k || sw + 2 * p < k {
            return Err(EvalError::Input(format!(
                "a {w}x{h} image is too small for LPIPS-{} (its layers need about 32 pixels a \
                 side)",
                net.name()
            )));
        }
        (sh, sw) = ((sh + 2 * p - k) / s + 1, (sw + 2 * p - k) / s + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_torchvision() {
        assert_eq!(LpipsNet::Alex.tap_channels(), [64, 192, 384, 256, 256]);
        assert_eq!(LpipsNet::Vgg.tap_channels(), [64, 128, 256, 512, 512]);
        let vgg: Vec<String> = LpipsNet::Vgg
            .trunk_shapes()
            .into_iter()
            .filter(|(k, _)| k.ends_with("weight"))
            .map(|(k, _)| k)
            .collect();
        let indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
        let expected: Vec<String> = indices
            .iter()
            .map(|i| format!("features.{i}.weight"))
            .collect();
        assert_eq!(vgg, expected);
        let params: usize = LpipsNet::Vgg
            .trunk_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 14_714_688); // torchvision vgg16().features
        let params: usize = LpipsNet::Alex
            .trunk_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 2_469_696); // torchvision alexnet().features
    }

    #[test]
    fn small_inputs_and_pickles_are_refused() {
        let steps = LpipsNet::Alex.steps();
        assert!(check_size(&steps, LpipsNet::Alex, 64, 64).is_ok());
        assert!(check_size(&steps, LpipsNet::Alex, 20, 64).is_err());
        let e = safetensors_only(Path::new("alex.pth")).unwrap_err();
        assert!(e.to_string().contains("convert_lpips_trunk.py"), "{e}");
        assert!(LpipsNet::parse("squeeze").is_err());
    }
}
