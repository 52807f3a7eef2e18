//! DreamBooth subjects and prompts (issue 17): subjects the `shapes` captions cannot name, each a
//! shape of one kind (the class noun) filled with a fixed two-colour pattern (stripes, checker,
//! dots, two-tone) in colours outside the caption palette, plus a reserved identifier word.
//!
//! - [`SubjectSet::instances`]: the few training images of a subject (varied size, place,
//!   background); [`SubjectSet::held_out`]: more renders from another stream, for scoring;
//!   [`SubjectSet::class_images`]: plain shapes of the same kind (prior preservation, PRES).
//! - Prompts in the `shapes` grammar: `instance_prompt` "a sks circle", `class_prompt` "a circle",
//!   and 25 [`evaluation_prompts`] in DreamBooth's groups, each with its class-noun twin (the
//!   identifier dropped, so "a sks circle" reads "a circle") for CLIP-T-style scoring.
//! - Checks that turn bad input into errors naming the word, prompt or folder.
//!
//! Every render is a pure function of (seed, subject name, stream, index).
//!
//! A second domain, emoji subjects (one emoji the training set leaves out), lives in
//! [`emoji`]; [`SubjectDomain`] and [`DreamBoothSubjects`] give the stage one interface over
//! both.

mod domain;
pub mod emoji;

pub use domain::{DreamBoothSubjects, SubjectDomain, SubjectInfo};
pub use emoji::{EmojiSubject, EmojiSubjects, emoji_evaluation_prompts};

use std::collections::BTreeSet;
use std::path::Path;

use crate::dataset::Example;
use crate::error::DataError;
use crate::image::{Image, MAX_IMAGE_SIDE};
use crate::rng::{SplitMix64, hash_str, hash_u64s};
use crate::shapes::{
    BACKGROUND_COLOURS, NUMBER_WORDS, NamedColour, OBJECT_COLOURS, Place, Relation, ShapeKind,
};

/// A subject's fill: two colours in an arrangement anchored to the shape, so it scales with it.
/// Features are [`PATTERN_UNIT`] radii across, coarse enough to survive at 32 px.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Diagonal bands one unit wide.
    Stripes,
    /// Squares one unit on a side.
    Checker,
    /// Dots of the second colour on the first, one per unit square.
    Dots,
    /// Left half the first colour, right half the second.
    TwoTone,
}

/// Size of a pattern's features, in radii of the shape.
pub const PATTERN_UNIT: f64 = 0.7;

impl Pattern {
    /// Which colour (0 or 1) covers the offset (dx, dy) from the centre, in radii, y down.
    pub fn colour_index(self, dx: f64, dy: f64) -> usize {
        let parity = |v: f64| (v.floor() as i64).rem_euclid(2) as usize;
        let (u, v) = (dx / PATTERN_UNIT, dy / PATTERN_UNIT);
        match self {
            Pattern::Stripes => parity(u + v),
            Pattern::Checker => parity(u) ^ parity(v),
            Pattern::Dots => {
                let (a, b) = (u.rem_euclid(1.0) - 0.5, v.rem_euclid(1.0) - 0.5);
                (a * a + b * b <= 0.33 * 0.33) as usize
            }
            Pattern::TwoTone => (dx >= 0.0) as usize,
        }
    }
}

/// One subject: a shape kind with a fixed pattern, and the word reserved to name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Its name in configs and file names, e.g. `striped-circle`.
    pub name: String,
    /// The shape kind; its caption word is the class noun.
    pub kind: ShapeKind,
    /// The fill.
    pub pattern: Pattern,
    /// The pattern's two colours, none of them a caption colour.
    pub colours: [[u8; 3]; 2],
    /// The reserved identifier word, e.g. `sks`.
    pub identifier: String,
}

