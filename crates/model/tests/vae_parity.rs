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
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vae")
}

const CASES: [&str; 3] = ["kl_f4", "kl_f8", "odd_plain"];

/// Named tensors as (shape, f32 values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as (shape, f32 values).
fn read_all(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k, (v.shape().to_vec(), values))
        })
        .collect()
}

fn write_all(path: &Path, tensors: &Tensors) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), shape.clone(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (k.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn tensor<const D: usize>(io: &Tensors, name: &str) -> Tensor<D> {
    let (shape, values) = io.get(name).unwrap_or_else(|| panic!("io has no {name}"));
    Tensor::from_data(
        TensorData::new(values.clone(), shape.clone()),
        &Device::flex(),
    )
}

/// Relative L2 and max absolute error of `ours` against `reference`.
fn errors(ours: &[f32], reference: &[f32]) -> (f64, f64) {
    assert_eq!(ours.len(), reference.len());
    let (mut diff2, mut ref2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = (a - b) as f64;
        diff2 += d * d;
        ref2 += (b as f64) * (b as f64);
        max_abs = max_abs.max(d.abs());
    }
    ((diff2 / ref2).sqrt(), max_abs)
}

fn check<const D: usize>(case: &str, what: &str, ours: Tensor<D>, io: &Tensors) {
    let (shape, reference) = &io[what];
    assert_eq!(&ours.dims().to_vec(), shape, "{case}: {what} shape");
    let ours = ours
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let (rel, max_abs) = errors(&ours, reference);
    let scale = reference.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    eprintln!(
        "{case:>10} {what:>8}: relative L2 {rel:.2e}, max abs {max_abs:.2e} (|ref| <= {scale:.3})"
    );
    assert!(rel <= 1e-5, "{case}: {what}: relative L2 {rel:.3e} > 1e-5");
    assert!(
        max_abs <= 1e-4 * scale.max(1.0),
        "{case}: {what}: max abs {max_abs:.3e} > 1e-4 x {scale:.3}"
    );
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
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
        .unwrap()
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
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(CONFIG_FILE)).unwrap()).unwrap();
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
    assert!(
        err.contains(key) && err.contains("missing") && err.contains(WEIGHTS_FILE),
        "{err}"
    );
    let (_d, err) = copy(&|_, c| c["use_quant_conv"] = true.into());
    assert!(
        err.contains("quant_conv.weight") && err.contains("missing"),
        "{err}"
    );
    let (_d, err) = copy(&|_, c| c["down_block_types"][1] = "AttnDownEncoderBlock2D".into());
    assert!(
        err.contains("down_block_types[1]") && err.contains(CONFIG_FILE),
        "{err}"
    );
    let (_d, err) = copy(&|_, c| c["norm_num_groups"] = 3.into());
    assert!(
        err.contains("block_out_channels[0]") && err.contains("norm_num_groups"),
        "{err}"
    );
}

#[test]
fn posterior_clamps_logvar_and_the_latent_scaling_inverts() {
    let device = Device::flex();
    let moments = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32, -2.0, 40.0, -50.0], [1, 4, 1, 1]),
        &device,
    );
    let posterior = DiagonalGaussian::from_moments(moments);
    let logvar = posterior
        .logvar
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(logvar, vec![20.0, -30.0]);
    let noise = Tensor::<4>::ones([1, 2, 1, 1], &device);
    let sample = posterior
        .sample(noise)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!((sample[0] - (0.5 + 10f32.exp())).abs() < 1e-2);
    assert!((sample[1] - (-2.0 + (-15f32).exp())).abs() < 1e-6);

    let mut config = AutoencoderKLConfig::sd();
    config.shift_factor = Some(0.25);
    let z = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, -3.0], [1, 2, 1, 1]), &device);
    let scaled = config.vae_to_latents(z.clone());
    let expected = [(1.0 - 0.25) * 0.18215, (-3.0 - 0.25) * 0.18215];
    let got = scaled.clone().into_data().try_to_vec::<f32>().unwrap();
    assert!((got[0] - expected[0]).abs() < 1e-6 && (got[1] - expected[1]).abs() < 1e-6);
    let back = config
        .latents_to_vae(scaled)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
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
