//! Error measures of computed values against reference values, and asserts on them.

/// Relative L2 error, largest absolute error and largest reference magnitude, all in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Errors {
    pub rel_l2: f64,
    pub max_abs: f64,
    pub scale: f64,
}

/// `|ours - reference| / |reference|` (L2, f64 sums of f32 differences), with the largest
/// `|ours - reference|` and the largest `|reference|`; an all-zero reference gives inf (NaN if
/// `ours` is zero too), which fails any `<` or `<=` bound.
pub fn errors(ours: &[f32], reference: &[f32]) -> Errors {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let (mut diff2, mut ref2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = (a - b) as f64;
        diff2 += d * d;
        ref2 += (b as f64) * (b as f64);
        max_abs = max_abs.max(d.abs());
    }
    let scale = reference.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    Errors {
        rel_l2: (diff2 / ref2).sqrt(),
        max_abs,
        scale,
    }
}

/// The relative L2 error of [`errors`].
pub fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    errors(ours, reference).rel_l2
}

/// Asserts `rel_l2 <= rel_tol` and `max_abs <= abs_tol * max(1, scale)` (see [`errors`]),
/// printing the three under `what`.
pub fn assert_parity(what: &str, ours: &[f32], reference: &[f32], rel_tol: f64, abs_tol: f64) {
    let Errors {
        rel_l2,
        max_abs,
        scale,
    } = errors(ours, reference);
    eprintln!("{what:>28}: relative L2 {rel_l2:.2e}, max abs {max_abs:.2e} (|ref| <= {scale:.3})");
    assert!(
        rel_l2 <= rel_tol,
        "{what}: relative L2 {rel_l2:.3e} > {rel_tol:e}"
    );
    assert!(
        max_abs <= abs_tol * scale.max(1.0),
        "{what}: max abs {max_abs:.3e} > {abs_tol:e} x {scale:.3}"
    );
}

/// max `|a - b|` in f32 (0 for empty inputs).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max `|a - b| / max(1, |b|)` in f32 (NaN counts as infinitely wrong unless both are NaN).
pub fn max_rel_err(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &b)| {
            if a.is_nan() && b.is_nan() || a == b {
                0.0
            } else {
                let e = (a - b).abs() / b.abs().max(1.0);
                if e.is_nan() { f32::INFINITY } else { e }
            }
        })
        .fold(0.0, f32::max)
}

/// Asserts that `text` (an error message) contains every one of `parts`.
pub fn assert_mentions(text: &str, parts: &[&str]) {
    let missing: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !text.contains(p))
        .collect();
    assert!(missing.is_empty(), "{text:?} does not mention {missing:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2_of_a_known_error() {
        // The reference (3, 4) has norm 5, the difference (0.3, 0.4) norm 0.5: 0.1.
        let e = errors(&[3.3, 4.4], &[3.0, 4.0]);
        assert!((e.rel_l2 - 0.1).abs() < 1e-7, "{e:?}");
        assert!((e.max_abs - 0.4).abs() < 1e-6, "{e:?}");
        assert_eq!(e.scale, 4.0);
        assert_eq!(rel_l2(&[3.3, 4.4], &[3.0, 4.0]), e.rel_l2);
        assert_eq!(rel_l2(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
    }

    #[test]
    fn relative_l2_sums_f32_differences_in_f64() {
        // The difference is taken in f32, then squared and summed in f64.
        let (a, b) = (1.0f32 + f32::EPSILON, 1.0f32);
        let want = ((a - b) as f64 * (a - b) as f64 / 1.0).sqrt();
        assert_eq!(rel_l2(&[a], &[b]), want);
    }

    #[test]
    fn zero_reference_fails_every_bound() {
        assert_eq!(rel_l2(&[1.0, 0.0], &[0.0, 0.0]), f64::INFINITY);
        assert!(rel_l2(&[0.0], &[0.0]).is_nan());
        // NaN is not within any bound.
        assert_eq!(rel_l2(&[0.0], &[0.0]).partial_cmp(&1.0), None);
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn lengths_must_match() {
        rel_l2(&[1.0, 2.0], &[1.0]);
    }

    #[test]
    fn parity_bounds_are_inclusive_and_scaled() {
        assert_parity("equal", &[1.0, 2.0], &[1.0, 2.0], 0.0, 0.0);
        // max abs 0.2 against a largest reference of 100: 0.2 <= 0.01 x 100 (rel L2 2e-3).
        assert_parity("scaled", &[100.2, 0.0], &[100.0, 0.0], 1e-2, 1e-2);
    }

    #[test]
    #[should_panic(expected = "max abs")]
    fn parity_scale_is_at_least_one() {
        // max abs 0.02 on a reference of 0.5: the bound is 0.01 x max(1, 0.5) = 0.01.
        assert_parity("small", &[0.52], &[0.5], 1.0, 1e-2);
    }

    #[test]
    #[should_panic(expected = "relative L2")]
    fn parity_fails_on_relative_l2() {
        assert_parity("rel", &[1.1], &[1.0], 1e-2, 1.0);
    }

    #[test]
    fn max_abs_diff_is_the_largest_difference() {
        assert_eq!(max_abs_diff(&[1.0, -3.0, 2.0], &[1.5, -1.0, 2.0]), 2.0);
        assert_eq!(max_abs_diff(&[], &[]), 0.0);
    }

    #[test]
    fn max_rel_err_is_absolute_below_one_and_relative_above() {
        assert_eq!(max_rel_err(&[0.5], &[0.25]), 0.25);
        assert_eq!(max_rel_err(&[0.0], &[0.0]), 0.0);
        assert_eq!(max_rel_err(&[11.0], &[10.0]), 0.1);
        assert_eq!(max_rel_err(&[f32::NAN], &[f32::NAN]), 0.0);
        assert_eq!(max_rel_err(&[f32::NAN], &[1.0]), f32::INFINITY);
        assert_eq!(max_rel_err(&[f32::INFINITY], &[f32::INFINITY]), 0.0);
        assert_eq!(max_rel_err(&[f32::INFINITY], &[1.0]), f32::INFINITY);
    }

    #[test]
    fn mentions() {
        assert_mentions("tensor x is missing from a.safetensors", &["x", "missing"]);
    }

    #[test]
    #[should_panic(expected = "does not mention [\"shape\"]")]
    fn missing_mentions_are_named() {
        assert_mentions("tensor x is missing", &["missing", "shape"]);
    }
}
