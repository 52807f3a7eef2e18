//! DreamBooth subjects and prompts: deterministic, varied renders that always show the subject's
//! pattern; prompts in the `shapes` grammar with the identifier, twins without it; bad input
//! refused by name.

use std::collections::{BTreeSet, HashMap, HashSet};

use ldmscale_data::dreambooth::{MAX_RENDERS, prompt_words};
use ldmscale_data::shapes::ShapeKind;
use ldmscale_data::{
    EvalPrompt, Pattern, PromptGroup, Shapes, ShapesConfig, Subject, SubjectSet,
    caption_vocabulary, check_evaluation_prompts, check_identifier, check_prompts, class_twin,
    evaluation_prompts, load_instance_dir,
};

fn shapes_captions(n: usize) -> Vec<String> {
    let shapes = Shapes::new(ShapesConfig::default()).unwrap();
    (0..n).map(|i| shapes.scene(i).caption()).collect()
}

fn names(set: &SubjectSet) -> Vec<String> {
    set.subjects().iter().map(|s| s.name.clone()).collect()
}

#[test]
fn renders_are_byte_identical_on_rerun_and_move_with_the_seed() {
    let (a, b) = (SubjectSet::standard(), SubjectSet::standard());
    for name in names(&a) {
        assert_eq!(
            a.instances(&name, 5, 64, 3).unwrap(),
            b.instances(&name, 5, 64, 3).unwrap()
        );
        assert_eq!(
            a.held_out(&name, 4, 64, 3).unwrap(),
            b.held_out(&name, 4, 64, 3).unwrap()
        );
        assert_eq!(
            a.class_images(&name, 4, 64, 3).unwrap(),
            b.class_images(&name, 4, 64, 3).unwrap()
        );
        let (s3, s4) = (
            a.instances(&name, 5, 64, 3).unwrap(),
            a.instances(&name, 5, 64, 4).unwrap(),
        );
        assert!(
            s3.iter().zip(&s4).all(|(x, y)| x.image != y.image),
            "{name}: seed ignored"
        );
    }
}

#[test]
fn instances_vary_and_held_out_renders_are_new() {
    let set = SubjectSet::standard();
    for name in names(&set) {
        let instances = set.instances(&name, 6, 64, 0).unwrap();
        let held = set.held_out(&name, 20, 64, 0).unwrap();
        let distinct: HashSet<&[u8]> = instances
            .iter()
            .chain(&held)
            .map(|e| e.image.as_bytes())
            .collect();
        assert_eq!(distinct.len(), 26, "{name}: repeated renders");
        // Size and place vary: the subject's pixel count differs between every two instances.
        let areas: HashSet<usize> = instances.iter().map(|e| non_background(&e.image)).collect();
        assert_eq!(areas.len(), 6, "{name}: areas {areas:?}");
        let backgrounds: HashSet<&str> = instances
            .iter()
            .chain(&held)
            .map(|e| e.caption.rsplit(" on a ").next().unwrap())
            .collect();
        assert!(
            backgrounds.len() >= 3,
            "{name}: backgrounds {backgrounds:?}"
        );
    }
}

/// Pixels that differ from the corner pixel (renders keep a margin, so corners are background).
fn non_background(image: &ldmscale_data::Image) -> usize {
    let corner = image.pixel(0, 0);
    let bytes = image.as_bytes();
    bytes.chunks_exact(3).filter(|p| *p != corner).count()
}

