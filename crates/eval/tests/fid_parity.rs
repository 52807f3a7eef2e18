//! FID against pytorch-fid 0.3.0 and clean-fid 0.1.35, on the fixtures that
//! tools/fixtures/make_fid_fixtures.py writes to fixtures/eval/fid/.
//!
//! Everything here runs without the 87 MB Inception weights except
//! `real_weights_features_match_pytorch_fid_and_clean_fid`, which reads them from the asset
//! cache and skips with a note when they are absent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_eval::fid::image_files;
use ldmscale_eval::inception::FidInception;
use ldmscale_eval::npz::read_stats;
use ldmscale_eval::preprocess::{fid_input, resize_bicubic_pil, resize_bilinear};
use ldmscale_eval::stats::{frechet_distance_with_offset, kernel_inception_distance};
use ldmscale_eval::weights::{Attribute, NamedTensor, WeightMap};
use ldmscale_eval::{
    FidExtractor, FidMode, GaussianStats, KidOptions, RgbImage, default_inception_path,
    frechet_distance,
};
use ldmscale_testkit::{
    RawTensor, assert_mentions, fixture_dir, max_abs_diff, read_json, read_safetensors, rel_l2,
    values,
};
use safetensors::Dtype;
use serde_json::Value;

fn fixtures() -> PathBuf {
    fixture_dir("eval/fid")
}

fn manifest() -> Value {
    read_json(fixtures().join("manifest.json"))
}

/// The tensors of a fixture file.
fn read_fixture(name: &str) -> BTreeMap<String, RawTensor> {
    read_safetensors(fixtures().join(name))
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

// ---------------------------------------------------------------------------------------------
// Preprocessing (always runs)
// ---------------------------------------------------------------------------------------------

#[test]
fn decoding_to_rgb_matches_pil_convert() {
    let refs = read_fixture("preprocess.safetensors");
    let images = fixtures().join("images");
    for (key, t) in &refs {
        let Some(file) = key.strip_prefix("rgb_") else {
            continue;
        };
        assert_eq!(t.dtype, Dtype::U8);
        let path = if file == "odd.png" {
            images.join(file)
        } else {
            images.join("convert").join(file)
        };
        let ours = RgbImage::open(&path).unwrap();
        assert_eq!([ours.height, ours.width, 3], t.shape[..], "{file}");
        let worst = ours
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        let mean = ours
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / t.data.len() as f64;
        println!("{file}: max |diff| {worst} levels, mean {mean:.4}");
        if file.ends_with(".jpg") {
            // PIL decodes with libjpeg-turbo, the image crate with zune-jpeg: their IDCT and
            // chroma upsampling round differently, by up to 2 levels here.
            assert!(worst <= 2 && mean < 0.3, "{file}: max {worst}, mean {mean}");
        } else {
            assert_eq!(worst, 0, "{file}");
        }
    }
}

#[test]
fn fid_inputs_match_pytorch_fid_and_clean_fid() {
    let refs = read_fixture("preprocess.safetensors");
    let image = RgbImage::open(&fixtures().join("images/odd.png")).unwrap();
    let rows: Vec<usize> = refs["odd_rows"].i64().iter().map(|&r| r as usize).collect();
    for (mode, key, tolerance) in [
        (FidMode::PytorchFid, "pytorch_fid_odd_rows", 1e-6),
        (FidMode::Clean, "clean_odd_rows", 1e-6),
    ] {
        let full = fid_input(&image, mode);
        let mut ours = Vec::new();
        for c in 0..3 {
            for &r in &rows {
                ours.extend_from_slice(&full[(c * 299 + r) * 299..(c * 299 + r + 1) * 299]);
            }
        }
        let reference = refs[key].f32();
        let err = max_abs_diff(&ours, &reference);
        println!("{}: network input max |diff| {err:.2e}", mode.name());
        assert!(err <= tolerance, "{}: {err}", mode.name());
    }
}

#[test]
fn resizers_match_torch_and_pil_at_other_sizes() {
    let refs = read_fixture("preprocess.safetensors");
    let image = RgbImage::open(&fixtures().join("images/odd.png")).unwrap();
    let (h, w) = (image.height, image.width);
    let sizes = manifest()["small_sizes"].as_array().unwrap().clone();
    for size in sizes {
        let (oh, ow) = (
            size[0].as_u64().unwrap() as usize,
            size[1].as_u64().unwrap() as usize,
        );
        let mut chw = Vec::new();
        let mut pil = Vec::new();
        for c in 0..3 {
            let channel = image.channel_f32(c);
            chw.extend(channel.iter().map(|v| v / 255.0));
            pil.extend(
                resize_bicubic_pil(&channel, h, w, oh, ow)
                    .into_iter()
                    .map(|v| v.clamp(0.0, 255.0)),
            );
        }
        let bilinear = resize_bilinear(&chw, 3, h, w, oh, ow);
        let err_bilinear = max_abs_diff(&bilinear, &refs[&format!("bilinear_{oh}x{ow}")].f32());
        let err_pil = max_abs_diff(&pil, &refs[&format!("pil_bicubic_{oh}x{ow}")].f32());
        println!("{oh}x{ow}: bilinear max |diff| {err_bilinear:.2e}, PIL bicubic {err_pil:.2e}");
        assert!(err_bilinear <= 1e-6, "bilinear {oh}x{ow}: {err_bilinear}");
        assert!(err_pil <= 1e-4, "PIL bicubic {oh}x{ow}: {err_pil}"); // values in [0, 255]
    }
}

// ---------------------------------------------------------------------------------------------
// The network with formula weights (always runs)
// ---------------------------------------------------------------------------------------------

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF29CE484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001B3)
    })
}

