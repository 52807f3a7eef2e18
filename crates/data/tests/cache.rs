//! The latent cache: round trip through safetensors shards, resumption, and refusal of a cache
//! built for another setting.

use std::path::Path;

use ldmscale_data::cache::{MANIFEST, Manifest};
use ldmscale_data::{
    CacheKey, CachedBatch, CachedText, Crop, DataError, LatentCache, LatentCacheWriter,
    StorageDtype, TextStorage, TokenDtype, file_sha256, range_dir, split_ranges,
};
use ldmscale_testkit::assert_mentions;

fn key(dtype: StorageDtype) -> CacheKey {
    CacheKey {
        dataset: "shapes:seed=3".into(),
        split: "train (val fraction 0.01, salt 0)".into(),
        resolution: [32, 32],
        crop: Crop::Center,
        image_encoder: "tiny-vae".into(),
        image_encoder_hash: "ab12".into(),
        text_encoder: "all-MiniLM-L6-v2".into(),
        text_encoder_hash: "cd34".into(),
        latent_shape: [4, 4, 4],
        text_shape: [5, 3],
        scaling_factor: 0.18215,
        dtype,
        text_storage: None,
    }
}

/// The states and mask of a batch read from a states cache.
fn states(batch: &CachedBatch) -> (&[f32], &[u8]) {
    match &batch.text {
        CachedText::States { states, mask } => (states, mask),
        CachedText::Tokens(_) => panic!("a states cache read back token ids"),
    }
}

/// Example `i`'s arrays: distinct, non-round values.
fn arrays(i: usize) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
    let latent = (0..64)
        .map(|k| (i as f32 * 0.731 + k as f32 * 0.113).sin())
        .collect();
    let text = (0..15)
        .map(|k| (i as f32 * 1.37 - k as f32 * 0.29).cos() * 3.0)
        .collect();
    let mask = (0..5).map(|k| (k <= i % 5) as u8).collect();
    (latent, text, mask)
}

fn fill(dir: &Path, key: CacheKey, n: usize, shard: usize) -> Manifest {
    let mut w = LatentCacheWriter::create(dir, key, shard).unwrap();
    for i in 0..n {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_f32_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let m = fill(dir.path(), key(StorageDtype::F32), 11, 4);
    assert_eq!(m.count, 11);
    assert_eq!(
        m.shards.iter().map(|s| s.count).collect::<Vec<_>>(),
        [4, 4, 3]
    );
    for s in &m.shards {
        assert!(dir.path().join(&s.file).is_file());
    }

    let cache = LatentCache::open(dir.path(), &key(StorageDtype::F32)).unwrap();
    assert_eq!(cache.len(), 11);
    for i in 0..11 {
        assert_eq!(cache.id(i).unwrap(), format!("ex-{i}"));
    }
    let err = cache.id(11).unwrap_err();
    assert!(matches!(err, DataError::OutOfRange { .. }), "{err}");
    // Across shards, out of order, with a repeat.
    let order = [10, 0, 5, 4, 3, 5];
    let batch = cache.batch(&order).unwrap();
    assert_eq!(batch.ids, order.map(|i| format!("ex-{i}")));
    for (b, &i) in order.iter().enumerate() {
        let (l, t, m) = arrays(i);
        assert_eq!(&batch.latents[b * 64..(b + 1) * 64], &l[..]);
        assert_eq!(&states(&batch).0[b * 15..(b + 1) * 15], &t[..]);
        assert_eq!(&states(&batch).1[b * 5..(b + 1) * 5], &m[..]);
    }
    let err = cache.batch(&[11]).unwrap_err();
    assert!(matches!(err, DataError::OutOfRange { .. }), "{err}");

    // The shards are ordinary safetensors files, readable by any safetensors reader.
    let bytes = std::fs::read(dir.path().join("shard-00001.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latents").unwrap().shape(), [4, 4, 4, 4]);
    assert_eq!(st.tensor("text_states").unwrap().shape(), [4, 5, 3]);
    assert_eq!(
        st.tensor("text_mask").unwrap().dtype(),
        safetensors::Dtype::U8
    );
}

#[test]
fn round_trip_f16_is_close() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), key(StorageDtype::F16), 3, 8);
    let cache = LatentCache::open(dir.path(), &key(StorageDtype::F16)).unwrap();
    let batch = cache.batch(&[2]).unwrap();
    let (l, t, _) = arrays(2);
    for (a, b) in batch
        .latents
        .iter()
        .zip(&l)
        .chain(states(&batch).0.iter().zip(&t))
    {
        assert!((a - b).abs() <= b.abs() * 1e-3 + 1e-6, "{a} vs {b}");
    }
    assert_ne!(batch.latents, l, "stored in half precision");
}

