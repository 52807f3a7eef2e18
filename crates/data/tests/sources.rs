//! User-data sources (image folder, COCO captions, WebDataset shards) on tiny data generated in
//! a temporary folder; corrupt images; dataset specs.

use std::path::Path;

use ldmscale_data::{
    BatchLoader, Coco, CocoCaptions, DataError, Dataset, DatasetSpec, Image, ImageFolder,
    LoaderConfig, ShapesConfig, Split, SplitConfig, SplitDataset, Transform, WebDataset,
};
use ldmscale_testkit::assert_mentions;

/// A small image whose colour encodes `k`.
fn image(k: u8) -> Image {
    let mut img = Image::filled(12 + k as u32, 10, [k * 20, 255 - k * 20, 100]);
    img.set_pixel(0, 0, [1, 2, 3]);
    img
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn to_jpeg(img: &Image) -> Vec<u8> {
    let rgb =
        image::RgbImage::from_raw(img.width(), img.height(), img.as_bytes().to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(rgb)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// Bytes that start like a PNG but are cut off: a realistic corrupt download.
fn corrupt_png() -> Vec<u8> {
    let good = image(9).to_png();
    good[..good.len() / 2].to_vec()
}

#[test]
fn folder_with_sidecar_captions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("b.png"), &image(1).to_png());
    write(&root.join("b.txt"), b"  a green thing \n");
    write(&root.join("sub/a.png"), &image(2).to_png());
    write(&root.join("sub/a.txt"), b"another thing");
    write(&root.join("no_caption.png"), &image(3).to_png());
    write(&root.join("notes.md"), b"not an image");
    write(&root.join("broken.png"), &corrupt_png());
    write(&root.join("broken.txt"), b"this one is corrupt");

    let ds = ImageFolder::open(root).unwrap();
    assert_eq!(ds.len(), Some(3));
    let ids: Vec<String> = (0..3).map(|i| ds.id(i).unwrap()).collect();
    assert_eq!(ids, ["b.png", "broken.png", "sub/a.png"]);
    let b = ds.get(0).unwrap();
    assert_eq!(b.caption, "a green thing");
    assert_eq!(b.image, image(1));
    assert_eq!(ds.get(2).unwrap().image, image(2));
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].what.ends_with("no_caption.png"));

    // The corrupt image is an error naming its path ...
    let err = ds.get(1).unwrap_err();
    assert!(matches!(err, DataError::Image { .. }));
    assert!(err.to_string().contains("broken.png"), "{err}");
    // ... and the loader skips it, reports it, and goes on.
    let mut loader = BatchLoader::new(
        ds,
        Transform::center(8),
        LoaderConfig {
            batch_size: 4,
            seed: 0,
            shuffle: false,
            workers: 2,
        },
    )
    .unwrap();
    let batch = loader.next_batch().unwrap();
    // The batch runs into the second epoch and meets the broken image again.
    assert_eq!(batch.indices, vec![0, 2, 0, 2]);
    assert_eq!(batch.skipped.len(), 2);
    assert!(batch.skipped[0].reason.contains("broken.png"));
    assert!(batch.examples.iter().all(|e| e.image.width() == 8));
}

#[test]
fn folder_with_captions_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("x/1.png"), &image(1).to_png());
    write(&root.join("2.png"), &image(2).to_png());
    write(
        &root.join("captions.jsonl"),
        b"{\"file\": \"2.png\", \"caption\": \"two\"}\n\n{\"file\": \"x/1.png\", \"caption\": \"one\"}\n{\"file\": \"gone.png\", \"caption\": \"missing\"}\n",
    );
    let ds = ImageFolder::open(root).unwrap();
    assert_eq!(ds.len(), Some(2));
    assert_eq!(ds.get(0).unwrap().caption, "two");
    assert_eq!(ds.get(1).unwrap().id, "x/1.png");
    assert_eq!(ds.get(1).unwrap().image, image(1));
    assert_eq!(ds.skipped().len(), 1);

    // A malformed line is an error naming file and line.
    write(
        &root.join("captions.jsonl"),
        b"{\"file\": \"2.png\", \"caption\": \"two\"}\n{\"file\": 3}\n",
    );
    let err = ImageFolder::open(root).err().unwrap().to_string();
    assert!(err.contains("captions.jsonl:2"), "{err}");

    // An empty folder says what it expected.
    let empty = tempfile::tempdir().unwrap();
    let err = ImageFolder::open(empty.path()).err().unwrap().to_string();
    assert_mentions(&err, &["captions.jsonl", ".txt"]);
    let err = ImageFolder::open(&root.join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["nope", "not a folder"]);
}

