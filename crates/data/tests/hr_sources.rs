//! High-resolution sources for super-resolution: parsing, file listing, seeded crops and every
//! kind of bad input, on tiny images made in a temporary folder; one test over the real photos
//! asset when `tools/fetch-assets.sh photos` has installed it.

use std::path::{Path, PathBuf};

use ldmscale_data::hr::area_downsample;
use ldmscale_data::{
    CropSpec, DataError, Downscale, HrSource, Image, assets_dir, for_each_hr_crop, hr_crops,
    hr_crops_of_images,
};
use serde::Deserialize;

/// An image whose pixel (x, y) is (x, y, tag): a crop's origin can be read from its first pixel.
fn coords(width: u32, height: u32, tag: u8) -> Image {
    let mut img = Image::filled(width, height, [0, 0, tag]);
    for y in 0..height {
        for x in 0..width {
            img.set_pixel(x, y, [x as u8, y as u8, tag]);
        }
    }
    img
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn write_image(path: &Path, img: &Image) -> PathBuf {
    write(path, &img.to_png())
}

/// A PNG of another pixel layout (grey, RGBA, ...) written by the `image` crate.
fn write_dynamic(path: &Path, img: image::DynamicImage) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
    path.to_path_buf()
}

fn spec(count: usize, size: u32, seed: u64) -> CropSpec {
    CropSpec {
        count,
        size,
        seed,
        downscale: Downscale::Off,
    }
}

/// Three 40x30 images tagged 0, 1, 2 in a folder.
fn three_images(dir: &Path) -> Vec<PathBuf> {
    (0..3)
        .map(|t| write_image(&dir.join(format!("img{t}.png")), &coords(40, 30, t)))
        .collect()
}

#[test]
fn every_form_parses_and_prints_back() {
    let cases = [
        ("study", HrSource::Study),
        ("photos", HrSource::Photos),
        ("div2k:/data/DIV2K", HrSource::Div2k("/data/DIV2K".into())),
        ("folder:rel/hr", HrSource::Folder("rel/hr".into())),
    ];
    for (text, want) in cases {
        let got: HrSource = text.parse().unwrap();
        assert_eq!(got, want);
        assert_eq!(got.to_string(), text);
    }
}

#[test]
fn bad_source_strings_say_what_is_expected() {
    for (text, needle) in [
        ("div2k", "`div2k` needs a folder: `div2k:DIR`"),
        ("folder:", "`folder` needs a folder"),
        ("photos:x", "`photos` takes no argument"),
        ("imagenet:/x", "unknown HR source `imagenet`"),
        ("", "unknown HR source ``"),
    ] {
        let err = text.parse::<HrSource>().unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
        if needle.starts_with("unknown") || needle.contains("no argument") {
            assert!(
                err.contains("`study`, `photos`, `div2k:DIR` or `folder:DIR`"),
                "{err}"
            );
        }
    }
}

#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct Section {
    hr_source: HrSource,
    #[serde(default)]
    downscale: Downscale,
}

#[test]
fn toml_strings_deserialize_and_name_the_field_when_wrong() {
    let s: Section = toml::from_str("hr_source = \"div2k:/d\"\ndownscale = 4").unwrap();
    assert_eq!(s.hr_source, HrSource::Div2k("/d".into()));
    assert_eq!(s.downscale, Downscale::Factor(4));
    let s: Section = toml::from_str("hr_source = \"photos\"\ndownscale = \"paper-view\"").unwrap();
    assert_eq!(
        (s.hr_source, s.downscale),
        (HrSource::Photos, Downscale::PaperView)
    );
    let s: Section = toml::from_str("hr_source = \"study\"").unwrap();
    assert_eq!(s.downscale, Downscale::Off);
    let err = toml::from_str::<Section>("hr_source = \"flickr\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hr_source") && err.contains("unknown HR source `flickr`"),
        "{err}"
    );
    let err = toml::from_str::<Section>("hr_source = \"study\"\ndownscale = 0").unwrap_err();
    assert!(err.to_string().contains("downscale") && err.to_string().contains("`paper-view`"));
    let source = HrSource::Folder("/a b".into());
    assert_eq!(
        String::from(source.clone()).parse::<HrSource>().unwrap(),
        source
    );
}

