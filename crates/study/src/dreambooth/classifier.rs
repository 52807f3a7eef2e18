//! The subject classifier, the instance-sensitive stand-in for DINO: logistic regression on a
//! coarse colour histogram, trained on held-out renders of the subject against same-kind
//! distractors (shapes: plain shapes in caption colours, and the subject's kind filled with
//! the other subjects' patterns and colours; emoji: the other emoji of its class). A shapes
//! subject's colours are ones no caption names, so its histogram tells it from plain shapes
//! and from other patterned ones; an emoji's details (tears, hearts, a halo) shift its
//! histogram from its class's. A render with the right colours in another arrangement would
//! pass, which is why the FID-feature cosine is reported beside it.

use ldmscale_data::dreambooth::{DreamBoothSubjects, SubjectDomain};
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

/// What the classifier sees of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Features {
    /// The colour histogram: a shapes subject is its colours.
    Colours,
    /// The histogram and a thumbnail of the object's bounding box: an emoji differs from the
    /// rest of its class in where its details are (a sparkle, a ribbon), not only their colours.
    ColoursAndLayout,
}

/// Side of the layout thumbnail.
const THUMB: u32 = 8;

impl Features {
    /// The features of a domain's classifier.
    pub fn of_domain(domain: SubjectDomain) -> Self {
        match domain {
            SubjectDomain::Shapes => Features::Colours,
            SubjectDomain::Emoji => Features::ColoursAndLayout,
        }
    }

    fn len(self) -> usize {
        match self {
            Features::Colours => BINS,
            Features::ColoursAndLayout => BINS + (3 * THUMB * THUMB) as usize,
        }
    }

    fn of(self, image: &Image) -> Vec<f64> {
        let mut x = histogram(image);
        if self == Features::ColoursAndLayout {
            x.extend(layout(image));
        }
        x
    }
}

/// The object's bounding box (pixels unlike the border's commonest colour) as a `THUMB` px
/// thumbnail, centred and scaled to a length of at most 1.7, near the histogram's 1 (the rate
/// was set for it). Held-out accuracy of the real emoji subjects at 16 px (the least of four):
/// histogram alone 0.859, thumbnail scaled to 0.43 0.953, to 0.87 0.961, to 1.7 0.992.
fn layout(image: &Image) -> Vec<f64> {
    let (w, h) = (image.width(), image.height());
    let border = (0..w)
        .flat_map(|x| [(x, 0), (x, h - 1)])
        .chain((0..h).flat_map(|y| [(0, y), (w - 1, y)]));
    let mut counts: std::collections::HashMap<[u8; 3], usize> = Default::default();
    for (x, y) in border {
        *counts.entry(image.pixel(x, y)).or_default() += 1;
    }
    let background = counts
        .into_iter()
        .max_by_key(|(c, n)| (*n, *c))
        .map(|(c, _)| c);
    let background = background.unwrap_or([255; 3]);
    let unlike = |p: [u8; 3]| (0..3).any(|c| p[c].abs_diff(background[c]) > 32);
    let (mut lo, mut hi) = ((w, h), (0, 0));
    for y in 0..h {
        for x in (0..w).filter(|&x| unlike(image.pixel(x, y))) {
            (lo, hi) = (
                (lo.0.min(x), lo.1.min(y)),
                (hi.0.max(x + 1), hi.1.max(y + 1)),
            );
        }
    }
    let object = match hi.0 > lo.0 && hi.1 > lo.1 {
        true => image.crop(lo.0, lo.1, hi.0 - lo.0, hi.1 - lo.1),
        false => image.clone(),
    };
    let scale = 2.0 / THUMB as f64;
    (object.resize(THUMB, THUMB).as_bytes().iter())
        .map(|&v| (v as f64 / 255.0 - 0.5) * scale)
        .collect()
}

/// P(subject | image) by logistic regression on the image's [`Features`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectClassifier {
    features: Features,
    weights: Vec<f64>,
    bias: f64,
}