/// The fixture script's `splitmix_unit`: uniforms in [0, 1) from splitmix64(fnv1a64(name) + i).
fn splitmix_unit(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i).wrapping_add(0x9E3779B97F4A7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z >> 11) as f64 * 2f64.powi(-53)
        })
        .collect()
}

/// The fixture script's `formula_tensor`.
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = splitmix_unit(name, n);
    let kind = name.rsplit('.').next().unwrap();
    u.into_iter()
        .map(|u| {
            (match kind {
                "weight" => {
                    let fan_in: usize = shape[1..].iter().product();
                    (2.0 * u - 1.0) * 3f64.sqrt() * (2.0 / fan_in as f64).sqrt()
                }
                "var" => 0.5 + u,
                "beta" | "mean" => (2.0 * u - 1.0) * 0.1,
                "input" => 2.0 * u - 1.0,
                other => panic!("{other}"),
            }) as f32
        })
        .collect()
}

fn formula_network(device: &Device) -> FidInception {
    let tensors = FidInception::tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let values = formula(&name, &shape);
            (name, NamedTensor { shape, values })
        })
        .collect();
    FidInception::from_weights(WeightMap::from_tensors("formula weights", tensors), device).unwrap()
}

#[test]
fn formula_weight_network_matches_pytorch_fid_blocks() {
    let device = Device::flex();
    let net = formula_network(&device);
    let refs = read_fixture("synthetic_inception.safetensors");
    let input = formula("input", &[2, 3, 75, 91]);
    let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, 75, 91]), &device);
    let blocks = net.forward_blocks(x);
    let outputs = [
        ("block0", values(blocks.block0)),
        ("block1", values(blocks.block1)),
        ("block2", values(blocks.block2)),
        ("block3", values(blocks.features)),
    ];
    for (name, ours) in outputs {
        let reference = refs[name].f32();
        let err = rel_l2(&ours, &reference);
        let abs = max_abs_diff(&ours, &reference);
        println!("{name}: relative L2 {err:.2e}, max |diff| {abs:.2e}");
        assert!(err < 1e-5, "{name}: relative L2 {err}");
    }
}

#[test]
fn formula_weight_network_matches_at_299() {
    let device = Device::flex();
    let net = formula_network(&device);
    let refs = read_fixture("synthetic_inception.safetensors");
    let input = formula("input", &[2, 3, 299, 299]);
    let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, 299, 299]), &device);
    let ours = values(net.forward(x));
    let reference = refs["features_299"].f32();
    let err = rel_l2(&ours, &reference);
    println!(
        "features at 299: relative L2 {err:.2e}, max |diff| {:.2e}",
        max_abs_diff(&ours, &reference)
    );
    assert!(err < 1e-5, "relative L2 {err}");
}