#[test]
fn downscale_strings() {
    assert_eq!("off".parse::<Downscale>().unwrap(), Downscale::Off);
    assert_eq!("1".parse::<Downscale>().unwrap(), Downscale::Off);
    assert_eq!("3".parse::<Downscale>().unwrap(), Downscale::Factor(3));
    assert_eq!(
        "paper-view".parse::<Downscale>().unwrap(),
        Downscale::PaperView
    );
    for bad in ["0", "-2", "half"] {
        let err = bad.parse::<Downscale>().unwrap_err().to_string();
        assert!(
            err.contains("expected `off`, `paper-view` or a factor"),
            "{err}"
        );
    }
    assert_eq!(Downscale::Factor(3).to_string(), "3");
}

#[test]
fn folder_is_recursive_and_sorted_by_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    let img = coords(8, 8, 0);
    for name in [
        "b.png",
        "a/z.png",
        "a/b.JPG",
        "a/notes.txt",
        ".hidden/x.png",
    ] {
        if name.ends_with("txt") {
            write(&dir.path().join(name), b"not an image");
        } else {
            write_image(&dir.path().join(name), &img);
        }
    }
    let files = HrSource::Folder(dir.path().into()).files().unwrap();
    let rel: Vec<_> = files
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(rel, ["a/b.JPG", "a/z.png", "b.png"]);
}

#[test]
fn div2k_reads_its_valid_hr_folder_or_the_pngs_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let img = coords(8, 8, 0);
    write_image(&dir.path().join("DIV2K_valid_HR/0802.png"), &img);
    write_image(&dir.path().join("DIV2K_valid_HR/0801.png"), &img);
    write_image(&dir.path().join("stray.png"), &img);
    let files = HrSource::Div2k(dir.path().into()).files().unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["0801.png", "0802.png"]);
    let flat = HrSource::Div2k(dir.path().join("DIV2K_valid_HR"))
        .files()
        .unwrap();
    assert_eq!(flat, files);

    let jpegs = tempfile::tempdir().unwrap();
    write(&jpegs.path().join("0801.jpg"), b"x");
    let err = HrSource::Div2k(jpegs.path().into())
        .files()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&jpegs.path().display().to_string()), "{err}");
    assert!(err.contains("DIV2K_valid_HR/*.png"), "{err}");
}

#[test]
fn missing_or_empty_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("readme.txt"), b"no images here");
    let err = HrSource::Folder(dir.path().into())
        .files()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("no images in this folder or below"), "{err}");

    let gone = dir.path().join("absent");
    let err = HrSource::Folder(gone.clone())
        .files()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&gone.display().to_string()), "{err}");
}

#[test]
fn photos_missing_tells_how_to_fetch_them() {
    let assets = tempfile::tempdir().unwrap();
    let err = HrSource::Photos.files_in(assets.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingAsset { .. }), "{err:?}");
    assert!(
        err.to_string().contains("tools/fetch-assets.sh photos"),
        "{err}"
    );
    assert!(HrSource::Study.files_in(assets.path()).is_err());
}

#[test]
fn crops_are_byte_identical_on_rerun_and_seeded_per_index() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_images(dir.path());
    let a = hr_crops(&files, &spec(12, 8, 7)).unwrap();
    let b = hr_crops(&files, &spec(12, 8, 7)).unwrap();
    assert_eq!(a, b);
    let bytes = |v: &[Image]| {
        v.iter()
            .flat_map(|c| c.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(bytes(&a), bytes(&b));
    // Crop i depends on (seed, i) only: a shorter set is a prefix, another seed differs.
    assert_eq!(hr_crops(&files, &spec(5, 8, 7)).unwrap(), a[..5]);
    assert_ne!(hr_crops(&files, &spec(12, 8, 8)).unwrap(), a);
    // Images are drawn among all three, not always the first.
    let tags: std::collections::BTreeSet<u8> = a.iter().map(|c| c.pixel(0, 0)[2]).collect();
    assert!(tags.len() > 1, "{tags:?}");
}

#[test]
fn a_crop_is_a_window_of_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_images(dir.path());
    for crop in hr_crops(&files, &spec(20, 8, 1)).unwrap() {
        assert_eq!((crop.width(), crop.height()), (8, 8));
        let [x0, y0, tag] = crop.pixel(0, 0);
        assert!(x0 as u32 + 8 <= 40 && y0 as u32 + 8 <= 30);
        assert_eq!(crop, coords(40, 30, tag).crop(x0 as u32, y0 as u32, 8, 8));
    }
}

