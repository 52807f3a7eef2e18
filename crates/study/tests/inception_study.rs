//! The tiny study with FID on the FID Inception's features, when its weights are on this
//! machine. Its reference statistics go to a temporary cache, not the user's.

use burn::tensor::Device;
use ldmscale_study::config::{FidFeaturesKind, StudyConfig};
use ldmscale_study::{RunOptions, Store, pipeline};

#[test]
fn inception_fid_features_when_the_weights_are_present() {
    let weights = ldmscale_eval::default_inception_path();
    if !weights.exists() {
        // Printed, so `cargo test -- --nocapture` shows the skip.
        println!("SKIPPED: FID Inception weights absent (tools/fetch-assets.sh inception)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let assets = cache.path().join("assets/fid-inception");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::copy(&weights, assets.join(weights.file_name().unwrap())).unwrap();
    // This test binary runs this one test: the variable changes no other test's cache.
    unsafe { std::env::set_var("LDMSCALE_CACHE", cache.path()) };
    let mut config = StudyConfig::preset("tiny").unwrap();
    config.fid_features = FidFeaturesKind::Inception;
    config.widths = vec![8];
    config.val_examples = 8;
    config.sweep.samplers = vec![ldmscale_diffusion::SamplerId::Ddim];
    config.sweep.steps = vec![2];
    config.sweep.cfg = vec![1.0];
    config.sweep.samples_per_cell = 4;
    config.recipe.eval_every = 0;
    let out = cache.path().join("study");
    let summary = pipeline::run(&config, &out, &Device::flex(), &RunOptions::default()).unwrap();
    assert_eq!(summary.cells, 1);
    let html = std::fs::read_to_string(summary.report.unwrap()).unwrap();
    assert!(
        html.contains("FID Inception pool3"),
        "report names the features"
    );
    let cells = Store::open(&out.join("results.sqlite"))
        .unwrap()
        .cells()
        .unwrap();
    assert!(cells[0].fid.is_finite() && cells[0].fid > 0.0);
    assert!(
        cache.path().join("stats").is_dir(),
        "reference statistics in the temporary cache"
    );
}
