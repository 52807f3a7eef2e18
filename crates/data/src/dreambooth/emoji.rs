//! Emoji subjects, DreamBooth's second domain (issue 17): a subject is one specific emoji of
//! the `emoji` asset that the study's training set leaves out by file
//! (`emoji:exclude=1f638.png,...`), so no training caption names it, plus a reserved
//! identifier and a class noun taken from its name ("grinning cat face with smiling eyes" is a
//! "cat face").
//!
//! - [`EmojiSubjects::instances`]: the emoji's RGBA picture composited at varied scale,
//!   position and background; [`EmojiSubjects::held_out`]: more from another stream;
//!   [`EmojiSubjects::class_images`]: the other emoji of its class (same subcategory, the class
//!   noun in their names), placed the same way and captioned with their own names.
//! - Prompts in the emoji captions' grammar, which is a bare lower-case name: instance prompt
//!   "sks cat face", class prompt "cat face" (no article: the captions have none). The names
//!   have no places, backgrounds or counts, so the 25 [`emoji_evaluation_prompts`] use what
//!   the base model can have learned from them: colours ("blue heart"), sizes ("large red
//!   circle"), expressions ("pouting cat face"), accessories ("... with tears of joy") and the
//!   few relations the names hold ("... on fire", "sun behind cloud"), each with its
//!   class-noun twin.
//!
//! Every render is a pure function of (seed, subject name, stream, index).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    EvalPrompt, PromptGroup, Stream, check_identifier, check_render_request, class_twin, empty,
    prompt_words, stream_rng,
};
use crate::dataset::Example;
use crate::error::DataError;
use crate::image::Image;
use crate::rng::SplitMix64;
use crate::shapes::{BACKGROUND_COLOURS, NamedColour};

/// One emoji subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmojiSubject {
    /// Its name in configs and file names, e.g. `cat-face`.
    pub name: String,
    /// The emoji's lower-case name in the asset, e.g. "grinning cat face with smiling eyes".
    pub emoji: String,
    /// Its image file in the asset (what the training set excludes), e.g. `1f638.png`.
    pub file: String,
    /// Words of `emoji` naming its class, e.g. "cat face".
    pub class_noun: String,
    /// The reserved identifier word, e.g. `sks`.
    pub identifier: String,
}

impl EmojiSubject {
    /// "<id> <class>", the prompt of every instance image.
    pub fn instance_prompt(&self) -> String {
        format!("{} {}", self.identifier, self.class_noun)
    }

    /// "<class>", the instance prompt without the identifier.
    pub fn class_prompt(&self) -> String {
        self.class_noun.clone()
    }
}

/// The standard emoji subjects: (name, emoji, file, class noun, identifier). The identifiers
/// are the shapes subjects', so the tiny text encoder reserves the same words in both domains.
pub const STANDARD_EMOJI: [(&str, &str, &str, &str, &str); 4] = [
    (
        "cat-face",
        "grinning cat face with smiling eyes",
        "1f638.png",
        "cat face",
        "sks",
    ),
    (
        "sparkling-heart",
        "sparkling heart",
        "1f496.png",
        "heart",
        "zwx",
    ),
    (
        "moon-face",
        "full moon with face",
        "1f31d.png",
        "moon",
        "qlv",
    ),
    (
        "halo-face",
        "smiling face with halo",
        "1f607.png",
        "face",
        "bnq",
    ),
];

/// The standard subjects, before they are checked against an asset.
pub fn standard_emoji_subjects() -> Vec<EmojiSubject> {
    STANDARD_EMOJI
        .iter()
        .map(|(name, emoji, file, noun, id)| EmojiSubject {
            name: name.to_string(),
            emoji: emoji.to_string(),
            file: file.to_string(),
            class_noun: noun.to_string(),
            identifier: id.to_string(),
        })
        .collect()
}

/// Fewest other emoji a subject's class must hold (its class images and distractors).
pub const MIN_CLASS_MEMBERS: usize = 2;

