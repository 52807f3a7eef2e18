//! Converting a raw model output (eps / v / x0) into the predicted clean sample and noise.
//!
//! These are the DDIM/DDPM forms, written with `alphabar_t` and in diffusers' operation order;
//! DPM-Solver has its own sigma-based form in `dpm_solver.rs`.

use burn::tensor::{Tensor, TensorData};

use crate::error::{DiffusionError, Result};
use crate::schedule::PredictionType;

impl PredictionType {
    /// Predicted `(x0, eps)` from a model output at a timestep with cumulative alpha
    /// `alpha_prod`, shared by all samples of the batch.
    pub fn x0_and_eps(
        self,
        sample: Tensor<4>,
        model_output: Tensor<4>,
        alpha_prod: f32,
    ) -> (Tensor<4>, Tensor<4>) {
        let sqrt_a = alpha_prod.sqrt();
        let sqrt_b = (1.0 - alpha_prod).sqrt();
        match self {
            PredictionType::Epsilon => {
                let x0 = sample
                    .sub(model_output.clone().mul_scalar(sqrt_b))
                    .div_scalar(sqrt_a);
                (x0, model_output)
            }
            PredictionType::Sample => {
                let eps = sample
                    .sub(model_output.clone().mul_scalar(sqrt_a))
                    .div_scalar(sqrt_b);
                (model_output, eps)
            }
            PredictionType::VPrediction => {
                let x0 = sample
                    .clone()
                    .mul_scalar(sqrt_a)
                    .sub(model_output.clone().mul_scalar(sqrt_b));
                let eps = model_output
                    .mul_scalar(sqrt_a)
                    .add(sample.mul_scalar(sqrt_b));
                (x0, eps)
            }
        }
    }

    /// Predicted `x0` only (DDPM needs no eps).
    pub fn x0(self, sample: Tensor<4>, model_output: Tensor<4>, alpha_prod: f32) -> Tensor<4> {
        let sqrt_a = alpha_prod.sqrt();
        let sqrt_b = (1.0 - alpha_prod).sqrt();
        match self {
            PredictionType::Epsilon => sample
                .sub(model_output.mul_scalar(sqrt_b))
                .div_scalar(sqrt_a),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample
                .mul_scalar(sqrt_a)
                .sub(model_output.mul_scalar(sqrt_b)),
        }
    }

    /// Like [`PredictionType::x0_and_eps`] with one cumulative alpha per sample (training,
    /// distillation), broadcast over channels and pixels.
    pub fn x0_and_eps_per_sample(
        self,
        sample: Tensor<4>,
        model_output: Tensor<4>,
        alpha_prods: &[f32],
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let sqrt_a = per_sample_coefficient(&sample, alpha_prods.iter().map(|a| a.sqrt()))?;
        let sqrt_b = per_sample_coefficient(&sample, alpha_prods.iter().map(|a| (1.0 - a).sqrt()))?;
        Ok(match self {
            PredictionType::Epsilon => {
                let x0 = sample.sub(model_output.clone().mul(sqrt_b)).div(sqrt_a);
                (x0, model_output)
            }
            PredictionType::Sample => {
                let eps = sample.sub(model_output.clone().mul(sqrt_a)).div(sqrt_b);
                (model_output, eps)
            }
            PredictionType::VPrediction => {
                let x0 = sample
                    .clone()
                    .mul(sqrt_a.clone())
                    .sub(model_output.clone().mul(sqrt_b.clone()));
                let eps = model_output.mul(sqrt_a).add(sample.mul(sqrt_b));
                (x0, eps)
            }
        })
    }
}

/// A `[B, 1, 1, 1]` tensor of per-sample values on `like`'s device, checked against its batch.
pub(crate) fn per_sample_coefficient(
    like: &Tensor<4>,
    values: impl IntoIterator<Item = f32>,
) -> Result<Tensor<4>> {
    let values: Vec<f32> = values.into_iter().collect();
    let batch = like.dims()[0];
    if values.len() != batch {
        return Err(DiffusionError::Shape(format!(
            "{} per-sample values for a batch of {batch}",
            values.len()
        )));
    }
    Ok(Tensor::from_data(
        TensorData::new(values, [batch, 1, 1, 1]),
        &like.device(),
    ))
}
