//! One interface over both subject domains, so the DreamBooth task, stage, metrics and report
//! work for shapes and emoji subjects without copies: [`SubjectDomain`] names the domain,
//! [`DreamBoothSubjects`] is what the stage asks of a subject set.

use serde::{Deserialize, Serialize};

use super::emoji::{
    EmojiSubjects, STANDARD_EMOJI, emoji_evaluation_prompts, standard_emoji_subjects,
};
use super::{EvalPrompt, Subject, SubjectSet, evaluation_prompts};
use crate::dataset::Example;
use crate::error::DataError;
use crate::image::Image;

/// Which kind of subject DreamBooth finetunes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectDomain {
    /// Patterned `shapes` ([`SubjectSet`]); needs a `shapes` study.
    Shapes,
    /// Emoji left out of the training set ([`EmojiSubjects`]); needs an `emoji` study.
    Emoji,
}

impl SubjectDomain {
    /// `shapes` or `emoji`.
    pub fn name(self) -> &'static str {
        match self {
            SubjectDomain::Shapes => "shapes",
            SubjectDomain::Emoji => "emoji",
        }
    }

    /// (name, identifier) of the domain's standard subjects, known without any asset.
    pub fn standard(self) -> Vec<(String, String)> {
        match self {
            SubjectDomain::Shapes => (SubjectSet::standard().subjects().iter())
                .map(|s| (s.name.clone(), s.identifier.clone()))
                .collect(),
            SubjectDomain::Emoji => (standard_emoji_subjects().into_iter())
                .map(|s| (s.name, s.identifier))
                .collect(),
        }
    }

    /// The image file of the standard emoji subject `name` (what the training set excludes).
    pub fn emoji_file(name: &str) -> Option<&'static str> {
        (STANDARD_EMOJI.iter())
            .find(|&&(subject, ..)| subject == name)
            .map(|&(_, _, file, ..)| file)
    }

    /// Evaluation prompts each subject of the domain has.
    pub fn prompt_count(self) -> usize {
        25
    }

    /// The domain's standard subjects (emoji: over the `emoji` asset).
    pub fn open(self) -> Result<Box<dyn DreamBoothSubjects>, DataError> {
        Ok(match self {
            SubjectDomain::Shapes => Box::new(SubjectSet::standard()),
            SubjectDomain::Emoji => Box::new(EmojiSubjects::standard()?),
        })
    }
}

impl std::fmt::Display for SubjectDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the stage needs to know of one subject, in either domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectInfo {
    /// Its name in configs and file names.
    pub name: String,
    /// The reserved identifier.
    pub identifier: String,
    /// The prompt of every instance image ("a sks circle", "sks cat face").
    pub instance_prompt: String,
    /// The instance prompt without the identifier.
    pub class_prompt: String,
}

