//! Clipping and dynamic thresholding of the predicted clean sample.

use burn::tensor::{Tensor, TensorData};

use crate::schedule::SchedulerConfig;

/// Imagen's dynamic thresholding as diffusers' `_threshold_sample` does it: per sample, take
/// `s` = the `ratio` quantile of |x0| (torch.quantile, linear interpolation), clamp `s` to
/// `[1, max_value]`, then clamp x0 to `[-s, s]` and divide by `s`.
///
/// The quantile needs a sort, so the values make one round trip through host memory.
pub fn dynamic_threshold(x0: Tensor<4>, ratio: f32, max_value: f32) -> Tensor<4> {
    let dims = x0.dims();
    let device = x0.device();
    let per_sample = dims[1] * dims[2] * dims[3];
    let mut values = tensor_to_vec(x0);
    for row in values.chunks_mut(per_sample.max(1)) {
        let mut abs: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        abs.sort_by(f32::total_cmp);
        let s = torch_quantile_sorted(&abs, ratio).max(1.0).min(max_value);
        for v in row.iter_mut() {
            *v = v.max(-s).min(s) / s;
        }
    }
    Tensor::from_data(TensorData::new(values, dims), &device)
}

/// Applies the config's x0 post-processing: thresholding if enabled, else clipping if enabled.
/// `allow_clip` is false for samplers whose diffusers class has no `clip_sample` (DPM-Solver).
pub(crate) fn process_x0(config: &SchedulerConfig, x0: Tensor<4>, allow_clip: bool) -> Tensor<4> {
    if config.thresholding {
        dynamic_threshold(
            x0,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        )
    } else if allow_clip && config.clip_sample {
        let r = config.clip_sample_range;
        x0.clamp(-r, r)
    } else {
        x0
    }
}

/// torch.quantile(linear) of an ascending slice, as torch 2.15 computes it (checked bit for bit):
/// `q` is rounded to the tensor's dtype (f32), the rank `q * (n - 1)` and the interpolation
/// weight are formed in f64, and the lerp runs in f32 with the weight rounded to f32.
fn torch_quantile_sorted(sorted: &[f32], q: f32) -> f32 {
    let rank = q as f64 * (sorted.len() - 1) as f64;
    let below = rank.floor();
    let weight = (rank - below) as f32;
    let lo = sorted[below as usize];
    let hi = sorted[rank.ceil() as usize];
    // torch's lerp switches formula at weight 0.5 for accuracy.
    if weight.abs() < 0.5 {
        lo + weight * (hi - lo)
    } else {
        hi - (hi - lo) * (1.0 - weight)
    }
}

/// Reads a float tensor's values (converting whatever float dtype it holds to f32).
pub(crate) fn tensor_to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor converted to f32 yields f32 values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn quantile_matches_linear_interpolation() {
        let v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(torch_quantile_sorted(&v, 0.5), 5.0);
        assert!((torch_quantile_sorted(&v, 0.95) - 9.5).abs() < 1e-6);
    }

    #[test]
    fn threshold_scales_into_unit_range() {
        let device = Device::flex();
        let values: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [2, 1, 4, 4]), &device);
        let out = tensor_to_vec(dynamic_threshold(x, 0.9, 3.0));
        assert!(out.iter().all(|v| v.abs() <= 1.0));
        // Sample 0 holds -4..-0.25: its 0.9 quantile of |x| is above 3, so s = 3.
        assert!((out[0] + 1.0).abs() < 1e-6);
        assert!((out[15] - (-0.25 / 3.0)).abs() < 1e-6);
    }
}