fn write_coco(root: &Path) {
    let json = serde_json::json!({
        "info": {"description": "tiny"},
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 13, "height": 10},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 14, "height": 10},
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 15, "height": 10}
        ],
        "annotations": [
            {"image_id": 7, "id": 1, "caption": "A cat on a mat.\n"},
            {"image_id": 42, "id": 2, "caption": "A dog."},
            {"image_id": 7, "id": 3, "caption": "A mat with a cat."},
            {"image_id": 5, "id": 4, "caption": "Of an image that is not listed."},
            {"image_id": 42, "id": 5, "caption": "A dog in the park."},
            {"image_id": 7, "id": 6, "caption": "Cat."}
        ]
    });
    write(
        &root.join("annotations/captions_val2014.json"),
        json.to_string().as_bytes(),
    );
    for (k, id) in [(1u8, 42), (2, 7)] {
        // Stored as real JPEG, the COCO format.
        write(
            &root.join(format!("val2014/COCO_val2014_{id:012}.jpg")),
            &to_jpeg(&image(k)),
        );
    }
    // Image 9 has no caption, so it is not an example (and need not exist).
}

#[test]
fn coco_captions_one_per_image_or_every_caption() {
    let dir = tempfile::tempdir().unwrap();
    write_coco(dir.path());
    let json = dir.path().join("annotations/captions_val2014.json");
    let images = dir.path().join("val2014");

    let first = Coco::open(&json, &images, CocoCaptions::First).unwrap();
    assert_eq!(first.len(), Some(2));
    let e0 = first.get(0).unwrap();
    assert_eq!((e0.id.as_str(), e0.caption.as_str()), ("coco/42", "A dog."));
    assert_eq!((e0.image.width(), e0.image.height()), (13, 10));
    // JPEG is lossy; the colour is close.
    let px = e0.image.pixel(6, 5);
    assert!(px[0].abs_diff(20) < 8 && px[1].abs_diff(235) < 8, "{px:?}");
    assert_eq!(first.get(1).unwrap().caption, "A cat on a mat.");
    assert_eq!(first.skipped().len(), 1, "the caption of unlisted image 5");

    let every = Coco::open(&json, &images, CocoCaptions::Every).unwrap();
    assert_eq!(every.len(), Some(5));
    let captions: Vec<String> = (0..5).map(|i| every.get(i).unwrap().caption).collect();
    assert_eq!(
        captions,
        [
            "A dog.",
            "A dog in the park.",
            "A cat on a mat.",
            "A mat with a cat.",
            "Cat."
        ]
    );
    assert_eq!(every.id(3).unwrap(), "coco/7/1");
    // All captions of an image fall on the same side of any split.
    for salt in 0..20 {
        let config = SplitConfig {
            val_fraction: 0.5,
            salt,
        };
        let val = SplitDataset::new(
            Coco::open(&json, &images, CocoCaptions::Every).unwrap(),
            Split::Val,
            config,
        )
        .unwrap();
        assert!(
            [0, 2, 3, 5].contains(&val.len().unwrap()),
            "{:?}",
            val.len()
        );
    }

    // Through the spec string, as a config would name it.
    let spec: DatasetSpec = format!(
        "coco:{}:{}:captions=every",
        json.display(),
        images.display()
    )
    .parse()
    .unwrap();
    assert_eq!(spec.open().unwrap().len(), Some(5));

    // Wrong JSON names the file and the expected layout.
    write(&dir.path().join("bad.json"), b"{\"images\": []}");
    let err = Coco::open(&dir.path().join("bad.json"), &images, CocoCaptions::First)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["bad.json", "annotations"]);
}