impl SubjectClassifier {
    /// Fits the classifier to `data` (subject = 1, distractor = 0; classes weighted equally).
    pub fn train(data: &Labelled, features: Features) -> Self {
        let rows: Vec<(Vec<f64>, f64, f64)> = labelled_rows(data, features);
        let mut model = SubjectClassifier {
            features,
            weights: vec![0.0; features.len()],
            bias: 0.0,
        };
        for _ in 0..STEPS {
            let mut grad = vec![0.0; features.len()];
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
        self.logit_probability(&self.features.of(image))
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
fn labelled_rows(data: &Labelled, features: Features) -> Vec<(Vec<f64>, f64, f64)> {
    let weight = |n: usize| 0.5 / n.max(1) as f64;
    let (ws, wd) = (weight(data.subject.len()), weight(data.distractors.len()));
    let subject = data.subject.iter().map(|i| (features.of(i), 1.0, ws));
    let distractors = data.distractors.iter().map(|i| (features.of(i), 0.0, wd));
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

/// `n` held-out renders of subject `name` and `n` of its domain's distractors (shapes: half
/// plain class shapes, half the other patterns on its kind; emoji: the other emoji of its
/// class) at `resolution`, drawn with `seed`.
pub fn labelled(
    set: &dyn DreamBoothSubjects,
    name: &str,
    n: usize,
    resolution: u32,
    seed: u64,
) -> Result<Labelled, DataError> {
    let distractors = set.distractors(name, n, resolution, seed)?;
    let renders = set.held_out(name, n, resolution, seed)?;
    Ok(Labelled {
        subject: renders.into_iter().map(|e| e.image).collect(),
        distractors,
    })
}

/// The classifier of subject `name` trained on `n` + `n` images drawn with `seed`, and its
/// accuracy on as many others drawn with `seed + 1`.
pub fn for_subject(
    set: &dyn DreamBoothSubjects,
    name: &str,
    n: usize,
    resolution: u32,
    seed: u64,
) -> Result<(SubjectClassifier, f64), DataError> {
    let features = Features::of_domain(set.domain());
    let classifier = SubjectClassifier::train(&labelled(set, name, n, resolution, seed)?, features);
    let test = labelled(set, name, n, resolution, seed.wrapping_add(1))?;
    let accuracy = classifier.accuracy(&test);
    Ok((classifier, accuracy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldmscale_data::dreambooth::{EmojiSubjects, SubjectSet};

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
        let others = SubjectSet::distractor_subjects(subject).unwrap();
        assert_eq!(others.subjects().len(), 3);
        for o in others.subjects() {
            assert_eq!(o.kind, subject.kind);
            assert_ne!(o.colours, subject.colours);
        }
        let data = labelled(&set, &subject.name, 10, 16, 3).unwrap();
        assert_eq!((data.subject.len(), data.distractors.len()), (10, 10));
    }

    /// Accuracy of each subject's classifier at `resolution`.
    fn emoji_accuracy(set: &EmojiSubjects, resolution: u32) -> Vec<(String, f64)> {
        let names = set
            .subjects()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>();
        names
            .into_iter()
            .map(|name| {
                let accuracy = for_subject(set, &name, 64, resolution, 0).unwrap().1;
                (name, accuracy)
            })
            .collect()
    }

    #[test]
    fn emoji_subjects_are_told_from_the_rest_of_their_class() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/data/emoji");
        let set = EmojiSubjects::standard_in(std::path::Path::new(fixture)).unwrap();
        for (name, accuracy) in emoji_accuracy(&set, 32) {
            assert!(accuracy >= 0.95, "fixture {name}: {accuracy}");
        }
        let (classifier, _) = for_subject(&set, "cat-face", 16, 32, 0).unwrap();
        let blank = Image::filled(32, 32, [255, 255, 255]);
        assert!(classifier.probability(&blank) < 0.5);
        let dir = ldmscale_data::assets_dir().join("emoji");
        if !dir.join(".complete").exists() {
            eprintln!(
                "skipping the real emoji: not in {} (tools/fetch-assets.sh emoji)",
                dir.display()
            );
            return;
        }
        let set = EmojiSubjects::standard_in(&dir).unwrap();
        for resolution in [16, 32, 64] {
            for (name, accuracy) in emoji_accuracy(&set, resolution) {
                eprintln!("real emoji {name} at {resolution} px: held-out accuracy {accuracy:.3}");
                assert!(accuracy >= 0.95, "{name} at {resolution} px: {accuracy}");
            }
        }
    }
}
