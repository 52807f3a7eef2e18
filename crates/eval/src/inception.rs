//! The FID Inception-v3 network (`pt_inception-2015-12-05`, the TensorFlow 2015-12-05 graph that
//! FID was defined with), as pytorch-fid builds it from torchvision's Inception3 with its
//! `FIDInceptionA/C/E_1/E_2` patches, up to the 2048-d pool3 features.
//!
//! Differences from torchvision's Inception3 that FID depends on: batch norm without a scale
//! (eps 1e-3) after every bias-free convolution; the pooling branch of the A, C and first E
//! blocks averages without counting the zero padding; the last E block max-pools there.
//!
//! The network takes inputs already scaled to [-1, 1]: the TensorFlow graph scaled 8-bit values
//! as `x / 128 - 1` (clean-fid's `(x - 128) / 128`), pytorch-fid scales [0, 1] values as
//! `2x - 1` (see [`crate::preprocess`]); the two differ by a factor 255/256 before the offset.
//!
//! Names follow the TorchScript archive (`layers.mixed_4.tower_1.conv_2.weight`), so its tensors
//! load directly, as do safetensors copies under the same names.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor};

use crate::error::EvalError;
use crate::weights::{Attribute, WeightMap};

/// Batch-norm epsilon of every layer (TensorFlow's default for this graph).
const BN_EPS: f64 = 1e-3;

/// Parameters of the network to pool3: weights, batch-norm shifts, means and variances.
pub const FID_INCEPTION_PARAMS: usize = 21_802_784;

/// Width of the pool3 features.
pub const FEATURE_DIM: usize = 2048;

/// Side of the square input the network was trained at and FID resizes to.
pub const INPUT_SIZE: usize = 299;

/// A convolution's input and output channels, kernel, stride and padding.
type ConvSpec = (usize, usize, [usize; 2], usize, [usize; 2]);

/// Where the parameters come from while the network is built.
enum Source<'a> {
    /// Zero-filled lazy parameters: shapes only, nothing allocated until read.
    Lazy(Device),
    /// Tensors taken by name from a weights file.
    Weights(&'a mut WeightMap, Device),
    /// Lazy parameters, recording every tensor's name and shape.
    Record(Vec<(String, Vec<usize>)>, Device),
}

/// Convolution without bias, batch norm without scale, ReLU.
#[derive(Module, Debug)]
pub struct ConvBn {
    weight: Param<Tensor<4>>,
    beta: Param<Tensor<1>>,
    mean: Param<Tensor<1>>,
    var: Param<Tensor<1>>,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
}

impl ConvBn {
    /// Applies the layer to `[batch, c_in, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Batch norm folded into the convolution: w * s and beta - mean * s, s = 1/sqrt(var+eps).
        let scale = (self.var.val() + BN_EPS).sqrt().recip();
        let shift = self.beta.val() - self.mean.val() * scale.clone();
        let [c_out] = scale.dims();
        let weight = self.weight.val() * scale.reshape([c_out, 1, 1, 1]);
        let options = ConvOptions::new(
            [self.stride, self.stride],
            [self.pad_h, self.pad_w],
            [1, 1],
            1,
        );
        relu(conv2d(x, weight, Some(shift), options))
    }
}

