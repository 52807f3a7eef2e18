//! Leave-one-width-out validation: fit the law without a width, predict that width's frontier,
//! compare with what was measured. A law that cannot predict a measured width has no business
//! answering for an untrained one.

use serde::Serialize;

use super::{FrontierPoint, MIN_WIDTHS, Prediction, ScalingLaw};

/// One held-out width's measured frontier beside the predictions of a fit without it.
#[derive(Clone, Debug, Serialize)]
pub struct HeldOutWidth {
    /// The width left out.
    pub width: u32,
    /// Its frontier points, each with the prediction of the fit to the other widths.
    pub predictions: Vec<(FrontierPoint, Prediction)>,
    /// Mean of `|predicted - measured| / measured`.
    pub mean_abs_relative_error: f64,
    /// Points whose measured FID lies inside the prediction interval.
    pub covered: usize,
}

/// Leaves out each width in turn (needs [`MIN_WIDTHS`] + 1 widths); `replicates` bootstrap
/// refits per fit give the prediction intervals.
pub fn leave_one_width_out(
    points: &[FrontierPoint],
    replicates: usize,
    seed: u64,
) -> Result<Vec<HeldOutWidth>, String> {
    let mut widths: Vec<u32> = points.iter().map(|p| p.width).collect();
    widths.sort();
    widths.dedup();
    if widths.len() <= MIN_WIDTHS {
        return Err(format!(
            "leave-one-width-out needs at least {} widths (a fit needs {MIN_WIDTHS} after one is left out); the sweep has {}",
            MIN_WIDTHS + 1,
            widths.len()
        ));
    }
    widths
        .iter()
        .map(|&held| {
            let (out, kept): (Vec<FrontierPoint>, Vec<FrontierPoint>) =
                points.iter().cloned().partition(|p| p.width == held);
            let law = ScalingLaw::new(&kept, replicates, seed ^ held as u64)
                .map_err(|e| format!("without width {held}: {e}"))?;
            Ok(held_out(held, out, &law))
        })
        .collect()
}

fn held_out(width: u32, measured: Vec<FrontierPoint>, law: &ScalingLaw) -> HeldOutWidth {
    let predictions: Vec<(FrontierPoint, Prediction)> = measured
        .into_iter()
        .map(|p| {
            let prediction = law.predict(p.params, p.evaluations);
            (p, prediction)
        })
        .collect();
    let n = predictions.len().max(1) as f64;
    HeldOutWidth {
        width,
        mean_abs_relative_error: predictions
            .iter()
            .map(|(p, q)| (q.fid - p.fid).abs() / p.fid)
            .sum::<f64>()
            / n,
        covered: predictions
            .iter()
            .filter(|(p, q)| q.low <= p.fid && p.fid <= q.high)
            .count(),
        predictions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling_law::tests::{TRUE_LAW, synthetic};

    #[test]
    fn a_true_law_predicts_each_left_out_width() {
        let points = synthetic(&TRUE_LAW, 0.03, 4);
        let held = leave_one_width_out(&points, 60, 1).unwrap();
        assert_eq!(
            held.iter().map(|h| h.width).collect::<Vec<_>>(),
            vec![8, 16, 24, 32]
        );
        // Interpolated widths are predicted within a few times the scatter; the extremes are
        // extrapolations and allowed more.
        for h in &held[1..3] {
            assert!(h.mean_abs_relative_error < 0.08, "{h:?}");
            assert!(h.covered * 5 >= h.predictions.len() * 3, "{h:?}");
        }
    }

    #[test]
    fn a_width_that_breaks_the_law_is_caught() {
        // Width 24 twice as bad as the law says: its held-out error shows it.
        let mut points = synthetic(&TRUE_LAW, 0.0, 4);
        for p in points.iter_mut().filter(|p| p.width == 24) {
            p.fid *= 2.0;
        }
        let held = leave_one_width_out(&points, 40, 1).unwrap();
        let w24 = held.iter().find(|h| h.width == 24).unwrap();
        assert!(w24.mean_abs_relative_error > 0.3, "{w24:?}");
        assert!(w24.covered < w24.predictions.len(), "{w24:?}");
    }

    #[test]
    fn three_widths_are_too_few_to_leave_one_out() {
        let points: Vec<FrontierPoint> = synthetic(&TRUE_LAW, 0.0, 1)
            .into_iter()
            .filter(|p| p.width != 32)
            .collect();
        assert!(
            leave_one_width_out(&points, 10, 0)
                .unwrap_err()
                .contains("at least 4 widths")
        );
    }
}
