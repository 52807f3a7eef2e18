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
use crate::unet::{UNet, UNetConfig, adapter};

/// File name of the weights inside a diffusers model directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// File name of the config inside a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";

/// One step of a module path: the field name and the type that owns it.
type PathStep = (String, String);

/// How a model's module paths map to tensor names in a weights file. Every naming applies
/// diffusers' renames (below) after its own, so shared layers (GroupNorm, LayerNorm) are named
/// alike everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Naming {
    /// Prepended to every tensor name (transformers' `CLIPTextModel` stores `text_model.…`).
    pub prefix: &'static str,
    /// `(owner type, field, name)` renames checked before diffusers' table, for fields whose Rust
    /// name cannot be the reference library's (BERT's `LayerNorm`, `self`). The owner is burn's
    /// container type, e.g. `"Struct:BertLayer"`.
    pub renames: &'static [(&'static str, &'static str, &'static str)],
    /// Tensors a file may hold that the model has no use for (buffers such as `position_ids`,
    /// heads such as BERT's pooler): an entry matches a full file name (prefix included)
    /// exactly, or as a prefix when it ends in '.'.
    pub ignored: &'static [&'static str],
    /// Older names of path components, `(current, legacy)`: a tensor missing under its name is
    /// also looked up with the component `current` replaced by `legacy` (diffusers' deprecated VAE
    /// attention blocks store `query`/`key`/`value`/`proj_attn`).
    pub legacy: &'static [(&'static str, &'static str)],
}

impl Naming {
    /// diffusers' names, as the UNet uses them.
    pub const DIFFUSERS: Naming = Naming {
        prefix: "",
        renames: &[],
        ignored: &[],
        legacy: &[],
    };

    /// The file's name for the parameter at `path`, and whether it is a linear weight (transposed
    /// between burn and PyTorch).
    fn key(&self, path: &[PathStep]) -> (String, bool) {
        let mut parts = Vec::with_capacity(path.len() + 1);
        if !self.prefix.is_empty() {
            parts.push(self.prefix.trim_end_matches('.'));
        }
        for (name, owner) in path {
            let renamed = self
                .renames
                .iter()
                .find(|(o, n, _)| o == owner && n == name)
                .map(|(_, _, to)| *to);
            let part = match (owner.as_str(), name.as_str(), renamed) {
                (_, _, Some(to)) => to,
                // Variant names of enum modules are not part of diffusers' names.
                (o, _, None) if o.starts_with("Enum:") => continue,
                ("Struct:Attention", "to_out", None) => "to_out.0",
                ("Struct:FeedForward", "proj_in", None) => "net.0.proj",
                ("Struct:FeedForward", "proj_out", None) => "net.2",
                ("Struct:DownBlock", "downsampler", None) => "downsamplers.0",
                ("Struct:UpBlock", "upsampler", None) => "upsamplers.0",
                ("Struct:GroupNorm" | "Struct:LayerNorm", "gamma", None) => "weight",
                ("Struct:GroupNorm" | "Struct:LayerNorm", "beta", None) => "bias",
                (_, n, None) => n,
            };
            parts.push(part);
        }
        let transposed = path
            .last()
            .is_some_and(|(name, owner)| owner == "Struct:Linear" && name == "weight");
        (parts.join("."), transposed)
    }

    /// Whether the model may leave the file's tensor `name` unused.
    fn is_ignored(&self, name: &str) -> bool {
        self.ignored.iter().any(|pattern| {
            if pattern.ends_with('.') {
                name.starts_with(pattern)
            } else {
                name == *pattern
            }
        })
    }

    /// Other names `key` may be stored under, per [`Naming::legacy`].
    fn legacy_keys(&self, key: &str) -> Vec<String> {
        let parts: Vec<&str> = key.split('.').collect();
        self.legacy
            .iter()
            .filter_map(|(current, legacy)| {
                let current: Vec<&str> = current.split('.').collect();
                let n = current.len();
                let at = (0..=parts.len().saturating_sub(n))
                    .find(|&i| parts[i..i + n] == current[..])?;
                let mut renamed: Vec<&str> = parts[..at].to_vec();
                renamed.push(legacy);
                renamed.extend_from_slice(&parts[at + n..]);
                Some(renamed.join("."))
            })
            .collect()
    }
}

/// Every parameter of `module` in diffusers naming, with its shape as PyTorch stores it.
pub fn parameter_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    parameter_shapes_named(module, &Naming::DIFFUSERS)
}

/// Every parameter of `module` under `naming`, with its shape as PyTorch stores it.
pub fn parameter_shapes_named<M: Module>(
    module: &M,
    naming: &Naming,
) -> BTreeMap<String, Vec<usize>> {
    struct Shapes<'n> {
        naming: &'n Naming,
        path: Vec<PathStep>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl ModuleVisitor for Shapes<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.into(), container_type.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, transposed) = self.naming.key(&self.path);
            let mut shape = param.lazy_shape().dims::<D>().to_vec();
            if transposed {
                shape.reverse();
            }
            self.out.insert(key, shape);
        }
    }
    let mut visitor = Shapes {
        naming,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Loader<'a> {
    naming: &'a Naming,
    file: &'a str,
    tensors: &'a SafeTensors<'a>,
    device: Device,
    path: Vec<PathStep>,
    used: HashSet<String>,
    errors: Vec<ModelError>,
}

