//! The streamed set: the same examples, in the same order, as the split decoded into memory,
//! whatever the batch size or starting point; by index the same again; a broken image named.

use ldmscale_data::{CaptionedSet, Image, Split, load_captioned};

#[test]
fn a_stream_is_the_split_in_memory_in_batches_of_any_size() {
    let whole = load_captioned("shapes", 16, Split::Val, 23).unwrap();
    let set = CaptionedSet::open("shapes", 16, Split::Val, 23).unwrap();
    assert_eq!(set.len(), 23);
    for batch in [1, 5, 23, 64] {
        let mut streamed = ldmscale_data::Captioned::default();
        for part in set.stream(0, batch).unwrap() {
            let part = part.unwrap();
            assert!(part.len() <= batch);
            streamed.images.extend(part.images);
            streamed.captions.extend(part.captions);
        }
        assert_eq!(streamed, whole, "batch {batch}");
    }
    let mut from_ten = set.stream(10, 4).unwrap();
    assert_eq!(from_ten.take_examples(7).unwrap(), whole.slice(10, 7, 16));
    assert_eq!(from_ten.take_examples(100).unwrap(), whole.slice(17, 6, 16));
    assert!(from_ten.take_examples(1).unwrap().is_empty());
    assert_eq!(set.first(9).unwrap(), whole.slice(0, 9, 16));
    assert_eq!(set.captions(100).unwrap(), whole.captions);
    assert_eq!(set.captions(5).unwrap(), whole.captions[..5]);
    let picked = set.get(&[4, 0, 4]).unwrap();
    assert_eq!(
        picked.captions,
        [4, 0, 4].map(|i| whole.captions[i].clone())
    );
    assert_eq!(picked.slice(0, 1, 16), whole.slice(4, 1, 16));
}

#[test]
fn a_finite_split_caps_the_count_and_too_few_examples_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..3u8 {
        let png = Image::filled(20, 12, [k * 80, 10, 200]).to_png();
        std::fs::write(dir.path().join(format!("img{k}.png")), png).unwrap();
        std::fs::write(
            dir.path().join(format!("img{k}.txt")),
            format!("colour {k}"),
        )
        .unwrap();
    }
    let spec = format!("folder:{}", dir.path().display());
    let set = CaptionedSet::open(&spec, 8, Split::All, 1000).unwrap();
    assert_eq!(set.len(), 3);
    let err = CaptionedSet::open(&spec, 8, Split::All, 1)
        .err()
        .expect("one example is too few")
        .to_string();
    assert!(err.contains("only 1 all examples, 2 needed"), "{err}");
    std::fs::write(dir.path().join("img1.png"), b"not a png").unwrap();
    let err = set
        .stream(0, 2)
        .unwrap()
        .find_map(Result::err)
        .expect("the broken image fails its batch")
        .to_string();
    assert!(err.contains("img1"), "{err}");
    let err = set.get(&[1]).unwrap_err().to_string();
    assert!(err.contains("index 1"), "{err}");
}
