//! Inference timestep selection ("timestep_spacing"), copying diffusers' numpy arithmetic.
//!
//! numpy works in f64 and rounds half to even, which decides ties such as 937.5 -> 938.

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};

/// How inference timesteps are spread over `0..T` (diffusers `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `i * (T // N) + steps_offset`, descending (DDIM paper, SD default for DDIM).
    Leading,
    /// `round(arange(T, 0, -T/N)) - 1`: always starts at `T - 1`.
    Trailing,
    /// `round(linspace(0, T - 1, N))`, descending.
    Linspace,
}

/// Timesteps of `DDIMScheduler.set_timesteps` / `DDPMScheduler.set_timesteps`, descending.
pub fn ddim_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Result<Vec<i64>> {
    check_steps(num_train_timesteps, num_steps)?;
    let t = num_train_timesteps as i64;
    let n = num_steps as i64;
    let steps = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, num_steps)
            .into_iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| v.round_ties_even() as i64 - 1)
            .collect(),
    };
    check_range(steps, num_train_timesteps)
}

/// Timesteps of `DPMSolverMultistepScheduler.set_timesteps` (no Karras/exponential sigmas).
///
/// `last_timestep` is `T` unless `lambda_min_clipped` cuts the schedule short.
pub fn dpm_solver_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    last_timestep: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Result<Vec<i64>> {
    check_steps(num_train_timesteps, num_steps)?;
    let last = last_timestep as i64;
    let n = num_steps as i64;
    let steps = match spacing {
        // N + 1 points, the final 0 dropped: the last step goes to sigma_last instead.
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, (last - 1) as f64, num_steps + 1)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            np_arange(last as f64, 0.0, -(num_train_timesteps as f64 / n as f64))
                .into_iter()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect()
        }
    };
    check_range(steps, num_train_timesteps)
}

fn check_steps(num_train_timesteps: usize, num_steps: usize) -> Result<()> {
    if num_steps == 0 || num_steps > num_train_timesteps {
        return Err(DiffusionError::config(
            "num_inference_steps",
            format!("{num_steps} must be in 1..={num_train_timesteps} (num_train_timesteps)"),
        ));
    }
    Ok(())
}

fn check_range(steps: Vec<i64>, num_train_timesteps: usize) -> Result<Vec<i64>> {
    match steps
        .iter()
        .find(|&&s| s < 0 || s >= num_train_timesteps as i64)
    {
        Some(s) => Err(DiffusionError::config(
            "steps_offset",
            format!(
                "timestep {s} falls outside 0..{num_train_timesteps}; lower steps_offset or the step count"
            ),
        )),
        None => Ok(steps),
    }
}

/// numpy.linspace(start, stop, num) in f64: `i * step + start`, last point set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy.arange(start, stop, step) for floats: length `ceil((stop - start) / step)`, values
/// `start + i * delta` with `delta = (start + step) - start` (numpy's DOUBLE_fill).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_ddim_leading() {
        let ts = ddim_timesteps(TimestepSpacing::Leading, 1000, 10, 1).unwrap();
        assert_eq!(ts, vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
        let ts = ddim_timesteps(TimestepSpacing::Leading, 1000, 4, 1).unwrap();
        assert_eq!(ts, vec![751, 501, 251, 1]);
    }

    #[test]
    fn dpm_linspace_rounds_half_to_even() {
        let ts = dpm_solver_timesteps(TimestepSpacing::Linspace, 1000, 1000, 6, 0).unwrap();
        assert_eq!(ts, vec![999, 832, 666, 500, 333, 166]);
    }

    #[test]
    fn trailing_starts_at_last_timestep() {
        let ts = ddim_timesteps(TimestepSpacing::Trailing, 1000, 16, 0).unwrap();
        assert_eq!(ts.len(), 16);
        assert_eq!(ts[0], 999);
        // 1000 - 62.5 = 937.5 rounds to even.
        assert_eq!(ts[1], 937);
    }

    #[test]
    fn too_many_steps_is_an_error() {
        let err = ddim_timesteps(TimestepSpacing::Leading, 1000, 1001, 0).unwrap_err();
        assert!(err.to_string().contains("num_inference_steps"));
    }
}