#[test]
fn every_render_shows_its_subjects_pattern_and_plain_shapes_do_not() {
    let set = SubjectSet::standard();
    for subject in set.subjects() {
        // Exact pattern colours cover at least 1 of 256 pixels at 32 px (the quick study's
        // side; dots are the finest), 1 of 200 at 64 px and above.
        for (resolution, floor) in [(32, 1.0 / 256.0), (64, 0.005), (256, 0.005)] {
            let renders = [
                set.instances(&subject.name, 6, resolution, 1).unwrap(),
                set.held_out(&subject.name, 30, resolution, 1).unwrap(),
            ];
            for e in renders.iter().flatten() {
                let share = subject.pattern_share(&e.image);
                assert!(share >= floor, "{} at {resolution} px: share {share}", e.id);
            }
            for e in set.class_images(&subject.name, 30, resolution, 1).unwrap() {
                assert_eq!(subject.pattern_share(&e.image), 0.0, "{}", e.id);
            }
        }
        // The pattern is the subject's own: no other subject's colours appear in its renders.
        for other in set.subjects().iter().filter(|o| o.name != subject.name) {
            for e in set.instances(&subject.name, 6, 64, 1).unwrap() {
                assert_eq!(
                    other.pattern_share(&e.image),
                    0.0,
                    "{} in {}",
                    other.name,
                    e.id
                );
            }
        }
    }
}

#[test]
fn patterns_use_both_colours_in_their_arrangement() {
    let mut coverage: HashMap<(usize, usize), usize> = HashMap::new();
    for (p, pattern) in [
        Pattern::Stripes,
        Pattern::Checker,
        Pattern::Dots,
        Pattern::TwoTone,
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..400 {
            let (dx, dy) = ((i % 20) as f64 / 10.0 - 1.0, (i / 20) as f64 / 10.0 - 1.0);
            *coverage
                .entry((p, pattern.colour_index(dx, dy)))
                .or_default() += 1;
        }
    }
    for p in 0..4 {
        let (a, b) = (coverage[&(p, 0)], coverage[&(p, 1)]);
        assert!(a > 80 && b > 80, "pattern {p}: {a} vs {b}");
    }
    assert_eq!(Pattern::TwoTone.colour_index(-0.5, 0.3), 0);
    assert_eq!(Pattern::TwoTone.colour_index(0.5, 0.3), 1);
}

#[test]
fn captions_and_prompts_stay_in_the_shapes_grammar() {
    let vocabulary = caption_vocabulary();
    for caption in shapes_captions(3000) {
        for w in prompt_words(&caption) {
            assert!(vocabulary.contains(w.as_str()), "{w:?} of {caption:?}");
        }
    }
    let set = SubjectSet::standard();
    for s in set.subjects() {
        let renders = [
            set.instances(&s.name, 4, 32, 0).unwrap(),
            set.class_images(&s.name, 4, 32, 0).unwrap(),
        ];
        let texts = renders.iter().flatten().map(|e| e.caption.clone());
        let prompts = evaluation_prompts(s)
            .into_iter()
            .flat_map(|p| [p.prompt, p.class_prompt]);
        for text in texts.chain(prompts) {
            for w in prompt_words(&text).filter(|w| *w != s.identifier) {
                assert!(vocabulary.contains(w.as_str()), "{w:?} of {text:?}");
            }
        }
    }
}

#[test]
fn evaluation_prompts_carry_the_identifier_and_their_twins_do_not() {
    let set = SubjectSet::standard();
    for s in set.subjects() {
        let prompts = evaluation_prompts(s);
        assert_eq!(prompts.len(), 25);
        check_evaluation_prompts(&prompts, &s.identifier).unwrap();
        let distinct: HashSet<&str> = prompts.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(distinct.len(), 25, "{}: repeated prompts", s.name);
        let mut groups: HashMap<PromptGroup, usize> = HashMap::new();
        for p in &prompts {
            *groups.entry(p.group).or_default() += 1;
            let ids = prompt_words(&p.prompt)
                .filter(|w| *w == s.identifier)
                .count();
            assert_eq!(ids, 1, "{:?}", p.prompt);
            assert!(!prompt_words(&p.class_prompt).any(|w| w == s.identifier));
            // The twin names the class where the prompt names the subject.
            let subject_phrase = format!("{} {}", s.identifier, s.class_noun());
            let plural_phrase = format!("{} {}", s.identifier, s.kind.plural());
            let expected = p
                .prompt
                .replace(&subject_phrase, s.class_noun())
                .replace(&plural_phrase, s.kind.plural());
            assert_eq!(p.class_prompt, expected);
        }
        let want = [
            (PromptGroup::Place, 5),
            (PromptGroup::Background, 4),
            (PromptGroup::Relation, 5),
            (PromptGroup::Count, 3),
            (PromptGroup::Size, 3),
            (PromptGroup::Property, 5),
        ];
        assert_eq!(groups, want.into_iter().collect(), "{}", s.name);
    }
}

