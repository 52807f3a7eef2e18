//! The DreamBooth metrics over feature rows (`n x d`, row-major), one value per generated image
//! (or per prompt) so that a bootstrap over them gives the interval; see the module table of
//! [`crate::dreambooth`] for which paper metric each stands in for.

use ldmscale_data::dreambooth::prompt_words;

use crate::bootstrap::{FidCi, KidResampler, two_sample_interval};

fn rows(data: &[f32], d: usize) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(d.max(1))
}

/// Cosine of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let n = norm(a) * norm(b);
    if n > 0.0 { dot / n } else { 0.0 }
}

/// For each generated row, its mean cosine with every real row: the mean of these is the
/// DreamBooth paper's "mean pairwise cosine of generated vs real subject images" (DINO,
/// CLIP-I), here in whatever feature space the rows come from.
pub fn cosine_to_real(generated: &[f32], real: &[f32], d: usize) -> Vec<f64> {
    let real: Vec<&[f32]> = rows(real, d).collect();
    rows(generated, d)
        .map(|g| real.iter().map(|r| cosine(g, r)).sum::<f64>() / real.len().max(1) as f64)
        .collect()
}

/// CLIP-T: the cosine of each image embedding with its own prompt's embedding (row i with
/// row i).
pub fn image_text_cosine(images: &[f32], texts: &[f32], d: usize) -> Vec<f64> {
    rows(images, d)
        .zip(rows(texts, d))
        .map(|(i, t)| cosine(i, t))
        .collect()
}

/// Prompt accuracy: for each image, 1 when its true prompt (row 0 of its candidates) has the
/// highest cosine among its candidates (`k` rows each, the rest minimally edited prompts),
/// else 0; ties count against it.
pub fn prompt_ranked_first(images: &[f32], candidates: &[f32], k: usize, d: usize) -> Vec<f64> {
    let per_image = candidates.chunks_exact((k * d).max(1));
    rows(images, d)
        .zip(per_image)
        .map(|(image, cands)| {
            let scores: Vec<f64> = rows(cands, d).map(|c| cosine(image, c)).collect();
            let first = scores.iter().skip(1).all(|s| scores[0] > *s);
            f64::from(u8::from(first))
        })
        .collect()
}

/// DIV: for each group of same-prompt samples (`group` consecutive rows), the mean cosine
/// distance (1 - cosine) over its pairs; 0 when all samples are alike.
pub fn diversity(features: &[f32], group: usize, d: usize) -> Vec<f64> {
    let all: Vec<&[f32]> = rows(features, d).collect();
    all.chunks(group.max(1))
        .filter(|g| g.len() >= 2)
        .map(|g| {
            let mut total = 0.0;
            let mut pairs = 0;
            for i in 0..g.len() {
                for j in i + 1..g.len() {
                    total += 1.0 - cosine(g[i], g[j]);
                    pairs += 1;
                }
            }
            total / pairs as f64
        })
        .collect()
}

/// Language drift: KID(finetuned class-prompt samples, real class images) minus the base
/// model's KID on the same prompts and noise (row i of both from one prompt and noise), with a
/// paired bootstrap interval: each replicate draws one set of generated rows for both models
/// and one set of real rows. Positive: the finetune forgot part of the class.
pub fn language_drift(
    finetuned: &[f32],
    base: &[f32],
    real: &[f32],
    d: usize,
    replicates: usize,
    seed: u64,
) -> Result<(f64, Option<FidCi>), String> {
    if finetuned.len() != base.len() {
        return Err(format!(
            "language drift: {} finetuned and {} base feature values; the two models must \
             sample the same prompts and noise",
            finetuned.len(),
            base.len()
        ));
    }
    let tuned = KidResampler::new(finetuned, real, d)?;
    let before = KidResampler::new(base, real, d)?;
    let (n, m) = (finetuned.len() / d, real.len() / d);
    let diff = |a: &[usize], b: &[usize]| tuned.kid(a, b) - before.kid(a, b);
    let value = diff(&(0..n).collect::<Vec<_>>(), &(0..m).collect::<Vec<_>>());
    if replicates < 2 {
        return Ok((value, None));
    }
    Ok((
        value,
        Some(two_sample_interval(n, m, replicates, seed, diff)),
    ))
}

/// Up to `k` minimally edited versions of `prompt` (a class-noun twin in its domain's
/// grammar): one word swapped for another of its kind, as `alternatives(word, next word)` of
/// the domain gives them (shapes: a background colour, an object colour, a shape kind, a
/// count, a size, a direction), in the order the words come, each variant distinct from the
/// prompt and from the others.
pub fn prompt_variants(
    prompt: &str,
    k: usize,
    alternatives: impl Fn(&str, Option<&str>) -> Vec<&'static str>,
) -> Vec<String> {
    let words: Vec<String> = prompt_words(prompt).collect();
    let mut out: Vec<String> = Vec::new();
    for round in 0..MAX_ALTERNATIVES {
        for (i, word) in words.iter().enumerate() {
            let next = words.get(i + 1).map(String::as_str);
            let Some(alternative) = alternatives(word, next).into_iter().nth(round) else {
                continue;
            };
            let mut edited = words.clone();
            edited[i] = alternative.to_string();
            let text = edited.join(" ");
            if out.len() < k && !out.contains(&text) && text != words.join(" ") {
                out.push(text);
            }
        }
    }
    out
}

