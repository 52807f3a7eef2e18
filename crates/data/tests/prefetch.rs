//! The streaming loader: the same batches as the single-threaded loader for any worker count,
//! never more than its capacity held, failures named, clean shutdown.

use ldmscale_data::{
    Batch, BatchLoader, Cursor, DataError, Dataset, Example, Extent, Image, LoaderConfig,
    PrefetchLoader, Transform,
};
use ldmscale_testkit::assert_mentions;

/// `len` images of varying sizes and colours; index `broken` fails with an error that does not
/// name it.
struct Pictures {
    len: usize,
    broken: Option<usize>,
}

impl Dataset for Pictures {
    fn name(&self) -> String {
        "pictures".into()
    }
    fn len(&self) -> Option<usize> {
        Some(self.len)
    }
    fn id(&self, index: usize) -> Result<String, DataError> {
        Ok(format!("picture-{index}"))
    }
    fn get(&self, index: usize) -> Result<Example, DataError> {
        if Some(index) == self.broken {
            return Err(DataError::Format {
                file: "blob.bin".into(),
                message: "bad bytes".into(),
            });
        }
        let (w, h) = (20 + (index % 7) as u32 * 3, 18 + (index % 5) as u32 * 4);
        // A gradient, so crops and flips show in the pixels.
        let pixels = (0..w * h)
            .flat_map(|p| [(p % w * 9) as u8, (p / w * 11) as u8, index as u8])
            .collect();
        let image = Image::from_rgb(w, h, pixels).expect("w * h * 3 bytes");
        Ok(Example {
            id: self.id(index)?,
            image,
            caption: format!("picture {index}"),
        })
    }
}

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        seed: 11,
        shuffle: true,
        workers,
    }
}

/// What a batch is, for comparison.
fn summary(b: &Batch) -> (Vec<Example>, Vec<usize>, Cursor, Cursor) {
    (b.examples.clone(), b.indices.clone(), b.start, b.end)
}

fn reference(
    len: usize,
    batches: usize,
    cursor: Cursor,
) -> Vec<(Vec<Example>, Vec<usize>, Cursor, Cursor)> {
    let data = Pictures { len, broken: None };
    let mut loader =
        BatchLoader::resume(data, Transform::random(12, true), config(1), cursor).unwrap();
    (0..batches)
        .map(|_| summary(&loader.next_batch().unwrap()))
        .collect()
}

#[test]
fn endless_streams_match_the_single_threaded_loader_for_one_and_three_workers() {
    let cursor = Cursor {
        epoch: 1,
        position: 6,
    };
    let want = reference(30, 20, cursor);
    for workers in [1, 3] {
        let stream = PrefetchLoader::new(
            Pictures {
                len: 30,
                broken: None,
            },
            Transform::random(12, true),
            config(workers),
            cursor,
            Extent::Endless,
            2,
        )
        .unwrap();
        let got: Vec<_> = stream.take(20).map(|b| summary(&b.unwrap())).collect();
        assert!(got == want, "{workers} worker(s) differ from the reference");
    }
}

#[test]
fn one_pass_ends_the_epoch_with_a_short_batch() {
    let want = reference(10, 3, Cursor::default());
    let stream = PrefetchLoader::new(
        Pictures {
            len: 10,
            broken: None,
        },
        Transform::random(12, true),
        config(3),
        Cursor::default(),
        Extent::OnePass,
        3,
    )
    .unwrap();
    let got: Vec<_> = stream.map(|b| summary(&b.unwrap())).collect();
    assert_eq!(got.len(), 3);
    assert!(got[..2] == want[..2]);
    assert_eq!(
        got[2].1,
        want[2].1[..2],
        "the last batch holds the last 2 of 10"
    );
    assert_eq!(
        got[2].3,
        Cursor {
            epoch: 1,
            position: 0
        }
    );
}

/// Waits (polling; a hang guard, not a timing check) until `stream` holds `count` batches.
fn wait_until_held(stream: &PrefetchLoader, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stream.held() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "workers never filled the queue"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn the_queue_never_holds_more_than_its_capacity() {
    let (capacity, batches) = (3, 12);
    let mut stream = PrefetchLoader::new(
        Pictures {
            len: 48,
            broken: None,
        },
        Transform::center(12),
        config(3),
        Cursor::default(),
        Extent::OnePass,
        capacity,
    )
    .unwrap();
    for taken in 0..batches {
        // A slow consumer: the workers run as far ahead as they are allowed before each take.
        wait_until_held(&stream, capacity.min(batches - taken));
        assert!(stream.next().unwrap().is_ok());
    }
    assert!(stream.next().is_none());
    assert_eq!(stream.peak_held(), capacity);
}

#[test]
fn a_failing_example_surfaces_as_an_error_naming_it_and_the_stream_goes_on() {
    let mut cfg = config(3);
    cfg.shuffle = false;
    let stream = PrefetchLoader::new(
        Pictures {
            len: 12,
            broken: Some(5),
        },
        Transform::center(12),
        cfg,
        Cursor::default(),
        Extent::OnePass,
        2,
    )
    .unwrap();
    let results: Vec<_> = stream.collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    let err = results[1].as_ref().expect_err("batch 1 holds index 5");
    assert!(err.is_per_example());
    assert_mentions(
        &err.to_string(),
        &["pictures", "picture-5", "blob.bin", "bad bytes"],
    );
}

#[test]
fn dropping_a_stream_mid_way_stops_its_workers() {
    let mut stream = PrefetchLoader::new(
        Pictures {
            len: 40,
            broken: None,
        },
        Transform::center(12),
        config(3),
        Cursor::default(),
        Extent::Endless,
        4,
    )
    .unwrap();
    assert!(stream.next().unwrap().is_ok());
    drop(stream); // joins the workers; a worker that never stopped would hang here
}

#[test]
fn bad_settings_are_refused_by_name() {
    let make = |capacity, batch_size, extent, len| {
        let mut cfg = config(1);
        cfg.batch_size = batch_size;
        PrefetchLoader::new(
            Pictures { len, broken: None },
            Transform::center(12),
            cfg,
            Cursor::default(),
            extent,
            capacity,
        )
        .err()
        .expect("refused")
        .to_string()
    };
    assert_mentions(&make(0, 4, Extent::OnePass, 8), &["prefetch capacity"]);
    assert_mentions(&make(2, 0, Extent::OnePass, 8), &["batch_size"]);
    assert_mentions(
        &make(2, 4, Extent::OnePass, 0),
        &["pictures", "nothing to stream"],
    );
}
