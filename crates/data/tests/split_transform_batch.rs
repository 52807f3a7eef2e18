//! Splits, transforms and the resumable batch loader.

use std::collections::HashSet;

use ldmscale_data::{
    BatchLoader, Crop, Cursor, DataError, Dataset, Example, Image, LoaderConfig, Sampler, Shapes,
    ShapesConfig, Split, SplitConfig, SplitDataset, Transform,
};

/// A finite in-memory dataset: example i is a 40x30 image whose pixel values encode i.
struct Numbered {
    len: usize,
    broken: HashSet<usize>,
}

impl Numbered {
    fn new(len: usize) -> Self {
        Numbered {
            len,
            broken: HashSet::new(),
        }
    }
}

impl Dataset for Numbered {
    fn name(&self) -> String {
        "numbered".into()
    }
    fn len(&self) -> Option<usize> {
        Some(self.len)
    }
    fn id(&self, index: usize) -> Result<String, DataError> {
        Ok(format!("item-{index}"))
    }
    fn get(&self, index: usize) -> Result<Example, DataError> {
        assert!(index < self.len);
        if self.broken.contains(&index) {
            return Err(DataError::Image {
                file: format!("item-{index}.png"),
                message: "corrupt".into(),
            });
        }
        let mut img = Image::filled(40, 30, [(index % 251) as u8, (index / 251) as u8, 0]);
        // A marker in the left column, to see flips.
        for y in 0..30 {
            img.set_pixel(0, y, [255, 255, 255]);
        }
        Ok(Example {
            id: self.id(index)?,
            image: img,
            caption: format!("number {index}"),
        })
    }
}

#[test]
fn splits_are_deterministic_disjoint_and_complete() {
    let config = SplitConfig {
        val_fraction: 0.2,
        salt: 0,
    };
    let ids = |split| {
        let ds = SplitDataset::new(Numbered::new(2000), split, config).unwrap();
        (0..ds.len().unwrap())
            .map(|i| ds.id(i).unwrap())
            .collect::<Vec<_>>()
    };
    let (train, val) = (ids(Split::Train), ids(Split::Val));
    assert_eq!(train, ids(Split::Train), "deterministic");
    let (t, v): (HashSet<_>, HashSet<_>) = (train.iter().collect(), val.iter().collect());
    assert!(t.is_disjoint(&v));
    assert_eq!(t.len() + v.len(), 2000);
    assert!((340..460).contains(&val.len()), "val has {}", val.len());
    assert_eq!(ids(Split::All).len(), 2000);

    // The side of an id does not depend on the dataset around it: a larger dataset keeps the
    // same val members among its first 2000.
    let bigger = SplitDataset::new(Numbered::new(3000), Split::Val, config).unwrap();
    let bigger_val: Vec<String> = (0..bigger.len().unwrap())
        .map(|i| bigger.id(i).unwrap())
        .filter(|id| id[5..].parse::<usize>().unwrap() < 2000)
        .collect();
    assert_eq!(bigger_val, val);

    // Another salt draws another val set of about the same size.
    let salted = SplitDataset::new(
        Numbered::new(2000),
        Split::Val,
        SplitConfig {
            val_fraction: 0.2,
            salt: 1,
        },
    )
    .unwrap();
    let salted: HashSet<String> = (0..salted.len().unwrap())
        .map(|i| salted.id(i).unwrap())
        .collect();
    assert!(salted.len().abs_diff(val.len()) < 80);
    assert!(salted.intersection(&val.iter().cloned().collect()).count() < val.len() / 2);
}

#[test]
fn infinite_dataset_splits_lazily() {
    let shapes = || Shapes::new(ShapesConfig::default()).unwrap();
    let config = SplitConfig {
        val_fraction: 0.1,
        salt: 0,
    };
    let val = SplitDataset::new(shapes(), Split::Val, config).unwrap();
    let train = SplitDataset::new(shapes(), Split::Train, config).unwrap();
    assert_eq!(val.len(), None);
    let v: Vec<usize> = (0..50).map(|i| val.source_index(i).unwrap()).collect();
    let t: HashSet<usize> = (0..500).map(|i| train.source_index(i).unwrap()).collect();
    assert!(v.windows(2).all(|w| w[0] < w[1]));
    assert!(v.iter().all(|i| !t.contains(i)));
    // Every source index below the scanned range is on exactly one side.
    // Every source index both scans passed is on exactly one side.
    let top = (*v.last().unwrap()).min(*t.iter().max().unwrap());
    for i in 0..=top {
        assert!(v.contains(&i) != t.contains(&i), "{i}");
    }
    assert_eq!(val.get(3).unwrap(), shapes().get(v[3]).unwrap());
    // An empty side of an infinite dataset is refused up front.
    let none = SplitConfig {
        val_fraction: 0.0,
        salt: 0,
    };
    assert!(SplitDataset::new(shapes(), Split::Val, none).is_err());
    let bad = SplitConfig {
        val_fraction: 1.5,
        salt: 0,
    };
    assert!(SplitDataset::new(Numbered::new(3), Split::Val, bad).is_err());
}

