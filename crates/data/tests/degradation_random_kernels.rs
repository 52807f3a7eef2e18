//! Random blur kernels: what drawn parameters map to, against BasicSR 1.4.2's
//! `random_mixed_kernels` (fixtures/degradation/random_kernels.json, made by
//! tools/fixtures/make_degradation_fixtures.py), and the draws' distribution against
//! Real-ESRGAN's x4plus settings.

use std::f64::consts::PI;

use ldmscale_data::degrade::{BlurParams, FinalSincParams, KernelDraw, KernelFamily, KernelShape};
use ldmscale_data::rng::SplitMix64;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/degradation/random_kernels.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read random_kernels.json")).unwrap()
}

fn family(name: &str) -> KernelFamily {
    let names = [
        "iso",
        "aniso",
        "generalized_iso",
        "generalized_aniso",
        "plateau_iso",
        "plateau_aniso",
    ];
    let i = names.iter().position(|n| *n == name).expect("known family");
    KernelFamily::ALL[i]
}

#[test]
fn drawn_parameters_map_to_basicsr_kernels() {
    let mut worst = 0.0f64;
    for case in fixture()["cases"].as_array().unwrap() {
        let f = |key: &str| case[key].as_f64().unwrap();
        let draw = KernelDraw::Family {
            family: family(case["family"].as_str().unwrap()),
            size: case["size"].as_u64().unwrap() as usize,
            shape: KernelShape {
                sigma_x: f("sig_x"),
                sigma_y: f("sig_y"),
                theta: f("theta"),
                isotropic: case["isotropic"].as_bool().unwrap(),
            },
            beta: f("beta"),
        };
        let got = draw.kernel().weights;
        let want: Vec<f64> = case["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{case}: max error {err}");
        worst = worst.max(err);
    }
    println!("random kernel max error {worst:e}");
}

fn draws(params: &BlurParams, n: usize) -> Vec<KernelDraw> {
    let mut rng = SplitMix64::new(15);
    (0..n).map(|_| params.draw(&mut rng)).collect()
}

fn assert_near(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() < tolerance,
        "{what}: {got} vs {want} (tolerance {tolerance})"
    );
}

#[test]
fn sizes_are_odd_and_uniform_over_7_to_21() {
    let n = 40_000;
    let mut counts = [0usize; 22];
    for draw in draws(&BlurParams::x4plus_first(), n) {
        let (KernelDraw::Sinc { size, .. } | KernelDraw::Family { size, .. }) = draw;
        assert!(size % 2 == 1 && (7..=21).contains(&size), "size {size}");
        counts[size] += 1;
    }
    for size in (7..=21).step_by(2) {
        assert_near(
            &format!("P(size {size})"),
            counts[size] as f64 / n as f64,
            1.0 / 8.0,
            0.01,
        );
    }
}

#[test]
fn families_and_sinc_follow_x4plus_probabilities() {
    let n = 40_000;
    let params = BlurParams::x4plus_first();
    let all = draws(&params, n);
    let sinc = all
        .iter()
        .filter(|d| matches!(d, KernelDraw::Sinc { .. }))
        .count();
    assert_near("P(sinc)", sinc as f64 / n as f64, 0.1, 0.01);
    for (i, fam) in KernelFamily::ALL.iter().enumerate() {
        let count = all
            .iter()
            .filter(|d| matches!(d, KernelDraw::Family { family, .. } if family == fam))
            .count();
        assert_near(
            &format!("P({fam:?})"),
            count as f64 / n as f64,
            0.9 * params.kernel_prob[i],
            0.01,
        );
    }
}

#[test]
fn parameters_stay_in_their_ranges() {
    let params = BlurParams::x4plus_second();
    let (mut below_one, mut generalized, mut plateau_one, mut plateau) = (0, 0, 0, 0);
    for draw in draws(&params, 20_000) {
        match draw {
            KernelDraw::Sinc { size, omega } => {
                let lo = if size < 13 { PI / 3.0 } else { PI / 5.0 };
                assert!((lo..PI).contains(&omega), "size {size} omega {omega}");
            }
            KernelDraw::Family {
                family,
                shape,
                beta,
                ..
            } => {
                assert!((0.2..1.5).contains(&shape.sigma_x) && (0.2..1.5).contains(&shape.sigma_y));
                assert!((-PI..PI).contains(&shape.theta));
                if shape.isotropic {
                    assert_eq!((shape.sigma_y, shape.theta), (shape.sigma_x, 0.0));
                }
                match family {
                    KernelFamily::GeneralizedIso | KernelFamily::GeneralizedAniso => {
                        assert!((0.5..4.0).contains(&beta), "beta {beta}");
                        generalized += 1;
                        below_one += usize::from(beta < 1.0);
                    }
                    KernelFamily::PlateauIso | KernelFamily::PlateauAniso => {
                        assert!((1.0..2.0).contains(&beta), "beta {beta}");
                        plateau += 1;
                        plateau_one += usize::from(beta == 1.0);
                    }
                    _ => assert_eq!(beta, 1.0),
                }
            }
        }
    }
    // BasicSR's fair coin between U[lo, 1] and U[1, hi]; plateau's lo is 1, so half are exactly 1.
    assert_near(
        "P(generalized beta < 1)",
        below_one as f64 / generalized as f64,
        0.5,
        0.04,
    );
    assert_near(
        "P(plateau beta == 1)",
        plateau_one as f64 / plateau as f64,
        0.5,
        0.04,
    );
}

#[test]
fn final_sinc_is_drawn_with_probability_0_8() {
    let params = FinalSincParams::x4plus();
    let mut rng = SplitMix64::new(7);
    let n = 20_000;
    let mut drawn = 0;
    for _ in 0..n {
        if let Some(draw) = params.draw(&mut rng) {
            let KernelDraw::Sinc { size, omega } = draw else {
                panic!("final kernel {draw:?}")
            };
            assert!(size % 2 == 1 && (7..=21).contains(&size));
            assert!((PI / 3.0..PI).contains(&omega));
            drawn += 1;
        }
    }
    assert_near("P(final sinc)", drawn as f64 / n as f64, 0.8, 0.01);
}

#[test]
fn same_seed_same_draws() {
    let params = BlurParams::x4plus_first();
    assert_eq!(draws(&params, 50), draws(&params, 50));
}
