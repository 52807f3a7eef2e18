//! Safetensors fixture files as raw tensors, and burn tensors as values.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;
use safetensors::tensor::View;
use safetensors::{Dtype, SafeTensors};

/// One tensor of a safetensors file: shape, dtype and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// An f32 tensor of `shape` holding `values`.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self {
            shape,
            dtype: Dtype::F32,
            data,
        }
    }

    /// The values of an f32 tensor (panics on another dtype).
    pub fn f32(&self) -> Vec<f32> {
        self.decode(Dtype::F32, f32::from_le_bytes)
    }

    /// The values of an i64 tensor (panics on another dtype).
    pub fn i64(&self) -> Vec<i64> {
        self.decode(Dtype::I64, i64::from_le_bytes)
    }

    fn decode<T, const N: usize>(&self, dtype: Dtype, from_le: fn([u8; N]) -> T) -> Vec<T> {
        assert_eq!(self.dtype, dtype, "not a {dtype:?} tensor");
        self.data
            .chunks_exact(N)
            .map(|b| from_le(b.try_into().unwrap()))
            .collect()
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor of the safetensors file at `path`, by name (panics naming the file).
pub fn read_safetensors(path: impl AsRef<Path>) -> BTreeMap<String, RawTensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not safetensors: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = RawTensor {
                shape: v.shape().to_vec(),
                dtype: v.dtype(),
                data: v.data().to_vec(),
            };
            (name, t)
        })
        .collect()
}

/// Writes `tensors` to a safetensors file at `path`.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &BTreeMap<String, RawTensor>) {
    let bytes = safetensors::serialize(tensors.iter(), None).expect("serialising safetensors");
    std::fs::write(path.as_ref(), bytes).unwrap();
}

/// A tensor's values as f32, in row-major order.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn safetensors_round_trip_with_dtypes() {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "w".to_string(),
            RawTensor::from_f32(vec![2, 2], &[1.0, -2.5, 0.0, 3.25]),
        );
        let ids: Vec<u8> = [7i64, -1].iter().flat_map(|i| i.to_le_bytes()).collect();
        tensors.insert(
            "ids".to_string(),
            RawTensor {
                shape: vec![2],
                dtype: Dtype::I64,
                data: ids,
            },
        );
        let dir = std::env::temp_dir().join(format!("ldmscale-testkit-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        write_safetensors(&path, &tensors);
        let back = read_safetensors(&path);
        assert_eq!(back, tensors);
        assert_eq!(back["w"].f32(), [1.0, -2.5, 0.0, 3.25]);
        assert_eq!(back["ids"].i64(), [7, -1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "not a F32 tensor")]
    fn f32_of_an_i64_tensor_panics() {
        RawTensor {
            shape: vec![1],
            dtype: Dtype::I64,
            data: vec![0; 8],
        }
        .f32();
    }

    #[test]
    fn values_are_row_major() {
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [2, 2]),
            &Device::flex(),
        );
        assert_eq!(values(t.transpose()), [1.0, 3.0, 2.0, 4.0]);
    }
}