impl Source<'_> {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
    ) -> Result<ConvBn, EvalError> {
        let shape = [c_out, c_in, kernel[0], kernel[1]];
        if let Source::Record(names, _) = self {
            names.push((format!("{name}.weight"), shape.to_vec()));
            for part in ["beta", "mean", "var"] {
                names.push((format!("{name}.{part}"), vec![c_out]));
            }
        }
        let (weight, beta, mean, var) = match self {
            Source::Lazy(device) | Source::Record(_, device) => (
                Initializer::Zeros.init(shape, device),
                Initializer::Zeros.init([c_out], device),
                Initializer::Zeros.init([c_out], device),
                Initializer::Ones.init([c_out], device),
            ),
            Source::Weights(map, device) => {
                check_layer_attributes(map, name, stride, padding)?;
                (
                    Param::from_tensor(map.take(&format!("{name}.weight"), shape, device)?),
                    Param::from_tensor(map.take(&format!("{name}.beta"), [c_out], device)?),
                    Param::from_tensor(map.take(&format!("{name}.mean"), [c_out], device)?),
                    Param::from_tensor(map.take(&format!("{name}.var"), [c_out], device)?),
                )
            }
        };
        Ok(ConvBn {
            weight,
            beta,
            mean,
            var,
            stride,
            pad_h: padding[0],
            pad_w: padding[1],
        })
    }

    /// Convolutions applied one after the other, named `conv`, `conv_1`, ... inside `name`
    /// (TorchScript's naming of an `nn.Sequential` of them).
    fn sequence(&mut self, name: &str, layers: &[ConvSpec]) -> Result<Vec<ConvBn>, EvalError> {
        layers
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, kernel, stride, padding))| {
                let child = if i == 0 {
                    "conv".to_owned()
                } else {
                    format!("conv_{i}")
                };
                self.conv(
                    &format!("{name}.{child}"),
                    c_in,
                    c_out,
                    kernel,
                    stride,
                    padding,
                )
            })
            .collect()
    }
}

/// TorchScript layers record their stride and padding; a file whose values differ from this
/// network's is another network, even if every shape fits.
fn check_layer_attributes(
    map: &WeightMap,
    name: &str,
    stride: usize,
    padding: [usize; 2],
) -> Result<(), EvalError> {
    let bad = |what: &str, found: &Attribute, expected: String| EvalError::BadTensor {
        file: map.file.clone(),
        key: name.to_owned(),
        message: format!("{what} is {found:?} in the file, the FID Inception has {expected}"),
    };
    if let Some(found) = map.attribute(&format!("{name}.stride")) {
        let ok = match found {
            Attribute::Int(s) => *s == stride as i64,
            Attribute::Ints(s) => s.iter().all(|&s| s == stride as i64),
            Attribute::Bool(_) => false,
        };
        if !ok {
            return Err(bad("stride", found, stride.to_string()));
        }
    }
    if let Some(found) = map.attribute(&format!("{name}.padding")) {
        let ok = match found {
            Attribute::Int(p) => padding == [*p as usize; 2],
            Attribute::Ints(p) => {
                p.len() == 2 && p[0] == padding[0] as i64 && p[1] == padding[1] as i64
            }
            Attribute::Bool(_) => false,
        };
        if !ok {
            return Err(bad("padding", found, format!("{padding:?}")));
        }
    }
    Ok(())
}

fn run(layers: &[ConvBn], x: Tensor<4>) -> Tensor<4> {
    layers.iter().fold(x, |x, layer| layer.forward(x))
}

/// 3x3 average over the window, stride 1, zero padding not counted (TensorFlow's "SAME" pool).
fn avg_pool_same(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// 3x3 max pool with stride 2 and no padding.
fn max_pool_reduce(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]))
}

/// 35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1 (torchvision InceptionA).
#[derive(Module, Debug)]
pub struct InceptionA {
    conv: ConvBn,
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
    tower_2: Vec<ConvBn>,
}

impl InceptionA {
    fn new(src: &mut Source, name: &str, c_in: usize, pool: usize) -> Result<Self, EvalError> {
        Ok(Self {
            conv: src.conv(&format!("{name}.conv"), c_in, 64, [1, 1], 1, [0, 0])?,
            tower: src.sequence(
                &format!("{name}.tower"),
                &[(c_in, 48, [1, 1], 1, [0, 0]), (48, 64, [5, 5], 1, [2, 2])],
            )?,
            tower_1: src.sequence(
                &format!("{name}.tower_1"),
                &[
                    (c_in, 64, [1, 1], 1, [0, 0]),
                    (64, 96, [3, 3], 1, [1, 1]),
                    (96, 96, [3, 3], 1, [1, 1]),
                ],
            )?,
            tower_2: src.sequence(
                &format!("{name}.tower_2"),
                &[(c_in, pool, [1, 1], 1, [0, 0])],
            )?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.conv.forward(x.clone()),
                run(&self.tower, x.clone()),
                run(&self.tower_1, x.clone()),
                run(&self.tower_2, avg_pool_same(x)),
            ],
            1,
        )
    }
}

/// Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2 (torchvision InceptionB).
#[derive(Module, Debug)]
pub struct InceptionB {
    conv: ConvBn,
    tower: Vec<ConvBn>,
}

impl InceptionB {
    fn new(src: &mut Source, name: &str, c_in: usize) -> Result<Self, EvalError> {
        Ok(Self {
            conv: src.conv(&format!("{name}.conv"), c_in, 384, [3, 3], 2, [0, 0])?,
            tower: src.sequence(
                &format!("{name}.tower"),
                &[
                    (c_in, 64, [1, 1], 1, [0, 0]),
                    (64, 96, [3, 3], 1, [1, 1]),
                    (96, 96, [3, 3], 2, [0, 0]),
                ],
            )?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.conv.forward(x.clone()),
                run(&self.tower, x.clone()),
                max_pool_reduce(x),
            ],
            1,
        )
    }
}

/// 17x17 block with factorised 7x7 convolutions (torchvision InceptionC).
#[derive(Module, Debug)]
pub struct InceptionC {
    conv: ConvBn,
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
    tower_2: Vec<ConvBn>,
}

impl InceptionC {
    fn new(src: &mut Source, name: &str, c7: usize) -> Result<Self, EvalError> {
        let c_in = 768;
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        Ok(Self {
            conv: src.conv(&format!("{name}.conv"), c_in, 192, [1, 1], 1, [0, 0])?,
            tower: src.sequence(
                &format!("{name}.tower"),
                &[
                    (c_in, c7, [1, 1], 1, [0, 0]),
                    (c7, c7, row.0, 1, row.1),
                    (c7, 192, col.0, 1, col.1),
                ],
            )?,
            tower_1: src.sequence(
                &format!("{name}.tower_1"),
                &[
                    (c_in, c7, [1, 1], 1, [0, 0]),
                    (c7, c7, col.0, 1, col.1),
                    (c7, c7, row.0, 1, row.1),
                    (c7, c7, col.0, 1, col.1),
                    (c7, 192, row.0, 1, row.1),
                ],
            )?,
            tower_2: src.sequence(
                &format!("{name}.tower_2"),
                &[(c_in, 192, [1, 1], 1, [0, 0])],
            )?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.conv.forward(x.clone()),
                run(&self.tower, x.clone()),
                run(&self.tower_1, x.clone()),
                run(&self.tower_2, avg_pool_same(x)),
            ],
            1,
        )
    }
}

/// Grid reduction 17 -> 8 (torchvision InceptionD).
#[derive(Module, Debug)]
pub struct InceptionD {
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
}

impl InceptionD {
    fn new(src: &mut Source, name: &str) -> Result<Self, EvalError> {
        let c_in = 768;
        Ok(Self {
            tower: src.sequence(
                &format!("{name}.tower"),
                &[
                    (c_in, 192, [1, 1], 1, [0, 0]),
                    (192, 320, [3, 3], 2, [0, 0]),
                ],
            )?,
            tower_1: src.sequence(
                &format!("{name}.tower_1"),
                &[
                    (c_in, 192, [1, 1], 1, [0, 0]),
                    (192, 192, [1, 7], 1, [0, 3]),
                    (192, 192, [7, 1], 1, [3, 0]),
                    (192, 192, [3, 3], 2, [0, 0]),
                ],
            )?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                run(&self.tower, x.clone()),
                run(&self.tower_1, x.clone()),
                max_pool_reduce(x),
            ],
            1,
        )
    }
}

/// 8x8 block with split 1x3 / 3x1 branches (pytorch-fid's FIDInceptionE_1 and _2: the first
/// average-pools without padding in the count, the second max-pools).
#[derive(Module, Debug)]
pub struct InceptionE {
    conv: ConvBn,
    tower_conv: ConvBn,
    tower_mixed_conv: ConvBn,
    tower_mixed_conv_1: ConvBn,
    tower_1_conv: ConvBn,
    tower_1_conv_1: ConvBn,
    tower_1_mixed_conv: ConvBn,
    tower_1_mixed_conv_1: ConvBn,
    tower_2_conv: ConvBn,
    max_pool: bool,
}