/// Most alternatives tried per word.
const MAX_ALTERNATIVES: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;
    use ldmscale_data::dreambooth::emoji::emoji_word_alternatives;
    use ldmscale_data::dreambooth::shapes_word_alternatives;

    #[test]
    fn cosines_have_their_known_values() {
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        // Generated rows e1, e2 against real rows e1, (e1 + e2)/sqrt2.
        let generated = [1.0, 0.0, 0.0, 1.0];
        let real = [1.0, 0.0, 1.0, 1.0];
        let c = cosine_to_real(&generated, &real, 2);
        let h = 0.5f64.sqrt();
        assert!((c[0] - (1.0 + h) / 2.0).abs() < 1e-9 && (c[1] - h / 2.0).abs() < 1e-9);
        let t = image_text_cosine(&generated, &[2.0, 0.0, 1.0, 0.0], 2);
        assert_eq!(t, [1.0, 0.0]);
    }

    #[test]
    fn prompt_accuracy_counts_images_whose_true_prompt_wins() {
        // Two images, three candidates each (true first).
        let images = [1.0, 0.0, 0.0, 1.0];
        let candidates = [
            1.0, 0.1, 0.0, 1.0, 0.5, 0.5, // image 0: true prompt closest
            1.0, 0.0, 0.0, 1.0, 0.0, 1.0, // image 1: a variant closer, one tied
        ];
        assert_eq!(prompt_ranked_first(&images, &candidates, 3, 2), [1.0, 0.0]);
    }

    #[test]
    fn diversity_is_zero_for_copies_and_one_for_orthogonal_samples() {
        let copies = [1.0, 2.0, 1.0, 2.0, 2.0, 4.0];
        assert!(diversity(&copies, 3, 2)[0].abs() < 1e-12);
        let orthogonal = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(diversity(&orthogonal, 2, 2), [1.0]);
        // Two groups, a trailing single sample left out.
        assert_eq!(diversity(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 2, 2).len(), 1);
    }

    #[test]
    fn language_drift_is_zero_without_change_and_positive_when_the_class_is_forgotten() {
        use rand::SeedableRng;
        let gaussian = |n: usize, shift: f32, seed: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            crate::bootstrap::tests::gaussian(n, 4, shift, 9, &mut rng)
        };
        let real = gaussian(40, 0.0, 1);
        let base = gaussian(40, 0.0, 2);
        let (same, ci) = language_drift(&base, &base, &real, 4, 50, 0).unwrap();
        assert_eq!(same, 0.0);
        assert_eq!(ci.map(|c| (c.low, c.high)), Some((0.0, 0.0)));
        let drifted = gaussian(40, 3.0, 3);
        let (drift, ci) = language_drift(&drifted, &base, &real, 4, 50, 0).unwrap();
        let ci = ci.unwrap();
        assert!(drift > 0.0 && ci.low > 0.0, "{drift} {ci:?}");
        assert!(language_drift(&drifted[..8], &base, &real, 4, 0, 0).is_err());
    }

    #[test]
    fn emoji_variants_stay_in_the_emoji_grammar() {
        let variants = prompt_variants(
            "blue cat face with tears of joy",
            6,
            emoji_word_alternatives,
        );
        assert_eq!(
            variants,
            [
                "red cat face with tears of joy",
                "blue dog face with tears of joy",
                "blue cat heart with tears of joy",
                "blue cat face on tears of joy",
                "green cat face with tears of joy",
                "blue tiger face with tears of joy",
            ]
        );
    }

    #[test]
    fn prompt_variants_change_one_word_each() {
        let prompt_variants = |p, k| prompt_variants(p, k, shapes_word_alternatives);
        let prompt = "a small red circle above a large blue square on a white background";
        let variants = prompt_variants(prompt, 8);
        assert_eq!(variants.len(), 8);
        let words: Vec<&str> = prompt.split(' ').collect();
        for v in &variants {
            let changed = v.split(' ').zip(&words).filter(|(a, b)| a != *b).count();
            assert_eq!(changed, 1, "{v}");
        }
        assert!(variants.contains(&prompt.replace("white background", "black background")));
        assert!(variants.contains(&prompt.replace("small red", "large red")));
        // The background slot only takes background colours.
        assert!(!variants.iter().any(|v| v.ends_with("red background")));
        assert_eq!(
            prompt_variants("a circle", 3),
            ["a square", "a triangle", "a diamond"]
        );
        assert!(prompt_variants("on a", 3).is_empty());
    }
}
