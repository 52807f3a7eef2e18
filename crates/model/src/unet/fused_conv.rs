//! The UNet's convolutions on the flex (CPU) backend through `ldmscale-kernels`' gather-and-
//! multiply kernels, forward and backward (see that crate's `conv` module for why burn's own
//! are slower here). Other backends, dtypes, grouped or dilated convolutions and asymmetric
//! padding keep burn's `Conv2d::forward`; the model code calls [`conv2d`] whatever the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Device, Tensor};
use ldmscale_kernels::{ConvShape, conv2d_backward, conv2d_forward, zeroed};

use super::flex_buffers::{contiguous, flex, values};

/// `conv.forward(x)`, by the fused kernels where they apply.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        PaddingConfig2d::Valid => Some([0, 0]),
        _ => None,
    };
    let (Some(padding), Some(bias)) = (padding, &conv.bias) else {
        return conv.forward(x);
    };
    if x.dtype() != DType::F32
        || device != Device::flex()
        || conv.groups != 1
        || conv.dilation != [1, 1]
    {
        return conv.forward(x);
    }
    let (weight, bias) = (conv.weight.val(), bias.val());
    if !device.is_autodiff() {
        if let (Ok(xp), Ok(wp), Ok(bp)) = (
            x.clone().try_into_primitive::<Flex>(),
            weight.clone().try_into_primitive::<Flex>(),
            bias.clone().try_into_primitive::<Flex>(),
        ) {
            let (out, _) = forward(&xp, &wp, &bp, conv.stride, padding);
            return Tensor::from_primitive::<Flex>(out);
        }
    } else if let (Ok(xp), Ok(wp), Ok(bp)) = (
        x.clone().try_into_primitive::<Autodiff<Flex>>(),
        weight.clone().try_into_primitive::<Autodiff<Flex>>(),
        bias.clone().try_into_primitive::<Autodiff<Flex>>(),
    ) {
        let out = FusedConv
            .prepare::<NoCheckpointing>([xp.node(), wp.node(), bp.node()])
            .compute_bound()
            .stateful();
        let (xp, wp, bp) = (
            xp.into_primitive(),
            wp.into_primitive(),
            bp.into_primitive(),
        );
        let out = match out {
            OpsKind::Tracked(prep) => {
                let (out, shape) = forward(&xp, &wp, &bp, conv.stride, padding);
                let saved = Saved {
                    x: contiguous(&xp),
                    weight: contiguous(&wp),
                    shape,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&xp, &wp, &bp, conv.stride, padding).0),
        };
        return Tensor::from_primitive::<Autodiff<Flex>>(out);
    }
    conv.forward(x)
}

fn shape_of(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
) -> ConvShape {
    let (xs, ws) = (x.layout().shape(), weight.layout().shape());
    ConvShape {
        batch: xs[0],
        channels_in: xs[1],
        height: xs[2],
        width: xs[3],
        channels_out: ws[0],
        kernel_h: ws[2],
        kernel_w: ws[3],
        stride,
        padding,
    }
}

fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
) -> (FlexTensor, ConvShape) {
    let shape = shape_of(x, weight, stride, padding);
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let mut out = zeroed(shape.output_len());
    conv2d_forward(
        values(&x),
        values(&weight),
        Some(values(&bias)),
        shape,
        &mut out,
    );
    let dims = [
        shape.batch,
        shape.channels_out,
        shape.out_height(),
        shape.out_width(),
    ];
    (flex(out, dims), shape)
}

/// The autodiff node of the fused convolution.
#[derive(Debug)]
struct FusedConv;

/// What the backward needs: the input and weight (the gather is recomputed, not kept).
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    shape: ConvShape,
}

impl Backward<Flex, 3> for FusedConv {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let Saved { x, weight, shape } = ops.state;
        let mut dx = node_x.as_ref().map(|_| zeroed(values(&x).len()));
        let mut dweight = zeroed(shape.weight_len());
        let mut dbias = node_bias.as_ref().map(|_| zeroed(shape.channels_out));
        conv2d_backward(
            values(&x),
            values(&weight),
            values(&d_out),
            shape,
            dx.as_deref_mut(),
            &mut dweight,
            dbias.as_deref_mut(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            let dims = [shape.batch, shape.channels_in, shape.height, shape.width];
            grads.register::<Flex>(node.id, flex(dx, dims));
        }
        if let Some(node) = node_weight {
            let dims = [
                shape.channels_out,
                shape.channels_in,
                shape.kernel_h,
                shape.kernel_w,
            ];
            grads.register::<Flex>(node.id, flex(dweight, dims));
        }
        if let (Some(node), Some(db)) = (node_bias, dbias) {
            grads.register::<Flex>(node.id, flex(db, [shape.channels_out]));
        }
    }
}