/// A domain's subjects as DreamBooth uses them: renders are pure functions of (seed, subject,
/// stream, index); an unknown name is an error listing the known ones.
pub trait DreamBoothSubjects {
    /// The domain.
    fn domain(&self) -> SubjectDomain;
    /// Subject names, in order.
    fn names(&self) -> Vec<String>;
    /// Subject `name`'s identifier and prompts.
    fn info(&self, name: &str) -> Result<SubjectInfo, DataError>;
    /// `n` training images of subject `name`.
    fn instances(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError>;
    /// `n` renders for scoring, from a stream the instances never use.
    fn held_out(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError>;
    /// `n` real images of the subject's class (PRES, language drift).
    fn class_images(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError>;
    /// The 25 evaluation prompts of subject `name`, with their class-noun twins.
    fn prompts(&self, name: &str) -> Result<Vec<EvalPrompt>, DataError>;
    /// `n` images of the subject's class that are not the subject (the subject classifier's
    /// negatives).
    fn distractors(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Image>, DataError>;
    /// The words that may replace `word` (followed by `next`) in a minimally edited prompt of
    /// the domain's grammar (prompt accuracy); none when it is not a swappable word.
    fn word_alternatives(&self, word: &str, next: Option<&str>) -> Vec<&'static str>;
}

fn shapes_info(s: &Subject) -> SubjectInfo {
    SubjectInfo {
        name: s.name.clone(),
        identifier: s.identifier.clone(),
        instance_prompt: s.instance_prompt(),
        class_prompt: s.class_prompt(),
    }
}

fn images(examples: Vec<Example>) -> impl Iterator<Item = Image> {
    examples.into_iter().map(|e| e.image)
}

impl SubjectSet {
    /// The subject's kind filled with each other pattern of the standard set (colours the
    /// subject does not use), named `<subject>-d<i>`.
    pub fn distractor_subjects(subject: &Subject) -> Result<SubjectSet, DataError> {
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
}

impl DreamBoothSubjects for SubjectSet {
    fn domain(&self) -> SubjectDomain {
        SubjectDomain::Shapes
    }

    fn names(&self) -> Vec<String> {
        self.subjects().iter().map(|s| s.name.clone()).collect()
    }

    fn info(&self, name: &str) -> Result<SubjectInfo, DataError> {
        Ok(shapes_info(self.get(name)?))
    }

    fn instances(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        SubjectSet::instances(self, name, n, res, seed)
    }

    fn held_out(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        SubjectSet::held_out(self, name, n, res, seed)
    }

    fn class_images(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        SubjectSet::class_images(self, name, n, res, seed)
    }

    fn prompts(&self, name: &str) -> Result<Vec<EvalPrompt>, DataError> {
        Ok(evaluation_prompts(self.get(name)?))
    }

    /// Half plain class shapes, half the other patterns on its kind.
    fn distractors(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Image>, DataError> {
        let subject = self.get(name)?;
        let mut out: Vec<Image> = images(SubjectSet::class_images(
            self,
            name,
            n.div_ceil(2),
            res,
            seed,
        )?)
        .collect();
        let others = SubjectSet::distractor_subjects(subject)?;
        let per_other = (n / 2).div_ceil(others.subjects().len()).max(1);
        for other in others.subjects() {
            out.extend(images(others.held_out(
                &other.name,
                per_other,
                res,
                seed,
            )?));
        }
        out.truncate(n);
        Ok(out)
    }

    fn word_alternatives(&self, word: &str, next: Option<&str>) -> Vec<&'static str> {
        super::shapes_word_alternatives(word, next)
    }
}

impl DreamBoothSubjects for EmojiSubjects {
    fn domain(&self) -> SubjectDomain {
        SubjectDomain::Emoji
    }

    fn names(&self) -> Vec<String> {
        self.subjects().iter().map(|s| s.name.clone()).collect()
    }

    fn info(&self, name: &str) -> Result<SubjectInfo, DataError> {
        let s = self.get(name)?;
        Ok(SubjectInfo {
            name: s.name.clone(),
            identifier: s.identifier.clone(),
            instance_prompt: s.instance_prompt(),
            class_prompt: s.class_prompt(),
        })
    }

    fn instances(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        EmojiSubjects::instances(self, name, n, res, seed)
    }

    fn held_out(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        EmojiSubjects::held_out(self, name, n, res, seed)
    }

    fn class_images(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Example>, DataError> {
        EmojiSubjects::class_images(self, name, n, res, seed)
    }

    fn prompts(&self, name: &str) -> Result<Vec<EvalPrompt>, DataError> {
        Ok(emoji_evaluation_prompts(self.get(name)?))
    }

    /// The other emoji of its class, placed as the subject is.
    fn distractors(
        &self,
        name: &str,
        n: usize,
        res: u32,
        seed: u64,
    ) -> Result<Vec<Image>, DataError> {
        Ok(images(EmojiSubjects::class_images(self, name, n, res, seed)?).collect())
    }

    fn word_alternatives(&self, word: &str, next: Option<&str>) -> Vec<&'static str> {
        super::emoji::emoji_word_alternatives(word, next)
    }
}
