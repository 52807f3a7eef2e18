//! The results store: transactional cells, resume by key, sharding and merging.

use ldmscale_diffusion::SamplerId;
use ldmscale_study::bootstrap::{CiMethod, FidCi};
use ldmscale_study::cell::{Metric, Variant};
use ldmscale_study::store::{OnConflict, SCHEMA_VERSION, STUDY_FINGERPRINT, shard_owns};
use ldmscale_study::{Cell, Store};

fn cell(width: u32, steps: u32, cfg: f64, seed: u64) -> Cell {
    Cell {
        variant: Variant::Base,
        width,
        params: 1000 * width as u64,
        sampler: SamplerId::Ddim,
        steps,
        cfg,
        seed,
        n_samples: 16,
        fid: 100.0 / steps as f64 + cfg,
        fid_ci: Some(FidCi {
            low: 1.0,
            high: 2.0,
            method: CiMethod::Bootstrap,
            replicates: 100,
        }),
        in_domain_clip: Some(0.25),
        metrics: Vec::new(),
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

/// A shard's store as the sweep leaves it: its cells and the study's fingerprints.
fn shard_store(path: &std::path::Path, study: &str, cells: &[Cell]) -> Store {
    let mut s = Store::open(path).unwrap();
    s.set_meta(STUDY_FINGERPRINT, study).unwrap();
    for w in [32, 64] {
        s.set_meta(&format!("fingerprint:base:w{w}"), &format!("model{w}"))
            .unwrap();
    }
    for c in cells {
        s.insert(c).unwrap();
    }
    s
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
        let owned: Vec<Cell> = all
            .iter()
            .filter(|c| shard_owns(&c.key(), shard, 3))
            .cloned()
            .collect();
        drop(shard_store(&path, "study-a", &owned));
        let summary = merged.merge_from(&path, OnConflict::Refuse).unwrap();
        assert_eq!((summary.identical, summary.conflicting), (0, 0));
        total += summary.added;
    }
    assert_eq!(total, all.len(), "every key owned by exactly one shard");
    assert_eq!(merged.cells().unwrap().len(), all.len());
    assert_eq!(
        merged.meta(STUDY_FINGERPRINT).unwrap().as_deref(),
        Some("study-a")
    );
    // Merging a shard again finds every cell already there with equal values.
    let again = merged
        .merge_from(&dir.path().join("shard0.sqlite"), OnConflict::Refuse)
        .unwrap();
    assert_eq!(again.added, 0);
    assert!(again.identical > 0);
}

#[test]
fn stores_of_another_study_or_model_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.sqlite");
    let mut store = shard_store(&ours, "study-a", &[cell(32, 4, 2.0, 0)]);
    let other_study = dir.path().join("other.sqlite");
    drop(shard_store(&other_study, "study-b", &[cell(32, 8, 2.0, 0)]));
    let err = store
        .merge_from(&other_study, OnConflict::Replace)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.sqlite") && err.contains("different studies"),
        "{err}"
    );
    let other_model = dir.path().join("model.sqlite");
    let s = shard_store(&other_model, "study-a", &[cell(32, 8, 2.0, 0)]);
    s.set_meta("fingerprint:base:w32", "retrained").unwrap();
    drop(s);
    let err = store
        .merge_from(&other_model, OnConflict::Replace)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w32") && err.contains("different models"),
        "{err}"
    );
    let unnamed = dir.path().join("unnamed.sqlite");
    Store::open(&unnamed)
        .unwrap()
        .insert(&cell(32, 8, 2.0, 0))
        .unwrap();
    let err = store
        .merge_from(&unnamed, OnConflict::Replace)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no study fingerprint"), "{err}");
    assert_eq!(store.cells().unwrap(), vec![cell(32, 4, 2.0, 0)]);
    // The same refusals from read-only stores, before anything is opened for writing.
    drop(store);
    let read = |p: &std::path::Path| Store::open_read_only(p).unwrap();
    let ours = read(&ours);
    for other in [&other_study, &other_model, &unnamed] {
        assert!(ours.check_mergeable(&read(other)).is_err(), "{other:?}");
    }
    let twin = dir.path().join("twin.sqlite");
    drop(shard_store(&twin, "study-a", &[cell(32, 16, 2.0, 0)]));
    ours.check_mergeable(&read(&twin)).unwrap();
}