/// An RGBA picture with premultiplied alpha, channels in [0, 1].
#[derive(Clone, Debug)]
struct Picture {
    width: usize,
    height: usize,
    rgba: Vec<[f32; 4]>,
}

impl Picture {
    fn open(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let decoded = image::load_from_memory(&bytes).map_err(|e| DataError::Image {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let rgba = decoded.to_rgba8();
        let premultiplied = rgba
            .pixels()
            .map(|p| {
                let a = p[3] as f32 / 255.0;
                let channel = |c: usize| p[c] as f32 / 255.0 * a;
                [channel(0), channel(1), channel(2), a]
            })
            .collect();
        Ok(Picture {
            width: rgba.width() as usize,
            height: rgba.height() as usize,
            rgba: premultiplied,
        })
    }

    /// Bilinear sample at (u, v) in pixels; transparent outside.
    fn sample(&self, u: f64, v: f64) -> [f32; 4] {
        let (x, y) = (u - 0.5, v - 0.5);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
        let at = |xi: f64, yi: f64| -> [f32; 4] {
            let inside =
                xi >= 0.0 && yi >= 0.0 && (xi as usize) < self.width && (yi as usize) < self.height;
            match inside {
                true => self.rgba[yi as usize * self.width + xi as usize],
                false => [0.0; 4],
            }
        };
        let (a, b, c, d) = (
            at(x0, y0),
            at(x0 + 1.0, y0),
            at(x0, y0 + 1.0),
            at(x0 + 1.0, y0 + 1.0),
        );
        [0, 1, 2, 3].map(|k| {
            let top = a[k] * (1.0 - fx) + b[k] * fx;
            let bottom = c[k] * (1.0 - fx) + d[k] * fx;
            top * (1.0 - fy) + bottom * fy
        })
    }
}

/// Where and how large one emoji is drawn, and on what; fractions of the side.
#[derive(Clone, Copy, Debug)]
struct EmojiPlacement {
    background: NamedColour,
    side: f64,
    origin: (f64, f64),
}

/// Sides of rendered emoji, fractions of the image side (the training set's are 1.0).
const SIDE: (f64, f64) = (0.55, 0.95);

impl EmojiPlacement {
    fn draw(rng: &mut SplitMix64) -> Self {
        let background = *rng.choose(&BACKGROUND_COLOURS);
        let side = rng.uniform(SIDE.0, SIDE.1);
        let origin = (rng.uniform(0.0, 1.0 - side), rng.uniform(0.0, 1.0 - side));
        EmojiPlacement {
            background,
            side,
            origin,
        }
    }
}

/// `picture` composited over the placement's background; 4x4 samples per pixel, so a
/// downscaled emoji keeps its thin strokes.
fn render_emoji(picture: &Picture, at: &EmojiPlacement, resolution: u32) -> Image {
    const SAMPLES: [f64; 4] = [0.125, 0.375, 0.625, 0.875];
    let res = resolution as f64;
    let mut img = Image::filled(resolution, resolution, at.background.rgb);
    let (ox, oy, side) = (at.origin.0 * res, at.origin.1 * res, at.side * res);
    let (sx, sy) = (picture.width as f64 / side, picture.height as f64 / side);
    let lo = |o: f64| o.floor().max(0.0) as u32;
    let hi = |o: f64| ((o + side).ceil() as u32).min(resolution);
    let bg = at.background.rgb.map(|c| c as f32 / 255.0);
    for y in lo(oy)..hi(oy) {
        for x in lo(ox)..hi(ox) {
            let mut sum = [0f32; 3];
            for dy in SAMPLES {
                for dx in SAMPLES {
                    let p = picture.sample((x as f64 + dx - ox) * sx, (y as f64 + dy - oy) * sy);
                    for c in 0..3 {
                        sum[c] += p[c] + bg[c] * (1.0 - p[3]);
                    }
                }
            }
            img.set_pixel(
                x,
                y,
                sum.map(|s| (s / 16.0 * 255.0).round().clamp(0.0, 255.0) as u8),
            );
        }
    }
    img
}

/// An emoji record of `emoji.json` (emoji-datasource layout; other fields ignored).
#[derive(Deserialize)]
struct Record {
    name: Option<String>,
    image: Option<String>,
    subcategory: Option<String>,
}

/// One listed emoji: lower-case name, image file, subcategory.
#[derive(Clone, Debug)]
struct Listed {
    name: String,
    file: String,
    subcategory: String,
}

/// The asset's emoji that have a name and an image file, in file order.
fn read_listing(dir: &Path) -> Result<(Vec<Listed>, PathBuf), DataError> {
    let json = dir.join("emoji.json");
    let img = dir.join("img");
    if !json.is_file() || !img.is_dir() {
        return Err(DataError::MissingAsset {
            name: "emoji".into(),
            path: dir.display().to_string(),
        });
    }
    let text = std::fs::read_to_string(&json).map_err(|e| DataError::io(&json, e))?;
    let records: Vec<Record> = serde_json::from_str(&text)
        .map_err(|e| DataError::format(json.display(), format!("expected emoji records: {e}")))?;
    let listed = records.into_iter().filter_map(|r| {
        let (name, file) = (r.name?.trim().to_lowercase(), r.image?);
        let ok = !name.is_empty() && img.join(&file).is_file();
        ok.then(|| Listed {
            name,
            file,
            subcategory: r.subcategory.unwrap_or_default(),
        })
    });
    Ok((listed.collect(), img))
}

/// Whether the words of `phrase` occur in `name`, consecutively.
fn names_phrase(name: &str, phrase: &str) -> bool {
    let (words, want): (Vec<String>, Vec<String>) =
        (prompt_words(name).collect(), prompt_words(phrase).collect());
    !want.is_empty() && words.windows(want.len()).any(|w| w == want.as_slice())
}

/// A subject checked against the asset, with its picture and its class's.
#[derive(Clone, Debug)]
struct Resolved {
    subject: EmojiSubject,
    picture: Picture,
    /// The other emoji of its class: (name, picture).
    class: Vec<(String, Picture)>,
}

/// A validated list of emoji subjects over one `emoji` asset.
#[derive(Clone, Debug)]
pub struct EmojiSubjects {
    dir: PathBuf,
    subjects: Vec<Resolved>,
}

impl EmojiSubjects {
    /// The standard subjects over the `emoji` asset (`tools/fetch-assets.sh emoji`).
    pub fn standard() -> Result<Self, DataError> {
        Self::standard_in(&crate::mnist::assets_dir().join("emoji"))
    }

    /// The standard subjects over the asset in `dir` (`emoji.json`, `img/`).
    pub fn standard_in(dir: &Path) -> Result<Self, DataError> {
        Self::new_in(dir, standard_emoji_subjects())
    }

    /// Checks `subjects` against the asset in `dir`: each emoji listed under its name with
    /// its file, the class noun words of its name, at least [`MIN_CLASS_MEMBERS`] other emoji
    /// of its subcategory naming the class; identifiers well-formed, no word of any emoji
    /// name; names and identifiers distinct.
    pub fn new_in(dir: &Path, subjects: Vec<EmojiSubject>) -> Result<Self, DataError> {
        if subjects.is_empty() {
            return Err(empty(
                "dreambooth emoji subjects",
                "the subject list is empty",
            ));
        }
        let (listed, img) = read_listing(dir)?;
        let captions: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        let excluded: Vec<&str> = subjects.iter().map(|s| s.file.as_str()).collect();
        let mut resolved = Vec::new();
        for (i, s) in subjects.iter().enumerate() {
            check_identifier(&s.identifier, &captions)?;
            if let Some(other) = subjects[..i]
                .iter()
                .find(|o| o.name == s.name || o.identifier == s.identifier || o.file == s.file)
            {
                return Err(bad(
                    s,
                    format!("repeats the name, identifier or file of {:?}", other.name),
                ));
            }
            let own = find_listed(dir, &listed, s)?;
            let members: Vec<&Listed> = listed
                .iter()
                .filter(|l| {
                    l.subcategory == own.subcategory && !excluded.contains(&l.file.as_str())
                })
                .filter(|l| names_phrase(&l.name, &s.class_noun))
                .collect();
            if members.len() < MIN_CLASS_MEMBERS {
                return Err(bad(
                    s,
                    format!(
                        "only {} other emoji of subcategory {:?} name the class {:?}; a class needs \
                     at least {MIN_CLASS_MEMBERS}",
                        members.len(),
                        own.subcategory,
                        s.class_noun
                    ),
                ));
            }
            let class = members
                .iter()
                .map(|m| Ok((m.name.clone(), Picture::open(&img.join(&m.file))?)))
                .collect::<Result<_, DataError>>()?;
            resolved.push(Resolved {
                subject: s.clone(),
                picture: Picture::open(&img.join(&s.file))?,
                class,
            });
        }
        Ok(EmojiSubjects {
            dir: dir.to_path_buf(),
            subjects: resolved,
        })
    }

    /// The asset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The subjects, in order.
    pub fn subjects(&self) -> Vec<&EmojiSubject> {
        self.subjects.iter().map(|r| &r.subject).collect()
    }

    /// The image files the training set must exclude.
    pub fn files(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|r| r.subject.file.clone())
            .collect()
    }

    fn resolved(&self, name: &str) -> Result<&Resolved, DataError> {
        self.subjects
            .iter()
            .find(|r| r.subject.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .subjects
                    .iter()
                    .map(|r| r.subject.name.as_str())
                    .collect();
                DataError::setting(
                    "dreambooth subject",
                    name,
                    format!("no such emoji subject (known: {})", known.join(", ")),
                )
            })
    }