#[test]
fn streaming_visits_every_crop_once_with_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_images(dir.path());
    let all = hr_crops(&files, &spec(9, 4, 3)).unwrap();
    let mut seen = Vec::new();
    for_each_hr_crop(&files, &spec(9, 4, 3), |i, crop| {
        assert_eq!(crop, all[i]);
        seen.push(i);
        Ok(())
    })
    .unwrap();
    seen.sort();
    assert_eq!(seen, (0..9).collect::<Vec<_>>());
}

#[test]
fn study_images_crop_like_files() {
    let images: Vec<Image> = (0..3).map(|t| coords(40, 30, t)).collect();
    let dir = tempfile::tempdir().unwrap();
    let files = three_images(dir.path());
    let s = spec(10, 6, 5);
    assert_eq!(
        hr_crops_of_images(&images, &s).unwrap(),
        hr_crops(&files, &s).unwrap()
    );
    assert!(hr_crops_of_images(&[], &s).is_err());
}

#[test]
fn area_downsample_averages_blocks_rounding_half_up() {
    let img = Image::from_rgb(2, 2, vec![0, 0, 0, 1, 10, 255, 1, 10, 255, 1, 11, 255]).unwrap();
    let out = area_downsample(&img, 2);
    assert_eq!(out.as_bytes(), [1, 8, 191]); // 3/4 -> 1, 31/4 -> 8, 765/4 -> 191
}

#[test]
fn downscaled_crops_average_a_larger_region() {
    let dir = tempfile::tempdir().unwrap();
    let src = coords(40, 30, 9);
    let files = vec![write_image(&dir.path().join("a.png"), &src)];
    let s = CropSpec {
        downscale: Downscale::Factor(3),
        ..spec(6, 8, 2)
    };
    for crop in hr_crops(&files, &s).unwrap() {
        assert_eq!((crop.width(), crop.height()), (8, 8));
        // Block (0, 0) covers x0..x0+3: its mean is x0 + 1.
        let [x, y, _] = crop.pixel(0, 0);
        let (x0, y0) = (x as u32 - 1, y as u32 - 1);
        assert_eq!(crop, area_downsample(&src.crop(x0, y0, 24, 24), 3));
    }
    // 8 x 3 = 24 fits 30 px; 8 x 4 = 32 does not, and says so.
    let err = hr_crops(
        &files,
        &CropSpec {
            downscale: Downscale::Factor(4),
            ..s
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("a.png") && msg.contains("40x30") && msg.contains("32x32"),
        "{msg}"
    );
}

#[test]
fn paper_view_fits_the_factor_to_each_image() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![write_image(&dir.path().join("a.png"), &coords(40, 30, 0))];
    let s = CropSpec {
        downscale: Downscale::PaperView,
        ..spec(4, 8, 0)
    };
    // 512 / 8 = 64 wanted; 30 / 8 = 3 fits: a 24 px region averaged by 3.
    let crops = hr_crops(&files, &s).unwrap();
    let [x, y, _] = crops[0].pixel(0, 0);
    let src = coords(40, 30, 0);
    assert_eq!(
        crops[0],
        area_downsample(&src.crop(x as u32 - 1, y as u32 - 1, 24, 24), 3)
    );
}

