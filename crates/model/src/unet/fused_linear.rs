//! The model's dense layers on the flex (CPU) backend through `ldmscale-kernels`' one-product
//! linear kernels, forward and backward (see that crate's `linear` module for why burn's
//! `Linear` is slower here). Other backends and dtypes keep `Linear::forward`; the model code
//! calls [`linear`] whatever the device.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor};
use ldmscale_kernels::{LinearShape, linear_backward, linear_forward, zeroed};

use super::flex_buffers::{contiguous, flex, values};

/// `layer.forward(x)`, by the fused kernels where they apply.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    if x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || bias.as_ref().is_some_and(|b| b.dtype() != DType::F32)
        || device != Device::flex()
    {
        return layer.forward(x);
    }
    if !device.is_autodiff() {
        let xp = x.clone().try_into_primitive::<Flex>();
        let wp = weight.try_into_primitive::<Flex>();
        let bp = bias.map(|b| b.try_into_primitive::<Flex>()).transpose();
        if let (Ok(xp), Ok(wp), Ok(bp)) = (xp, wp, bp) {
            return Tensor::from_primitive::<Flex>(forward::<D>(&xp, &wp, bp.as_ref()).0);
        }
        return layer.forward(x);
    }
    let xp = x.clone().try_into_primitive::<Autodiff<Flex>>();
    let wp = weight.try_into_primitive::<Autodiff<Flex>>();
    let bp = bias
        .map(|b| b.try_into_primitive::<Autodiff<Flex>>())
        .transpose();
    let (Ok(xp), Ok(wp), Ok(bp)) = (xp, wp, bp) else {
        return layer.forward(x);
    };
    let out = match bp {
        Some(bp) => {
            let prep = FusedLinear
                .prepare::<NoCheckpointing>([xp.node(), wp.node(), bp.node()])
                .compute_bound()
                .stateful();
            let (x, w, b) = (
                xp.into_primitive(),
                wp.into_primitive(),
                bp.into_primitive(),
            );
            match prep {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = forward::<D>(&x, &w, Some(&b));
                    prep.finish(saved, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward::<D>(&x, &w, Some(&b)).0),
            }
        }
        None => {
            let prep = FusedLinear
                .prepare::<NoCheckpointing>([xp.node(), wp.node()])
                .compute_bound()
                .stateful();
            let (x, w) = (xp.into_primitive(), wp.into_primitive());
            match prep {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = forward::<D>(&x, &w, None);
                    prep.finish(saved, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward::<D>(&x, &w, None).0),
            }
        }
    };
    Tensor::from_primitive::<Autodiff<Flex>>(out)
}

/// The output, and what the backward needs: the (contiguous) input and weight.
fn forward<const D: usize>(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> (FlexTensor, Saved) {
    let x_dims: [usize; D] = x.layout().shape().to_vec().try_into().expect("rank D");
    let w_dims = weight.layout().shape();
    let shape = LinearShape {
        rows: x_dims[..D - 1].iter().product(),
        d_in: w_dims[0],
        d_out: w_dims[1],
    };
    assert_eq!(x_dims[D - 1], shape.d_in, "linear input features");
    let (x, weight) = (contiguous(x), contiguous(weight));
    let bias = bias.map(contiguous);
    let mut out = zeroed(shape.output_len());
    linear_forward(
        values(&x),
        values(&weight),
        bias.as_ref().map(values),
        shape,
        &mut out,
    );
    let mut out_dims = x_dims;
    out_dims[D - 1] = shape.d_out;
    let saved = Saved { x, weight, shape };
    (flex(out, out_dims), saved)
}

/// The autodiff node of the fused dense layer (with bias: 3 parents; without: 2).
#[derive(Debug)]
struct FusedLinear;

/// The input (contiguous, in its own shape, which the input gradient takes) and weight.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    shape: LinearShape,
}

impl Backward<Flex, 3> for FusedLinear {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, weight, bias] = ops.parents.map(|p| p.map(|n| n.id));
        let d_out = grads.consume::<Flex>(&ops.node);
        register_gradients(grads, ops.state, d_out, x, weight, bias);
    }
}

impl Backward<Flex, 2> for FusedLinear {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, weight] = ops.parents.map(|p| p.map(|n| n.id));
        let d_out = grads.consume::<Flex>(&ops.node);
        register_gradients(grads, ops.state, d_out, x, weight, None);
    }
}

/// Computes the gradients of the parents that track one and registers them.
fn register_gradients(
    grads: &mut Gradients,
    saved: Saved,
    d_out: FlexTensor,
    x: Option<NodeId>,
    weight: Option<NodeId>,
    bias: Option<NodeId>,
) {
    let Saved {
        x: x_values,
        weight: w_values,
        shape,
    } = saved;
    let d_out = contiguous(&d_out);
    let mut dx = x.map(|_| zeroed(shape.input_len()));
    let mut dweight = weight.map(|_| zeroed(shape.weight_len()));
    let mut dbias = bias.map(|_| zeroed(shape.d_out));
    linear_backward(
        values(&x_values),
        values(&w_values),
        values(&d_out),
        shape,
        dx.as_deref_mut(),
        dweight.as_deref_mut(),
        dbias.as_deref_mut(),
    );
    if let (Some(id), Some(dx)) = (x, dx) {
        grads.register::<Flex>(id, flex(dx, x_values.layout().shape().to_vec()));
    }
    if let (Some(id), Some(dw)) = (weight, dweight) {
        grads.register::<Flex>(id, flex(dw, [shape.d_in, shape.d_out]));
    }
    if let (Some(id), Some(db)) = (bias, dbias) {
        grads.register::<Flex>(id, flex(db, [shape.d_out]));
    }
}
