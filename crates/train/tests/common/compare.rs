//! Two runs of the same recipe compared step by step: the losses and gradient norms of every
//! logged step, and the final weights, AdamW moments and EMA (for data parallelism, which must
//! equal one process with the whole batch up to float rounding).

use std::path::Path;

use burn::tensor::Device;
use ldmscale_train::checkpoint;
use ldmscale_train::params::{Named, read_named};

/// Final weights, AdamW moments and EMA, by group and name.
fn final_state(run: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, dir) = checkpoint::list(run).pop().expect("a checkpoint");
    let bytes = std::fs::read(dir.join("optimizer.safetensors")).unwrap();
    let mut out = Vec::new();
    for group in ["param/", "m/", "ema/"] {
        let named: Named = read_named(&bytes, group, &Device::flex()).unwrap();
        for (k, v) in named {
            out.push((
                format!("{group}{k}"),
                v.into_data().try_to_vec::<f32>().unwrap(),
            ));
        }
    }
    out
}

/// (loss, grad_norm) of every step.
fn metrics(run: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Asserts that run `other` trained what run `one` did (`steps` logged steps); `what` names
/// the split in messages.
pub fn assert_same_run(one: &Path, other: &Path, steps: usize, what: &str) {
    assert_same_run_within(one, other, steps, what, 1e-3);
}

/// [`assert_same_run`] with each parameter held to `param_tol` relative L2 (the whole state
/// stays at 1e-5). AdamW divides by the gradient's own scale, so a parameter whose gradient is
/// near zero (a norm's bias) carries rounding-level differences of the sums at full step size.
pub fn assert_same_run_within(one: &Path, other: &Path, steps: usize, what: &str, param_tol: f64) {
    // Loss and gradient norm are means over the whole batch: a shard weighted wrongly or a
    // sum instead of a mean shows here even where AdamW's scale invariance would hide it.
    let (m1, m2) = (metrics(one), metrics(other));
    assert_eq!((m1.len(), m2.len()), (steps, steps), "{what}: logged steps");
    for (step, ((l1, g1), (l2, g2))) in m1.iter().zip(&m2).enumerate() {
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs(),
            "{what}: step {step}: loss {l1} vs {l2}"
        );
        assert!(
            (g1 - g2).abs() <= 1e-4 * g1.abs(),
            "{what}: step {step}: grad norm {g1} vs {g2}"
        );
    }
    let (a, b) = (final_state(one), final_state(other));
    assert_eq!(a.len(), b.len());
    let all_a: Vec<f32> = a.iter().flat_map(|(_, v)| v.clone()).collect();
    let all_b: Vec<f32> = b.iter().flat_map(|(_, v)| v.clone()).collect();
    let whole = rel_l2(&all_b, &all_a);
    assert!(whole < 1e-5, "{what}: whole state differs by {whole:e}");
    for ((name, x), (name_b, y)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        let e = rel_l2(y, x);
        assert!(e < param_tol, "{what}: {name} differs by {e:e}");
    }
}