#[test]
fn weights_with_wrong_shapes_or_extra_tensors_are_refused() {
    let device = Device::flex();
    let mut tensors: BTreeMap<String, NamedTensor> = FidInception::tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            (
                name,
                NamedTensor {
                    shape,
                    values: vec![0.0; n],
                },
            )
        })
        .collect();
    let mut extra = tensors.clone();
    extra.insert(
        "layers.fc.weight".into(),
        NamedTensor {
            shape: vec![1],
            values: vec![0.0],
        },
    );
    let err = FidInception::from_weights(WeightMap::from_tensors("x.pt", extra), &device)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["x.pt", "layers.fc.weight"]);
    tensors
        .get_mut("layers.mixed_4.tower.conv_1.weight")
        .unwrap()
        .shape = vec![128, 128, 7, 1];
    let err = FidInception::from_weights(WeightMap::from_tensors("x.pt", tensors.clone()), &device)
        .unwrap_err()
        .to_string();
    assert_mentions(
        &err,
        &["layers.mixed_4.tower.conv_1.weight", "[128, 128, 1, 7]"],
    );
    tensors.remove("layers.mixed_4.tower.conv_1.weight");
    let err = FidInception::from_weights(WeightMap::from_tensors("x.pt", tensors), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tensor"), "{err}");
}

#[test]
fn safetensors_copies_load_and_torchscript_attributes_are_checked() {
    let device = Device::flex();
    let tensors: BTreeMap<String, NamedTensor> = FidInception::tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let values = formula(&name, &shape);
            (name, NamedTensor { shape, values })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("inception.safetensors");
    WeightMap::from_tensors("formula", tensors.clone())
        .save_safetensors(&copy)
        .unwrap();
    let from_copy = FidInception::load(&copy, &device).unwrap();
    let direct = formula_network(&device);
    let input = formula("input", &[1, 3, 75, 75]);
    let x = Tensor::<4>::from_data(TensorData::new(input, [1, 3, 75, 75]), &device);
    assert_eq!(
        values(from_copy.forward(x.clone())),
        values(direct.forward(x))
    );

    // A TorchScript layer whose recorded padding differs from the network's is refused.
    let mut map = WeightMap::from_tensors("x.pt", tensors);
    map.attributes.insert(
        "layers.mixed_4.tower.conv_1.padding".into(),
        Attribute::Ints(vec![3, 0]),
    );
    let err = FidInception::from_weights(map, &device)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["layers.mixed_4.tower.conv_1", "padding"]);
}

// ---------------------------------------------------------------------------------------------
// The real network (needs the asset)
// ---------------------------------------------------------------------------------------------

fn real_weights() -> Option<PathBuf> {
    let path = default_inception_path();
    if path.exists() {
        Some(path)
    } else {
        println!(
            "skipping: {} is absent (tools/fetch-assets.sh inception fetches it)",
            path.display()
        );
        None
    }
}