fn tar_member(builder: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes).unwrap();
}

#[test]
fn webdataset_shards() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |n: usize| dir.path().join(format!("shard-{n:03}.tar"));
    {
        let mut b = tar::Builder::new(std::fs::File::create(shard(0)).unwrap());
        tar_member(&mut b, "000000.png", &image(1).to_png());
        tar_member(&mut b, "000000.txt", b"first sample\n");
        tar_member(
            &mut b,
            "000001.json",
            br#"{"caption": "second, from json", "width": 13}"#,
        );
        tar_member(&mut b, "000001.png", &image(2).to_png());
        tar_member(&mut b, "000002.png", &image(3).to_png()); // no caption: skipped
        tar_member(&mut b, "000003.txt", b"no image"); // no image: skipped
        b.into_inner().unwrap();
    }
    {
        let mut b = tar::Builder::new(std::fs::File::create(shard(1)).unwrap());
        tar_member(&mut b, "d/000010.seg.png", &image(4).to_png());
        tar_member(
            &mut b,
            "d/000010.txt",
            b"nested key with a double extension",
        );
        tar_member(&mut b, "d/000011.png", &corrupt_png());
        tar_member(&mut b, "d/000011.txt", b"corrupt image");
        tar_member(
            &mut b,
            "d/000012.jpg",
            &to_jpeg(&Image::filled(16, 10, [200, 30, 30])),
        );
        tar_member(&mut b, "d/000012.json", br#"{"text": "a red jpeg"}"#);
        b.into_inner().unwrap();
    }
    let pattern = format!("{}/shard-{{000..001}}.tar", dir.path().display());
    let ds = WebDataset::open(&pattern).unwrap();
    assert_eq!(ds.len(), Some(5));
    assert_eq!(ds.skipped().len(), 2);
    let e = ds.get(0).unwrap();
    assert_eq!(
        (e.id.as_str(), e.caption.as_str()),
        ("shard-000.tar/000000", "first sample")
    );
    assert_eq!(e.image, image(1));
    assert_eq!(ds.get(1).unwrap().caption, "second, from json");
    assert_eq!(ds.get(1).unwrap().image, image(2));
    assert_eq!(ds.get(2).unwrap().id, "shard-001.tar/d/000010");
    assert_eq!(ds.get(2).unwrap().image, image(4));
    let err = ds.get(3).unwrap_err().to_string();
    assert!(err.contains("shard-001.tar:d/000011.png"), "{err}");
    let red = ds.get(4).unwrap();
    assert_eq!(red.caption, "a red jpeg");
    assert!(red.image.pixel(8, 5)[0] > 180);

    // Through a spec, as TOML.
    #[derive(serde::Deserialize)]
    struct Config {
        dataset: DatasetSpec,
    }
    let config: Config = toml::from_str(&format!("dataset = \"wds:{pattern}\"")).unwrap();
    assert_eq!(config.dataset.open().unwrap().len(), Some(5));

    // A missing shard names itself.
    let err = WebDataset::open(&format!("{}/shard-{{000..002}}.tar", dir.path().display()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("shard-002.tar"), "{err}");
}

#[test]
fn brace_expansion() {
    use ldmscale_data::webdataset::expand_braces;
    assert_eq!(
        expand_braces("a-{08..11}.tar").unwrap(),
        ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
    );
    assert_eq!(
        expand_braces("{x,y}/{0..1}").unwrap(),
        ["x/0", "x/1", "y/0", "y/1"]
    );
    assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
    assert!(expand_braces("a{1..").is_err());
    assert!(expand_braces("a{5..2}").is_err());
    assert!(expand_braces("a{x..2}").is_err());
}

#[test]
fn specs_parse_from_strings_and_tables() {
    let round = |s: &str| {
        let spec: DatasetSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
        spec
    };
    assert_eq!(
        round("shapes"),
        DatasetSpec::Shapes(ShapesConfig::default())
    );
    assert_eq!(
        round("shapes:resolution=128:seed=3:anti_alias=false"),
        DatasetSpec::Shapes(ShapesConfig {
            resolution: 128,
            seed: 3,
            anti_alias: false
        })
    );
    round("fashion-mnist");
    round("fashion-mnist:test:captions=varied");
    round("mnist:test");
    round("emoji");
    round("folder:/data/my pets");
    round("coco:/coco/annotations/captions_val2014.json:/coco/val2014");
    round("coco:/c.json:/imgs:captions=every");
    round("wds:/data/shard-{000..009}.tar");
    assert_eq!(
        "mnist:train".parse::<DatasetSpec>().unwrap().to_string(),
        "mnist"
    );

    for (bad, says) in [
        ("", "empty"),
        ("imagenet", "unknown dataset kind"),
        ("shapes:resolution=big", "expected a non-negative integer"),
        ("shapes:size=3", "no option \"size\""),
        ("folder", "one folder path"),
        ("coco:/only/json", "coco:JSON:DIR"),
        ("mnist:validation", "train or test"),
        ("coco:/a:/b:captions=all", "first or every"),
    ] {
        let err = bad.parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(err.contains(says), "{bad:?}: {err}");
    }

    // TOML: the string form and the table form.
    #[derive(serde::Deserialize, serde::Serialize, Debug)]
    struct Config {
        dataset: DatasetSpec,
    }
    let c: Config = toml::from_str("dataset = \"fashion-mnist:test\"").unwrap();
    assert_eq!(c.dataset, "fashion-mnist:test".parse().unwrap());
    let c: Config = toml::from_str(
        "[dataset]\nkind = \"coco\"\nannotations = \"C:/coco/captions.json\"\nimages = \"C:/coco/val2014\"\ncaptions = \"every\"\n",
    )
    .unwrap();
    let DatasetSpec::Coco {
        annotations,
        captions,
        ..
    } = &c.dataset
    else {
        panic!("{:?}", c.dataset)
    };
    assert_eq!(annotations, Path::new("C:/coco/captions.json"));
    assert_eq!(*captions, CocoCaptions::Every);
    // A path with ':' cannot be written as a string, so it serialises as a table, and back.
    let toml_text = toml::to_string(&c).unwrap();
    assert!(toml_text.contains("kind = \"coco\""), "{toml_text}");
    let back: Config = toml::from_str(&toml_text).unwrap();
    assert_eq!(back.dataset, c.dataset);
    // Plain specs serialise as their string.
    let s = serde_json::to_string(&"shapes:seed=2".parse::<DatasetSpec>().unwrap()).unwrap();
    assert_eq!(s, "\"shapes:seed=2\"");
    let table: Config = toml::from_str("[dataset]\nkind = \"shapes\"\nseed = 2\n").unwrap();
    assert_eq!(table.dataset.to_string(), "shapes:seed=2");

    // Bad tables say what is wrong.
    let err = toml::from_str::<Config>("[dataset]\nkind = \"shapes\"\nsize = 2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("size"), "{err}");
    let err = toml::from_str::<Config>("[dataset]\nkind = \"folder\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("path"), "{err}");
    let err = toml::from_str::<Config>("dataset = \"nope\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown dataset kind"), "{err}");
}

#[test]
fn missing_asset_says_how_to_fetch_it() {
    let empty = tempfile::tempdir().unwrap();
    for (spec, name) in [
        ("fashion-mnist", "fashion-mnist"),
        ("mnist:test", "mnist"),
        ("emoji", "emoji"),
    ] {
        let spec: DatasetSpec = spec.parse().unwrap();
        let err = spec.open_with_assets(empty.path()).err().unwrap();
        assert!(matches!(err, DataError::MissingAsset { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("tools/fetch-assets.sh {name}")),
            "{msg}"
        );
        assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    }
}

#[test]
fn rgba_is_composited_over_white() {
    let mut rgba = image::RgbaImage::new(2, 1);
    rgba.put_pixel(0, 0, image::Rgba([255, 0, 0, 255]));
    rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let img = Image::decode(&png.into_inner(), "t.png").unwrap();
    assert_eq!(img.pixel(0, 0), [255, 0, 0]);
    assert_eq!(img.pixel(1, 0), [255, 255, 255]);
    let err = Image::decode(b"not an image", "junk.png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.png"), "{err}");
}
