//! Emoji subjects, DreamBooth's second domain: renders of one left-out emoji at varied scale,
//! place and background, class images from the other emoji of its class, prompts in the emoji
//! names' grammar, bad input named. Runs on the committed fixture
//! (tools/fixtures/make_emoji_fixture.py); the last tests use the real asset when
//! `tools/fetch-assets.sh emoji` has fetched it, and say when they skip.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ldmscale_data::dreambooth::emoji::{EMOJI_SWAPS, MIN_CLASS_MEMBERS, standard_emoji_subjects};
use ldmscale_data::dreambooth::{emoji_evaluation_prompts, prompt_words};
use ldmscale_data::{
    Dataset, DatasetSpec, DreamBoothSubjects, Emoji, EmojiSubject, EmojiSubjects, Image,
    PromptGroup, SubjectDomain, assets_dir, check_evaluation_prompts, check_prompts,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/data/emoji")
}

fn subjects() -> EmojiSubjects {
    EmojiSubjects::standard_in(&fixture()).unwrap()
}

/// Pixels that differ from the background colour.
fn covered(image: &Image, background: [u8; 3]) -> usize {
    let bytes = image.as_bytes();
    bytes.chunks_exact(3).filter(|p| *p != background).count()
}

/// The background: the most common pixel of the border.
fn background(image: &Image) -> [u8; 3] {
    let (w, h) = (image.width(), image.height());
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    for x in 0..w {
        for y in [0, h - 1] {
            *counts.entry(image.pixel(x, y)).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0
}

#[test]
fn renders_are_deterministic_move_with_the_seed_and_vary() {
    let (a, b) = (subjects(), subjects());
    for name in a.names() {
        assert_eq!(
            a.instances(&name, 5, 32, 3).unwrap(),
            b.instances(&name, 5, 32, 3).unwrap()
        );
        assert_eq!(
            a.class_images(&name, 4, 32, 3).unwrap(),
            b.class_images(&name, 4, 32, 3).unwrap()
        );
        let (s3, s4) = (
            a.instances(&name, 5, 32, 3).unwrap(),
            a.instances(&name, 5, 32, 4).unwrap(),
        );
        assert!(
            s3.iter().zip(&s4).all(|(x, y)| x.image != y.image),
            "{name}: seed ignored"
        );
        let instances = a.instances(&name, 6, 32, 0).unwrap();
        let held = a.held_out(&name, 20, 32, 0).unwrap();
        let distinct: HashSet<&[u8]> = (instances.iter().chain(&held))
            .map(|e| e.image.as_bytes())
            .collect();
        assert_eq!(distinct.len(), 26, "{name}: repeated renders");
        // Scale varies: the emoji covers a different number of pixels in every instance.
        let areas: HashSet<usize> = (instances.iter())
            .map(|e| covered(&e.image, background(&e.image)))
            .collect();
        assert_eq!(areas.len(), 6, "{name}: areas {areas:?}");
        let backgrounds: HashSet<[u8; 3]> = (instances.iter().chain(&held))
            .map(|e| background(&e.image))
            .collect();
        assert!(
            backgrounds.len() >= 3,
            "{name}: backgrounds {backgrounds:?}"
        );
    }
}

#[test]
fn renders_show_the_emoji_over_its_background_at_every_size() {
    let set = subjects();
    for name in set.names() {
        for resolution in [16, 32, 64] {
            for e in set.held_out(&name, 12, resolution, 1).unwrap() {
                let share = covered(&e.image, background(&e.image)) as f64
                    / (resolution * resolution) as f64;
                // The disc fills pi/4 of a box 0.55 to 0.95 of the side (the halo a little more).
                assert!((0.15..0.9).contains(&share), "{}: share {share}", e.id);
            }
        }
    }
    // A transparent pixel shows the background exactly; the disc's centre is the emoji's own
    // colour (the fixture's heart is (240, 90, 160) under the sparkle's corner).
    let e = &set.instances("sparkling-heart", 1, 64, 0).unwrap()[0];
    let bg = background(&e.image);
    assert_eq!(e.image.pixel(0, 0), bg);
    let heart = e
        .image
        .as_bytes()
        .chunks_exact(3)
        .filter(|p| *p == [240, 90, 160])
        .count();
    assert!(heart > 200, "{heart} heart pixels");
}

#[test]
fn captions_name_the_subject_by_identifier_and_class_images_by_their_own_names() {
    let set = subjects();
    let s = set.get("cat-face").unwrap();
    assert_eq!(
        (s.instance_prompt().as_str(), s.class_prompt().as_str()),
        ("sks cat face", "cat face")
    );
    check_prompts(&s.instance_prompt(), &s.class_prompt(), &s.identifier).unwrap();
    for e in set.instances("cat-face", 4, 32, 0).unwrap() {
        assert_eq!(e.caption, "sks cat face");
    }
    // The class: the other cat faces of the subcategory, in turn; not the subject, not the
    // animal-mammal "cat face" of another subcategory.
    let members = set.class_members("cat-face").unwrap();
    assert_eq!(
        members,
        [
            "cat face with tears of joy",
            "pouting cat face",
            "weary cat face"
        ]
    );
    let class = set.class_images("cat-face", 6, 32, 0).unwrap();
    let captions: Vec<&str> = class.iter().map(|e| e.caption.as_str()).collect();
    assert_eq!(captions[..3], members[..]);
    assert_eq!(captions[3..], members[..]);
    // Other subjects are never class images (the training set leaves them out too).
    for name in set.names() {
        let class = set.class_images(&name, 8, 32, 0).unwrap();
        for subject in set.subjects() {
            assert!(
                class.iter().all(|e| e.caption != subject.emoji),
                "{name}: {}",
                subject.emoji
            );
        }
        assert!(set.class_members(&name).unwrap().len() >= MIN_CLASS_MEMBERS);
    }
    let distractors = set.distractors("moon-face", 5, 32, 2).unwrap();
    let class = set.class_images("moon-face", 5, 32, 2).unwrap();
    assert!(distractors.iter().zip(&class).all(|(d, c)| *d == c.image));
}

#[test]
fn the_training_set_leaves_the_subjects_out_by_file() {
    let set = subjects();
    let all = Emoji::open_in(&fixture()).unwrap();
    let spec: DatasetSpec = format!("emoji:exclude={}", set.files().join(","))
        .parse()
        .unwrap();
    assert_eq!(
        spec.to_string(),
        "emoji:exclude=1f638.png,1f496.png,1f31d.png,1f607.png"
    );
    let assets = fixture().join("..");
    let kept = spec.open_with_assets(&assets).unwrap();
    assert_eq!(kept.len().unwrap() + 4, all.len().unwrap());
    let captions: Vec<String> = (0..kept.len().unwrap())
        .map(|i| kept.get(i).unwrap().caption)
        .collect();
    for s in set.subjects() {
        assert!(!captions.contains(&s.emoji), "{} kept", s.emoji);
        assert!(!(0..kept.len().unwrap()).any(|i| kept.id(i).unwrap().ends_with(&s.file)));
    }
    assert!(captions.contains(&"cat face with tears of joy".to_string()));
    // The table form, and "emoji" alone keeps every emoji and prints as before.
    let table: DatasetSpec =
        serde_json::from_str(r#"{"kind":"emoji","exclude":["1f638.png"]}"#).unwrap();
    assert_eq!(table.to_string(), "emoji:exclude=1f638.png");
    assert_eq!("emoji".parse::<DatasetSpec>().unwrap().to_string(), "emoji");
    let e = Emoji::open_excluding(&fixture(), &["9999.png".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"9999.png\"") && e.contains("not the image file"),
        "{e}"
    );
    let e = "emoji:include=1.png"
        .parse::<DatasetSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("no option \"include\""), "{e}");
}

#[test]
fn evaluation_prompts_keep_the_identifier_once_and_twins_name_the_class() {
    let set = subjects();
    for s in set.subjects() {
        let prompts = emoji_evaluation_prompts(s);
        assert_eq!(prompts.len(), SubjectDomain::Emoji.prompt_count());
        assert_eq!(set.prompts(&s.name).unwrap(), prompts);
        check_evaluation_prompts(&prompts, &s.identifier).unwrap();
        let distinct: HashSet<&str> = prompts.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(distinct.len(), 25);
        let mut groups: HashMap<PromptGroup, usize> = HashMap::new();
        for p in &prompts {
            *groups.entry(p.group).or_default() += 1;
            assert_eq!(
                prompt_words(&p.prompt)
                    .filter(|w| *w == s.identifier)
                    .count(),
                1
            );
            assert_eq!(
                p.class_prompt,
                p.prompt.replace(&s.instance_prompt(), &s.class_noun)
            );
        }
        let want = [
            (PromptGroup::Property, 5),
            (PromptGroup::Size, 4),
            (PromptGroup::Expression, 6),
            (PromptGroup::Accessory, 6),
            (PromptGroup::Relation, 4),
        ];
        assert_eq!(groups, want.into_iter().collect());
    }
    let s = set.get("sparkling-heart").unwrap();
    let prompts = emoji_evaluation_prompts(s);
    assert_eq!(prompts[1].prompt, "blue zwx heart");
    assert_eq!(prompts[1].class_prompt, "blue heart");
    assert_eq!(prompts[17].prompt, "zwx heart with tears of joy");
}

fn subject(name: &str, emoji: &str, file: &str, noun: &str, id: &str) -> EmojiSubject {
    EmojiSubject {
        name: name.into(),
        emoji: emoji.into(),
        file: file.into(),
        class_noun: noun.into(),
        identifier: id.into(),
    }
}

#[test]
fn bad_subjects_and_assets_are_refused_by_name() {
    let check = |subjects: Vec<EmojiSubject>, want: &[&str]| {
        let e = EmojiSubjects::new_in(&fixture(), subjects)
            .err()
            .unwrap()
            .to_string();
        assert!(want.iter().all(|w| e.contains(w)), "want {want:?}: {e}");
    };
    let cat = |id: &str| subject("cat", "pouting cat face", "1f63e.png", "cat face", id);
    check(vec![], &["subject list is empty"]);
    check(
        vec![subject("x", "purple cat", "1f63e.png", "cat", "sks")],
        &["\"x\"", "no emoji named \"purple cat\"", "emoji.json"],
    );
    check(
        vec![subject(
            "x",
            "pouting cat face",
            "1f640.png",
            "cat face",
            "sks",
        )],
        &["is file 1f63e.png, not 1f640.png"],
    );
    check(
        vec![subject("x", "pouting cat face", "1f63e.png", "dog", "sks")],
        &["class noun \"dog\" is not words"],
    );
    check(
        vec![subject("x", "red apple", "1f34e.png", "apple", "sks")],
        &["only 0 other emoji", "\"food-fruit\"", "\"apple\""],
    );
    check(vec![cat("face")], &["\"face\": is already a word"]);
    check(vec![cat("Sks")], &["lowercase"]);
    check(
        vec![
            cat("sks"),
            subject("dog", "weary cat face", "1f640.png", "cat face", "sks"),
        ],
        &["\"dog\": repeats"],
    );
    // The other subjects leave the class too: with the weary cat a subject, the pouting one
    // has a class of two.
    let two = EmojiSubjects::new_in(
        &fixture(),
        vec![
            cat("sks"),
            subject("w", "weary cat face", "1f640.png", "cat face", "zwx"),
        ],
    )
    .unwrap();
    assert_eq!(two.class_members("cat").unwrap().len(), 2);
    let e = two.instances("lion", 2, 32, 0).unwrap_err().to_string();
    assert!(e.contains("\"lion\"") && e.contains("cat, w"), "{e}");
    let e = two.instances("cat", 0, 32, 0).unwrap_err().to_string();
    assert!(e.contains("image count"), "{e}");
    let missing = EmojiSubjects::standard_in(Path::new("no/such/emoji"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        missing.contains("emoji") && missing.contains("no/such/emoji"),
        "{missing}"
    );
}

#[test]
fn renders_are_pinned() {
    // Trained subjects and cached class images depend on these bytes never changing silently.
    use sha2::{Digest, Sha256};
    let set = subjects();
    let mut hasher = Sha256::new();
    for name in set.names() {
        let examples = [
            set.instances(&name, 2, 32, 0).unwrap(),
            set.class_images(&name, 2, 32, 0).unwrap(),
        ];
        for e in examples.iter().flatten() {
            hasher.update(e.image.as_bytes());
            hasher.update(e.caption.as_bytes());
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "45c3fe61c22473aacdc0478f242026acb4dcb15811ea0eef000ce3a927606228"
    );
}

fn real_asset() -> Option<PathBuf> {
    let dir = assets_dir().join("emoji");
    if dir.join(".complete").exists() {
        return Some(dir);
    }
    eprintln!(
        "skipping: the emoji asset is not in {} (run tools/fetch-assets.sh emoji)",
        dir.display()
    );
    None
}

#[test]
fn the_standard_subjects_resolve_in_the_real_asset_and_prompts_use_its_words() {
    let Some(dir) = real_asset() else { return };
    let set = EmojiSubjects::standard_in(&dir).unwrap();
    assert_eq!(set.subjects().len(), standard_emoji_subjects().len());
    let excluded = set.files();
    let training = Emoji::open_excluding(&dir, &excluded).unwrap();
    let captions: Vec<String> = (0..training.len().unwrap())
        .map(|i| training.get(i).unwrap().caption)
        .collect();
    let words: HashSet<String> = captions
        .iter()
        .flat_map(|c| prompt_words(c).collect::<Vec<_>>())
        .collect();
    for s in set.subjects() {
        assert!(
            !captions.contains(&s.emoji),
            "{} is still a training caption",
            s.emoji
        );
        let members = set.class_members(&s.name).unwrap();
        assert!(members.len() >= 3, "{}: class {members:?}", s.name);
        let texts = emoji_evaluation_prompts(s)
            .into_iter()
            .flat_map(|p| [p.prompt, p.class_prompt]);
        for text in texts.chain([s.instance_prompt(), s.class_prompt()]) {
            for w in prompt_words(&text).filter(|w| *w != s.identifier) {
                assert!(
                    words.contains(&w),
                    "{w:?} of {text:?} is no word of the training captions"
                );
            }
        }
        for w in EMOJI_SWAPS.iter().flat_map(|g| g.iter()) {
            assert!(
                words.contains(*w),
                "swap word {w:?} is no word of the training captions"
            );
        }
        // The class noun is a caption the base model trains on words of, many times over.
        let uses = captions
            .iter()
            .filter(|c| c.contains(&s.class_noun))
            .count();
        assert!(
            uses >= 3,
            "{}: class noun {:?} in {uses} captions",
            s.name,
            s.class_noun
        );
    }
    write_grid(&set);
}

/// With `LDMSCALE_EMOJI_GRID=FILE.png`, a grid to look at: per subject, 5 instances, 3
/// held-out renders and 4 class images at 64 px.
fn write_grid(set: &EmojiSubjects) {
    let Some(path) = std::env::var_os("LDMSCALE_EMOJI_GRID") else {
        return;
    };
    let mut chw = Vec::new();
    let names = set.names();
    for name in &names {
        let rows = [
            set.instances(name, 5, 64, 0).unwrap(),
            set.held_out(name, 3, 64, 0).unwrap(),
            set.class_images(name, 4, 64, 0).unwrap(),
        ];
        for e in rows.iter().flatten() {
            chw.extend(e.image.to_chw_f32());
        }
    }
    let grid = Image::grid_from_nchw(&chw, names.len() * 12, 64, 12, 2, 4).unwrap();
    std::fs::write(path, grid.to_png()).unwrap();
}