impl Loader<'_> {
    /// Reads `key` (or a legacy name of it); returns the values, the shape and the name found.
    fn read(
        &self,
        key: &str,
        expected: &[usize],
    ) -> Result<(Vec<f32>, Vec<usize>, String), ModelError> {
        let mut found = self.tensors.tensor(key).map(|view| (view, key.to_string()));
        for legacy in self.naming.legacy_keys(key) {
            if found.is_ok() {
                break;
            }
            found = self.tensors.tensor(&legacy).map(|view| (view, legacy));
        }
        let (view, key) = found.map_err(|_| ModelError::MissingKey {
            file: self.file.into(),
            key: key.into(),
            expected: expected.to_vec(),
            hint: String::new(),
        })?;
        let key = key.as_str();
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
        Ok((values, view.shape().to_vec(), key.to_string()))
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
        let (key, transposed) = self.naming.key(&self.path);
        let mut expected = param.lazy_shape().dims::<D>().to_vec();
        if transposed {
            expected.reverse();
        }
        match self.read(&key, &expected) {
            Ok((values, shape, found)) => {
                self.used.insert(found);
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
    load_safetensors_named(module, file, device, &Naming::DIFFUSERS)
}

/// [`load_safetensors`] under `naming`: every parameter is required, and every tensor of the
/// file must be used unless `naming` ignores it.
pub fn load_safetensors_named<M: Module>(
    module: M,
    file: &Path,
    device: &Device,
    naming: &Naming,
) -> Result<M, ModelError> {
    let bytes = std::fs::read(file).map_err(|e| ModelError::io(file, e))?;
    let file_name = file.display().to_string();
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::CorruptWeights {
        file: file_name.clone(),
        message: e.to_string(),
    })?;
    let mut loader = Loader {
        naming,
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
        .filter(|name| !loader.used.contains(*name) && !naming.is_ignored(name))
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
    save_safetensors_named(module, file, &Naming::DIFFUSERS)
}

/// [`save_safetensors`] under `naming` (current names, never legacy ones).
pub fn save_safetensors_named<M: Module>(
    module: &M,
    file: &Path,
    naming: &Naming,
) -> Result<(), ModelError> {
    struct Collect<'n> {
        naming: &'n Naming,
        path: Vec<PathStep>,
        out: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.into(), container_type.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, transposed) = self.naming.key(&self.path);
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
        naming,
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

/// The tensor names of a safetensors file, read from its header alone (the data is not loaded).
pub fn tensor_names(file: &Path) -> Result<Vec<String>, ModelError> {
    use std::io::Read;
    let corrupt = |message: String| ModelError::CorruptWeights {
        file: file.display().to_string(),
        message,
    };
    let mut reader = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
    let mut len = [0u8; 8];
    reader
        .read_exact(&mut len)
        .map_err(|e| corrupt(format!("no header: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB; a larger length means the file is not safetensors.
    if len > 100_000_000 {
        return Err(corrupt(format!("header length {len} is implausible")));
    }
    let file_len = reader
        .metadata()
        .map_err(|e| ModelError::io(file, e))?
        .len();
    if len > file_len.saturating_sub(8) {
        return Err(corrupt(format!(
            "header length {len} is more than the {} bytes after it",
            file_len.saturating_sub(8)
        )));
    }
    let mut header = vec![0u8; len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| corrupt(format!("truncated header: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    Ok(header
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect())
}

/// Writes `bytes` to `file` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(file: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| ModelError::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, file).map_err(|e| ModelError::io(file, e)));
    if written.is_err() {
        // A partial temporary file would pile up on the very disk that ran out.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Loads a UNet from a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`),
/// with its encoder adapter when the directory has one (`adapter/`, see
/// [`crate::unet::adapter`]).
pub fn load_unet(dir: &Path, device: &Device) -> Result<(UNetConfig, UNet), ModelError> {
    let mut config = UNetConfig::from_json_file(&dir.join(CONFIG_FILE))?;
    let model = UNet::new(&config, device);
    let mut model = load_safetensors(model, &dir.join(WEIGHTS_FILE), device)?;
    let adapter_dir = dir.join(adapter::ADAPTER_DIR);
    if adapter_dir.join(CONFIG_FILE).exists() {
        adapter::check_adapter_config(&adapter_dir, &config)?;
        config = (config.with_encoder_adapter()).map_err(|message| ModelError::Config {
            file: adapter_dir.join(CONFIG_FILE).display().to_string(),
            message,
        })?;
        let adapter = adapter::EncoderAdapter::new(&config, device);
        let weights = adapter_dir.join(WEIGHTS_FILE);
        model.adapter = Some(load_safetensors(adapter, &weights, device)?);
    }
    Ok((config, model))
}

/// Saves a UNet as a diffusers directory, creating it if needed; an encoder adapter goes to
/// its own `adapter/` inside, so the directory's own files are the frozen UNet's.
pub fn save_unet(dir: &Path, config: &UNetConfig, model: &UNet) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut base = model.clone();
    let adapter_dir = dir.join(adapter::ADAPTER_DIR);
    if base.adapter.is_none() && adapter_dir.exists() {
        // A stale adapter would be loaded with this UNet.
        std::fs::remove_dir_all(&adapter_dir).map_err(|e| ModelError::io(&adapter_dir, e))?;
    }
    if let Some(adapter) = base.adapter.take() {
        std::fs::create_dir_all(&adapter_dir).map_err(|e| ModelError::io(&adapter_dir, e))?;
        save_safetensors(&adapter, &adapter_dir.join(WEIGHTS_FILE))?;
        let json = adapter::adapter_config_json(config);
        write_atomic(&adapter_dir.join(CONFIG_FILE), json.as_bytes())?;
    }
    save_safetensors(&base, &dir.join(WEIGHTS_FILE))?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}
