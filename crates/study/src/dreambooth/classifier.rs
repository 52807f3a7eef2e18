//! The subject classifier, the instance-sensitive stand-in for DINO: logistic regression on a
//! coarse colour histogram, trained on held-out renders of the subject against same-kind
//! distractors (plain shapes in caption colours, and the subject's kind filled with the other
//! subjects' patterns and colours). A subject's colours are ones no caption names, so its
//! histogram tells it from plain shapes and from other patterned ones; a render with the right
//! colours in another arrangement would pass, which is why the FID-feature cosine is reported
//! beside it.

use ldmscale_data::dreambooth::{Subject, SubjectSet};
use ldmscale_data::{DataError, Image};

/// Levels per channel of the colour histogram (4^3 = 64 bins): coarse, so a generated image's
/// slightly shifted colours land in the same bin.
const LEVELS: usize = 4;
const BINS: usize = LEVELS * LEVELS * LEVELS;
/// Gradient-descent steps, rate and L2 weight of the fit (full batch, deterministic).
const STEPS: usize = 3000;
const RATE: f64 = 2.0;
const L2: f64 = 1e-4;

/// Images of one subject and of its distractors.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Renders of the subject.
    pub subject: Vec<Image>,
    /// Same-kind distractors.
    pub distractors: Vec<Image>,
}

/// P(subject | image) by logistic regression on the colour histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectClassifier {
    weights: Vec<f64>,
    bias: f64,
}

impl SubjectClassifier {
    /// Fits the classifier to `data` (subject = 1, distractor = 0; classes weighted equally).
    pub fn train(data: &Labelled) -> Self {
        let rows: Vec<(Vec<f64>, f64, f64)> = labelled_rows(data);
        let mut model = SubjectClassifier {
            weights: vec![0.0; BINS],
            bias: 0.0,
        };
        for _ in 0..STEPS {
            let mut grad = vec![0.0; BINS];
            let mut grad_bias = 0.0;
            for (x, y, weight) in &rows {
                let err = weight * (model.logit_probability(x) - y);
                grad.iter_mut().zip(x).for_each(|(g, v)| *g += err * v);
                grad_bias += err;
            }
            for (w, g) in model.weights.iter_mut().zip(&grad) {
                *w -= RATE * (g + L2 * *w);
            }
            model.bias -= RATE * grad_bias;
        }
        model
    }

    /// P(subject) of `image`.
    pub fn probability(&self, image: &Image) -> f64 {
        self.logit_probability(&histogram(image))
    }

    fn logit_probability(&self, x: &[f64]) -> f64 {
        let z: f64 = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    /// Share of `data` classified right at P = 0.5, classes weighted equally.
    pub fn accuracy(&self, data: &Labelled) -> f64 {
        let right = |images: &[Image], subject: bool| {
            let hits = images
                .iter()
                .filter(|i| (self.probability(i) >= 0.5) == subject)
                .count();
            hits as f64 / images.len().max(1) as f64
        };
        0.5 * (right(&data.subject, true) + right(&data.distractors, false))
    }
}

/// (features, label, weight) of every image, each class's weights summing to 1/2.
fn labelled_rows(data: &Labelled) -> Vec<(Vec<f64>, f64, f64)> {
    let weight = |n: usize| 0.5 / n.max(1) as f64;
    let (ws, wd) = (weight(data.subject.len()), weight(data.distractors.len()));
    let subject = data.subject.iter().map(|i| (histogram(i), 1.0, ws));
    let distractors = data.distractors.iter().map(|i| (histogram(i), 0.0, wd));
    subject.chain(distractors).collect()
}

/// Square roots of the shares of pixels in each colour bin (the root lifts the few pixels of
/// a pattern's second colour).
fn histogram(image: &Image) -> Vec<f64> {
    let mut counts = vec![0.0; BINS];
    let bin = |v: u8| (v as usize * LEVELS) / 256;
    for px in image.as_bytes().chunks_exact(3) {
        counts[(bin(px[0]) * LEVELS + bin(px[1])) * LEVELS + bin(px[2])] += 1.0;
    }
    let total: f64 = counts.iter().sum::<f64>().max(1.0);
    counts.iter().map(|c| (c / total).sqrt()).collect()
}

/// The subject's kind filled with each other pattern of the standard set (colours the
/// subject does not use), named `<subject>-d<i>`.
fn distractor_subjects(subject: &Subject) -> Result<SubjectSet, DataError> {
    let others = SubjectSet::standard()
        .subjects()
        .iter()
        .filter(|o| o.colours != subject.colours)
        .enumerate()
        .map(|(i, o)| Subject {
            name: format!("{}-d{i}", subject.name),
            kind: subject.kind,
            identifier: format!("zq{i}"),
            ..o.clone()
        })
        .collect();
    SubjectSet::new(others)
}

/// `n` held-out renders of subject `name` and `n` distractors (half plain class shapes, half
/// the other patterns on its kind) at `resolution`, drawn with `seed`.
pub fn labelled(
    set: &SubjectSet,
    name: &str,
    n: usize,
    resolution: u32,
    seed: u64,
) -> Result<Labelled, DataError> {
    let subject = set.get(name)?;
    let image = |e: ldmscale_data::Example| e.image;
    let mut distractors: Vec<Image> = set
        .class_images(name, n.div_ceil(2), resolution, seed)?
        .into_iter()
        .map(image)
        .collect();
    let others = distractor_subjects(subject)?;
    let per_other = (n / 2).div_ceil(others.subjects().len()).max(1);
    for other in others.subjects() {
        let renders = others.held_out(&other.name, per_other, resolution, seed)?;
        distractors.extend(renders.into_iter().map(image));
    }
    distractors.truncate(n);
    let renders = set.held_out(name, n, resolution, seed)?;
    Ok(Labelled {
        subject: renders.into_iter().map(image).collect(),
        distractors,
    })
}

/// The classifier of subject `name` trained on `n` + `n` images drawn with `seed`, and its
/// accuracy on as many others drawn with `seed + 1`.
pub fn for_subject(
    set: &SubjectSet,
    name: &str,
    n: usize,
    resolution: u32,
    seed: u64,
) -> Result<(SubjectClassifier, f64), DataError> {
    let classifier = SubjectClassifier::train(&labelled(set, name, n, resolution, seed)?);
    let test = labelled(set, name, n, resolution, seed.wrapping_add(1))?;
    let accuracy = classifier.accuracy(&test);
    Ok((classifier, accuracy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_subject_is_told_from_its_distractors_on_held_out_renders() {
        let set = SubjectSet::standard();
        for resolution in [16, 32] {
            for s in set.subjects() {
                let (classifier, accuracy) = for_subject(&set, &s.name, 64, resolution, 0).unwrap();
                assert!(
                    accuracy >= 0.95,
                    "{} at {resolution} px: {accuracy}",
                    s.name
                );
                // A plain shape of its kind and an untrained guess are not the subject.
                let plain = Image::filled(resolution, resolution, [230, 25, 25]);
                assert!(classifier.probability(&plain) < 0.5, "{}", s.name);
            }
        }
    }

    #[test]
    fn distractors_share_the_kind_but_not_the_colours() {
        let set = SubjectSet::standard();
        let subject = &set.subjects()[0];
        let others = distractor_subjects(subject).unwrap();
        assert_eq!(others.subjects().len(), 3);
        for o in others.subjects() {
            assert_eq!(o.kind, subject.kind);
            assert_ne!(o.colours, subject.colours);
        }
        let data = labelled(&set, &subject.name, 10, 16, 3).unwrap();
        assert_eq!((data.subject.len(), data.distractors.len()), (10, 10));
    }
}
