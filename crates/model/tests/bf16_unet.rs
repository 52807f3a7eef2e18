//! `--precision bf16` through the UNet: where this CPU's bf16 engine is not f32 (AMX tiles on
//! Intel, AVX512-BF16 on AMD Zen 4), a sampling forward pass with bf16 products (attention's
//! included on AMX) stays within bf16's rounding of the f32 pass and is not the f32 result;
//! elsewhere the setting changes nothing. A test binary of its own: the setting is process-wide.

use burn::tensor::{Device, Distribution, Tensor};
use ldmscale_kernels::bf16::{Engine, engine, set_products_in_bf16};
use ldmscale_model::{UNet, UNetConfig};

#[test]
fn bf16_products_stay_within_their_rounding_of_the_f32_pass() {
    let device = Device::flex();
    // Levels [32, 64, 64] with two heads of 32 channels; 32x32 latents, so that the 16x16
    // level's self-attention (256 keys) takes the bf16 tiles on AMX; 7 text tokens.
    let unet = UNet::new(&UNetConfig::small(32, 64, 2), &device);
    let sample = Tensor::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::random([2, 7, 64], Distribution::Normal(0.0, 1.0), &device);
    let run = |bf16: bool| {
        set_products_in_bf16(bf16);
        let out = unet.forward(sample.clone(), &[10.0, 500.0], context.clone());
        set_products_in_bf16(false);
        out.into_data().try_to_vec::<f32>().unwrap()
    };
    let (exact, rounded) = (run(false), run(true));
    if engine() == Engine::F32 {
        eprintln!("skipped: this CPU's bf16 engine is f32, so the passes must agree exactly");
        assert!(exact == rounded, "bf16 setting changed an f32-engine pass");
        return;
    }
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut exact.iter().zip(&rounded).map(|(&a, &b)| (a - b) as f64));
    let relative = diff / norm(&mut exact.iter().map(|&a| a as f64));
    eprintln!(
        "{:?} engine: relative L2 distance to the f32 pass {relative:.2e}",
        engine()
    );
    assert!(
        relative < 2e-2,
        "bf16 pass too far from f32: {relative:.2e}"
    );
    assert!(
        relative > 1e-5,
        "bf16 products left no trace: {relative:.2e}"
    );
}
