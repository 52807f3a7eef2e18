//! Named f32 tensors from PyTorch archives (TorchScript or `torch.save` zip files, read through
//! the restricted pickle reader) and safetensors files, and the bookkeeping that turns them
//! into a network: every tensor the network asks for must exist with the right shape, and every
//! tensor in the file must be used.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::EvalError;
use crate::pickle::{self, Object, StorageDtype, TensorRef, Value};

/// A non-tensor attribute of a TorchScript module (stride, padding, flags).
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    /// An integer.
    Int(i64),
    /// A list or tuple of integers.
    Ints(Vec<i64>),
    /// A boolean.
    Bool(bool),
}

/// A tensor as stored: shape and contiguous f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order, converted to f32.
    pub values: Vec<f32>,
}

/// Every tensor (and integer attribute) of a weights file under its dotted name.
#[derive(Debug, Clone)]
pub struct WeightMap {
    /// The file the tensors came from, for error messages.
    pub file: String,
    /// Tensors by name.
    pub tensors: BTreeMap<String, NamedTensor>,
    /// TorchScript module attributes by dotted name (empty for safetensors).
    pub attributes: BTreeMap<String, Attribute>,
    used: BTreeSet<String>,
}

impl WeightMap {
    /// A map over in-memory tensors (`file` only labels errors).
    pub fn from_tensors(file: impl Into<String>, tensors: BTreeMap<String, NamedTensor>) -> Self {
        WeightMap {
            file: file.into(),
            tensors,
            attributes: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// Reads a `.safetensors` file (f32, f16, bf16 or f64 tensors).
    pub fn from_safetensors(path: &Path) -> Result<Self, EvalError> {
        Self::from_safetensors_where(path, |_| true)
    }

    /// Reads the tensors of a `.safetensors` file whose names satisfy `keep` (the others are
    /// not converted, e.g. the text tower when only the vision tower is wanted).
    pub fn from_safetensors_where(
        path: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            EvalError::archive(path, format!("not a readable safetensors file: {e}"))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if !keep(&name) {
                continue;
            }
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
                other => {
                    return Err(EvalError::BadTensor {
                        file: path.display().to_string(),
                        key: name,
                        message: format!(
                            "dtype {other:?} is not supported; expected F32, F16, BF16 or F64"
                        ),
                    });
                }
            };
            tensors.insert(
                name,
                NamedTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self::from_tensors(path.display().to_string(), tensors))
    }

    /// Reads a PyTorch zip archive: a TorchScript module (`torch.jit.save`) or a pickled dict of
    /// tensors (`torch.save`). Module attributes become dotted names (`net.layers.conv.weight`).
    pub fn from_torch_archive(path: &Path) -> Result<Self, EvalError> {
        let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| EvalError::archive(path, format!("not a PyTorch zip archive: {e}")))?;
        // The archive holds one top folder (its name varies) with data.pkl and data/<key>.
        let pkl_name = zip
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_owned)
            .ok_or_else(|| {
                EvalError::archive(path, "no <archive>/data.pkl: not a PyTorch zip archive")
            })?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
        let pkl = read_entry(&mut zip, &pkl_name, path)?;
        let root = pickle::parse(&pkl)
            .map_err(|e| EvalError::archive(path, format!("{pkl_name}: {e}")))?;

