//! The FID bootstrap against numpy/scipy: fixtures/study/fid_bootstrap.json (made by
//! tools/fixtures/make_bootstrap_fixtures.py) holds features, explicit resample indices and each
//! resample's FID computed with np.cov and scipy.linalg.sqrtm, plus np.percentile of them.

use ldmscale_study::bootstrap::{FidResampler, percentile};

#[test]
fn replicate_fids_and_percentiles_match_scipy() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/study/fid_bootstrap.json");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let data: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let indices = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    for case in data["cases"].as_array().unwrap() {
        let d = case["d"].as_u64().unwrap() as usize;
        let r =
            FidResampler::new(&floats(&case["generated"]), &floats(&case["reference"]), d).unwrap();
        let full = case["full_fid"].as_f64().unwrap();
        let got = r.full_fid().unwrap();
        assert!(
            (got - full).abs() < 1e-6 * full,
            "d={d}: full {got} vs scipy {full}"
        );
        let mut values = Vec::new();
        for rep in case["resamples"].as_array().unwrap() {
            let want = rep["fid"].as_f64().unwrap();
            let got = r
                .fid(&indices(&rep["generated"]), &indices(&rep["reference"]))
                .unwrap();
            assert!(
                (got - want).abs() < 1e-6 * want,
                "d={d}: replicate {got} vs scipy {want}"
            );
            values.push(want);
        }
        for (q, v) in case["percentiles"].as_object().unwrap() {
            let q: f64 = q.parse().unwrap();
            let want = v.as_f64().unwrap();
            assert!((percentile(&values, q) - want).abs() < 1e-9 * want.abs().max(1.0));
        }
    }
}
