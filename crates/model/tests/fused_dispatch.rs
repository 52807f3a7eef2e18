//! Which path the fused ops take: inputs and layers the kernels do not cover take burn's ops
//! (the fast-path counters stay where they were) and give burn's results exactly; the UNet and
//! the VAE run on the kernels.

mod common;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNormConfig, LayerNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::{DType, Device, Distribution, Tensor};
use common::{fallback, fast};
use ldmscale_model::ops::{
    OpKind, attention, burn_attention, burn_geglu, burn_group_norm, conv2d, fast_path_count, geglu,
    group_norm, layer_norm, linear,
};
use ldmscale_model::{AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig};

fn random<const D: usize>(dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
}

fn assert_same<const D: usize>(a: Tensor<D>, b: Tensor<D>) {
    assert_eq!(a.dtype(), b.dtype());
    a.into_data().assert_eq(&b.into_data(), true);
}

#[test]
fn f64_inputs_take_burn_ops() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        let p = random([2, 3, 8], &device).cast(DType::F64);
        let out = fallback(OpKind::Geglu, || geglu(p.clone()));
        assert_eq!(out.dtype(), DType::F64);
        assert_same(out, burn_geglu(p));

        let [q, k, v] = [5, 7, 7].map(|n| random([2, n, 8], &device).cast(DType::F64));
        let out = fallback(OpKind::Attention, || {
            attention(q.clone(), k.clone(), v.clone(), 2)
        });
        assert_same(out, burn_attention(q, k, v, 2));
    }
}

/// A 3x3 convolution of 4 to 4 channels with `change` applied to its config.
fn conv_with(change: fn(Conv2dConfig) -> Conv2dConfig, device: &Device) -> Conv2d {
    let config =
        Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
    change(config).init(device)
}

#[test]
fn layers_the_kernels_do_not_cover_take_burn_ops() {
    let device = Device::flex();
    let x = random([2, 4, 6, 6], &device);
    let uncovered: [fn(Conv2dConfig) -> Conv2dConfig; 4] = [
        |c| c.with_groups(2),
        |c| c.with_dilation([2, 2]),
        |c| c.with_bias(false),
        |c| c.with_padding(PaddingConfig2d::Explicit(1, 0, 2, 0)),
    ];
    for change in uncovered {
        let conv = conv_with(change, &device);
        let out = fallback(OpKind::Conv2d, || conv2d(&conv, x.clone()));
        assert_same(out, conv.forward(x.clone()));
    }
    // The same convolution with bias and symmetric padding takes the kernels.
    let conv = conv_with(|c| c, &device);
    let _ = fast(OpKind::Conv2d, 1, || conv2d(&conv, x.clone()));

    let norm = GroupNormConfig::new(2, 4).with_affine(false).init(&device);
    let out = fallback(OpKind::GroupNorm, || group_norm(&norm, x.clone(), true));
    assert_same(out, burn_group_norm(&norm, x.clone(), true));

    let tokens = random([2, 5, 4], &device);
    let norm = LayerNormConfig::new(4).with_bias(false).init(&device);
    let out = fallback(OpKind::LayerNorm, || {
        layer_norm(&norm, 1e-5, tokens.clone())
    });
    assert_same(out, norm.forward(tokens.clone()));

    // A bias-free dense layer is covered (the op with two inputs).
    let dense = LinearConfig::new(4, 3).with_bias(false).init(&device);
    let _ = fast(OpKind::Linear, 1, || linear(&dense, tokens));
}

/// Under autodiff, inputs that track no gradient still take the kernels (no graph node).
#[test]
fn untracked_autodiff_inputs_take_the_kernels() {
    let device = Device::flex().autodiff();
    let p = random([2, 3, 8], &device);
    let out = fast(OpKind::Geglu, 1, || geglu(p.clone()));
    let reference = burn_geglu(p);
    assert!(common::rel_l2(out, reference) < 1e-5);
}

/// The kinds whose kernels did not run during `f`.
fn not_run(kinds: &[OpKind], f: impl FnOnce()) -> Vec<OpKind> {
    let before: Vec<u64> = kinds.iter().map(|&kind| fast_path_count(kind)).collect();
    f();
    let zipped = kinds.iter().zip(before);
    zipped
        .filter(|&(&kind, count)| fast_path_count(kind) == count)
        .map(|(&kind, _)| kind)
        .collect()
}

#[test]
fn the_unet_and_the_vae_run_on_the_kernels() {
    use OpKind::*;
    for device in [Device::flex(), Device::flex().autodiff()] {
        let unet = UNet::new(&UNetConfig::small(8, 16, 2), &device);
        let all = [Attention, Conv2d, Linear, LayerNorm, GroupNorm, Geglu];
        let missed = not_run(&all, || {
            let sample = random([1, 4, 8, 8], &device);
            let _ = unet.forward(sample, &[10.0], random([1, 3, 16], &device));
        });
        assert!(missed.is_empty(), "UNet: burn's op ran for {missed:?}");

        // The VAE's single-head attention is burn's.
        let vae = AutoencoderKL::new(&AutoencoderKLConfig::small(4, 8), &device);
        let missed = not_run(&[Conv2d, Linear, GroupNorm], || {
            let _ = vae.reconstruct(random([1, 3, 8, 8], &device));
        });
        assert!(missed.is_empty(), "VAE: burn's op ran for {missed:?}");
    }
}