#[test]
fn an_image_smaller_than_the_crop_is_named_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        write_image(&dir.path().join("big.png"), &coords(64, 64, 0)),
        write_image(&dir.path().join("small.png"), &coords(20, 30, 0)),
    ];
    let err = hr_crops(&files, &spec(20, 32, 0)).unwrap_err().to_string();
    assert!(err.contains("small.png"), "{err}");
    assert!(err.contains("20x30") && err.contains("32x32 crop"), "{err}");
    assert!(!err.contains("big.png"), "{err}");
    // No crop reaches the caller before the check.
    let mut visited = 0;
    assert!(
        for_each_hr_crop(&files, &spec(20, 32, 0), |_, _| {
            visited += 1;
            Ok(())
        })
        .is_err()
    );
    assert_eq!(visited, 0);
}

#[test]
fn zero_crop_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_images(dir.path());
    let err = hr_crops(&files, &spec(1, 0, 0)).unwrap_err().to_string();
    assert!(err.contains("crop size"), "{err}");
    assert!(hr_crops(&[], &spec(1, 4, 0)).is_err());
}

#[test]
fn grey_and_opaque_rgba_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let src = coords(16, 16, 200);
    let rgba = image::RgbaImage::from_fn(16, 16, |x, y| {
        let [r, g, b] = src.pixel(x, y);
        image::Rgba([r, g, b, 255])
    });
    let rgb_file = write_image(&dir.path().join("rgb.png"), &src);
    let rgba_file = write_dynamic(&dir.path().join("rgba.png"), rgba.into());
    let s = spec(3, 8, 4);
    assert_eq!(
        hr_crops(&[rgba_file], &s).unwrap(),
        hr_crops(&[rgb_file], &s).unwrap()
    );

    let grey = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
    let grey_file = write_dynamic(&dir.path().join("grey.png"), grey.into());
    for crop in hr_crops(&[grey_file], &s).unwrap() {
        assert!(
            crop.as_bytes()
                .chunks(3)
                .all(|p| p[0] == p[1] && p[1] == p[2])
        );
    }
}

#[test]
fn transparent_rgba_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let rgba = image::RgbaImage::from_fn(16, 16, |x, _| {
        image::Rgba([9, 9, 9, if x == 3 { 128 } else { 255 }])
    });
    let file = write_dynamic(&dir.path().join("icon.png"), rgba.into());
    let err = hr_crops(&[file], &spec(2, 8, 0)).unwrap_err().to_string();
    assert!(
        err.contains("icon.png") && err.contains("transparent"),
        "{err}"
    );
}

#[test]
fn unreadable_and_truncated_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let png = coords(32, 32, 0).to_png();
    let cut = write(&dir.path().join("cut.png"), &png[..png.len() / 2]);
    let err = hr_crops(&[cut], &spec(2, 8, 0)).unwrap_err().to_string();
    assert!(err.contains("cut.png"), "{err}");
    let junk = write(&dir.path().join("junk.jpg"), b"this is not a JPEG at all");
    let err = hr_crops(&[junk], &spec(2, 8, 0)).unwrap_err().to_string();
    assert!(err.contains("junk.jpg"), "{err}");
    let gone = dir.path().join("gone.png");
    let err = hr_crops(&[gone], &spec(2, 8, 0)).unwrap_err().to_string();
    assert!(err.contains("gone.png"), "{err}");
}

/// The real photographs: runs only when `tools/fetch-assets.sh photos` has installed them.
#[test]
fn real_photos_give_varied_crops() {
    if !assets_dir().join("photos/.complete").exists() {
        eprintln!(
            "skipping: asset photos not in {} (run tools/fetch-assets.sh photos)",
            assets_dir().display()
        );
        return;
    }
    let files = HrSource::Photos.files().unwrap();
    assert_eq!(
        files.len(),
        17,
        "10 wallpaper and 7 scikit-image photographs"
    );
    let s = CropSpec {
        downscale: Downscale::PaperView,
        ..spec(6, 64, 0)
    };
    let crops = hr_crops(&files, &s).unwrap();
    assert_eq!(crops, hr_crops(&files, &s).unwrap());
    for crop in &crops {
        assert_eq!((crop.width(), crop.height()), (64, 64));
        let v: Vec<f64> = crop.as_bytes().iter().map(|&b| b as f64).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(sd > 2.0, "a photo crop is not flat (sd {sd})");
    }
}
