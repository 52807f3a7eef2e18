//! Weights in diffusers layout: a directory with `config.json` and
//! `diffusion_pytorch_model.safetensors`, parameters under diffusers' names, so real Stable
//! Diffusion UNets load unchanged and our checkpoints load in diffusers.
//!
//! burn's module tree is walked with its path; a few path components are renamed where our
//! struct names differ from diffusers', and linear weights are transposed (burn stores
//! `[d_in, d_out]`, PyTorch `[d_out, d_in]`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::unet::{UNet, UNetConfig};

/// File name of the weights inside a diffusers model directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// File name of the config inside a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";

/// One step of a module path: the field name and the type that owns it.
type PathStep = (String, String);

/// diffusers' name for the parameter at `path`, and whether it is a linear weight (transposed
/// between burn and PyTorch).
fn diffusers_key(path: &[PathStep]) -> (String, bool) {
    let mut parts = Vec::with_capacity(path.len());
    for (name, owner) in path {
        let part = match (owner.as_str(), name.as_str()) {
            // Variant names of enum modules are not part of diffusers' names.
            (o, _) if o.starts_with("Enum:") => continue,
            ("Struct:Attention", "to_out") => "to_out.0",
            ("Struct:FeedForward", "proj_in") => "net.0.proj",
            ("Struct:FeedForward", "proj_out") => "net.2",
            ("Struct:DownBlock", "downsampler") => "downsamplers.0",
            ("Struct:UpBlock", "upsampler") => "upsamplers.0",
            ("Struct:GroupNorm" | "Struct:LayerNorm", "gamma") => "weight",
            ("Struct:GroupNorm" | "Struct:LayerNorm", "beta") => "bias",
            (_, n) => n,
        };
        parts.push(part);
    }
    let transposed = path
        .last()
        .is_some_and(|(name, owner)| owner == "Struct:Linear" && name == "weight");
    (parts.join("."), transposed)
}

/// Every parameter of `module` in diffusers naming, with its shape as PyTorch stores it.
pub fn parameter_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes {
        path: Vec<PathStep>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.into(), container_type.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, transposed) = diffusers_key(&self.path);
            let mut shape = param.lazy_shape().dims::<D>().to_vec();
            if transposed {
                shape.reverse();
            }
            self.out.insert(key, shape);
        }
    }
    let mut visitor = Shapes {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Loader<'a> {
    file: &'a str,
    tensors: &'a SafeTensors<'a>,
    device: Device,
    path: Vec<PathStep>,
    used: HashSet<String>,
    errors: Vec<ModelError>,
}

impl Loader<'_> {
    fn read(&self, key: &str, expected: &[usize]) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let view = self
            .tensors
            .tensor(key)
            .map_err(|_| ModelError::MissingKey {
                file: self.file.into(),
                key: key.into(),
                expected: expected.to_vec(),
                hint: String::new(),
            })?;
        let bad = |message: String| ModelError::BadTensor {
            file: self.file.into(),
            key: key.into(),
            message,
        };
        if view.shape() != expected {
            return Err(bad(format!(
                "shape {:?} does not match the model's {:?} (is config.json the one these weights were saved with?)",
                view.shape(),
                expected
            )));
        }
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported; expected F32, F16 or BF16"
                )));
            }
        };
        Ok((values, view.shape().to_vec()))
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.into(), container_type.into()));
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (key, transposed) = diffusers_key(&self.path);
        let mut expected = param.lazy_shape().dims::<D>().to_vec();
        if transposed {
            expected.reverse();
        }
        match self.read(&key, &expected) {
            Ok((values, shape)) => {
                self.used.insert(key);
                let mut tensor =
                    Tensor::<D>::from_data(TensorData::new(values, shape), &self.device);
                if transposed {
                    tensor = tensor.transpose();
                }
                let id: ParamId = param.id;
                param.transform_for_load(tensor, id)
            }
            Err(e) => {
                self.errors.push(e);
                param
            }
        }
    }
}

/// Loads weights from a safetensors file into `module`, requiring every parameter and allowing
/// no unused tensor.
pub fn load_safetensors<M: Module>(
    module: M,
    file: &Path,
    device: &Device,
) -> Result<M, ModelError> {
    let bytes = std::fs::read(file).map_err(|e| ModelError::io(file, e))?;
    let file_name = file.display().to_string();
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::CorruptWeights {
        file: file_name.clone(),
        message: e.to_string(),
    })?;
    let mut loader = Loader {
        file: &file_name,
        tensors: &tensors,
        device: device.clone(),
        path: Vec::new(),
        used: HashSet::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    let missing = loader
        .errors
        .iter()
        .filter(|e| matches!(e, ModelError::MissingKey { .. }))
        .count();
    if let Some(first) = loader.errors.into_iter().next() {
        return Err(match first {
            ModelError::MissingKey {
                file,
                key,
                expected,
                ..
            } if missing > 1 => ModelError::MissingKey {
                file,
                key,
                expected,
                hint: format!(" and {} more missing", missing - 1),
            },
            e => e,
        });
    }
    let mut unexpected: Vec<String> = tensors
        .names()
        .into_iter()
        .filter(|name| !loader.used.contains(*name))
        .map(|name| name.to_string())
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let total = unexpected.len();
        let mut keys = unexpected
            .into_iter()
            .take(5)
            .collect::<Vec<_>>()
            .join(", ");
        if total > 5 {
            keys.push_str(&format!(" ... ({total} in all)"));
        }
        return Err(ModelError::UnexpectedKeys {
            file: file_name,
            keys,
        });
    }
    Ok(module)
}

/// Writes `module`'s parameters, in diffusers naming and PyTorch layout, to a safetensors file,
/// atomically (temporary file, then rename).
pub fn save_safetensors<M: Module>(module: &M, file: &Path) -> Result<(), ModelError> {
    struct Collect {
        path: Vec<PathStep>,
        out: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.into(), container_type.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, transposed) = diffusers_key(&self.path);
            let mut tensor = param.val();
            if transposed {
                tensor = tensor.transpose();
            }
            let shape = tensor.dims().to_vec();
            let values = tensor
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 data");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.out.insert(key, (shape, bytes));
        }
    }
    let mut collect = Collect {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut collect);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = collect
        .out
        .iter()
        .map(|(k, (shape, bytes))| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("consistent shape");
            (k.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| ModelError::io(file, e))?;
    write_atomic(file, &bytes)
}

/// Writes `bytes` to `file` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(file: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| ModelError::io(file, e))
}

/// Loads a UNet from a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`).
pub fn load_unet(dir: &Path, device: &Device) -> Result<(UNetConfig, UNet), ModelError> {
    let config = UNetConfig::from_json_file(&dir.join(CONFIG_FILE))?;
    let model = UNet::new(&config, device);
    let model = load_safetensors(model, &dir.join(WEIGHTS_FILE), device)?;
    Ok((config, model))
}

/// Saves a UNet as a diffusers directory, creating it if needed.
pub fn save_unet(dir: &Path, config: &UNetConfig, model: &UNet) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_safetensors(model, &dir.join(WEIGHTS_FILE))?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