    /// The subject called `name`; an unknown name is an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<&EmojiSubject, DataError> {
        Ok(&self.resolved(name)?.subject)
    }

    /// Names of the other emoji of subject `name`'s class, in asset order.
    pub fn class_members(&self, name: &str) -> Result<Vec<&str>, DataError> {
        let r = self.resolved(name)?;
        Ok(r.class.iter().map(|(n, _)| n.as_str()).collect())
    }

    /// `n` training images of subject `name`, captioned with its instance prompt.
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

    /// `n` renders of the other emoji of subject `name`'s class (in turn), placed as the
    /// instances are, each captioned with its own name.
    pub fn class_images(
        &self,
        name: &str,
        n: usize,
        resolution: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        let r = self.resolved(name)?;
        check_render_request(n, resolution)?;
        let renders = (0..n).map(|i| {
            let at = EmojiPlacement::draw(&mut stream_rng(name, Stream::Class, seed, i));
            let (caption, picture) = &r.class[i % r.class.len()];
            Example {
                id: format!("dreambooth/{name}/class/{i}"),
                image: render_emoji(picture, &at, resolution),
                caption: caption.clone(),
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
        let r = self.resolved(name)?;
        check_render_request(n, resolution)?;
        let label = if stream == Stream::Instance {
            "instance"
        } else {
            "held-out"
        };
        let renders = (0..n).map(|i| {
            let at = EmojiPlacement::draw(&mut stream_rng(name, stream, seed, i));
            Example {
                id: format!("dreambooth/{name}/{label}/{i}"),
                image: render_emoji(&r.picture, &at, resolution),
                caption: r.subject.instance_prompt(),
            }
        });
        Ok(renders.collect())
    }
}

fn bad(s: &EmojiSubject, message: String) -> DataError {
    DataError::setting("dreambooth emoji subject", &s.name, message)
}

/// The listing of subject `s`'s emoji, checked: listed under its name, with its file, the
/// class noun among its words.
fn find_listed<'l>(
    dir: &Path,
    listed: &'l [Listed],
    s: &EmojiSubject,
) -> Result<&'l Listed, DataError> {
    let Some(own) = listed.iter().find(|l| l.name == s.emoji) else {
        return Err(bad(
            s,
            format!(
                "no emoji named {:?} in {} (names are lower-case, as the captions)",
                s.emoji,
                dir.join("emoji.json").display()
            ),
        ));
    };
    if own.file != s.file {
        return Err(bad(
            s,
            format!(
                "emoji {:?} is file {}, not {} in {}",
                s.emoji,
                own.file,
                s.file,
                dir.display()
            ),
        ));
    }
    if !names_phrase(&s.emoji, &s.class_noun) {
        return Err(bad(
            s,
            format!(
                "class noun {:?} is not words of the emoji's name {:?}",
                s.class_noun, s.emoji
            ),
        ));
    }
    Ok(own)
}

