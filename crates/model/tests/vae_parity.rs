//! The autoencoder against diffusers' `AutoencoderKL` on random-weight fixtures
//! (tools/fixtures/make_vae_fixtures.py): encode (posterior mean, log-variance, a sample with
//! given noise, KL), decode, parameter names, counts and multiply-adds, weights I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_model::vae::{
    AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian, VAE_NAMING, load_vae, save_vae,
};
use ldmscale_model::weights::{CONFIG_FILE, WEIGHTS_FILE, parameter_shapes_named};
use ldmscale_testkit::{
    RawTensor, assert_mentions, assert_parity, fixture_dir, read_json, read_safetensors, values,
    write_safetensors,
};

fn fixtures() -> PathBuf {
    fixture_dir("vae")
}

const CASES: [&str; 3] = ["kl_f4", "kl_f8", "odd_plain"];

/// Named tensors as (shape, f32 values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as (shape, f32 values).
fn read_all(path: &Path) -> Tensors {
    read_safetensors(path)
        .into_iter()
        .map(|(k, t)| (k, (t.shape.clone(), t.f32())))
        .collect()
}

fn write_all(path: &Path, tensors: &Tensors) {
    let raw = tensors
        .iter()
        .map(|(k, (shape, v))| (k.clone(), RawTensor::from_f32(shape.clone(), v)))
        .collect();
    write_safetensors(path, &raw);
}

fn tensor<const D: usize>(io: &Tensors, name: &str) -> Tensor<D> {
    let (shape, values) = io.get(name).unwrap_or_else(|| panic!("io has no {name}"));
    Tensor::from_data(
        TensorData::new(values.clone(), shape.clone()),
        &Device::flex(),
    )
}

fn check<const D: usize>(case: &str, what: &str, ours: Tensor<D>, io: &Tensors) {
    let (shape, reference) = &io[what];
    assert_eq!(&ours.dims().to_vec(), shape, "{case}: {what} shape");
    let ours = values(ours);
    assert_parity(&format!("{case} {what}"), &ours, reference, 1e-5, 1e-4);
}

fn parity(case: &str) {
    let device = Device::flex();
    let dir = fixtures().join(case);
    let (_, model) = load_vae(&dir, &device).unwrap();
    let io = read_all(&dir.join("io.safetensors"));
    let posterior = model.encode(tensor(&io, "images"));
    check(case, "mean", posterior.mean.clone(), &io);
    check(case, "logvar", posterior.logvar.clone(), &io);
    check(case, "sample", posterior.sample(tensor(&io, "noise")), &io);
    check(case, "kl", posterior.kl(), &io);
    check(case, "decoded", model.decode(tensor(&io, "latents")), &io);
}

#[test]
fn kl_f4_matches_diffusers() {
    parity("kl_f4");
}

#[test]
fn kl_f8_non_square_matches_diffusers() {
    parity("kl_f8");
}

#[test]
fn odd_size_without_quant_convs_or_attention_matches_diffusers() {
    parity("odd_plain");
}

#[test]
fn names_and_shapes_equal_diffusers() {
    for case in CASES {
        let dir = fixtures().join(case);
        let config = AutoencoderKLConfig::from_json_file(&dir.join(CONFIG_FILE)).unwrap();
        let ours =
            parameter_shapes_named(&AutoencoderKL::new(&config, &Device::flex()), &VAE_NAMING);
        let theirs: BTreeMap<String, Vec<usize>> = read_all(&dir.join(WEIGHTS_FILE))
            .into_iter()
            .map(|(k, (shape, _))| (k, shape))
            .collect();
        assert_eq!(ours, theirs, "{case}");
    }
}

fn manifest() -> serde_json::Value {
    read_json(fixtures().join("manifest.json"))
}

#[test]
fn parameter_counts_and_multiply_adds_equal_a_hook_count_on_diffusers() {
    let counts = &manifest()["counts"];
    for (name, config) in [
        ("sd", AutoencoderKLConfig::sd()),
        ("kl_f4", AutoencoderKLConfig::kl_f4()),
        ("kl_f8", AutoencoderKLConfig::kl_f8()),
    ] {
        let entry = &counts[name];
        // Lazily initialised: counting SD's 84M parameters allocates nothing.
        let model = AutoencoderKL::new(&config, &Device::flex());
        let params: usize = parameter_shapes_named(&model, &VAE_NAMING)
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert_eq!(
            params as u64,
            entry["params"].as_u64().unwrap(),
            "{name}: parameters"
        );
        let side = entry["image"].as_u64().unwrap() as usize;
        let latent = side / config.downsampling_factor();
        for (what, cost) in [
            ("encode", model.encode_cost(side, side)),
            ("decode", model.decode_cost(latent, latent)),
        ] {
            let want = &entry[what];
            assert_eq!(
                cost.conv_macs,
                want["conv"].as_u64().unwrap(),
                "{name} {what}: conv"
            );
            assert_eq!(
                cost.linear_macs,
                want["linear"].as_u64().unwrap(),
                "{name} {what}: linear"
            );
            assert_eq!(
                cost.attention_macs,
                want["attn"].as_u64().unwrap(),
                "{name} {what}: attention"
            );
            eprintln!("{name} {what} ({side}px): {:.1} GFLOPs", cost.gflops());
        }
    }
}