fn gradient(width: u32, height: u32) -> Image {
    let mut img = Image::filled(width, height, [0, 0, 0]);
    for y in 0..height {
        for x in 0..width {
            img.set_pixel(
                x,
                y,
                [
                    (x * 255 / (width - 1)) as u8,
                    (y * 255 / (height - 1)) as u8,
                    77,
                ],
            );
        }
    }
    img
}

#[test]
fn transform_resizes_shorter_side_and_crops() {
    let t = Transform::center(32);
    // 128x64 landscape: shorter side 64 -> 32, so 64x32, centre window from x = 16.
    let p = t.placement(128, 64, 0);
    assert_eq!(p.resized, (64, 32));
    assert_eq!(p.offset, (16, 0));
    assert!(!p.flip);
    // Portrait, odd sizes.
    let p = t.placement(50, 101, 0);
    assert_eq!(p.resized, (32, 65));
    assert_eq!(p.offset, (0, 16));
    // Upscaling small images (MNIST 28 -> 32).
    assert_eq!(t.placement(28, 28, 0).resized, (32, 32));

    let out = t.apply(&gradient(128, 64), 0);
    assert_eq!((out.width(), out.height()), (32, 32));
    // The centre crop keeps the middle of the horizontal gradient: red runs ~64..191.
    let (left, right) = (out.pixel(0, 16)[0], out.pixel(31, 16)[0]);
    assert!(
        (55..80).contains(&left) && (175..200).contains(&right),
        "{left} {right}"
    );
    // Vertical gradient kept whole.
    assert!(out.pixel(16, 0)[1] < 12 && out.pixel(16, 31)[1] > 243);
    // Constant colour survives resampling exactly.
    assert!(out.as_bytes().chunks(3).all(|p| p[2] == 77));

    // Non-square targets cover both sides.
    let wide = Transform {
        width: 40,
        height: 20,
        crop: Crop::Center,
        flip: false,
    };
    assert_eq!(wide.placement(100, 100, 0).resized, (40, 40));
    assert_eq!(wide.apply(&gradient(100, 100), 0).height(), 20);
}

#[test]
fn random_crop_and_flip_are_seeded() {
    let t = Transform::random(32, true);
    let src = gradient(96, 48);
    let mut offsets = HashSet::new();
    let mut flips = 0;
    for key in 0..200u64 {
        let p = t.placement(96, 48, key);
        assert_eq!(p, t.placement(96, 48, key), "same key, same choice");
        assert_eq!(p.resized, (64, 32));
        assert!(p.offset.0 <= 32 && p.offset.1 == 0);
        offsets.insert(p.offset.0);
        flips += p.flip as u32;
        let out = t.apply(&src, key);
        let expected = {
            let c = src.resize(64, 32).crop(p.offset.0, 0, 32, 32);
            if p.flip { c.flip_horizontal() } else { c }
        };
        assert_eq!(out, expected);
    }
    assert!(offsets.len() > 20, "{} distinct offsets", offsets.len());
    assert!((70..130).contains(&flips), "{flips} flips in 200");
    // Flip mirrors.
    let img = gradient(5, 3);
    let f = img.flip_horizontal();
    assert_eq!(f.pixel(0, 1), img.pixel(4, 1));
    assert_eq!(f.flip_horizontal(), img);
}

fn config(batch_size: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        shuffle: true,
        workers: 2,
    }
}