#[test]
fn conflicting_cells_are_refused_unless_a_side_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.sqlite");
    let theirs = dir.path().join("theirs.sqlite");
    let mut store = shard_store(&ours, "s", &[cell(32, 4, 2.0, 0)]);
    let mut changed = cell(32, 4, 2.0, 0);
    changed.fid += 1.0;
    drop(shard_store(
        &theirs,
        "s",
        &[changed.clone(), cell(64, 2, 1.0, 0)],
    ));
    let err = store
        .merge_from(&theirs, OnConflict::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 cells of") && err.contains("base w32 ddim x4 cfg 2 seed 0"),
        "{err}"
    );
    assert_eq!(
        store.cells().unwrap().len(),
        1,
        "a refused merge writes nothing"
    );
    let kept = store.merge_from(&theirs, OnConflict::Keep).unwrap();
    assert_eq!((kept.added, kept.conflicting, kept.replaced), (1, 1, 0));
    assert_eq!(store.cells().unwrap()[0], cell(32, 4, 2.0, 0));
    let replaced = store.merge_from(&theirs, OnConflict::Replace).unwrap();
    assert_eq!((replaced.added, replaced.replaced), (0, 1));
    assert_eq!(store.cells().unwrap()[0], changed);
}

#[test]
fn read_only_opening_changes_no_file_and_refuses_other_databases() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("app.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('x');")
        .unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let err = Store::open_read_only(&foreign).err().unwrap().to_string();
    assert!(
        err.contains("app.sqlite") && err.contains("not an ldmscale results store"),
        "{err}"
    );
    let err = Store::open(&foreign).err().unwrap().to_string();
    assert!(
        err.contains("users") && err.contains("left unchanged"),
        "{err}"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let missing = dir.path().join("missing.sqlite");
    assert!(Store::open_read_only(&missing).is_err());
    assert!(!missing.exists(), "nothing created");
    // A version 2 store reads upgraded, from a read-only file, and stays version 2 on disk.
    let old = dir.path().join("v2.sqlite");
    std::fs::copy(v2_fixture(), &old).unwrap();
    let before = std::fs::read(&old).unwrap();
    let mut perms = std::fs::metadata(&old).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&old, perms).unwrap();
    let store = Store::open_read_only(&old).unwrap();
    assert_eq!(store.cells().unwrap().len(), 5);
    assert_eq!(store.meta("schema_version").unwrap().as_deref(), Some("3"));
    drop(store);
    assert_eq!(std::fs::read(&old).unwrap(), before);
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

/// A store written by the first layout (no schema version, intervals without a method).
const V1_SCHEMA: &str = "
CREATE TABLE cells (
    width INTEGER NOT NULL, params INTEGER NOT NULL, sampler TEXT NOT NULL, steps INTEGER NOT NULL,
    cfg_milli INTEGER NOT NULL, cfg REAL NOT NULL, seed INTEGER NOT NULL, n_samples INTEGER NOT NULL,
    fid REAL NOT NULL, fid_ci_low REAL, fid_ci_high REAL, clip REAL, in_domain_clip REAL, cmmd REAL,
    evaluations INTEGER NOT NULL, gflops_per_eval REAL NOT NULL, sampling_gflops REAL NOT NULL,
    wall_seconds REAL NOT NULL, PRIMARY KEY (width, sampler, steps, cfg_milli, seed));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO cells VALUES (32, 1000, 'ddim', 4, 2000, 2.0, 0, 16, 10.0, 9.0, 11.0, NULL, NULL, NULL, 8, 0.5, 4.0, 1.0);
INSERT INTO cells VALUES (32, 1000, 'ddim', 8, 2000, 2.0, 0, 16, 8.0, NULL, NULL, NULL, NULL, NULL, 16, 0.5, 8.0, 1.0);
";

#[test]
fn version_one_stores_are_upgraded_and_newer_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(V1_SCHEMA)
        .unwrap();
    let mut store = Store::open(&path).unwrap();
    assert_eq!(
        store.meta("schema_version").unwrap().as_deref(),
        Some(SCHEMA_VERSION.to_string().as_str())
    );
    let cells = store.cells().unwrap();
    assert_eq!(cells.len(), 2);
    let ci = cells[0].fid_ci.expect("old interval kept");
    assert_eq!((ci.low, ci.high, ci.method), (9.0, 11.0, CiMethod::Unknown));
    assert!(cells[1].fid_ci.is_none());
    // New cells go in with their method, and the upgrade is idempotent.
    store.insert(&cell(64, 4, 1.0, 0)).unwrap();
    drop(store);
    let cells = Store::open(&path).unwrap().cells().unwrap();
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[2].fid_ci.unwrap().method, CiMethod::Bootstrap);

    let newer = dir.path().join("newer.sqlite");
    Store::open(&newer)
        .unwrap()
        .set_meta("schema_version", "99")
        .unwrap();
    let err = Store::open(&newer).err().expect("refused").to_string();
    assert!(
        err.contains("newer.sqlite") && err.contains("schema version 99"),
        "{err}"
    );
}

/// The committed store of schema version 2 (tools/fixtures/make_store_v2.py).
fn v2_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/store/results-v2.sqlite")
}