/// (group, words before the subject, words after it) of the 25 emoji evaluation prompts.
const EMOJI_PROMPTS: [(PromptGroup, &str, &str); 25] = [
    (PromptGroup::Property, "red", ""),
    (PromptGroup::Property, "blue", ""),
    (PromptGroup::Property, "green", ""),
    (PromptGroup::Property, "yellow", ""),
    (PromptGroup::Property, "purple", ""),
    (PromptGroup::Size, "large", ""),
    (PromptGroup::Size, "small", ""),
    (PromptGroup::Size, "large black", ""),
    (PromptGroup::Size, "white medium", ""),
    (PromptGroup::Expression, "smiling", ""),
    (PromptGroup::Expression, "grinning", ""),
    (PromptGroup::Expression, "crying", ""),
    (PromptGroup::Expression, "kissing", ""),
    (PromptGroup::Expression, "pouting", ""),
    (PromptGroup::Expression, "weary", ""),
    (PromptGroup::Accessory, "", "with smiling eyes"),
    (PromptGroup::Accessory, "", "with open mouth"),
    (PromptGroup::Accessory, "", "with tears of joy"),
    (PromptGroup::Accessory, "", "with heart-shaped eyes"),
    (PromptGroup::Accessory, "", "with closed eyes"),
    (PromptGroup::Accessory, "", "with bunny ears"),
    (PromptGroup::Relation, "", "on fire"),
    (PromptGroup::Relation, "", "behind cloud"),
    (PromptGroup::Relation, "sun behind", ""),
    (PromptGroup::Relation, "", "with rain"),
];

