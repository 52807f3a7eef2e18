//! LPIPS against the `lpips` 0.1.4 package (`fixtures/eval/lpips/`, made by
//! `tools/fixtures/make_lpips_fixtures.py`): AlexNet and the full VGG16 trunk with formula
//! weights the test rebuilds from the tensor names, so no weights are stored.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use ldmscale_eval::lpips::{Lpips, LpipsNet};
use ldmscale_eval::weights::{NamedTensor, WeightMap};
use ldmscale_testkit::{RawTensor, assert_parity, fixture_dir, read_safetensors, values};

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF29CE484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001B3)
    })
}

/// The fixture script's `formula_tensor`: splitmix64(fnv1a64(name) + i) as uniforms in [0, 1),
/// mapped to He-uniform conv weights, biases in [-0.1, 0.1], heads in [0, 2/C).
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = fnv1a64(name);
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i).wrapping_add(0x9E3779B97F4A7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 * 2f64.powi(-53);
            let v = if name.starts_with("lin") {
                2.0 * u / shape[1] as f64
            } else if name.ends_with(".weight") {
                let fan_in: usize = shape[1..].iter().product();
                (2.0 * u - 1.0) * 3f64.sqrt() * (2.0 / fan_in as f64).sqrt()
            } else if name.ends_with(".bias") {
                (2.0 * u - 1.0) * 0.1
            } else {
                2.0 * u - 1.0
            };
            v as f32
        })
        .collect()
}

fn formula_map(label: &str, shapes: Vec<(String, Vec<usize>)>) -> WeightMap {
    let tensors: BTreeMap<String, NamedTensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let values = formula(&name, &shape);
            (name, NamedTensor { shape, values })
        })
        .collect();
    WeightMap::from_tensors(label, tensors)
}

fn tensor4(t: &RawTensor, device: &Device) -> Tensor<4> {
    let shape: [usize; 4] = t.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(t.f32(), shape), device)
}

fn check(net: LpipsNet) {
    let device = Device::flex();
    let reference =
        read_safetensors(fixture_dir("eval/lpips").join(format!("{}.safetensors", net.name())));
    let lpips = Lpips::from_weights(
        net,
        formula_map("formula trunk", net.trunk_shapes()),
        formula_map("formula heads", net.head_shapes()),
        &device,
    )
    .unwrap();
    let (in0, in1) = (&reference["input0"], &reference["input1"]);
    assert_eq!(
        in0.f32(),
        formula("input0", &in0.shape),
        "inputs are the formula's"
    );
    let (x0, x1) = (tensor4(in0, &device), tensor4(in1, &device));
    let name = net.name();
    for (k, tap) in lpips.taps(x0.clone()).unwrap().into_iter().enumerate() {
        let mean = values(tap.mean_dim(3).mean_dim(2));
        let what = format!("{name} tap {k} spatial mean");
        assert_parity(
            &what,
            &mean,
            &reference[&format!("tap{k}_mean")].f32(),
            1e-5,
            1e-5,
        );
    }
    let layers = lpips.forward_layers(x0.clone(), x1.clone()).unwrap();
    for (k, layer) in layers.into_iter().enumerate() {
        let what = format!("{name} layer {k}");
        assert_parity(
            &what,
            &values(layer),
            &reference[&format!("layer{k}")].f32(),
            1e-5,
            1e-6,
        );
    }
    let total = values(lpips.forward(x0, x1).unwrap());
    assert_parity(
        &format!("{name} LPIPS"),
        &total,
        &reference["lpips"].f32(),
        1e-5,
        1e-6,
    );
}

#[test]
fn alexnet_lpips_equals_the_lpips_package() {
    check(LpipsNet::Alex);
}

#[test]
fn vgg16_lpips_equals_the_lpips_package() {
    check(LpipsNet::Vgg);
}

#[test]
fn identical_inputs_give_zero_and_wrong_weights_are_named() {
    let device = Device::flex();
    let net = LpipsNet::Alex;
    let heads = || formula_map("heads.safetensors", net.head_shapes());
    let lpips = Lpips::from_weights(net, formula_map("t", net.trunk_shapes()), heads(), &device);
    let x = Tensor::<4>::from_data(
        TensorData::new(formula("x", &[1, 3, 40, 36]), [1, 3, 40, 36]),
        &device,
    );
    let d = values(lpips.unwrap().forward(x.clone(), x).unwrap());
    assert_eq!(d, [0.0]);
    // A VGG trunk where AlexNet is expected: the first tensor's shape is wrong.
    let e = Lpips::from_weights(
        net,
        formula_map("vgg.safetensors", LpipsNet::Vgg.trunk_shapes()),
        heads(),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("vgg.safetensors") && e.contains("features.0.weight"),
        "{e}"
    );
    let mut shapes = net.trunk_shapes();
    shapes.retain(|(k, _)| k != "features.8.bias");
    let e = Lpips::from_weights(
        net,
        formula_map("alex.safetensors", shapes),
        heads(),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("features.8.bias") && e.contains("convert_lpips_trunk.py"),
        "{e}"
    );
}

/// The wheel's real v0.1 heads, as `tools/fetch-assets.sh lpips` converts them, loaded from
/// files by `Lpips::load` (the trunk a formula written to a temporary safetensors file).
#[test]
fn real_v01_heads_load_from_safetensors_and_match() {
    let device = Device::flex();
    let dir = fixture_dir("eval/lpips");
    let tmp = tempfile::tempdir().unwrap();
    for net in [LpipsNet::Alex, LpipsNet::Vgg] {
        let name = net.name();
        let reference = read_safetensors(dir.join(format!("{name}.safetensors")));
        let trunk = tmp.path().join(format!("{name}-trunk.safetensors"));
        formula_map("trunk", net.trunk_shapes())
            .save_safetensors(&trunk)
            .unwrap();
        let heads = dir.join(format!("heads_{name}.safetensors"));
        let lpips = Lpips::load(net, &trunk, &heads, &device).unwrap();
        let (x0, x1) = (
            tensor4(&reference["input0"], &device),
            tensor4(&reference["input1"], &device),
        );
        let ours = values(lpips.forward(x0, x1).unwrap());
        let expected = reference["lpips_real_heads"].f32();
        assert_parity(
            &format!("{name} LPIPS, real heads"),
            &ours,
            &expected,
            1e-5,
            1e-6,
        );
    }
}
