//! The fetched asset datasets; each test runs only when `tools/fetch-assets.sh` has unpacked its
//! asset, and says so when it skips.

use ldmscale_data::{CaptionStyle, Dataset, DatasetSpec, Emoji, GrayClasses, Part, assets_dir};

fn present(name: &str) -> bool {
    let ok = assets_dir().join(name).join(".complete").exists();
    if !ok {
        eprintln!(
            "skipping: asset {name} not in {} (run tools/fetch-assets.sh {name})",
            assets_dir().display()
        );
    }
    ok
}

#[test]
fn fashion_mnist_test_file() {
    if !present("fashion-mnist") {
        return;
    }
    let ds = GrayClasses::fashion_mnist(Part::Test, CaptionStyle::Fixed).unwrap();
    assert_eq!(ds.len(), Some(10_000));
    let mut per_class = [0; 10];
    for i in 0..10_000 {
        per_class[ds.label(i) as usize] += 1;
    }
    assert_eq!(
        per_class, [1000; 10],
        "Fashion-MNIST's test set is balanced"
    );
    // The first test item is an ankle boot (label 9).
    let e = ds.get(0).unwrap();
    assert_eq!(e.caption, "a photo of an ankle boot");
    assert_eq!(e.id, "fashion-mnist/test/0");
    assert_eq!((e.image.width(), e.image.height()), (28, 28));
    assert!(
        e.image
            .as_bytes()
            .chunks(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    );
    // Dark background, bright object.
    assert_eq!(e.image.pixel(0, 0), [0, 0, 0]);
    assert!(e.image.as_bytes().iter().any(|&v| v > 200));
    let varied = GrayClasses::fashion_mnist(Part::Test, CaptionStyle::Varied).unwrap();
    let captions: std::collections::HashSet<String> =
        (0..40).map(|i| varied.get(i).unwrap().caption).collect();
    assert!(
        captions
            .iter()
            .any(|c| c.starts_with("a black and white photo of"))
    );
}

#[test]
fn mnist_test_file() {
    if !present("mnist") {
        return;
    }
    let spec: DatasetSpec = "mnist:test".parse().unwrap();
    let ds = spec.open().unwrap();
    assert_eq!(ds.len(), Some(10_000));
    // The first MNIST test digit is a seven.
    let e = ds.get(0).unwrap();
    assert_eq!(e.caption, "the digit seven");
    assert_eq!((e.image.width(), e.image.height()), (28, 28));
    assert!(e.image.as_bytes().iter().any(|&v| v > 200));
}

#[test]
fn emoji_with_names() {
    if !present("emoji") {
        return;
    }
    let ds = Emoji::open().unwrap();
    let n = ds.len().unwrap();
    assert_eq!(
        n, 1911,
        "every named emoji of emoji-datasource-google 16.0.0 has an image"
    );
    let grinning = (0..n)
        .find(|&i| ds.id(i).unwrap() == "emoji/1f600.png")
        .expect("U+1F600 is listed");
    let e = ds.get(grinning).unwrap();
    assert_eq!(e.caption, "grinning face");
    assert_eq!((e.image.width(), e.image.height()), (64, 64));
    // Transparent corners are composited over white; the face is yellow.
    assert_eq!(e.image.pixel(0, 0), [255, 255, 255]);
    let [r, g, b] = e.image.pixel(20, 12);
    assert!(r > 200 && g > 150 && b < 120, "{:?}", [r, g, b]);
}
