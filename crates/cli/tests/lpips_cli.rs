//! `ldmscale lpips` on image folders: the library's values (which equal the lpips package, see
//! crates/eval/tests/lpips_parity.rs) from safetensors trunk and heads, and clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use ldmscale_eval::lpips::{Lpips, LpipsNet};
use ldmscale_eval::sr_metrics::open_rgb8;
use ldmscale_eval::weights::{NamedTensor, WeightMap};

/// Deterministic weights for `shapes`, saved as safetensors (He-scaled, heads non-negative).
fn save_weights(path: &Path, shapes: Vec<(String, Vec<usize>)>) {
    let tensors: BTreeMap<String, NamedTensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let scale = (6.0 / fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|i| {
                    let s = ((i as f32 + name.len() as f32) * 12.9898).sin();
                    if name.starts_with("lin") {
                        s.abs() / 64.0
                    } else {
                        s * scale
                    }
                })
                .collect();
            (name, NamedTensor { shape, values })
        })
        .collect();
    WeightMap::from_tensors("", tensors)
        .save_safetensors(path)
        .unwrap();
}

fn pattern(width: u32, height: u32, shift: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = |c: u32| ((x * 7 + y * 3 + c * 50 + shift * ((x * y) % 5)) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    trunk: PathBuf,
    heads: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for (name, w, h) in [("p.png", 64, 48), ("q.png", 37, 41)] {
        pattern(w, h, 0).save(a.join(name)).unwrap();
        pattern(w, h, 3).save(b.join(name)).unwrap();
    }
    let (trunk, heads) = (
        dir.path().join("trunk.safetensors"),
        dir.path().join("heads.safetensors"),
    );
    save_weights(&trunk, LpipsNet::Alex.trunk_shapes());
    save_weights(&heads, LpipsNet::Alex.head_shapes());
    Setup {
        _dir: dir,
        a,
        b,
        trunk,
        heads,
    }
}

fn lpips_cli(s: &Setup, trunk: &Path, heads: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldmscale"))
        .arg("lpips")
        .args([&s.a, &s.b])
        .args(["--net", "alex", "--per-image", "--trunk"])
        .arg(trunk)
        .arg("--heads")
        .arg(heads)
        .output()
        .unwrap()
}

#[test]
fn per_image_values_and_the_mean_equal_the_library() {
    let s = setup();
    let out = lpips_cli(&s, &s.trunk, &s.heads);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let net = Lpips::load(LpipsNet::Alex, &s.trunk, &s.heads, &Device::flex()).unwrap();
    let mut sum = 0.0;
    for (line, name) in lines.iter().zip(["p.png", "q.png"]) {
        let (ia, ib) = (
            open_rgb8(&s.a.join(name)).unwrap(),
            open_rgb8(&s.b.join(name)).unwrap(),
        );
        let d = net
            .forward(net.input(&[&ia]).unwrap(), net.input(&[&ib]).unwrap())
            .unwrap();
        let expected = d.into_data().try_into_vec::<f32>().unwrap()[0] as f64;
        assert!(expected > 0.0);
        let value: f64 = line
            .strip_prefix(&format!("{name}\t"))
            .unwrap()
            .parse()
            .unwrap();
        assert!((value - expected).abs() < 1e-6, "{line} vs {expected}");
        sum += expected;
    }
    let mean: f64 = lines[2].rsplit(' ').next().unwrap().parse().unwrap();
    assert!((mean - sum / 2.0).abs() < 1e-6, "{text}");
    assert!(
        lines[2].starts_with("mean LPIPS-alex over 2 images"),
        "{text}"
    );
}

#[test]
fn pickles_missing_heads_and_a_wrong_trunk_are_named() {
    let s = setup();
    let stderr = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let pth = s.trunk.with_extension("pth");
    let e = stderr(lpips_cli(&s, &pth, &s.heads));
    assert!(
        e.contains("trunk.pth") && e.contains("convert_lpips_trunk.py"),
        "{e}"
    );
    let e = stderr(lpips_cli(&s, &s.trunk, &s.a.join("none.safetensors")));
    assert!(
        e.contains("none.safetensors") && e.contains("fetch-assets.sh lpips"),
        "{e}"
    );
    let e = stderr(lpips_cli(&s, &s.heads, &s.heads));
    assert!(
        e.contains("heads.safetensors") && e.contains("features.0.weight"),
        "{e}"
    );
}