#[test]
fn save_then_load_gives_the_same_tensors_and_outputs() {
    let device = Device::flex();
    let src = fixtures().join("kl_f8");
    let (config, model) = load_vae(&src, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_vae(out.path(), &config, &model).unwrap();
    assert_eq!(
        read_all(&src.join(WEIGHTS_FILE)),
        read_all(&out.path().join(WEIGHTS_FILE)),
        "saved weights differ from the diffusers file they were loaded from"
    );
    let (config2, model2) = load_vae(out.path(), &device).unwrap();
    assert_eq!(config, config2);
    let z = tensor::<4>(&read_all(&src.join("io.safetensors")), "latents");
    assert_eq!(
        model.decode(z.clone()).into_data(),
        model2.decode(z).into_data()
    );
}

#[test]
fn deprecated_attention_names_load() {
    // diffusers < 0.14 wrote the VAE's attention as query/key/value/proj_attn (SD VAE files of
    // that era still do); diffusers renames them on load and so must we.
    let src = fixtures().join("kl_f4");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let renamed: Tensors = read_all(&src.join(WEIGHTS_FILE))
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains("proj_attn")));
    write_all(&dir.path().join(WEIGHTS_FILE), &renamed);
    let device = Device::flex();
    let (_, legacy) = load_vae(dir.path(), &device).unwrap();
    let (_, current) = load_vae(&src, &device).unwrap();
    let z = tensor::<4>(&read_all(&src.join("io.safetensors")), "latents");
    assert_eq!(
        legacy.decode(z.clone()).into_data(),
        current.decode(z).into_data()
    );
}

#[test]
fn bad_files_are_named() {
    let src = fixtures().join("odd_plain");
    let copy = |edit: &dyn Fn(&mut Tensors, &mut serde_json::Value)| {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = read_all(&src.join(WEIGHTS_FILE));
        let mut config: serde_json::Value = read_json(src.join(CONFIG_FILE));
        edit(&mut tensors, &mut config);
        write_all(&dir.path().join(WEIGHTS_FILE), &tensors);
        std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
        let err = load_vae(dir.path(), &Device::flex())
            .unwrap_err()
            .to_string();
        (dir, err)
    };
    let key = "decoder.up_blocks.0.upsamplers.0.conv.weight";
    let (_d, err) = copy(&|t, _| {
        t.remove(key).unwrap();
    });
    assert_mentions(&err, &[key, "missing", WEIGHTS_FILE]);
    let (_d, err) = copy(&|_, c| c["use_quant_conv"] = true.into());
    assert_mentions(&err, &["quant_conv.weight", "missing"]);
    let (_d, err) = copy(&|_, c| c["down_block_types"][1] = "AttnDownEncoderBlock2D".into());
    assert_mentions(&err, &["down_block_types[1]", CONFIG_FILE]);
    let (_d, err) = copy(&|_, c| c["norm_num_groups"] = 3.into());
    assert_mentions(&err, &["block_out_channels[0]", "norm_num_groups"]);
}

#[test]
fn posterior_clamps_logvar_and_the_latent_scaling_inverts() {
    let device = Device::flex();
    let moments = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32, -2.0, 40.0, -50.0], [1, 4, 1, 1]),
        &device,
    );
    let posterior = DiagonalGaussian::from_moments(moments);
    let logvar = values(posterior.logvar.clone());
    assert_eq!(logvar, vec![20.0, -30.0]);
    let noise = Tensor::<4>::ones([1, 2, 1, 1], &device);
    let sample = values(posterior.sample(noise));
    assert!((sample[0] - (0.5 + 10f32.exp())).abs() < 1e-2);
    assert!((sample[1] - (-2.0 + (-15f32).exp())).abs() < 1e-6);

    let mut config = AutoencoderKLConfig::sd();
    config.shift_factor = Some(0.25);
    let z = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, -3.0], [1, 2, 1, 1]), &device);
    let scaled = config.vae_to_latents(z.clone());
    let expected = [(1.0 - 0.25) * 0.18215, (-3.0 - 0.25) * 0.18215];
    let got = values(scaled.clone());
    assert!((got[0] - expected[0]).abs() < 1e-6 && (got[1] - expected[1]).abs() < 1e-6);
    let back = values(config.latents_to_vae(scaled));
    assert!((back[0] - 1.0).abs() < 1e-5 && (back[1] + 3.0).abs() < 1e-5);
}

#[test]
fn presets_are_valid_and_round_trip_through_json() {
    for config in [
        AutoencoderKLConfig::sd(),
        AutoencoderKLConfig::kl_f4(),
        AutoencoderKLConfig::kl_f8(),
    ] {
        config.validate().unwrap();
        let back: AutoencoderKLConfig = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(back.block_out_channels, config.block_out_channels);
        assert_eq!(back.other["_class_name"], "AutoencoderKL");
    }
    assert_eq!(AutoencoderKLConfig::sd().downsampling_factor(), 8);
    assert_eq!(AutoencoderKLConfig::kl_f4().downsampling_factor(), 4);
    assert_eq!(AutoencoderKLConfig::kl_f8().downsampling_factor(), 8);
}