#[test]
fn instance_and_class_prompts_follow_diffusers() {
    let set = SubjectSet::standard();
    let s = set.get("striped-circle").unwrap();
    assert_eq!(set.identifier_for("striped-circle").unwrap(), "sks");
    assert_eq!(s.instance_prompt(), "a sks circle");
    assert_eq!(s.class_prompt(), "a circle");
    assert_eq!(class_twin(&s.instance_prompt(), "sks"), s.class_prompt());
    for s in set.subjects() {
        check_prompts(&s.instance_prompt(), &s.class_prompt(), &s.identifier).unwrap();
        assert_eq!(
            s.kind,
            ShapeKind::ALL
                .into_iter()
                .find(|k| k.name() == s.class_noun())
                .unwrap()
        );
    }
    let ids: BTreeSet<&str> = set
        .subjects()
        .iter()
        .map(|s| s.identifier.as_str())
        .collect();
    assert_eq!(ids.len(), set.subjects().len());
}

fn message(e: ldmscale_data::DataError) -> String {
    e.to_string()
}

#[test]
fn identifiers_that_captions_use_are_refused_by_name() {
    let captions = shapes_captions(2000);
    for s in SubjectSet::standard().subjects() {
        check_identifier(&s.identifier, &captions).unwrap();
    }
    for word in ["red", "circle", "background", "left"] {
        let e = message(check_identifier(word, &captions).unwrap_err());
        assert!(
            e.contains(&format!("{word:?}")) && e.contains("already a word"),
            "{e}"
        );
    }
    for word in ["", "Sks", "s-k", "two words", "[UNK]"] {
        let e = message(check_identifier(word, &captions).unwrap_err());
        assert!(
            e.contains(&format!("{word:?}")) && e.contains("lowercase"),
            "{e}"
        );
    }
    // A user's own captions count too.
    let e = message(check_identifier("sks", &["a photo of sks"]).unwrap_err());
    assert!(e.contains("\"sks\"") && e.contains("1 uses"), "{e}");
}

#[test]
fn bad_prompt_pairs_are_refused() {
    let cases = [
        ("a sks circle", "a sks circle", "identical"),
        ("a sks circle", "A  sks circle", "identical"),
        ("", "a circle", "instance prompt \"\": is empty"),
        ("a sks circle", "  ", "class prompt \"  \": is empty"),
        ("a circle", "a square", "does not contain the identifier"),
        ("a sks circle", "a sks", "contains the identifier"),
    ];
    for (instance, class, want) in cases {
        let e = message(check_prompts(instance, class, "sks").unwrap_err());
        assert!(e.contains(want), "{instance:?} / {class:?}: {e}");
    }
}

#[test]
fn bad_evaluation_prompt_lists_are_refused() {
    let e = message(check_evaluation_prompts(&[], "sks").unwrap_err());
    assert!(
        e.contains("evaluation prompts") && e.contains("empty"),
        "{e}"
    );
    let no_id = EvalPrompt {
        group: PromptGroup::Place,
        prompt: "a circle in the center on a white background".into(),
        class_prompt: "a circle in the center on a white background".into(),
    };
    let e = message(check_evaluation_prompts(&[no_id], "sks").unwrap_err());
    assert!(
        e.contains("a circle in the center") && e.contains("identifier"),
        "{e}"
    );
    let twin_with_id = EvalPrompt {
        group: PromptGroup::Place,
        prompt: "a sks circle".into(),
        class_prompt: "a sks circle".into(),
    };
    assert!(check_evaluation_prompts(&[twin_with_id], "sks").is_err());
}