#[test]
fn epochs_are_permutations_and_differ() {
    let n = 103;
    let e0 = Sampler::epoch_order(n, 5, true, 0);
    let e1 = Sampler::epoch_order(n, 5, true, 1);
    let mut sorted = e0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_ne!(e0, e1);
    assert_ne!(e0, Sampler::epoch_order(n, 6, true, 0));
    assert_eq!(
        Sampler::epoch_order(n, 5, false, 3),
        (0..n).collect::<Vec<_>>()
    );

    // A loader visits every example once per epoch, batches spanning the epoch boundary.
    let mut loader =
        BatchLoader::new(Numbered::new(n), Transform::center(8), config(10, 5)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 * n {
        seen.extend(loader.next_batch().unwrap().indices);
    }
    assert_eq!(&seen[..n], &e0[..]);
    assert_eq!(&seen[n..2 * n], &e1[..]);
    assert_eq!(loader.cursor().epoch, 2);
}

#[test]
fn resuming_from_a_saved_cursor_repeats_the_batches() {
    let transform = Transform::random(16, true);
    let run = |from: Cursor, batches: usize| {
        let mut loader =
            BatchLoader::resume(Numbered::new(37), transform, config(8, 42), from).unwrap();
        (0..batches)
            .map(|_| loader.next_batch().unwrap())
            .collect::<Vec<_>>()
    };
    let straight = run(Cursor::default(), 12);
    // Stop after 5 batches, save the cursor as JSON, resume.
    let saved = serde_json::to_string(&straight[4].end).unwrap();
    let cursor: Cursor = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        cursor,
        Cursor {
            epoch: 1,
            position: 3
        }
    );
    let resumed = run(cursor, 7);
    for (a, b) in straight[5..].iter().zip(&resumed) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.examples, b.examples, "same crops and flips");
        assert_eq!((a.start, a.end), (b.start, b.end));
    }
    // The augmentation really varies between epochs of one example.
    let first_epoch: Vec<_> = straight[..4]
        .iter()
        .flat_map(|b| b.examples.clone())
        .collect();
    let later: Vec<_> = straight[5..9]
        .iter()
        .flat_map(|b| b.examples.clone())
        .collect();
    let changed = first_epoch
        .iter()
        .filter(|e| later.iter().any(|l| l.id == e.id && l.image != e.image))
        .count();
    assert!(changed > 5, "{changed}");
    // Batch arrays.
    let b = &straight[0];
    assert_eq!(b.images_chw_f32().len(), 8 * 3 * 16 * 16);
    assert_eq!(b.captions().len(), 8);

    // Worker count does not change the batches.
    let mut one = BatchLoader::new(
        Numbered::new(37),
        transform,
        LoaderConfig {
            workers: 1,
            ..config(8, 42)
        },
    )
    .unwrap();
    assert_eq!(one.next_batch().unwrap().examples, straight[0].examples);
}

#[test]
fn infinite_dataset_batches_resume() {
    let ds = || Shapes::new(ShapesConfig::default()).unwrap();
    let mut a = BatchLoader::new(ds(), Transform::center(32), config(4, 0)).unwrap();
    let first = a.next_batch().unwrap();
    assert_eq!(first.indices, vec![0, 1, 2, 3]);
    let second = a.next_batch().unwrap();
    let mut b = BatchLoader::resume(ds(), Transform::center(32), config(4, 0), first.end).unwrap();
    assert_eq!(b.next_batch().unwrap().examples, second.examples);
    assert_eq!(second.examples[0].image.width(), 32);
}

#[test]
fn failing_examples_are_skipped_and_reported() {
    let mut ds = Numbered::new(20);
    ds.broken.extend([3, 4, 11]);
    let mut loader = BatchLoader::new(
        ds,
        Transform::center(8),
        LoaderConfig {
            shuffle: false,
            ..config(6, 0)
        },
    )
    .unwrap();
    let b1 = loader.next_batch().unwrap();
    assert_eq!(b1.indices, vec![0, 1, 2, 5, 6, 7]);
    assert_eq!(b1.skipped.len(), 2);
    assert!(b1.skipped[0].what == "item-3" && b1.skipped[0].reason.contains("item-3.png"));
    let b2 = loader.next_batch().unwrap();
    assert_eq!(b2.indices, vec![8, 9, 10, 12, 13, 14]);

    // Nothing loadable at all is an error, not a hang.
    let mut all_bad = Numbered::new(5);
    all_bad.broken.extend(0..5);
    let mut loader = BatchLoader::new(all_bad, Transform::center(8), config(2, 0)).unwrap();
    let err = loader.next_batch().unwrap_err();
    assert!(err.to_string().contains("in a row failed"), "{err}");

    // A bad cursor is refused.
    assert!(
        BatchLoader::resume(
            Numbered::new(5),
            Transform::center(8),
            config(2, 0),
            Cursor {
                epoch: 0,
                position: 5
            }
        )
        .is_err()
    );
}

/// A shuffled set past SHUFFLED_IN_MEMORY_MAX is ordered without holding its epoch: distinct
/// indices in range, the same from a cursor taken midway, and another order the next epoch.
#[test]
fn large_sets_are_ordered_without_holding_an_epoch() {
    let n = ldmscale_util::permutation::SHUFFLED_IN_MEMORY_MAX + 5;
    let start = Cursor::default();
    let mut sampler = Sampler::new(Some(n), 5, true, start).unwrap();
    let first = sampler.next_indices(100);
    assert!(first.iter().all(|&i| i < n));
    let distinct: HashSet<usize> = first.iter().copied().collect();
    assert_eq!(distinct.len(), 100);
    let midway = Cursor {
        epoch: 0,
        position: 40,
    };
    let resumed = Sampler::new(Some(n), 5, true, midway)
        .unwrap()
        .next_indices(60);
    assert_eq!(resumed, first[40..]);
    let next_epoch = Cursor {
        epoch: 1,
        position: 0,
    };
    let second = Sampler::new(Some(n), 5, true, next_epoch)
        .unwrap()
        .next_indices(100);
    assert_ne!(first, second);
    let plain = Sampler::new(Some(n), 5, false, start)
        .unwrap()
        .next_indices(3);
    assert_eq!(plain, vec![0, 1, 2]);
}