impl Subject {
    /// The class noun, e.g. "circle".
    pub fn class_noun(&self) -> &'static str {
        self.kind.name()
    }

    /// "a <id> <class>", the prompt of every instance image.
    pub fn instance_prompt(&self) -> String {
        format!("a {} {}", self.identifier, self.class_noun())
    }

    /// "a <class>", the instance prompt without the identifier.
    pub fn class_prompt(&self) -> String {
        format!("a {}", self.class_noun())
    }

    /// Share of the image's pixels in the rarer of the two pattern colours (exact match): well
    /// above zero for a render of this subject, zero for plain fills of caption colours.
    pub fn pattern_share(&self, image: &Image) -> f64 {
        let mut counts = [0usize; 2];
        for px in image.as_bytes().chunks_exact(3) {
            for (count, colour) in counts.iter_mut().zip(&self.colours) {
                *count += (px == colour) as usize;
            }
        }
        let pixels = (image.width() as usize * image.height() as usize).max(1);
        counts[0].min(counts[1]) as f64 / pixels as f64
    }
}

/// The renders a subject's images come from, kept apart so held-out images are never trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Instance = 1,
    HeldOut = 2,
    Class = 3,
}

/// Where and how large one shape is drawn, and on what.
#[derive(Clone, Copy, Debug)]
struct Placement {
    background: NamedColour,
    centre: (f64, f64),
    radius: f64,
}

/// Radii of rendered subjects and class shapes, fractions of the side (large enough that the
/// pattern survives at 32 px).
const RADIUS: (f64, f64) = (0.16, 0.32);
/// Gap between a shape's box and the image border.
const MARGIN: f64 = 0.01;
/// Most images one call renders.
pub const MAX_RENDERS: usize = 4096;

impl Placement {
    fn draw(rng: &mut SplitMix64) -> Self {
        let background = *rng.choose(&BACKGROUND_COLOURS);
        let radius = rng.uniform(RADIUS.0, RADIUS.1);
        let (lo, hi) = (radius + MARGIN, 1.0 - radius - MARGIN);
        let centre = (rng.uniform(lo, hi), rng.uniform(lo, hi));
        Placement {
            background,
            centre,
            radius,
        }
    }
}

/// Renders one shape of `kind`, each point coloured by `fill(dx, dy)` (offsets in radii); edge
/// pixels blend by 4x4-sample coverage, so interior pixels keep exact colours.
fn render_shape(
    kind: ShapeKind,
    at: &Placement,
    resolution: u32,
    fill: impl Fn(f64, f64) -> [u8; 3],
) -> Image {
    const SAMPLES: [f64; 4] = [0.125, 0.375, 0.625, 0.875];
    let mut img = Image::filled(resolution, resolution, at.background.rgb);
    let res = resolution as f64;
    let (cx, cy, r) = (at.centre.0 * res, at.centre.1 * res, at.radius * res);
    let lo = |c: f64| (c - r).floor().max(0.0) as u32;
    let hi = |c: f64| ((c + r).ceil() as u32).min(resolution);
    for y in lo(cy)..hi(cy) {
        for x in lo(cx)..hi(cx) {
            let mut sum = [0u32; 3];
            for sy in SAMPLES {
                for sx in SAMPLES {
                    let (dx, dy) = ((x as f64 + sx - cx) / r, (y as f64 + sy - cy) / r);
                    let rgb = if kind.contains(dx, dy) {
                        fill(dx, dy)
                    } else {
                        at.background.rgb
                    };
                    sum.iter_mut().zip(rgb).for_each(|(s, v)| *s += v as u32);
                }
            }
            img.set_pixel(x, y, sum.map(|s| ((s + 8) / 16) as u8));
        }
    }
    img
}

/// A validated list of subjects with distinct names and identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectSet {
    subjects: Vec<Subject>,
}

impl SubjectSet {
    /// Checks the subjects: at least one; names and identifiers distinct; identifiers well-formed
    /// and no word of the `shapes` grammar; two pattern colours, distinct and outside the
    /// caption palette (else the captions could name them, or the pattern would vanish).
    pub fn new(subjects: Vec<Subject>) -> Result<Self, DataError> {
        if subjects.is_empty() {
            return Err(empty("dreambooth subjects", "the subject list is empty"));
        }
        let vocabulary: Vec<&str> = caption_vocabulary().into_iter().collect();
        for (i, s) in subjects.iter().enumerate() {
            check_subject(s)?;
            check_identifier(&s.identifier, &vocabulary)?;
            if let Some(other) = subjects[..i]
                .iter()
                .find(|o| o.name == s.name || o.identifier == s.identifier)
            {
                return Err(DataError::setting(
                    "dreambooth subject",
                    &s.name,
                    format!("repeats the name or identifier of subject {:?}", other.name),
                ));
            }
        }
        Ok(SubjectSet { subjects })
    }