#[test]
fn real_weights_features_match_pytorch_fid_and_clean_fid() {
    let Some(path) = real_weights() else {
        return;
    };
    let device = Device::flex();
    let weights = WeightMap::open(&path).unwrap();
    assert_eq!(
        weights.num_values(),
        manifest()["inception_parameters"].as_u64().unwrap() as usize
    );
    assert_eq!(weights.num_values(), ldmscale_eval::FID_INCEPTION_PARAMS);
    let net = FidInception::from_weights(weights, &device).unwrap();
    let refs = read_fixture("features.safetensors");
    // Set a only, to keep the test to seconds; set b's features enter the FID checks.
    let images: Vec<RgbImage> = image_files(&fixtures().join("images/a"))
        .unwrap()
        .iter()
        .map(|p| RgbImage::open(p).unwrap())
        .collect();
    let mut extractor = FidExtractor::new(net, FidMode::PytorchFid, device.clone());
    for (mode, key) in [
        (FidMode::PytorchFid, "pytorch_fid_a"),
        (FidMode::Clean, "clean_a"),
    ] {
        extractor = extractor.with_mode(mode);
        let ours = extractor.features(&images);
        let reference = refs[key].f32();
        let err = max_abs_diff(&ours, &reference);
        println!(
            "{key}: max |diff| {err:.2e}, relative L2 {:.2e}",
            rel_l2(&ours, &reference)
        );
        assert!(err < 1e-4, "{key}: max |diff| {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and distances from committed features (always runs)
// ---------------------------------------------------------------------------------------------

fn feature_sets() -> BTreeMap<String, (Vec<f32>, usize)> {
    let mut out = BTreeMap::new();
    for file in ["stats.safetensors", "features.safetensors"] {
        for (k, t) in read_fixture(file) {
            let dim = *t.shape.last().unwrap();
            out.insert(k, (t.f32(), dim));
        }
    }
    out
}

#[test]
fn frechet_distance_matches_pytorch_fid_and_clean_fid() {
    let sets = feature_sets();
    let expected = manifest()["expected"].clone();
    for (case, a, b) in [
        ("synth", "synth_a", "synth_b"),
        ("low", "low_a", "low_b"),
        ("real_pytorch_fid", "pytorch_fid_a", "pytorch_fid_b"),
        ("real_clean", "clean_a", "clean_b"),
    ] {
        let (fa, d) = &sets[a];
        let (fb, _) = &sets[b];
        let sa = GaussianStats::from_features(fa, *d).unwrap();
        let sb = GaussianStats::from_features(fb, *d).unwrap();
        let ours = frechet_distance(&sa, &sb).unwrap();
        let reference = &expected[case];
        let pytorch_fid = reference["fid_pytorch_fid"].as_f64().unwrap();
        let clean_fid = reference["fid_clean_fid"].as_f64().unwrap();
        println!(
            "{case}: ours {ours:.9} pytorch-fid {pytorch_fid:.9} (rel {:.1e}), clean-fid rel {:.1e}",
            relative(ours, pytorch_fid),
            relative(ours, clean_fid),
        );
        assert!(!reference["pytorch_fid_used_offset"].as_bool().unwrap());
        assert!(relative(ours, pytorch_fid) < 1e-6, "{case}");
        assert!(relative(ours, clean_fid) < 1e-6, "{case}");
        // pytorch-fid's fallback for a singular product, forced (the 2048-wide cases only run
        // the plain distance, to keep the test to seconds).
        if *d < 2048 {
            let forced = reference["fid_with_1e-6_offset"].as_f64().unwrap();
            let ours_forced = frechet_distance_with_offset(&sa, &sb, 1e-6).unwrap();
            println!(
                "{case}: with the 1e-6 offset rel {:.1e}",
                relative(ours_forced, forced)
            );
            assert!(relative(ours_forced, forced) < 1e-6, "{case} with offset");
        }
    }
}

#[test]
fn kid_matches_clean_fid() {
    let sets = feature_sets();
    let expected = manifest()["expected"].clone();
    let rows = manifest()["kid_synth_rows"].as_u64().unwrap() as usize;
    let (a, d) = &sets["synth_a"];
    let (b, _) = &sets["synth_b"];
    for (case, a, b, d) in [
        ("kid_synth_200", &a[..rows * d], &b[..rows * d], *d),
        (
            "kid_real_clean",
            &sets["clean_a"].0[..],
            &sets["clean_b"].0[..],
            2048,
        ),
    ] {
        // clean-fid sums the kernel in float32 (the features' dtype); we sum in float64 and
        // match its float64 run to rounding.
        let reference = expected[case].as_f64().unwrap();
        let reference_f64 = expected[format!("{case}_f64")].as_f64().unwrap();
        for seed in [0, 7] {
            let kid = kernel_inception_distance(
                a,
                b,
                d,
                KidOptions {
                    seed,
                    ..Default::default()
                },
            )
            .unwrap();
            println!(
                "{case}: ours {:.9e}, clean-fid {reference:.9e} (rel {:.1e}), in float64 rel {:.1e}",
                kid.mean,
                relative(kid.mean, reference),
                relative(kid.mean, reference_f64)
            );
            assert!(relative(kid.mean, reference_f64) < 1e-9, "{case}");
            assert!(relative(kid.mean, reference) < 1e-5, "{case}");
            assert!(
                kid.std < 1e-12 * reference.abs().max(1.0),
                "equal sets: every subset is the whole set"
            );
        }
    }
}

#[test]
fn statistics_files_written_by_numpy_are_read() {
    let sets = feature_sets();
    let (b, d) = &sets["synth_b"];
    let ours = GaussianStats::from_features(b, *d).unwrap();
    let saved = read_stats(&fixtures().join("reference_stats.npz")).unwrap();
    let worst = ours
        .mu
        .iter()
        .chain(&ours.sigma)
        .zip(saved.mu.iter().chain(&saved.sigma))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!("np.savez_compressed stats vs ours: max |diff| {worst:.2e}");
    assert!(worst < 1e-12);
}