#[test]
fn another_setting_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), key(StorageDtype::F32), 2, 8);
    let mut other = key(StorageDtype::F32);
    other.resolution = [64, 64];
    other.image_encoder_hash = "ffff".into();
    let err = LatentCache::open(dir.path(), &other).err().unwrap();
    assert!(matches!(err, DataError::CacheKeyMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("resolution: cache has [32,32], asked for [64,64]"),
        "{msg}"
    );
    assert!(msg.contains("image_encoder_hash"), "{msg}");
    assert!(
        !msg.contains("text_encoder"),
        "only differing fields: {msg}"
    );
    // Writing into it with another key is refused the same way.
    let err = LatentCacheWriter::create(dir.path(), other, 8)
        .err()
        .unwrap();
    assert!(matches!(err, DataError::CacheKeyMismatch { .. }));
    // And a finished cache is not reopened for writing.
    let err = LatentCacheWriter::create(dir.path(), key(StorageDtype::F32), 8)
        .err()
        .unwrap();
    assert!(err.to_string().contains("already complete"), "{err}");
    // Caches for distinct keys get distinct folders.
    let root = Path::new("/caches");
    assert_ne!(
        key(StorageDtype::F32).dir_in(root),
        key(StorageDtype::F16).dir_in(root)
    );
    let dir_name = key(StorageDtype::F32).dir_in(root);
    assert!(
        dir_name
            .to_string_lossy()
            .starts_with("/caches/shapes-32x32-"),
        "{dir_name:?}"
    );
}

#[test]
fn interrupted_encoding_resumes_at_the_last_shard() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LatentCacheWriter::create(dir.path(), key(StorageDtype::F32), 3).unwrap();
    for i in 0..7 {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    drop(w); // a crash: example 6 was pending, shards 0-1 (examples 0-5) are on disk
    let err = LatentCache::open(dir.path(), &key(StorageDtype::F32))
        .err()
        .unwrap();
    assert!(err.to_string().contains("incomplete"), "{err}");

    let mut w = LatentCacheWriter::create(dir.path(), key(StorageDtype::F32), 3).unwrap();
    assert_eq!(w.len(), 6);
    for i in w.len()..10 {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    w.finish().unwrap();
    let resumed = LatentCache::open(dir.path(), &key(StorageDtype::F32)).unwrap();

    let fresh_dir = tempfile::tempdir().unwrap();
    fill(fresh_dir.path(), key(StorageDtype::F32), 10, 3);
    let fresh = LatentCache::open(fresh_dir.path(), &key(StorageDtype::F32)).unwrap();
    let all: Vec<usize> = (0..10).collect();
    assert_eq!(resumed.batch(&all).unwrap(), fresh.batch(&all).unwrap());
}

#[test]
fn bad_input_and_damaged_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LatentCacheWriter::create(dir.path(), key(StorageDtype::F32), 4).unwrap();
    let (l, t, m) = arrays(0);
    let err = w.push("short", &l[..60], &t, &m).unwrap_err().to_string();
    assert_mentions(&err, &["\"short\": latent has 60 values", "[4, 4, 4]"]);
    let err = w.push("mask", &l, &t, &m[..4]).unwrap_err().to_string();
    assert!(err.contains("text mask has 4 values"), "{err}");
    w.push("ok", &l, &t, &m).unwrap();
    w.finish().unwrap();

    // A truncated shard.
    let shard = dir.path().join("shard-00000.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let err = LatentCache::open(dir.path(), &key(StorageDtype::F32))
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["shard-00000.safetensors", "safetensors"]);

    // No manifest.
    let empty = tempfile::tempdir().unwrap();
    let err = LatentCache::open(empty.path(), &key(StorageDtype::F32))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(MANIFEST), "{err}");
}

/// Rewrites the safetensors file `file` with metadata `ids` (none: no metadata), keeping its
/// tensors.
fn rewrite_ids(file: &Path, ids: Option<&str>) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let metadata = ids.map(|ids| std::collections::HashMap::from([("ids".into(), ids.into())]));
    std::fs::write(
        file,
        safetensors::serialize(st.tensors(), metadata).unwrap(),
    )
    .unwrap();
}

