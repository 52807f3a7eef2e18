//! Parameters by name: the training state (gradients, optimizer moments, EMA weights) is keyed by
//! each parameter's path in the module tree, so it survives a restart (burn's parameter ids do
//! not) and is saved as plain safetensors.

use std::collections::BTreeMap;

use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};
use ldmscale_model::init::with_device_rng;
use ldmscale_model::{UNet, UNetConfig};

use crate::error::TensorsError;

/// Flat f32 tensors by parameter path (shapes are the model's business).
pub type Named = BTreeMap<String, Tensor<1>>;

/// Tracks the dotted path of the parameter being visited.
#[derive(Default)]
struct PathTracker(Vec<String>);

impl PathTracker {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn key(&self) -> String {
        self.0.join(".")
    }
}

/// Whether `t` is f32 on the flex (CPU) device, where the optimizer runs the in-place kernels
/// of `ldmscale-kernels` instead of tensor ops.
pub(crate) fn on_flex(t: &Tensor<1>) -> bool {
    t.device() == Device::flex() && t.dtype() == DType::F32
}

/// A flex tensor's values, moved out without a copy when this is the tensor's only handle.
pub(crate) fn into_values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("an f32 tensor")
}

/// `f` of a flex tensor's values, read in place (copied only from a strided view).
pub(crate) fn read_values<R>(t: &Tensor<1>, f: impl FnOnce(&[f32]) -> R) -> R {
    let flex = t
        .clone()
        .try_into_primitive::<Flex>()
        .expect("a flex tensor");
    match flex.as_slice::<f32>() {
        Some(values) => f(values),
        None => f(flex.to_contiguous().as_slice::<f32>().expect("f32 values")),
    }
}

/// A flat flex tensor owning `values`.
pub(crate) fn from_values(values: Vec<f32>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), &Device::flex())
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// The current values of every float parameter, flattened, on the inner (non-autodiff) device.
pub fn snapshot<M: Module>(module: &M) -> Named {
    struct Snap {
        path: PathTracker,
        out: Named,
    }
    impl ModuleVisitor for Snap {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.insert(self.path.key(), flat(param.val().inner()));
        }
    }
    let mut v = Snap {
        path: PathTracker::default(),
        out: Named::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Moves the gradients of `module`'s parameters out of `grads`, by name, flattened.
pub fn named_gradients<M: Module>(module: &M, mut grads: GradientsParams) -> Named {
    struct Collect<'a> {
        path: PathTracker,
        grads: &'a mut GradientsParams,
        out: Named,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.out.insert(self.path.key(), flat(g));
            }
        }
    }
    let mut v = Collect {
        path: PathTracker::default(),
        grads: &mut grads,
        out: Named::new(),
    };
    module.visit(&mut v);
    v.out
}

/// `module` with every parameter taken from `weights` by name (moved to `device`); the names
/// `weights` lacks are returned instead.
pub fn with_weights<M: Module>(
    module: M,
    weights: &Named,
    device: &Device,
) -> Result<M, Vec<String>> {
    let mut missing = Vec::new();
    let module = update(module, &mut |name, current| match weights.get(name) {
        Some(w) => w.clone().to_device(device),
        None => {
            missing.push(name.to_string());
            current
        }
    });
    match missing.is_empty() {
        true => Ok(module),
        false => Err(missing),
    }
}

/// Replaces parameter values by name: `update(name, current_flat)` returns the new flat value,
/// or `current_flat` itself to keep it. Autodiff tracking (require_grad) is preserved. The
/// current value is handed over, not cloned, so an in-place update finds its buffer unshared.
pub fn update<M: Module>(module: M, update: &mut dyn FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    struct Apply<'a> {
        path: PathTracker,
        update: &'a mut dyn FnMut(&str, Tensor<1>) -> Tensor<1>,
    }
    impl ModuleMapper for Apply<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let key = self.path.key();
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let shape = tensor.shape();
            let new = (self.update)(&key, flat(tensor.inner()));
            let mut tensor = Tensor::<D>::from_inner(new.reshape(shape));
            if require_grad {
                tensor = tensor.require_grad();
            }
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Apply {
        path: PathTracker::default(),
        update,
    })
}

/// Reads named flat tensors from safetensors bytes (f32, any shape).
pub fn read_named(
    bytes: &[u8],
    prefix: &str,
    device: &burn::tensor::Device,
) -> Result<Named, TensorsError> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut out = Named::new();
    for (name, view) in st.tensors() {
        let Some(key) = name.strip_prefix(prefix) else {
            continue;
        };
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(TensorsError::NotF32 {
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n = values.len();
        out.insert(
            key.to_string(),
            Tensor::from_data(burn::tensor::TensorData::new(values, [n]), device),
        );
    }
    Ok(out)
}

/// Serialises groups of named flat tensors, each name prefixed by its group, to safetensors.
pub fn write_named(groups: &[(&str, &Named)], metadata: BTreeMap<String, String>) -> Vec<u8> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, named) in groups {
        for (k, t) in named.iter() {
            let values = t
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 tensor");
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((format!("{prefix}{k}"), vec![values.len()], bytes));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(k, shape, bytes)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("consistent"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(metadata.into_iter().collect())).expect("serialisable")
}

/// A UNet of `config` on plain device `device` holding `weights` (by parameter name, on any
/// device); a parameter `weights` lacks keeps its random initial value.
pub fn unet_holding(config: &UNetConfig, weights: &Named, device: &Device) -> UNet {
    // Replacing a lazy parameter initialises it first, drawing from the device generator.
    with_device_rng(|| {
        let model = UNet::new(config, device);
        update(model, &mut |name, current| match weights.get(name) {
            Some(w) => w.clone().to_device(device),
            None => current,
        })
    })
}
