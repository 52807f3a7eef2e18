//! Convolutions through `ldmscale-kernels`' gather-and-multiply kernels, forward and backward
//! (see that crate's `conv` module for why burn's own are slower here). Grouped or dilated
//! convolutions, asymmetric padding and convolutions without bias keep `Conv2d::forward`.

use burn::backend::flex::FlexTensor;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use ldmscale_kernels::{ConvShape, conv2d_backward, conv2d_output, zeroed};

use super::buffers::{flex, shaped_like, values};
use super::{FlexOp, OpKind, try_fused};

/// `conv.forward(x)`, by the kernels where they apply.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    fused(conv, &x).unwrap_or_else(|| conv.forward(x))
}

fn fused(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        PaddingConfig2d::Valid => [0, 0],
        _ => return None,
    };
    let bias = conv.bias.as_ref()?;
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let op = Conv {
        stride: conv.stride,
        padding,
    };
    // Weight before bias: lazy parameters draw their initial values in that order.
    try_fused(op, [x, &conv.weight.val(), &bias.val()])
}

#[derive(Clone, Debug)]
struct Conv {
    stride: [usize; 2],
    padding: [usize; 2],
}

/// The input and weight (the gather is recomputed, not kept).
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
}

impl Conv {
    fn shape(&self, x: &FlexTensor, weight: &FlexTensor) -> ConvShape {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        ConvShape {
            batch: xs[0],
            channels_in: xs[1],
            height: xs[2],
            width: xs[3],
            channels_out: ws[0],
            kernel_h: ws[2],
            kernel_w: ws[3],
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl FlexOp<3> for Conv {
    type Saved = Saved;
    const KIND: OpKind = OpKind::Conv2d;

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3]) -> FlexTensor {
        let shape = self.shape(&x, &weight);
        let out = conv2d_output(values(&x), values(&weight), Some(values(&bias)), shape);
        let dims = [
            shape.batch,
            shape.channels_out,
            shape.out_height(),
            shape.out_width(),
        ];
        flex(out, dims)
    }

    fn forward_saving(&self, [x, weight, bias]: [FlexTensor; 3]) -> (FlexTensor, Saved) {
        let saved = Saved {
            x: x.clone(),
            weight: weight.clone(),
        };
        (self.forward([x, weight, bias]), saved)
    }

    fn backward(&self, s: Saved, d_out: FlexTensor, needed: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let shape = self.shape(&s.x, &s.weight);
        let [need_x, _, need_bias] = needed;
        let mut dx = need_x.then(|| zeroed(values(&s.x).len()));
        let mut dweight = zeroed(shape.weight_len());
        let mut dbias = need_bias.then(|| zeroed(shape.channels_out));
        conv2d_backward(
            values(&s.x),
            values(&s.weight),
            values(&d_out),
            shape,
            dx.as_deref_mut(),
            &mut dweight,
            dbias.as_deref_mut(),
        );
        [
            dx.map(|dx| shaped_like(dx, &s.x)),
            Some(shaped_like(dweight, &s.weight)),
            dbias.map(|db| flex(db, [shape.channels_out])),
        ]
    }
}