impl InceptionE {
    fn new(src: &mut Source, name: &str, c_in: usize, max_pool: bool) -> Result<Self, EvalError> {
        let mut conv = |child: &str, c_in, c_out, kernel, padding| {
            src.conv(&format!("{name}.{child}"), c_in, c_out, kernel, 1, padding)
        };
        Ok(Self {
            conv: conv("conv", c_in, 320, [1, 1], [0, 0])?,
            tower_conv: conv("tower_conv", c_in, 384, [1, 1], [0, 0])?,
            tower_mixed_conv: conv("tower_mixed_conv", 384, 384, [1, 3], [0, 1])?,
            tower_mixed_conv_1: conv("tower_mixed_conv_1", 384, 384, [3, 1], [1, 0])?,
            tower_1_conv: conv("tower_1_conv", c_in, 448, [1, 1], [0, 0])?,
            tower_1_conv_1: conv("tower_1_conv_1", 448, 384, [3, 3], [1, 1])?,
            tower_1_mixed_conv: conv("tower_1_mixed_conv", 384, 384, [1, 3], [0, 1])?,
            tower_1_mixed_conv_1: conv("tower_1_mixed_conv_1", 384, 384, [3, 1], [1, 0])?,
            tower_2_conv: conv("tower_2_conv", c_in, 192, [1, 1], [0, 0])?,
            max_pool,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let a = self.tower_conv.forward(x.clone());
        let b = self
            .tower_1_conv_1
            .forward(self.tower_1_conv.forward(x.clone()));
        let pooled = if self.max_pool {
            max_pool2d(
                x.clone(),
                MaxPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1]),
            )
        } else {
            avg_pool_same(x.clone())
        };
        Tensor::cat(
            vec![
                self.conv.forward(x),
                self.tower_mixed_conv.forward(a.clone()),
                self.tower_mixed_conv_1.forward(a),
                self.tower_1_mixed_conv.forward(b.clone()),
                self.tower_1_mixed_conv_1.forward(b),
                self.tower_2_conv.forward(pooled),
            ],
            1,
        )
    }
}

/// Outputs of pytorch-fid's four blocks, for checking the network piece by piece.
#[derive(Debug, Clone)]
pub struct InceptionBlocks {
    /// After the first max pool: `[batch, 64, ..]`.
    pub block0: Tensor<4>,
    /// After the second max pool: `[batch, 192, ..]`.
    pub block1: Tensor<4>,
    /// After Mixed_6e (the aux classifier's input): `[batch, 768, ..]`.
    pub block2: Tensor<4>,
    /// pool3 features: `[batch, 2048]`.
    pub features: Tensor<2>,
}

/// The FID Inception-v3 up to pool3.
#[derive(Module, Debug)]
pub struct FidInception {
    conv: ConvBn,
    conv_1: ConvBn,
    conv_2: ConvBn,
    conv_3: ConvBn,
    conv_4: ConvBn,
    mixed: InceptionA,
    mixed_1: InceptionA,
    mixed_2: InceptionA,
    mixed_3: InceptionB,
    mixed_4: InceptionC,
    mixed_5: InceptionC,
    mixed_6: InceptionC,
    mixed_7: InceptionC,
    mixed_8: InceptionD,
    mixed_9: InceptionE,
    mixed_10: InceptionE,
}