    /// Four subjects: a striped circle, a checkered square, a dotted hexagon, a two-tone diamond.
    pub fn standard() -> Self {
        let subject = |name: &str, kind, pattern, colours, id: &str| Subject {
            name: name.into(),
            kind,
            pattern,
            colours,
            identifier: id.into(),
        };
        SubjectSet::new(vec![
            subject(
                "striped-circle",
                ShapeKind::Circle,
                Pattern::Stripes,
                [[0, 128, 128], [250, 128, 114]],
                "sks",
            ),
            subject(
                "checkered-square",
                ShapeKind::Square,
                Pattern::Checker,
                [[20, 30, 100], [170, 230, 40]],
                "zwx",
            ),
            subject(
                "dotted-hexagon",
                ShapeKind::Hexagon,
                Pattern::Dots,
                [[190, 170, 240], [128, 0, 0]],
                "qlv",
            ),
            subject(
                "two-tone-diamond",
                ShapeKind::Diamond,
                Pattern::TwoTone,
                [[200, 0, 120], [160, 240, 200]],
                "bnq",
            ),
        ])
        .expect("the standard subjects are valid")
    }

    /// The subjects, in order.
    pub fn subjects(&self) -> &[Subject] {
        &self.subjects
    }

    /// The subject called `name`; an unknown name is an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<&Subject, DataError> {
        self.subjects
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.subjects.iter().map(|s| s.name.as_str()).collect();
                DataError::setting(
                    "dreambooth subject",
                    name,
                    format!("no such subject (known: {})", known.join(", ")),
                )
            })
    }

    /// The identifier word reserved for subject `name`.
    pub fn identifier_for(&self, name: &str) -> Result<&str, DataError> {
        Ok(&self.get(name)?.identifier)
    }

    /// `n` training images of subject `name`, captioned "a <id> <class> on a <bg> background".
    pub fn instances(
        &self,
        name: &str,
        n: usize,
        resolution: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        self.subject_renders(name, Stream::Instance, n, resolution, seed)
    }

    /// `n` more renders of subject `name` for scoring, from a stream the instances never use.
    pub fn held_out(
        &self,
        name: &str,
        n: usize,
        resolution: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        self.subject_renders(name, Stream::HeldOut, n, resolution, seed)
    }

    /// `n` plain shapes of subject `name`'s kind in caption colours, placed as the instances
    /// are, captioned "a <colour> <class> on a <bg> background".
    pub fn class_images(
        &self,
        name: &str,
        n: usize,
        resolution: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        let subject = self.get(name)?;
        check_render_request(n, resolution)?;
        let renders = (0..n).map(|i| {
            let mut rng = stream_rng(&subject.name, Stream::Class, seed, i);
            let at = Placement::draw(&mut rng);
            let colours: Vec<&NamedColour> = OBJECT_COLOURS
                .iter()
                .filter(|c| c.rgb != at.background.rgb)
                .collect();
            let colour = **rng.choose(&colours);
            Example {
                id: format!("dreambooth/{}/class/{i}", subject.name),
                image: render_shape(subject.kind, &at, resolution, |_, _| colour.rgb),
                caption: format!(
                    "a {} {} on a {} background",
                    colour.name,
                    subject.class_noun(),
                    at.background.name
                ),
            }
        });
        Ok(renders.collect())
    }

    fn subject_renders(
        &self,
        name: &str,
        stream: Stream,
        n: usize,
        resolution: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        let subject = self.get(name)?;
        check_render_request(n, resolution)?;
        let label = if stream == Stream::Instance {
            "instance"
        } else {
            "held-out"
        };
        let fill = |dx, dy| subject.colours[subject.pattern.colour_index(dx, dy)];
        let renders = (0..n).map(|i| {
            let at = Placement::draw(&mut stream_rng(&subject.name, stream, seed, i));
            Example {
                id: format!("dreambooth/{}/{label}/{i}", subject.name),
                image: render_shape(subject.kind, &at, resolution, fill),
                caption: format!(
                    "{} on a {} background",
                    subject.instance_prompt(),
                    at.background.name
                ),
            }
        });
        Ok(renders.collect())
    }
}