fn subject(name: &str, identifier: &str, colours: [[u8; 3]; 2]) -> Subject {
    Subject {
        name: name.into(),
        kind: ShapeKind::Star,
        pattern: Pattern::Checker,
        colours,
        identifier: identifier.into(),
    }
}

#[test]
fn bad_subject_sets_and_render_requests_are_refused() {
    let ok = [[1, 2, 3], [4, 5, 6]];
    let check = |subjects: Vec<Subject>, want: &str| {
        let e = message(SubjectSet::new(subjects).unwrap_err());
        assert!(e.contains(want), "want {want:?}: {e}");
    };
    check(vec![], "subject list is empty");
    check(vec![subject("a", "red", ok)], "\"red\": is already a word");
    check(
        vec![subject("a", "sks", ok), subject("b", "sks", ok)],
        "\"b\": repeats",
    );
    check(
        vec![subject("a", "sks", [[1, 2, 3], [1, 2, 3]])],
        "colours are equal",
    );
    check(
        vec![subject("a", "sks", [[1, 2, 3], [230, 25, 25]])],
        "caption colour \"red\"",
    );
    check(vec![subject(" ", "sks", ok)], "name is empty");
    let set = SubjectSet::new(vec![subject("starry", "vxq", ok)]).unwrap();
    assert_eq!(set.instances("starry", 2, 32, 0).unwrap().len(), 2);
    let e = message(set.instances("moon", 4, 64, 0).unwrap_err());
    assert!(e.contains("\"moon\"") && e.contains("starry"), "{e}");
    let e = message(set.instances("starry", 0, 64, 0).unwrap_err());
    assert!(
        e.contains("image count") && e.contains(&MAX_RENDERS.to_string()),
        "{e}"
    );
    let e = message(set.held_out("starry", 4, 8, 0).unwrap_err());
    assert!(e.contains("resolution \"8\""), "{e}");
}

#[test]
fn instance_folders_load_sorted_and_an_empty_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = message(load_instance_dir(dir.path(), "a sks circle").unwrap_err());
    assert!(
        e.contains(&dir.path().display().to_string()) && e.contains("no images"),
        "{e}"
    );
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    assert!(load_instance_dir(dir.path(), "a sks circle").is_err());
    let set = SubjectSet::standard();
    let renders = set.instances("dotted-hexagon", 2, 32, 0).unwrap();
    for (name, e) in ["b.png", "a.png"].iter().zip(&renders) {
        std::fs::write(dir.path().join(name), e.image.to_png()).unwrap();
    }
    let loaded = load_instance_dir(dir.path(), "a qlv hexagon").unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded[0].id.ends_with("a.png") && loaded[1].id.ends_with("b.png"));
    assert_eq!(loaded[0].image, renders[1].image);
    assert!(loaded.iter().all(|e| e.caption == "a qlv hexagon"));
    let missing = dir.path().join("absent");
    let e = message(load_instance_dir(&missing, "a sks circle").unwrap_err());
    assert!(e.contains("absent"), "{e}");
}

#[test]
fn renders_are_pinned() {
    // Cached class images and trained subjects depend on these bytes never changing silently.
    use sha2::{Digest, Sha256};
    let set = SubjectSet::standard();
    let mut hasher = Sha256::new();
    for s in set.subjects() {
        for e in set.instances(&s.name, 2, 32, 0).unwrap() {
            hasher.update(e.image.as_bytes());
            hasher.update(e.caption.as_bytes());
        }
        for e in set.class_images(&s.name, 2, 32, 0).unwrap() {
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
        "b85c0cd36313908c53e84a1dfb07aec02c5628dcb16a31c09a3c0ce0158d7060"
    );
}