        let mut found = Found::default();
        walk(&root, "", &mut found, path)?;
        let mut tensors = BTreeMap::new();
        let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (name, t) in found.tensors {
            if !storages.contains_key(&t.storage.key) {
                let entry = format!("{prefix}data/{}", t.storage.key);
                let bytes = read_entry(&mut zip, &entry, path)?;
                storages.insert(t.storage.key.clone(), bytes);
            }
            let bytes = &storages[&t.storage.key];
            let values = gather(&t, bytes).map_err(|message| EvalError::BadTensor {
                file: path.display().to_string(),
                key: name.clone(),
                message,
            })?;
            tensors.insert(
                name,
                NamedTensor {
                    shape: t.shape.clone(),
                    values,
                },
            );
        }
        Ok(WeightMap {
            file: path.display().to_string(),
            tensors,
            attributes: found.attributes,
            used: BTreeSet::new(),
        })
    }

    /// Reads a weights file by its extension: `.safetensors`, else a PyTorch zip archive
    /// (`.pt`, `.pth`, TorchScript).
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            Self::from_safetensors(path)
        } else {
            Self::from_torch_archive(path)
        }
    }

    /// Writes every tensor as f32 to a `.safetensors` file, atomically (e.g. a copy of the
    /// TorchScript Inception that loads without the pickle reader).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), EvalError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let data = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (k.clone(), t.shape.clone(), data)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, shape, data)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (k.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EvalError::io(path, e))?;
        let out = safetensors::serialize(views, None).map_err(|e| EvalError::io(path, e))?;
        ldmscale_model::weights::write_atomic(path, &out).map_err(|e| EvalError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Drops `prefix` from every name that starts with it (e.g. TorchScript wrappers' `net.`).
    pub fn strip_prefix(mut self, prefix: &str) -> Self {
        let strip = |m: &mut BTreeMap<String, _>| {
            let old = std::mem::take(m);
            for (k, v) in old {
                let k = k.strip_prefix(prefix).map(str::to_owned).unwrap_or(k);
                m.insert(k, v);
            }
        };
        strip(&mut self.tensors);
        let old = std::mem::take(&mut self.attributes);
        for (k, v) in old {
            let k = k.strip_prefix(prefix).map(str::to_owned).unwrap_or(k);
            self.attributes.insert(k, v);
        }
        self
    }

    /// Total number of values in all tensors.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }

    /// Takes the tensor `key`, which must have `shape`, onto `device`.
    pub fn take<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, EvalError> {
        let Some(t) = self.tensors.get(key) else {
            return Err(EvalError::MissingTensor {
                file: self.file.clone(),
                key: key.into(),
                expected: shape.to_vec(),
                hint: String::new(),
            });
        };
        if t.shape != shape {
            return Err(EvalError::BadTensor {
                file: self.file.clone(),
                key: key.into(),
                message: format!(
                    "shape {:?} does not match the network's {:?}",
                    t.shape, shape
                ),
            });
        }
        self.used.insert(key.to_owned());
        Ok(Tensor::from_data(
            TensorData::new(t.values.clone(), shape.to_vec()),
            device,
        ))
    }

    /// The attribute `key`, if the file has it.
    pub fn attribute(&self, key: &str) -> Option<&Attribute> {
        self.attributes.get(key)
    }

    /// Fails if any tensor was never taken (the file is for another network).
    pub fn finish(self) -> Result<(), EvalError> {
        let unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let total = unused.len();
        let mut keys = unused
            .iter()
            .take(5)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if total > 5 {
            keys.push_str(&format!(" ... ({total} in all)"));
        }
        Err(EvalError::UnexpectedTensors {
            file: self.file,
            keys,
        })
    }
}

/// The largest archive member read (the FID Inception's largest storage is 8 MB; CLIP ViT-L's
/// whole archive 1.7 GB).
pub const MAX_ENTRY_BYTES: u64 = 4 << 30;

/// Reads one archive member, trusting its declared size only up to [`MAX_ENTRY_BYTES`] and never
/// reading past it (a deflated member may claim any size).
fn read_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>, EvalError> {
    let entry = zip
        .by_name(name)
        .map_err(|e| EvalError::archive(path, format!("{name}: {e}")))?;
    let declared = entry.size();
    if declared > MAX_ENTRY_BYTES {
        return Err(EvalError::archive(
            path,
            format!("{name}: declares {declared} bytes, more than the {MAX_ENTRY_BYTES} read"),
        ));
    }
    // Grown as the bytes arrive, so a false declared size allocates nothing up front.
    let mut bytes = Vec::new();
    entry
        .take(declared)
        .read_to_end(&mut bytes)
        .map_err(|e| EvalError::archive(path, format!("{name}: {e}")))?;
    if bytes.len() as u64 != declared {
        return Err(EvalError::archive(
            path,
            format!(
                "{name}: holds {} bytes, its header declares {declared}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

#[derive(Default)]
struct Found {
    tensors: Vec<(String, TensorRef)>,
    attributes: BTreeMap<String, Attribute>,
    visits: usize,
}

/// How many values `walk` visits at most: a module shared under many names is visited once per
/// name, so a file of modules that each hold the next one twice would take 2^depth visits.
const MAX_WALK_VISITS: usize = 1 << 20;

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Collects tensors and integer attributes below `value` under dotted names.
/// The pickle reader bounds the nesting (to `pickle::MAX_DEPTH`), and with it this recursion.
fn walk(value: &Value, prefix: &str, found: &mut Found, path: &Path) -> Result<(), EvalError> {
    found.visits += 1;
    if found.visits > MAX_WALK_VISITS {
        return Err(EvalError::archive(
            path,
            format!("more than {MAX_WALK_VISITS} module attributes (modules shared too often?)"),
        ));
    }
    match value {
        Value::Tensor(t) => found.tensors.push((prefix.to_owned(), t.clone())),
        Value::Object(obj) => {
            let Object { attributes, .. } = &*obj.borrow();
            for (name, v) in attributes {
                walk(v, &join(prefix, name), found, path)?;
            }
        }
        Value::Dict(items) => {
            for (k, v) in items.borrow().iter() {
                let Value::Str(k) = k else {
                    return Err(EvalError::archive(
                        path,
                        format!("{prefix}: dict key {k:?} is not a string"),
                    ));
                };
                walk(v, &join(prefix, k), found, path)?;
            }
        }
        Value::Int(i) => {
            found
                .attributes
                .insert(prefix.to_owned(), Attribute::Int(*i));
        }
        Value::Bool(b) => {
            found
                .attributes
                .insert(prefix.to_owned(), Attribute::Bool(*b));
        }
        Value::List(items) => {
            let ints: Option<Vec<i64>> = items
                .borrow()
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect();
            if let Some(ints) = ints {
                found
                    .attributes
                    .insert(prefix.to_owned(), Attribute::Ints(ints));
            }
        }
        Value::Tuple(items) => {
            let ints: Option<Vec<i64>> = items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect();
            if let Some(ints) = ints {
                found
                    .attributes
                    .insert(prefix.to_owned(), Attribute::Ints(ints));
            }
        }
        // Strings, floats, None and the like configure nothing the readers use.
        _ => {}
    }
    Ok(())
}

/// Copies a strided view out of a storage's little-endian bytes, checking every bound.
fn gather(t: &TensorRef, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let size = t.storage.dtype.size();
    let available = bytes.len() / size;
    if available < t.storage.numel {
        return Err(format!(
            "storage data/{} holds {available} elements, the pickle declares {}",
            t.storage.key, t.storage.numel
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= t.storage.numel)
        .ok_or_else(|| {
            format!(
                "view of shape {:?} has more elements than storage data/{} ({})",
                t.shape, t.storage.key, t.storage.numel
            )
        })?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = t
        .shape
        .iter()
        .zip(&t.strides)
        .try_fold(t.offset, |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        });
    match last {
        Some(last) if last < t.storage.numel => {}
        _ => {
            return Err(format!(
                "view (offset {}, shape {:?}, strides {:?}) reaches past storage data/{} of {} elements",
                t.offset, t.shape, t.strides, t.storage.key, t.storage.numel
            ));
        }
    }
    let read = |i: usize| -> f32 {
        let b = &bytes[i * size..(i + 1) * size];
        match t.storage.dtype {
            StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageDtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        }
    };
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(read(at));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::StorageRef;

    fn view(offset: usize, shape: &[usize], strides: &[usize], numel: usize) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: StorageDtype::F32,
                numel,
            },
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        }
    }

    #[test]
    fn gathers_strided_views() {
        let bytes: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        // A transposed 2x3 -> 3x2 view.
        let t = gather(&view(0, &[3, 2], &[1, 3], 6), &bytes).unwrap();
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let t = gather(&view(2, &[2], &[2], 6), &bytes).unwrap();
        assert_eq!(t, vec![2.0, 4.0]);
        assert!(gather(&view(1, &[2, 3], &[3, 1], 6), &bytes).is_err());
        assert!(gather(&view(0, &[2], &[1], 7), &bytes).is_err());
    }
}