fn stream_rng(subject: &str, stream: Stream, seed: u64, index: usize) -> SplitMix64 {
    let key = [seed, hash_str(subject), stream as u64, index as u64];
    SplitMix64::new(hash_u64s(&key))
}

fn check_render_request(n: usize, resolution: u32) -> Result<(), DataError> {
    if !(1..=MAX_RENDERS).contains(&n) {
        return Err(DataError::setting(
            "dreambooth image count",
            n,
            format!("must be 1 to {MAX_RENDERS}"),
        ));
    }
    if !(16..=MAX_IMAGE_SIDE).contains(&resolution) {
        return Err(DataError::setting(
            "dreambooth resolution",
            resolution,
            format!("must be 16 to {MAX_IMAGE_SIDE} pixels"),
        ));
    }
    Ok(())
}

fn check_subject(s: &Subject) -> Result<(), DataError> {
    let bad = |message: String| Err(DataError::setting("dreambooth subject", &s.name, message));
    if s.name.trim().is_empty() {
        return bad("the subject name is empty".into());
    }
    if s.colours[0] == s.colours[1] {
        return bad(format!(
            "the pattern's two colours are equal ({:?})",
            s.colours[0]
        ));
    }
    let palette = OBJECT_COLOURS.iter().chain(&BACKGROUND_COLOURS);
    for c in palette {
        if s.colours.contains(&c.rgb) {
            return bad(format!(
                "pattern colour {:?} is the caption colour {:?}; a subject's colours must be ones \
                 the captions cannot name",
                c.rgb, c.name
            ));
        }
    }
    Ok(())
}

/// Every word the `shapes` captions can use (colours, kinds, sizes, counts, relations, places,
/// and the words around them).
pub fn caption_vocabulary() -> BTreeSet<&'static str> {
    let mut words: BTreeSet<&'static str> = ["a", "on", "background"].into_iter().collect();
    words.extend(
        OBJECT_COLOURS
            .iter()
            .chain(&BACKGROUND_COLOURS)
            .map(|c| c.name),
    );
    words.extend(ShapeKind::ALL.iter().flat_map(|k| [k.name(), k.plural()]));
    words.extend(["small", "large"]);
    words.extend(NUMBER_WORDS);
    words.extend(Relation::ALL.iter().flat_map(|r| r.words().split(' ')));
    for (column, row) in (0..3).flat_map(|c| (0..3).map(move |r| (c, r))) {
        words.extend(Place { column, row }.words().split(' '));
    }
    words
}

/// The words of `text` as the word-level tokenizer sees them: lower-cased, split at anything
/// that is not a letter or digit.
pub fn prompt_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Checks that `identifier` can be reserved: one lowercase word of ASCII letters and digits
/// (the tokenizer lowercases and splits at punctuation) that no caption uses; otherwise the
/// model already has a meaning for it and the subject would overwrite that word.
pub fn check_identifier<S: AsRef<str>>(identifier: &str, captions: &[S]) -> Result<(), DataError> {
    let well_formed = !identifier.is_empty()
        && identifier.len() <= 32
        && identifier
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !well_formed {
        return Err(DataError::setting(
            "dreambooth identifier",
            identifier,
            "must be one word of 1 to 32 lowercase ASCII letters or digits, e.g. \"sks\"",
        ));
    }
    let seen = captions
        .iter()
        .flat_map(|c| prompt_words(c.as_ref()).collect::<Vec<_>>())
        .filter(|w| w == identifier)
        .count();
    if seen > 0 {
        return Err(DataError::setting(
            "dreambooth identifier",
            identifier,
            format!(
                "is already a word of the captions ({seen} uses); reserve a word they never \
                 use, e.g. \"sks\""
            ),
        ));
    }
    Ok(())
}

