//! Dense layers through `ldmscale-kernels`' one-product linear kernels, forward and backward
//! (see that crate's `linear` module for why burn's `Linear` is slower here). With a bias the op
//! has three inputs, without two.

use burn::backend::flex::FlexTensor;
use burn::nn::Linear;
use burn::tensor::Tensor;
use ldmscale_kernels::{
    LinearShape, linear_input_gradient, linear_output, linear_parameter_gradients, zeroed,
};

use super::buffers::{flex, shaped_like, values};
use super::{FlexOp, OpKind, try_fused};

/// `layer.forward(x)`, by the kernels where they apply.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    let fused = match &layer.bias {
        Some(bias) => try_fused(Dense, [&x, &weight, &bias.val()]),
        None => try_fused(Dense, [&x, &weight]),
    };
    fused.unwrap_or_else(|| layer.forward(x))
}

#[derive(Clone, Debug)]
struct Dense;

/// The input (in its own shape, which the input gradient takes) and weight.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
}

fn shape_of(x: &FlexTensor, weight: &FlexTensor) -> LinearShape {
    let (x_dims, w_dims) = (x.layout().shape(), weight.layout().shape());
    let shape = LinearShape {
        rows: x_dims[..x_dims.len() - 1].iter().product(),
        d_in: w_dims[0],
        d_out: w_dims[1],
    };
    assert_eq!(
        x_dims[x_dims.len() - 1],
        shape.d_in,
        "linear input features"
    );
    shape
}

fn forward(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let shape = shape_of(x, weight);
    let out = linear_output(values(x), values(weight), bias.map(values), shape);
    let mut out_dims = x.layout().shape().to_vec();
    *out_dims.last_mut().expect("rank 1 or more") = shape.d_out;
    flex(out, out_dims)
}

/// The gradients of x, weight and bias that `needed` marks.
fn backward(s: Saved, d_out: FlexTensor, needed: [bool; 3]) -> [Option<FlexTensor>; 3] {
    let shape = shape_of(&s.x, &s.weight);
    let [need_x, need_weight, need_bias] = needed;
    let dx = need_x.then(|| linear_input_gradient(values(&s.weight), values(&d_out), shape));
    let mut dweight = need_weight.then(|| zeroed(shape.weight_len()));
    let mut dbias = need_bias.then(|| zeroed(shape.d_out));
    linear_parameter_gradients(
        values(&s.x),
        values(&d_out),
        shape,
        dweight.as_deref_mut(),
        dbias.as_deref_mut(),
    );
    [
        dx.map(|dx| shaped_like(dx, &s.x)),
        dweight.map(|dw| shaped_like(dw, &s.weight)),
        dbias.map(|db| flex(db, [shape.d_out])),
    ]
}

impl FlexOp<3> for Dense {
    type Saved = Saved;
    const KIND: OpKind = OpKind::Linear;

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3]) -> FlexTensor {
        forward(&x, &weight, Some(&bias))
    }

    fn forward_saving(&self, [x, weight, bias]: [FlexTensor; 3]) -> (FlexTensor, Saved) {
        (forward(&x, &weight, Some(&bias)), Saved { x, weight })
    }

    fn backward(&self, s: Saved, d_out: FlexTensor, needed: [bool; 3]) -> [Option<FlexTensor>; 3] {
        backward(s, d_out, needed)
    }
}

impl FlexOp<2> for Dense {
    type Saved = Saved;
    const KIND: OpKind = OpKind::Linear;

    fn forward(&self, [x, weight]: [FlexTensor; 2]) -> FlexTensor {
        forward(&x, &weight, None)
    }

    fn forward_saving(&self, [x, weight]: [FlexTensor; 2]) -> (FlexTensor, Saved) {
        (forward(&x, &weight, None), Saved { x, weight })
    }

    fn backward(&self, s: Saved, d_out: FlexTensor, needed: [bool; 2]) -> [Option<FlexTensor>; 2] {
        let [need_x, need_weight] = needed;
        let [dx, dweight, _] = backward(s, d_out, [need_x, need_weight, false]);
        [dx, dweight]
    }
}
