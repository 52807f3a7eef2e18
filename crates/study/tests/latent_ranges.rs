//! The latent cache built by array tasks (`--only latents --shard i/N`, issue 23 item 4): each
//! task encodes its range of whole shards, and the run after them joins the ranges into a cache
//! equal to the one a single process builds.

use std::path::Path;

use burn::tensor::Device;
use ldmscale_data::LatentCache;
use ldmscale_data::cache::{MANIFEST, Manifest};
use ldmscale_study::config::{FirstStage, StudyConfig};
use ldmscale_study::{RunOptions, StudyError, pipeline};

fn run(config: &StudyConfig, out: &Path, only: &str, shard: Option<(usize, usize)>) {
    let options = RunOptions {
        shard,
        only: Some(only.split(',').map(String::from).collect()),
    };
    match pipeline::run(config, out, &Device::flex(), &options) {
        Ok(_) | Err(StudyError::OnlyDone) => {}
        Err(e) => panic!("--only {only} --shard {shard:?}: {e}"),
    }
}

fn shard_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
    let m: Manifest = serde_json::from_str(&text).unwrap();
    let files = m.shards.iter().map(|s| dir.join(&s.file));
    files.map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn array_tasks_build_the_cache_a_single_process_builds() {
    let mut config = StudyConfig::preset("tiny").unwrap();
    config.train_examples = 600; // three shards of 256
    if let FirstStage::Train { steps, .. } = &mut config.first_stage {
        *steps = 4;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    run(&config, out, "data,first-stage,text-encoder", None);
    for i in [1, 0] {
        run(&config, out, "latents", Some((i, 2)));
    }
    let cache = out.join("latents/train");
    assert!(
        !cache.join(MANIFEST).exists(),
        "an array task joined the ranges"
    );
    let parts = ldmscale_data::ranges_in(&cache).unwrap();
    assert_eq!(parts, [0..256, 256..600]);
    run(&config, out, "latents", None);
    let joined = LatentCache::open_any(&cache).unwrap();
    let key = joined.key().clone();
    let all: Vec<usize> = (0..600).collect();
    let values = joined.batch(&all).unwrap();
    let bytes = shard_bytes(&cache);
    assert_eq!(bytes.len(), 3);

    // The same stage in one process, on the same encoders.
    std::fs::rename(&cache, out.join("joined")).unwrap();
    run(&config, out, "latents", None);
    let one = LatentCache::open(&cache, &key).unwrap();
    assert!(ldmscale_data::ranges_in(&cache).unwrap().is_empty());
    assert_eq!(one.batch(&all).unwrap(), values);
    assert_eq!(shard_bytes(&cache), bytes);
}