/// Checks an instance / class prompt pair: both non-empty, different, the identifier a word of
/// the instance prompt and not of the class prompt.
pub fn check_prompts(instance: &str, class: &str, identifier: &str) -> Result<(), DataError> {
    let bad = |field: &str, value: &str, message: &str| {
        Err(DataError::setting(field, value, message.to_string()))
    };
    let has_id = |p: &str| prompt_words(p).any(|w| w == identifier);
    if instance.trim().is_empty() {
        return bad("instance prompt", instance, "is empty");
    }
    if class.trim().is_empty() {
        return bad("class prompt", class, "is empty");
    }
    if prompt_words(instance).eq(prompt_words(class)) {
        return bad(
            "class prompt",
            class,
            "is identical to the instance prompt; the class prompt is the instance prompt \
             without the identifier",
        );
    }
    if !has_id(instance) {
        return bad(
            "instance prompt",
            instance,
            &format!("does not contain the identifier {identifier:?}"),
        );
    }
    if has_id(class) {
        return bad(
            "class prompt",
            class,
            &format!("contains the identifier {identifier:?}"),
        );
    }
    Ok(())
}

/// DreamBooth's evaluation prompt groups, in a domain's caption grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PromptGroup {
    /// Where in the picture.
    Place,
    /// The background colour.
    Background,
    /// Above / below / beside another object.
    Relation,
    /// Several copies.
    Count,
    /// Small or large.
    Size,
    /// Recoloured.
    Property,
    /// A changed expression (emoji: "pouting", "crying").
    Expression,
    /// An accessory ("with tears of joy"; DreamBooth's accessorization).
    Accessory,
}

/// One evaluation prompt and its class-noun twin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalPrompt {
    /// Its group.
    pub group: PromptGroup,
    /// With the identifier, e.g. "a sks circle above a small red square on a white background".
    pub prompt: String,
    /// The same without the identifier: "a circle above a small red square on a white background".
    pub class_prompt: String,
}

/// The class-noun twin of `prompt`: the identifier dropped, so "<id> <class>" reads "<class>".
pub fn class_twin(prompt: &str, identifier: &str) -> String {
    prompt
        .split(' ')
        .filter(|w| !w.is_empty() && *w != identifier)
        .collect::<Vec<_>>()
        .join(" ")
}

/// 25 evaluation prompts for `subject`: 5 places, 4 backgrounds, 5 relations, 3 counts, 3 sizes,
/// 5 recolourings.
pub fn evaluation_prompts(subject: &Subject) -> Vec<EvalPrompt> {
    let s = format!("{} {}", subject.identifier, subject.class_noun());
    let mut prompts = Vec::with_capacity(25);
    let mut push = |group, text: String| {
        prompts.push(EvalPrompt {
            group,
            class_prompt: class_twin(&text, &subject.identifier),
            prompt: text,
        })
    };
    for (group, text) in place_and_background(&s) {
        push(group, text);
    }
    for text in relations(subject, &s) {
        push(PromptGroup::Relation, text);
    }
    let plural = format!("{} {}", subject.identifier, subject.kind.plural());
    for (count, bg) in [("two", "white"), ("three", "gray"), ("four", "beige")] {
        push(
            PromptGroup::Count,
            format!("{count} {plural} on a {bg} background"),
        );
    }
    for (size, place, bg) in [
        ("small", "", "white"),
        ("large", "", "gray"),
        ("large", " in the center", "black"),
    ] {
        push(
            PromptGroup::Size,
            format!("a {size} {s}{place} on a {bg} background"),
        );
    }
    for (size, colour, bg) in RECOLOURINGS {
        push(
            PromptGroup::Property,
            format!("a {size} {colour} {s} on a {bg} background"),
        );
    }
    prompts
}

/// (size, colour, background) of the recoloured prompts; no colour on its own background.
const RECOLOURINGS: [(&str, &str, &str); 5] = [
    ("large", "red", "white"),
    ("small", "blue", "gray"),
    ("large", "green", "black"),
    ("small", "orange", "beige"),
    ("large", "purple", "white"),
];

fn place_and_background(s: &str) -> Vec<(PromptGroup, String)> {
    let places = [
        ("at the top left", "white"),
        ("at the top right", "gray"),
        ("in the center", "black"),
        ("at the bottom left", "beige"),
        ("at the bottom right", "white"),
    ];
    let mut out: Vec<(PromptGroup, String)> = places
        .iter()
        .map(|(p, bg)| {
            (
                PromptGroup::Place,
                format!("a {s} {p} on a {bg} background"),
            )
        })
        .collect();
    out.extend(BACKGROUND_COLOURS.iter().map(|bg| {
        (
            PromptGroup::Background,
            format!("a {s} on a {} background", bg.name),
        )
    }));
    out
}

