//! The results store: transactional cells, resume by key, sharding and merging.

use ldmscale_study::store::shard_owns;
use ldmscale_study::{Cell, Store};

fn cell(width: u32, steps: u32, cfg: f64, seed: u64) -> Cell {
    Cell {
        width,
        params: 1000 * width as u64,
        sampler: "ddim".into(),
        steps,
        cfg,
        seed,
        n_samples: 16,
        fid: 100.0 / steps as f64 + cfg,
        fid_ci: Some((1.0, 2.0)),
        clip: None,
        in_domain_clip: Some(0.25),
        cmmd: None,
        evaluations: steps as u64 * 2,
        gflops_per_eval: 0.5,
        wall_seconds: 3.0,
    }
}

#[test]
fn cells_round_trip_and_resume_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.sqlite");
    let mut store = Store::open(&path).unwrap();
    let a = cell(32, 4, 2.5, 0);
    assert!(!store.contains(&a.key()).unwrap());
    store.insert(&a).unwrap();
    store.insert(&cell(64, 8, 1.0, 1)).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert!(store.contains(&a.key()).unwrap());
    let cells = store.cells().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0], a);
    assert_eq!(cells[0].sampling_gflops(), 4.0);
}

#[test]
fn shards_partition_the_keys_and_merge_back() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Cell> = (0..40)
        .map(|i| cell(32 * (1 + i % 2), 1 + i / 2, 1.0 + (i % 3) as f64, 0))
        .collect();
    let mut merged = Store::open(&dir.path().join("merged.sqlite")).unwrap();
    let mut total = 0;
    for shard in 0..3 {
        let path = dir.path().join(format!("shard{shard}.sqlite"));
        let mut s = Store::open(&path).unwrap();
        for c in all.iter().filter(|c| shard_owns(&c.key(), shard, 3)) {
            s.insert(c).unwrap();
        }
        drop(s);
        total += merged.merge_from(&path).unwrap();
    }
    assert_eq!(total, all.len(), "every key owned by exactly one shard");
    assert_eq!(merged.cells().unwrap().len(), all.len());
}

#[test]
fn a_file_that_is_not_a_store_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.sqlite");
    std::fs::write(
        &path,
        b"this is not sqlite at all, just text padding it out to a page",
    )
    .unwrap();
    let err = Store::open(&path)
        .err()
        .expect("junk is rejected")
        .to_string();
    assert!(err.contains("junk.sqlite"), "{err}");
}
