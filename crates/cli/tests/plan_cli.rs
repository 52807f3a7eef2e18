//! `ldmscale plan` on a results store: the recommendation with its expected FID and 95%
//! interval, and the margin over the runner-up with its interval, decided or not.

use std::process::Command;

use ldmscale_diffusion::SamplerId;
use ldmscale_study::bootstrap::{CiMethod, FidCi};
use ldmscale_study::{Cell, Store, Variant};

fn cell(width: u32, steps: u32, fid: f64, half: f64) -> Cell {
    Cell {
        variant: Variant::Base,
        width,
        params: 1000 * width as u64,
        sampler: SamplerId::Ddim,
        steps,
        cfg: 2.0,
        seed: 0,
        n_samples: 32,
        fid,
        fid_ci: Some(FidCi {
            low: fid - half,
            high: fid + half,
            method: CiMethod::Bootstrap,
            replicates: 100,
        }),
        in_domain_clip: None,
        metrics: Vec::new(),
        evaluations: 2 * steps as u64,
        gflops_per_eval: width as f64 / 8.0,
        wall_seconds: 1.0,
    }
}

fn plan(store: &std::path::Path, budget: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .args(["plan", "--store"])
        .arg(store)
        .args(["--budget-gflops", budget])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn plan_prints_the_expected_fid_with_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.sqlite");
    let mut store = Store::open(&path).unwrap();
    // Width 8 at 4 steps: 8 GFLOPs, FID 30 +- 2; width 16 at 2 steps: 8 GFLOPs, FID 31 +- 2.
    store.insert(&cell(8, 4, 30.0, 2.0)).unwrap();
    store.insert(&cell(16, 2, 31.0, 2.0)).unwrap();
    store.insert(&cell(16, 8, 10.0, 0.5)).unwrap();
    drop(store);

    let text = plan(&path, "8");
    assert!(text.contains("Run the 8-filter model"), "{text}");
    assert!(
        text.contains("Expected FID 30.00 (95% CI 28.00..32.00, bootstrap of 100 replicates)"),
        "{text}"
    );
    assert!(
        text.contains("Margin over it: FID 1.00 (95% CI -3.00..5.00, the range the two intervals allow): not decided"),
        "{text}"
    );

    let text = plan(&path, "100");
    assert!(text.contains("Run the 16-filter model"), "{text}");
    assert!(
        text.contains("(95% CI 9.50..10.50, bootstrap of 100 replicates)"),
        "{text}"
    );
    assert!(
        text.contains("Margin over it: FID 20.00 (95% CI 17.50..22.50, the range the two intervals allow): decided."),
        "{text}"
    );
}

/// `plan --width`: the scaling law's answer for a width never trained, marked as extrapolated;
/// refused with a reason where the store has too few widths.
#[test]
fn plan_extrapolates_an_untrained_width_from_the_scaling_law() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.sqlite");
    let mut store = Store::open(&path).unwrap();
    // FID = 2 + 30 / sqrt(width) + 40 / evaluations: larger is better, more steps too.
    let fid = |w: u32, steps: u32| 2.0 + 30.0 / (w as f64).sqrt() + 40.0 / (2 * steps) as f64;
    for w in [8u32, 16, 32] {
        for steps in [1u32, 2, 4, 8] {
            store.insert(&cell(w, steps, fid(w, steps), 0.5)).unwrap();
        }
    }
    drop(store);
    let run = |width: &str, budget: &str| {
        Command::new(env!("CARGO_BIN_EXE_ldmscale"))
            .args(["plan", "--store"])
            .arg(&path)
            .args(["--budget-gflops", budget, "--width", width])
            .output()
            .unwrap()
    };
    // Width 24: 3 GFLOPs per evaluation, so 30 GFLOPs buy 10 evaluations.
    let out = run("24", "30");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Extrapolated, not measured: the 24-filter model (~24000 parameters, 3.0000 GFLOPs per evaluation) with 10 evaluations per image"),
        "{text}"
    );
    let predicted: f64 = text
        .split("reach FID ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("a predicted FID");
    let truth = 2.0 + 30.0 / 24f64.sqrt() + 4.0;
    assert!((predicted - truth).abs() < 0.5, "{predicted} vs {truth}");

    let mut store = Store::open(&path).unwrap();
    store.remove_width(Variant::Base, 32).unwrap();
    drop(store);
    let out = run("24", "30");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no scaling law: a scaling-law fit needs at least 3 widths"),
        "{err}"
    );
}
