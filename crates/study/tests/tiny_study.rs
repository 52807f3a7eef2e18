//! The whole study end to end on the `tiny` preset: data, first stage, text encoder, a family of
//! two widths, a sweep, evaluation, analysis and the report; then a resume that recomputes nothing.

use ldmscale_study::Store;
use ldmscale_study::bootstrap::CiMethod;
use ldmscale_study::config::StudyConfig;
use ldmscale_study::pipeline;
use ldmscale_study::plan::{Budget, recommend};

#[test]
fn tiny_study_runs_end_to_end_and_resumes() {
    let config = StudyConfig::preset("tiny").unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = pipeline::run(&config, out.path(), None).unwrap();
    let expected = config.widths.len() * config.cells().len();
    assert_eq!(summary.cells, expected);
    let html = std::fs::read_to_string(&summary.report).unwrap();
    assert!(html.contains("The paper's findings on this run"));
    assert!(html.contains("<svg") && html.contains("data:image/png;base64,"));
    let cells = Store::open(&out.path().join("results.sqlite"))
        .unwrap()
        .cells()
        .unwrap();
    assert!(cells.iter().all(|c| c.fid.is_finite() && c.fid >= 0.0));
    // Every cell has its bootstrap interval around its FID.
    for c in &cells {
        let ci = c.fid_ci.expect("bootstrap interval");
        assert_eq!(ci.method, CiMethod::Bootstrap);
        assert_eq!(ci.replicates, config.sweep.bootstrap);
        assert!(
            ci.low <= c.fid && c.fid <= ci.high && ci.low < ci.high,
            "{c:?}"
        );
    }
    // The training set went through the on-disk latent cache.
    assert!(out.path().join("latents/train/manifest.json").is_file());
    // The equal-cost grid: one labelled row per width, as an inline PNG.
    assert!(html.contains("Samples at equal sampling cost (Fig. 10)"));
    for w in &config.widths {
        assert!(
            html.contains(&format!("<b>{w} filters</b>")),
            "grid row of width {w}"
        );
    }
    assert!(html.contains("learning check"));
    // Guided cells cost twice the evaluations of unguided ones at the same steps.
    for c in &cells {
        let per_step = if c.cfg > 1.0 { 2 } else { 1 };
        assert_eq!(c.evaluations, per_step * c.steps as u64, "{c:?}");
    }
    // The models learned something: the largest model's best FID at the most steps beats its
    // worst (1-step-like) setting.
    let largest = *config.widths.iter().max().unwrap() as u32;
    let mine: Vec<_> = cells.iter().filter(|c| c.width == largest).collect();
    let best = mine.iter().map(|c| c.fid).fold(f64::MAX, f64::min);
    let worst = mine.iter().map(|c| c.fid).fold(0.0, f64::max);
    assert!(best < worst, "best {best} worst {worst}");
    let rec = recommend(&cells, Budget::Gflops(1e9)).unwrap();
    assert!(config.widths.contains(&(rec.best.width as usize)));

    let manifest = out.path().join("latents/train/manifest.json");
    let written = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    let again = pipeline::run(&config, out.path(), None).unwrap();
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        written,
        "the resumed study re-encoded its training set"
    );
    assert_eq!(again.cells, expected);
    assert!(
        again.seconds < summary.seconds,
        "resume recomputed: {} vs {}",
        again.seconds,
        summary.seconds
    );
}

#[test]
fn inception_fid_features_when_the_weights_are_present() {
    if !ldmscale_eval::default_inception_path().exists() {
        eprintln!("skipped: FID Inception weights absent (tools/fetch-assets.sh inception)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut config = StudyConfig::preset("tiny").unwrap();
    config.fid_features = "inception".into();
    config.widths = vec![8];
    config.val_examples = 8;
    config.sweep.samplers = vec!["ddim".into()];
    config.sweep.steps = vec![2];
    config.sweep.cfg = vec![1.0];
    config.sweep.samples_per_cell = 4;
    config.recipe.eval_every = 0;
    let out = cache.path().join("study");
    let summary = pipeline::run(&config, &out, None).unwrap();
    assert_eq!(summary.cells, 1);
    let html = std::fs::read_to_string(&summary.report).unwrap();
    assert!(
        html.contains("FID Inception pool3"),
        "report names the features"
    );
    let cells = Store::open(&out.join("results.sqlite"))
        .unwrap()
        .cells()
        .unwrap();
    assert!(cells[0].fid.is_finite() && cells[0].fid > 0.0);
}