/// 25 evaluation prompts for an emoji subject, in the emoji names' grammar: 5 colours, 4
/// sizes, 6 expressions, 6 accessories, 4 relations; each with its class-noun twin.
pub fn emoji_evaluation_prompts(subject: &EmojiSubject) -> Vec<EvalPrompt> {
    let s = subject.instance_prompt();
    EMOJI_PROMPTS
        .iter()
        .map(|(group, before, after)| {
            let prompt = [*before, &s, *after]
                .iter()
                .filter(|w| !w.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            EvalPrompt {
                group: *group,
                class_prompt: class_twin(&prompt, &subject.identifier),
                prompt,
            }
        })
        .collect()
}

/// Words of the emoji names that swap for one another in a minimally edited prompt (prompt
/// accuracy): colours, sizes, expressions, animals, things, body parts, weather, relations.
pub const EMOJI_SWAPS: [&[&str]; 8] = [
    &[
        "red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "brown",
    ],
    &["large", "small", "medium"],
    &[
        "smiling", "grinning", "crying", "kissing", "pouting", "weary", "winking",
    ],
    &[
        "cat", "dog", "tiger", "rabbit", "horse", "pig", "cow", "mouse", "bear", "monkey",
    ],
    &["face", "heart", "moon", "star", "sun", "flower"],
    &["eyes", "mouth", "ears", "hands"],
    &["fire", "cloud", "rain", "snow", "lightning"],
    &["on", "with", "behind"],
];

/// The words that may replace `word` in a minimally edited emoji prompt (none when it is not
/// a swappable word).
pub fn emoji_word_alternatives(word: &str, _next: Option<&str>) -> Vec<&'static str> {
    let group = EMOJI_SWAPS.iter().find(|g| g.contains(&word));
    let others = group.map(|g| g.iter().copied().filter(|w| *w != word));
    others.map(Iterator::collect).unwrap_or_default()
}