impl FidInception {
    fn build(src: &mut Source) -> Result<Self, EvalError> {
        let l = |n: &str| format!("layers.{n}");
        Ok(Self {
            conv: src.conv(&l("conv"), 3, 32, [3, 3], 2, [0, 0])?,
            conv_1: src.conv(&l("conv_1"), 32, 32, [3, 3], 1, [0, 0])?,
            conv_2: src.conv(&l("conv_2"), 32, 64, [3, 3], 1, [1, 1])?,
            conv_3: src.conv(&l("conv_3"), 64, 80, [1, 1], 1, [0, 0])?,
            conv_4: src.conv(&l("conv_4"), 80, 192, [3, 3], 1, [0, 0])?,
            mixed: InceptionA::new(src, &l("mixed"), 192, 32)?,
            mixed_1: InceptionA::new(src, &l("mixed_1"), 256, 64)?,
            mixed_2: InceptionA::new(src, &l("mixed_2"), 288, 64)?,
            mixed_3: InceptionB::new(src, &l("mixed_3"), 288)?,
            mixed_4: InceptionC::new(src, &l("mixed_4"), 128)?,
            mixed_5: InceptionC::new(src, &l("mixed_5"), 160)?,
            mixed_6: InceptionC::new(src, &l("mixed_6"), 160)?,
            mixed_7: InceptionC::new(src, &l("mixed_7"), 192)?,
            mixed_8: InceptionD::new(src, &l("mixed_8"))?,
            mixed_9: InceptionE::new(src, &l("mixed_9"), 1280, false)?,
            mixed_10: InceptionE::new(src, &l("mixed_10"), 2048, true)?,
        })
    }

    /// The network with lazy zero parameters (for shapes and counts; nothing is allocated).
    pub fn uninitialized(device: &Device) -> Self {
        Self::build(&mut Source::Lazy(device.clone())).expect("lazy construction cannot fail")
    }

    /// Every tensor the network reads, with its shape, in TorchScript naming and build order.
    pub fn tensor_shapes() -> Vec<(String, Vec<usize>)> {
        let mut src = Source::Record(Vec::new(), Device::flex());
        Self::build(&mut src).expect("lazy construction cannot fail");
        match src {
            Source::Record(names, _) => names,
            _ => unreachable!(),
        }
    }

    /// Builds the network from `weights`, whose names may carry a TorchScript wrapper's `net.`
    /// prefix. Every tensor must be used; TorchScript stride/padding attributes must agree.
    pub fn from_weights(weights: WeightMap, device: &Device) -> Result<Self, EvalError> {
        let mut weights = weights.strip_prefix("net.");
        let net = Self::build(&mut Source::Weights(&mut weights, device.clone()))?;
        weights.finish()?;
        Ok(net)
    }

    /// Loads the TorchScript archive `pt_inception-2015-12-05.pt` (or a `.safetensors` copy with
    /// the same tensor names).
    pub fn load(path: &Path, device: &Device) -> Result<Self, EvalError> {
        Self::from_weights(WeightMap::open(path)?, device)
    }

    /// pool3 features of `x`: `[batch, 3, h, w]` already scaled to [-1, 1] (see
    /// [`crate::preprocess`]); returns `[batch, 2048]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_blocks(x).features
    }

    /// All four block outputs of pytorch-fid's split of the network.
    pub fn forward_blocks(&self, x: Tensor<4>) -> InceptionBlocks {
        let x = self
            .conv_2
            .forward(self.conv_1.forward(self.conv.forward(x)));
        let block0 = max_pool_reduce(x);
        let x = self.conv_4.forward(self.conv_3.forward(block0.clone()));
        let block1 = max_pool_reduce(x);
        let x = self
            .mixed_2
            .forward(self.mixed_1.forward(self.mixed.forward(block1.clone())));
        let x = self.mixed_3.forward(x);
        let x = self.mixed_7.forward(
            self.mixed_6
                .forward(self.mixed_5.forward(self.mixed_4.forward(x))),
        );
        let block2 = x.clone();
        let x = self
            .mixed_10
            .forward(self.mixed_9.forward(self.mixed_8.forward(x)));
        // Global average (pytorch-fid's adaptive pool; the TorchScript's 8x8 pool at 299x299).
        let [batch, channels, _, _] = x.dims();
        let features = x.mean_dim(3).mean_dim(2).reshape([batch, channels]);
        InceptionBlocks {
            block0,
            block1,
            block2,
            features,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_is_the_published_one() {
        let net = FidInception::uninitialized(&Device::flex());
        assert_eq!(net.num_params(), FID_INCEPTION_PARAMS);
        let shapes = FidInception::tensor_shapes();
        assert_eq!(shapes.len(), 376);
        let total: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, FID_INCEPTION_PARAMS);
    }
}