#[test]
fn version_two_stores_are_upgraded_in_place_keeping_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.sqlite");
    std::fs::copy(v2_fixture(), &path).unwrap();
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.meta("schema_version").unwrap().as_deref(), Some("3"));
    let cells = store.cells().unwrap();
    assert_eq!(cells.len(), 5);
    assert!(cells.iter().all(|c| c.variant == Variant::Base));
    let first = &cells[0];
    assert_eq!(
        (first.width, first.sampler, first.steps),
        (8, SamplerId::Ddim, 2)
    );
    assert_eq!((first.fid, first.in_domain_clip), (41.25, Some(3.5)));
    let ci = first.fid_ci.unwrap();
    assert_eq!(
        (ci.low, ci.high, ci.method, ci.replicates),
        (38.5, 44.75, CiMethod::Bootstrap, 20)
    );
    let unguided = cells
        .iter()
        .find(|c| c.width == 16 && c.steps == 8)
        .unwrap();
    assert!(unguided.fid_ci.is_none() && unguided.in_domain_clip.is_none());
    // The never-filled CLIP column's one value survives as a metric.
    assert_eq!(
        unguided.metrics,
        vec![Metric {
            name: "clip".into(),
            value: 24.5,
            ci: None
        }]
    );
    assert!(
        cells
            .iter()
            .any(|c| c.sampler == SamplerId::DpmSolver3M && c.in_domain_clip == Some(-1.25))
    );
    // The upgraded store takes new cells and opens again unchanged.
    store.insert(&cell(64, 4, 1.0, 0)).unwrap();
    drop(store);
    assert_eq!(Store::open(&path).unwrap().cells().unwrap().len(), 6);
}

#[test]
fn metrics_of_any_name_round_trip_and_replace_with_their_cell() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    let mut a = cell(32, 4, 2.0, 0);
    a.metrics = vec![
        Metric {
            name: "lpips".into(),
            value: 0.25,
            ci: None,
        },
        Metric {
            name: "psnr".into(),
            value: 21.5,
            ci: a.fid_ci,
        },
    ];
    store.insert(&a).unwrap();
    assert_eq!(store.cells().unwrap(), vec![a.clone()]);
    a.metrics.truncate(1);
    a.fid = 7.0;
    store.insert(&a).unwrap();
    assert_eq!(store.cells().unwrap(), vec![a.clone()]);
    store.insert(&cell(16, 4, 2.0, 0)).unwrap();
    assert_eq!(store.remove_width(Variant::Base, 32).unwrap(), 1);
    assert_eq!(store.cells().unwrap().len(), 1);
}

#[test]
fn cell_seeds_come_from_the_key_fields() {
    let a = cell(32, 4, 2.0, 0).key();
    assert_eq!(a.seed_for("bootstrap"), a.clone().seed_for("bootstrap"));
    assert_ne!(
        a.seed_for("bootstrap"),
        cell(32, 4, 2.0, 1).key().seed_for("bootstrap")
    );
    assert_ne!(a.seed_for("bootstrap"), a.seed_for("grid"));
}

#[test]
fn kept_features_follow_their_cells_through_remeasure_merge_and_removal() {
    use ldmscale_study::store::FeatureRows;
    let dir = tempfile::tempdir().unwrap();
    let rows = |v: f32| FeatureRows::new(vec![v, 1.0, 2.0, v], 2).unwrap();
    let shard = dir.path().join("shard.sqlite");
    let mut s = shard_store(&shard, "s", &[]);
    let (a, b) = (cell(32, 4, 2.0, 0), cell(64, 4, 2.0, 0));
    s.insert_with_features(&a, Some(&rows(0.5))).unwrap();
    s.insert_with_features(&b, Some(&rows(0.25))).unwrap();
    s.set_reference_features(&rows(9.0)).unwrap();
    s.set_variant_reference_features("super-res", &rows(7.0))
        .unwrap();
    assert_eq!(s.cell_features(&a.key()).unwrap(), Some(rows(0.5)));
    drop(s);

    let mut merged = Store::open(&dir.path().join("merged.sqlite")).unwrap();
    assert_eq!(merged.reference_features().unwrap(), None);
    merged.merge_from(&shard, OnConflict::Refuse).unwrap();
    assert_eq!(merged.cell_features(&b.key()).unwrap(), Some(rows(0.25)));
    assert_eq!(merged.reference_features().unwrap(), Some(rows(9.0)));
    // The SR cells' own reference set travels too.
    let sr = merged.variant_reference_features("super-res").unwrap();
    assert_eq!(sr, Some(rows(7.0)));

    // Measured again without features: the old rows no longer describe the cell.
    merged.insert(&a).unwrap();
    assert_eq!(merged.cell_features(&a.key()).unwrap(), None);
    merged.remove_width(Variant::Base, 64).unwrap();
    assert_eq!(merged.cell_features(&b.key()).unwrap(), None);
    assert!(FeatureRows::new(vec![1.0; 5], 2).is_err());
}
