//! The model's hot operations on the flex (CPU) backend, forward and backward, by the kernels of
//! `ldmscale-kernels`, hooked into burn as autodiff operations with handwritten backward passes.
//! Each op is a [`FlexOp`]: its kernel calls only. [`try_fused`] is the one dispatch: f32 tensors
//! on the flex device, with or without autodiff, run the op; anything else gets `None`, and the
//! op's public function falls back to burn's own. The UNet and the VAE call these functions
//! whatever the device.

mod attention;
mod buffers;
mod conv;
mod geglu;
mod linear;
mod norm;

use std::cell::Cell;
use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, BackendTypes, Flex};
use burn::tensor::{DType, Device, Tensor};

pub use attention::{attention, burn_attention};
pub use conv::conv2d;
pub use geglu::{burn_geglu, geglu};
pub use linear::linear;
pub use norm::{burn_group_norm, group_norm, layer_norm};

use buffers::contiguous;

/// An op on contiguous f32 flex tensors: `N` inputs, one output.
pub trait FlexOp<const N: usize>: Clone + Debug + Send + 'static {
    /// What the backward needs besides the op itself.
    type Saved: Clone + Debug + Send + 'static;
    /// The op's counter (see [`fast_path_count`]).
    const KIND: OpKind;

    /// The output (no autodiff, or no input tracks a gradient).
    fn forward(&self, inputs: [FlexTensor; N]) -> FlexTensor;

    /// The output, and what the backward needs.
    fn forward_saving(&self, inputs: [FlexTensor; N]) -> (FlexTensor, Self::Saved);

    /// The gradients of the inputs marked in `needed` (others may be `None`), given the
    /// output's (contiguous) gradient `d_out`.
    fn backward(
        &self,
        saved: Self::Saved,
        d_out: FlexTensor,
        needed: [bool; N],
    ) -> [Option<FlexTensor>; N];
}

/// A float tensor of any rank, as [`try_fused`] takes its inputs.
pub trait FusedInput {
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;
    /// The flex primitive, when the tensor is on flex without autodiff.
    fn plain(&self) -> Option<FlexTensor>;
    /// The autodiff primitive, when the tensor is on flex with autodiff.
    fn tracked(&self) -> Option<TrackedTensor>;
}

/// A flex tensor under autodiff.
pub type TrackedTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

impl<const R: usize> FusedInput for Tensor<R> {
    fn dtype(&self) -> DType {
        Tensor::dtype(self)
    }

    fn device(&self) -> Device {
        Tensor::device(self)
    }

    fn plain(&self) -> Option<FlexTensor> {
        self.clone().try_into_primitive::<Flex>().ok()
    }

    fn tracked(&self) -> Option<TrackedTensor> {
        self.clone().try_into_primitive::<Autodiff<Flex>>().ok()
    }
}

/// `op` on `inputs` by its kernels, or `None` where they do not apply (an input not f32, not on
/// the flex device).
pub fn try_fused<O: FlexOp<N>, const N: usize, const D: usize>(
    op: O,
    inputs: [&dyn FusedInput; N],
) -> Option<Tensor<D>> {
    let device = inputs.first()?.device();
    if device != Device::flex() || inputs.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let out = if device.is_autodiff() {
        run_tracked(op, inputs)?
    } else {
        let inputs = all(inputs.map(|t| t.plain()))?.map(|t| contiguous(&t));
        Tensor::from_primitive::<Flex>(op.forward(inputs))
    };
    count(O::KIND);
    Some(out)
}

/// `try_fused` under autodiff: the op becomes a node of the graph when an input tracks a gradient.
fn run_tracked<O: FlexOp<N>, const N: usize, const D: usize>(
    op: O,
    inputs: [&dyn FusedInput; N],
) -> Option<Tensor<D>> {
    let tracked = all(inputs.map(|t| t.tracked()))?;
    let prep = Node::<O>(PhantomData)
        .prepare::<NoCheckpointing>(tracked.each_ref().map(|t| t.node()))
        .compute_bound()
        .stateful();
    let inputs = tracked.map(|t| contiguous(&t.into_primitive()));
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let (out, saved) = op.forward_saving(inputs);
            prep.finish((op, saved), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward(inputs)),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(out))
}

/// Every element, or `None` if one is missing.
fn all<T, const N: usize>(items: [Option<T>; N]) -> Option<[T; N]> {
    if items.iter().any(Option::is_none) {
        return None;
    }
    Some(items.map(|t| t.expect("checked")))
}

/// The autodiff node of a [`FlexOp`]; the op itself travels in the state.
#[derive(Debug)]
struct Node<O>(PhantomData<O>);

impl<O: FlexOp<N>, const N: usize> Backward<Flex, N> for Node<O> {
    type State = (O, O::Saved);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let (op, saved) = ops.state;
        let needed = ops.parents.each_ref().map(Option::is_some);
        let input_grads = op.backward(saved, d_out, needed);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// The fused ops, one fast-path counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Attention,
    Conv2d,
    Linear,
    LayerNorm,
    GroupNorm,
    Geglu,
}

/// How many [`OpKind`]s there are.
const KINDS: usize = 6;

thread_local! {
    static FAST_PATH_COUNTS: [Cell<u64>; KINDS] = Default::default();
}

fn count(kind: OpKind) {
    FAST_PATH_COUNTS.with(|counts| {
        let counter = &counts[kind as usize];
        counter.set(counter.get() + 1);
    });
}

/// How many calls of `kind` on this thread took the kernels rather than burn's op (per thread,
/// so that tests running side by side do not see each other's calls).
pub fn fast_path_count(kind: OpKind) -> u64 {
    FAST_PATH_COUNTS.with(|counts| counts[kind as usize].get())
}