/// Ids are read from the shards' headers when asked for; a header whose ids are missing, not
/// strings or not one an example is refused at open, naming the shard.
#[test]
fn damaged_ids_are_named_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), key(StorageDtype::F32), 6, 4);
    let shard = dir.path().join("shard-00001.safetensors");
    let cases = [
        (Some(r#"["ex-4"]"#), "1 ids for 2 examples"),
        (Some(r#"["ex-4", 5]"#), "not a JSON list of strings"),
        (Some(r#"["ex-4", "ex-5"] x"#), "not a JSON list of strings"),
        (None, "no \"ids\" in the metadata"),
    ];
    for (ids, expected) in cases {
        rewrite_ids(&shard, ids);
        let err = LatentCache::open(dir.path(), &key(StorageDtype::F32))
            .err()
            .unwrap()
            .to_string();
        assert_mentions(&err, &["shard-00001.safetensors", expected]);
    }
    rewrite_ids(&shard, Some(r#"["renamed-4", "ex-\"5\""]"#));
    let cache = LatentCache::open(dir.path(), &key(StorageDtype::F32)).unwrap();
    let ids: Vec<String> = (0..6).map(|i| cache.id(i).unwrap()).collect();
    assert_eq!(
        ids,
        ["ex-0", "ex-1", "ex-2", "ex-3", "renamed-4", "ex-\"5\""]
    );
    assert_eq!(
        cache.batch(&[5, 4]).unwrap().ids,
        [ids[5].as_str(), &ids[4]]
    );
}

#[test]
fn file_hash_is_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.bin");
    std::fs::write(&f, b"abc").unwrap();
    assert_eq!(
        file_sha256(&f).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// Text states stored as f16 beside f32 latents: values f16 holds come back exactly, others
/// within f16's half-ulp (2^-11 relative), and the latents stay exact.
#[test]
fn f16_text_states_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = key(StorageDtype::F32);
    k.text_storage = Some(TextStorage::States {
        dtype: StorageDtype::F16,
    });
    let exact: Vec<f32> = (0..15).map(|j| (j as f32 - 7.0) * 0.125).collect();
    let (l, t, m) = arrays(1);
    let mut w = LatentCacheWriter::create(dir.path(), k.clone(), 4).unwrap();
    w.push("exact", &l, &exact, &m).unwrap();
    w.push("rounded", &l, &t, &m).unwrap();
    w.finish().unwrap();
    let cache = LatentCache::open(dir.path(), &k).unwrap();
    let batch = cache.batch(&[0, 1]).unwrap();
    assert_eq!(&batch.latents[..64], &l[..]);
    assert_eq!(&batch.latents[64..], &l[..]);
    let (read, mask) = states(&batch);
    assert_eq!(&read[..15], &exact[..]);
    assert_eq!(&mask[5..], &m[..]);
    for (a, b) in read[15..].iter().zip(&t) {
        assert!((a - b).abs() <= b.abs() * 2f32.powi(-11), "{a} vs {b}");
    }
    assert_ne!(&read[15..], &t[..], "stored in half precision");
    let mut big = t.clone();
    big[3] = 7e4;
    let mut w = LatentCacheWriter::create(&dir.path().join("big"), k, 4).unwrap();
    let err = w.push("big", &l, &big, &m).unwrap_err().to_string();
    assert_mentions(&err, &["\"big\"", "text states value 70000", "f16"]);
    // The shard holds f16 states and f32 latents.
    let bytes = std::fs::read(dir.path().join("shard-00000.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("text_states").unwrap().dtype(),
        safetensors::Dtype::F16
    );
    assert_eq!(
        st.tensor("latents").unwrap().dtype(),
        safetensors::Dtype::F32
    );
}

fn tokens_key(ids: TokenDtype) -> CacheKey {
    let mut k = key(StorageDtype::F32);
    k.text_storage = Some(TextStorage::Tokens { tokens: 6, ids });
    k
}

/// Token ids come back exactly as pushed (their padding dropped), in u16 and u32, across shards.
#[test]
fn token_ids_round_trip() {
    let rows: Vec<Vec<u32>> = vec![vec![2, 7, 3], vec![2, 65535, 9, 9, 1, 3], vec![5]];
    for (ids, big) in [(TokenDtype::U16, 65535), (TokenDtype::U32, 1 << 20)] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LatentCacheWriter::create(dir.path(), tokens_key(ids), 2).unwrap();
        let mut pushed = rows.clone();
        pushed[1][1] = big;
        for (i, row) in pushed.iter().enumerate() {
            w.push_tokens(&format!("ex-{i}"), &arrays(i).0, row)
                .unwrap();
        }
        w.finish().unwrap();
        let cache = LatentCache::open(dir.path(), &tokens_key(ids)).unwrap();
        let batch = cache.batch(&[2, 1, 0, 1]).unwrap();
        let order = [2, 1, 0, 1];
        let want: Vec<Vec<u32>> = order.iter().map(|&i| pushed[i].clone()).collect();
        assert_eq!(batch.text, CachedText::Tokens(want));
        assert_eq!(&batch.latents[64..128], &arrays(1).0[..]);
        let bytes = std::fs::read(dir.path().join("shard-00000.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("text_tokens").unwrap().shape(), [2, 6]);
        assert!(
            st.tensor("text_states").is_err(),
            "no states in a tokens cache"
        );
        // Another storage is another key, named.
        let err = LatentCache::open(dir.path(), &key(StorageDtype::F32))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("text_storage"), "{err}");
    }
}

#[test]
fn token_ids_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LatentCacheWriter::create(dir.path(), tokens_key(TokenDtype::U16), 2).unwrap();
    let (l, t, m) = arrays(0);
    let err = w.push_tokens("long", &l, &[1; 7]).unwrap_err().to_string();
    assert_mentions(&err, &["\"long\"", "7 token ids", "1 to 6"]);
    let err = w.push_tokens("none", &l, &[]).unwrap_err().to_string();
    assert_mentions(&err, &["\"none\"", "0 token ids"]);
    let err = w
        .push_tokens("big", &l, &[2, 70000])
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["\"big\"", "70000", "u16"]);
    let err = w.push("states", &l, &t, &m).unwrap_err().to_string();
    assert_mentions(&err, &["\"states\"", "stores token ids"]);
    let mut s =
        LatentCacheWriter::create(&dir.path().join("s"), key(StorageDtype::F32), 2).unwrap();
    let err = s.push_tokens("ids", &l, &[2, 3]).unwrap_err().to_string();
    assert_mentions(&err, &["\"ids\"", "stores text states"]);
    let mut zero = key(StorageDtype::F32);
    zero.text_storage = Some(TextStorage::Tokens {
        tokens: 0,
        ids: TokenDtype::U16,
    });
    let err = LatentCacheWriter::create(&dir.path().join("z"), zero, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokens must be at least 1"), "{err}");
    assert_eq!(TokenDtype::for_vocab(49408), TokenDtype::U16);
    assert_eq!(TokenDtype::for_vocab(65537), TokenDtype::U32);
}

/// A cache written before text storage was a choice (no `text_storage` in its key) keeps its
/// folder name and opens as a states cache in its `dtype`.
#[test]
fn a_key_without_text_storage_is_the_old_layout() {
    let k = key(StorageDtype::F32);
    let json = serde_json::to_string(&k).unwrap();
    assert!(!json.contains("text_storage"), "{json}");
    assert_eq!(
        k.dir_in(Path::new("/c")).to_string_lossy(),
        "/c/shapes-32x32-a824e1ff8bb6ef63"
    );
    assert_eq!(
        k.text(),
        TextStorage::States {
            dtype: StorageDtype::F32
        }
    );
    let parsed: CacheKey = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, k);
}

/// Examples `range` written as a part cache of `dir`, as one array task does.
fn fill_range(dir: &Path, range: std::ops::Range<usize>, shard: usize) {
    let mut w =
        LatentCacheWriter::create(&range_dir(dir, &range), key(StorageDtype::F32), shard).unwrap();
    for i in range {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    w.finish().unwrap();
}

/// The shard files of a cache, in order, as bytes.
fn shard_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
    let m: Manifest = serde_json::from_str(&text).unwrap();
    m.shards
        .iter()
        .map(|s| std::fs::read(dir.join(&s.file)).unwrap())
        .collect()
}

#[test]
fn ranges_are_whole_shards() {
    let one = split_ranges(10, 4, 1);
    assert_eq!((one.len(), one[0].clone()), (1, 0..10));
    assert_eq!(split_ranges(10, 4, 2), [0..4, 4..10]);
    assert_eq!(split_ranges(10, 4, 3), [0..4, 4..8, 8..10]);
    assert_eq!(split_ranges(10, 4, 5), [0..0, 0..4, 4..4, 4..8, 8..10]);
    assert_eq!(split_ranges(1000, 256, 3), [0..256, 256..512, 512..1000]);
    assert_eq!(split_ranges(0, 256, 2), [0..0, 0..0]);
}

/// A cache built in 2 or 3 ranges (out of order, as array tasks finish) and joined reads like
/// the one-process cache: the same ids and values, and the same shard bytes in order.
#[test]
fn a_cache_built_in_ranges_joins_to_the_one_process_cache() {
    let whole = tempfile::tempdir().unwrap();
    fill(whole.path(), key(StorageDtype::F32), 11, 2);
    let one = LatentCache::open(whole.path(), &key(StorageDtype::F32)).unwrap();
    let all: Vec<usize> = (0..11).collect();
    for parts in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut ranges = split_ranges(11, 2, parts);
        ranges.reverse();
        for r in ranges.into_iter().filter(|r| !r.is_empty()) {
            fill_range(dir.path(), r, 2);
        }
        let joined = LatentCache::join(dir.path(), &key(StorageDtype::F32), 11).unwrap();
        assert_eq!(joined.len(), 11);
        assert_eq!(
            joined.batch(&all).unwrap(),
            one.batch(&all).unwrap(),
            "{parts} parts"
        );
        assert_eq!(
            shard_bytes(dir.path()),
            shard_bytes(whole.path()),
            "{parts} parts"
        );
        // Reopened later like any cache.
        let again = LatentCache::open(dir.path(), &key(StorageDtype::F32)).unwrap();
        assert_eq!(again.batch(&[10, 3]).unwrap(), one.batch(&[10, 3]).unwrap());
    }
}

/// A missing, unfinished or foreign range is named, and nothing is indexed.
#[test]
fn a_join_refuses_gaps_and_unfinished_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(StorageDtype::F32);
    fill_range(dir.path(), 0..4, 2);
    fill_range(dir.path(), 8..11, 2);
    let err = LatentCache::join(dir.path(), &k, 11)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &err,
        &[
            "range-000000000008-000000000011",
            "starts at example 8",
            "gap",
        ],
    );
    assert!(
        !dir.path().join(MANIFEST).exists(),
        "a failed join indexed something"
    );

    // A range killed midway (one whole shard of two written) is unfinished, and resumes.
    let middle = range_dir(dir.path(), &(4..8));
    let mut w = LatentCacheWriter::create(&middle, k.clone(), 2).unwrap();
    for i in 4..7 {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    drop(w);
    let err = LatentCache::join(dir.path(), &k, 11)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &err,
        &["range-000000000004-000000000008", "unfinished (2 of 4"],
    );
    assert!(!dir.path().join(MANIFEST).exists());
    let mut w = LatentCacheWriter::create(&middle, k.clone(), 2).unwrap();
    assert_eq!(w.len(), 2);
    for i in 6..8 {
        let (l, t, m) = arrays(i);
        w.push(&format!("ex-{i}"), &l, &t, &m).unwrap();
    }
    w.finish().unwrap();
    let err = LatentCache::join(dir.path(), &k, 12)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("0..11, 12 are needed"), "{err}");
    LatentCache::join(dir.path(), &k, 11).unwrap();

    // A range of another key.
    let other = tempfile::tempdir().unwrap();
    fill_range(other.path(), 0..4, 2);
    let mut f16 = key(StorageDtype::F16);
    f16.resolution = [32, 32];
    let err = LatentCache::join(other.path(), &f16, 4)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &err,
        &["range-000000000000-000000000004", "another key", "dtype"],
    );
}

/// More shards than may be mapped at once: every example still reads back, shards being
/// unmapped and mapped again as reads move on (the paper's cache is 2.3M shards, Linux allows
/// a process 65,530 maps).
#[test]
fn a_cache_of_more_shards_than_maps_reads_every_example() {
    let dir = tempfile::tempdir().unwrap();
    let n = ldmscale_data::MAX_MAPPED_SHARDS + 6;
    fill(dir.path(), key(StorageDtype::F32), n, 1);
    let cache = LatentCache::open(dir.path(), &key(StorageDtype::F32)).unwrap();
    assert_eq!(cache.mapped_shards(), 0, "open maps no shard for good");
    for pass in 0..2 {
        for i in (0..n).rev().step_by(1 + pass) {
            let batch = cache.batch(&[i]).unwrap();
            assert_eq!(batch.ids, [format!("ex-{i}")]);
            assert_eq!(batch.latents, arrays(i).0);
        }
    }
    assert_eq!(cache.id(0).unwrap(), "ex-0");
    assert_eq!(cache.mapped_shards(), ldmscale_data::MAX_MAPPED_SHARDS);
}