/// Five relations to objects of other kinds; the subject first in three, second in two.
fn relations(subject: &Subject, s: &str) -> Vec<String> {
    let others: Vec<ShapeKind> = ShapeKind::ALL
        .into_iter()
        .filter(|k| *k != subject.kind)
        .collect();
    let other = |i: usize, size: &str, colour: &str| {
        format!("a {size} {colour} {}", others[i % others.len()].name())
    };
    vec![
        format!(
            "a {s} above {} on a white background",
            other(0, "small", "red")
        ),
        format!(
            "a {s} to the left of {} on a gray background",
            other(1, "large", "blue")
        ),
        format!(
            "{} above a {s} on a beige background",
            other(2, "small", "green")
        ),
        format!(
            "a {s} below {} on a black background",
            other(3, "large", "yellow")
        ),
        format!(
            "{} to the right of a {s} on a white background",
            other(4, "large", "purple")
        ),
    ]
}

/// The words that may replace `word` in a minimally edited `shapes` prompt (none when it is
/// not a swappable word); a colour before "background" only by a background colour.
pub fn shapes_word_alternatives(word: &str, next: Option<&str>) -> Vec<&'static str> {
    let background = next == Some("background");
    let backgrounds: Vec<&'static str> = BACKGROUND_COLOURS.iter().map(|c| c.name).collect();
    let colours: Vec<&'static str> = OBJECT_COLOURS.iter().map(|c| c.name).collect();
    let kinds: Vec<&'static str> = ShapeKind::ALL.iter().map(|k| k.name()).collect();
    let plurals: Vec<&'static str> = ShapeKind::ALL.iter().map(|k| k.plural()).collect();
    let groups: [Vec<&'static str>; 7] = [
        if background { backgrounds } else { colours },
        kinds,
        plurals,
        NUMBER_WORDS[2..].to_vec(),
        vec!["small", "large"],
        vec!["above", "below"],
        vec!["left", "right", "top", "bottom", "center"],
    ];
    let group = groups.into_iter().find(|g| g.contains(&word));
    let mut out = group.unwrap_or_default();
    out.retain(|w| *w != word);
    out
}

/// Checks evaluation prompts: a non-empty list, each prompt with the identifier and its twin
/// without it.
pub fn check_evaluation_prompts(prompts: &[EvalPrompt], identifier: &str) -> Result<(), DataError> {
    if prompts.is_empty() {
        return Err(empty(
            "dreambooth evaluation prompts",
            "the prompt list is empty; give at least one prompt",
        ));
    }
    for p in prompts {
        if !prompt_words(&p.prompt).any(|w| w == identifier) {
            return Err(DataError::setting(
                "evaluation prompt",
                &p.prompt,
                format!("does not contain the identifier {identifier:?}"),
            ));
        }
        if prompt_words(&p.class_prompt).any(|w| w == identifier) || p.class_prompt.is_empty() {
            return Err(DataError::setting(
                "evaluation class prompt",
                &p.class_prompt,
                format!("must be non-empty and without the identifier {identifier:?}"),
            ));
        }
    }
    Ok(())
}

/// The images of a DreamBooth instance folder (not recursive, sorted by file name), each
/// captioned with `instance_prompt`; a folder without images is an error naming it.
pub fn load_instance_dir(dir: &Path, instance_prompt: &str) -> Result<Vec<Example>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_file() && crate::folder::is_image(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(empty(
            &format!("instance folder {}", dir.display()),
            &format!("no images ({:?}) in it", crate::folder::IMAGE_EXTENSIONS),
        ));
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            Ok(Example {
                id: path.display().to_string(),
                image: Image::open(&path)?,
                caption: instance_prompt.to_string(),
            })
        })
        .collect()
}

fn empty(dataset: &str, detail: &str) -> DataError {
    DataError::Empty {
        dataset: dataset.to_string(),
        detail: format!(": {detail}"),
    }
}
