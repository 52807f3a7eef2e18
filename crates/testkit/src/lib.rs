//! Helpers shared by the workspace's tests (a dev-dependency only): where the fixtures are, how
//! to read and write their safetensors and JSON files, and the error measures the parity tests
//! compare against.

mod error;
mod fixtures;
mod tensors;

pub use error::{
    Errors, assert_mentions, assert_parity, errors, max_abs_diff, max_rel_err, rel_l2,
};
pub use fixtures::{fixture_dir, read_json, str_array};
pub use tensors::{RawTensor, read_safetensors, values, write_safetensors};
