//! The whole study end to end on the `tiny` preset: data, first stage, text encoder, a family of
//! two widths, a sweep, evaluation, analysis and the report; then a resume that recomputes
//! nothing, a grid change that reuses everything before the sweep, and the adoption of a
//! directory written before per-stage fingerprints.

use std::path::Path;
use std::time::SystemTime;

use burn::tensor::Device;
use ldmscale_study::bootstrap::CiMethod;
use ldmscale_study::config::{DistillMethod, StudyConfig};
use ldmscale_study::plan::{Budget, recommend};
use ldmscale_study::stages::adaptive;
use ldmscale_study::{Cell, RunOptions, Store, StudyError, Variant, pipeline};

/// The sweep's cells (the text-to-image base models).
fn cells(out: &Path) -> Vec<Cell> {
    all_cells(out)
        .into_iter()
        .filter(|c| c.variant == Variant::Base)
        .collect()
}

fn all_cells(out: &Path) -> Vec<Cell> {
    Store::open(&out.join("results.sqlite"))
        .unwrap()
        .cells()
        .unwrap()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Files whose modification time says whether a stage ran again.
fn stage_files(config: &StudyConfig, out: &Path) -> Vec<(String, SystemTime)> {
    let mut files = vec![
        "first_stage/diffusion_pytorch_model.safetensors".to_string(),
        "text_encoder/model.safetensors".into(),
        "latents/train/manifest.json".into(),
    ];
    for w in &config.widths {
        files.push(format!(
            "models/w{w}/unet_ema/diffusion_pytorch_model.safetensors"
        ));
        files.push(format!(
            "super_res/w{w}/unet/diffusion_pytorch_model.safetensors"
        ));
    }
    files.push("super_res/eval/manifest.json".into());
    let distill = config.distill.as_ref().unwrap();
    for w in distill.distilled_widths(config) {
        for m in &distill.methods {
            files.push(format!(
                "distill/{m}/w{w}/unet/diffusion_pytorch_model.safetensors"
            ));
        }
    }
    let db = config.dreambooth.as_ref().unwrap();
    for w in db.finetuned_widths(config) {
        for kind in ["plain", "prior"] {
            files.push(format!(
                "dreambooth/{}/{kind}/w{w}/unet/diffusion_pytorch_model.safetensors",
                db.subjects[0]
            ));
        }
    }
    files
        .into_iter()
        .map(|f| (f.clone(), modified(&out.join(f))))
        .collect()
}

fn check_first_run(config: &StudyConfig, out: &Path, summary: &pipeline::Summary) {
    let expected = config.widths.len() * config.cells().len();
    assert_eq!(summary.cells, expected);
    let html = std::fs::read_to_string(summary.report.as_ref().unwrap()).unwrap();
    assert!(html.contains("The paper's findings on this run"));
    assert!(html.contains("<svg") && html.contains("data:image/png;base64,"));
    // The sweep kept its features, so the findings compare settings paired.
    assert!(html.contains("the paired 95% bootstrap interval of the difference"));
    let cells = cells(out);
    assert!(cells.iter().all(|c| c.fid.is_finite() && c.fid >= 0.0));
    // Every cell has its bootstrap interval around its FID.
    for c in &cells {
        let ci = c.fid_ci.expect("bootstrap interval");
        assert_eq!(ci.method, CiMethod::Bootstrap);
        assert_eq!(ci.replicates, config.sweep.bootstrap);
        assert!(
            ci.low <= c.fid && c.fid <= ci.high && ci.low < ci.high,
            "{c:?}"
        );
    }
    assert!(out.join("latents/train/manifest.json").is_file());
    // The equal-cost grid: one labelled row per width, as an inline PNG.
    assert!(html.contains("Samples at equal sampling cost (Fig. 10)"));
    for w in &config.widths {
        assert!(
            html.contains(&format!("<b>{w} filters</b>")),
            "grid row of width {w}"
        );
    }
    assert!(html.contains("learning check"));
    // Guided cells cost twice the evaluations of unguided ones at the same steps.
    for c in &cells {
        let per_step = if c.cfg > 1.0 { 2 } else { 1 };
        assert_eq!(c.evaluations, per_step * c.steps as u64, "{c:?}");
    }
    // The models learned something: the largest model's best FID beats its worst setting.
    let largest = *config.widths.iter().max().unwrap() as u32;
    let mine: Vec<_> = cells.iter().filter(|c| c.width == largest).collect();
    let best = mine.iter().map(|c| c.fid).fold(f64::MAX, f64::min);
    let worst = mine.iter().map(|c| c.fid).fold(0.0, f64::max);
    assert!(best < worst, "best {best} worst {worst}");
    let rec = recommend(&all_cells(out), Budget::Gflops(1e9)).unwrap();
    assert!(config.widths.contains(&(rec.best.width as usize)));
    check_super_res(config, out, &html);
    check_distill(config, out, &html);
    check_guided(config, out, &html);
    check_dreambooth(config, out, &html);
    check_adaptive(config, out, &html);
}

/// Adaptive sampling: the cells it measured again carry their round and the larger sample
/// count, within the section's caps; the others keep the sweep's.
fn check_adaptive(config: &StudyConfig, out: &Path, html: &str) {
    let a = config.sweep.adaptive.as_ref().unwrap();
    let base = config.sweep.samples_per_cell;
    let mut refined = 0;
    for c in cells(out) {
        match c.metrics.iter().find(|m| m.name == adaptive::ROUND) {
            Some(round) => {
                refined += 1;
                let expected = a.samples(base, round.value as u32, config.val_examples);
                assert_eq!(c.n_samples, expected, "{c:?}");
                assert!(c.n_samples > base, "{c:?}");
            }
            None => assert_eq!(c.n_samples, base, "{c:?}"),
        }
    }
    assert!(refined <= (a.rounds * a.max_cells_per_round) as usize);
    // The budget table says at what sample size each winner was (un)decided.
    assert!(
        html.contains(" samples</td></tr>"),
        "no sample size in the budget table"
    );
}

/// One subject on one width, without and with the prior: a cell each with every metric, class
/// images made by the base once, Fig. 6, and the section and finding in the report.
fn check_dreambooth(config: &StudyConfig, out: &Path, html: &str) {
    let d = config.dreambooth.as_ref().unwrap();
    let cells: Vec<Cell> = all_cells(out)
        .into_iter()
        .filter(|c| matches!(c.variant, Variant::DreamBooth { .. }))
        .collect();
    assert_eq!(
        cells.len(),
        2,
        "tiny: one width, without and with the prior"
    );
    let names = [
        "db-subject-fidelity",
        "db-feature-cosine",
        "db-clip-i",
        "db-clip-t",
        "db-prompt-accuracy",
        "db-pres",
        "db-language-drift",
        "db-div",
        "db-finetune-cost",
        "db-classifier-accuracy",
        "db-dino",
        "db-clip-i-real",
        "db-clip-t-real",
    ];
    for c in &cells {
        assert_eq!(
            c.n_samples as usize,
            d.prompts * d.samples_per_prompt,
            "{c:?}"
        );
        for name in names {
            let m = c.metrics.iter().find(|m| m.name == name);
            assert!(m.is_some_and(|m| m.value.is_finite()), "{name} of {c:?}");
        }
        let value = |name: &str| c.metrics.iter().find(|m| m.name == name).unwrap().value;
        assert!((0.0..=1.0).contains(&value("db-subject-fidelity")));
        assert!(value("db-classifier-accuracy") >= 0.95);
        assert!(value("db-finetune-cost") > 0.0);
        let fidelity = c
            .metrics
            .iter()
            .find(|m| m.name == "db-subject-fidelity")
            .unwrap();
        let ci = fidelity.ci.expect("an interval");
        assert!(ci.low <= fidelity.value && fidelity.value <= ci.high);
    }
    let class = out.join(format!(
        "dreambooth/{}/class/w{}",
        d.subjects[0], d.widths[0]
    ));
    let pngs = std::fs::read_dir(&class).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "png")
    });
    assert_eq!(pngs.count(), d.class_images);
    assert!(out.join("dreambooth/fig6.png").is_file());
    // One width: nothing to pair, but the file is there for the resumed run to read.
    let paired = std::fs::read_to_string(out.join("dreambooth/paired.json")).unwrap();
    assert_eq!(paired.trim(), "[]");
    assert!(html.contains("DreamBooth (Sec. 3.2, Fig. 6)"));
    for column in [">DINO</th>", ">CLIP-I (CLIP)</th>", ">CLIP-T (CLIP)</th>"] {
        assert!(html.contains(column), "reference column {column}");
    }
    assert!(
        html.contains("<span>instance images</span>"),
        "Fig. 6 row labels"
    );
    let claim = html
        .split("DreamBooth quality scales with model size")
        .nth(1)
        .unwrap();
    assert!(claim[..claim.find("</div>").unwrap()].contains("fewer than two widths"));
}

/// The distilled width's students, each method sampled over the guidance grid at 4 steps with
/// its own evaluation count, and the section in the report.
fn check_distill(config: &StudyConfig, out: &Path, html: &str) {
    let d = config.distill.as_ref().unwrap();
    let students: Vec<Cell> = all_cells(out)
        .into_iter()
        .filter(|c| matches!(c.variant, Variant::Distilled { .. }))
        .collect();
    let widths = d.distilled_widths(config);
    assert_eq!(widths.len(), 1, "tiny distils one width");
    let grid = config.sweep.cfg.len() * config.sweep.seeds.len();
    assert_eq!(students.len(), d.methods.len() * grid);
    for c in &students {
        let Variant::Distilled { method, steps } = c.variant else {
            unreachable!()
        };
        assert_eq!((c.sampler, c.steps, steps), (method.sampler(), 4, d.steps));
        let per_step = match method {
            DistillMethod::Lcm => 1,
            DistillMethod::Codi if c.cfg > 1.0 => 2,
            DistillMethod::Codi => 1,
        };
        assert_eq!(c.evaluations, per_step * 4, "{c:?}");
        assert!(c.fid.is_finite() && c.fid_ci.is_some(), "{c:?}");
        let cost = c.metrics.iter().find(|m| m.name == "distill_cost");
        assert!(cost.is_some_and(|m| m.value > 0.0), "{c:?}");
    }
    // The teachers at the students' steps, as base cells.
    let teachers = cells(out)
        .into_iter()
        .filter(|c| c.steps == 4 && c.sampler == d.teacher_sampler)
        .count();
    assert_eq!(teachers, grid * widths.len());
    let lcm =
        std::fs::read_to_string(out.join(format!("distill/lcm/w{}/unet/config.json", widths[0])));
    assert!(lcm.unwrap().contains("time_cond_proj_dim"));
    assert!(html.contains("Distillation (Sec. 3.6, Fig. 13)"));
    assert!(html.contains("FID at 4 steps, undistilled vs distilled"));
    assert!(html.contains("LCM 1, CoDi and CFG 2 evaluations per step"));
    // One width: the scaling-trend claim cannot be measured, and says so.
    let trend = html
        .split("does not change the scaling trends")
        .nth(1)
        .unwrap();
    assert!(trend[..trend.find("</div>").unwrap()].contains("fewer than two widths"));
}

/// Every width finetuned, every snapshot measured without guidance on the frozen set, and the
/// section in the report.
fn check_super_res(config: &StudyConfig, out: &Path, html: &str) {
    let sr = config.super_res.as_ref().unwrap();
    let sr_cells: Vec<Cell> = all_cells(out)
        .into_iter()
        .filter(|c| matches!(c.variant, Variant::SuperRes { .. }))
        .collect();
    let per_model = sr.samplers.len() * sr.sample_steps.len();
    assert_eq!(
        sr_cells.len(),
        config.widths.len() * sr.evaluated_steps().len() * per_model
    );
    for c in &sr_cells {
        assert!(c.fid.is_finite() && c.fid_ci.is_some(), "{c:?}");
        assert_eq!((c.cfg, c.evaluations), (1.0, c.steps as u64), "{c:?}");
        assert_eq!(c.n_samples as usize, sr.eval_pairs);
        for name in ["psnr", "ssim", "in_domain_perceptual", "finetune_cost"] {
            let m = c.metrics.iter().find(|m| m.name == name);
            assert!(m.is_some_and(|m| m.value.is_finite()), "{name} of {c:?}");
        }
    }
    // Finetune compute grows with the snapshot's steps.
    let cost = |steps: u64| {
        let c = sr_cells.iter().find(|c| {
            c.variant
                == Variant::SuperRes {
                    finetune_steps: steps,
                }
                && c.width == 8
        });
        c.unwrap()
            .metrics
            .iter()
            .find(|m| m.name == "finetune_cost")
            .unwrap()
            .value
    };
    let steps = sr.evaluated_steps();
    assert!(cost(steps[0]) < cost(*steps.last().unwrap()));
    // The SR cells kept their features, and their HR reference set too: paired findings.
    let store = Store::open_read_only(&out.join("results.sqlite")).unwrap();
    assert!(
        store
            .variant_reference_features("super-res")
            .unwrap()
            .is_some()
    );
    assert!(store.cell_features(&sr_cells[0].key()).unwrap().is_some());
    let sec32 = html.split("Sec. 3.2, Fig. 4").nth(1).unwrap();
    assert!(
        sec32[..sec32.find("</div>").unwrap()].contains("paired"),
        "{sec32}"
    );
    assert!(out.join("super_res/fig5.png").is_file());
    assert_eq!(
        std::fs::read_dir(out.join("super_res/eval/lr"))
            .unwrap()
            .count(),
        sr.eval_pairs
    );
    assert!(html.contains("Super-resolution (Secs. 3.2, 3.5)"));
    assert!(html.contains("Sec. 3.5, Fig. 12") && html.contains("Sec. 3.2, Fig. 4"));
    assert!(html.contains("not LPIPS"));
}

#[test]
fn tiny_study_runs_end_to_end_resumes_and_recomputes_only_what_changed() {
    let mut config = StudyConfig::preset("tiny").unwrap();
    // The reference DINO and CLIP (random-weight parity fixtures) add the paper's metrics.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval");
    let d = config.dreambooth.as_mut().unwrap();
    d.dino = Some(fixtures.join("dino/vit_s_like"));
    d.clip = Some(fixtures.join("clip/vit_b32_like"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let device = Device::flex();
    let run = |c: &StudyConfig| pipeline::run(c, out, &device, &RunOptions::default()).unwrap();
    let summary = run(&config);
    check_first_run(&config, out, &summary);
    let stored = stage_files(&config, out);
    let first_cells = cells(out);

    let again = run(&config);
    assert_eq!(
        stage_files(&config, out),
        stored,
        "the resumed study recomputed a stored stage"
    );
    assert_eq!(again.cells, summary.cells);
    assert!(
        again.seconds < summary.seconds,
        "resume recomputed: {} vs {}",
        again.seconds,
        summary.seconds
    );

    // A new guidance rate in the grid: the first stage, the latent cache and the family are
    // reused, the stored cells kept as they were, and only the new cells measured.
    let mut wider = config.clone();
    wider.sweep.cfg.push(2.0);
    let grown = run(&wider);
    assert_eq!(
        stage_files(&wider, out),
        stored,
        "a grid change recomputed a stage before the sweep"
    );
    assert_eq!(grown.cells, config.widths.len() * wider.cells().len());
    let now = cells(out);
    for old in &first_cells {
        assert!(now.contains(old), "cell {:?} was measured again", old.key());
    }

    // A directory of the release before per-stage fingerprints: no manifest, no fingerprint
    // files, no fingerprints in the store. It is adopted and nothing is recomputed.
    std::fs::remove_file(out.join("stages.json")).unwrap();
    for w in &config.widths {
        std::fs::remove_file(out.join(format!("models/w{w}/fingerprint"))).unwrap();
    }
    let conn = rusqlite::Connection::open(out.join("results.sqlite")).unwrap();
    // (Super-resolution came after per-stage fingerprints: a legacy store has base cells only.)
    conn.execute("DELETE FROM meta WHERE key LIKE 'fingerprint:base:%'", [])
        .unwrap();
    drop(conn);
    let adopted = run(&wider);
    assert_eq!(
        stage_files(&wider, out),
        stored,
        "the adopted directory was recomputed"
    );
    assert_eq!(cells(out), now);
    assert_eq!(adopted.cells, grown.cells);
}

#[test]
fn only_runs_the_named_stages_and_refuses_missing_ones() {
    let mut config = StudyConfig::preset("tiny").unwrap();
    config.widths = vec![8];
    config.recipe.steps = 4;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let only = |names: &[&str]| RunOptions {
        shard: None,
        only: Some(names.iter().map(|s| s.to_string()).collect()),
    };
    let err = pipeline::run(&config, dir.path(), &device, &only(&["family"])).unwrap_err();
    assert!(matches!(err, StudyError::NotRun { stage: "data" }), "{err}");
    let done = pipeline::run(
        &config,
        dir.path(),
        &device,
        &only(&["data", "first-stage"]),
    )
    .unwrap();
    assert!(done.report.is_none() && done.cells == 0);
    assert!(dir.path().join("first_stage/config.json").is_file());
    assert!(
        !dir.path().join("latents").exists(),
        "--only ran a later stage"
    );
    let err = pipeline::run(&config, dir.path(), &device, &only(&["sweeep"])).unwrap_err();
    assert!(
        matches!(err, StudyError::UnknownStage(ref s) if s == "sweeep"),
        "{err}"
    );
}

/// The guided students (App. C): stage 1 and a round per halving, each student sampled at its
/// own steps over the guidance grid at 1 evaluation per step, beside the undistilled model.
fn check_guided(config: &StudyConfig, out: &Path, html: &str) {
    let g = config.distill.as_ref().unwrap().guided.as_ref().unwrap();
    let guided: Vec<Cell> = all_cells(out)
        .into_iter()
        .filter(|c| matches!(c.variant, Variant::Guided { .. }))
        .collect();
    let grid = config.sweep.cfg.len() * config.sweep.seeds.len();
    assert_eq!(guided.len(), g.students.len() * grid * g.widths.len());
    let cost = |c: &Cell| {
        c.metrics
            .iter()
            .find(|m| m.name == "distill_cost")
            .unwrap()
            .value
    };
    for c in &guided {
        assert!(g.students.contains(&c.steps), "{c:?}");
        assert_eq!(
            (c.sampler.as_str(), c.evaluations),
            ("guided-ddim", c.steps as u64)
        );
        assert!(
            c.fid.is_finite() && c.fid_ci.is_some() && cost(c) > 0.0,
            "{c:?}"
        );
    }
    // A later round's student carries every earlier run's compute.
    let at = |steps| guided.iter().find(|c| c.steps == steps).map(cost).unwrap();
    assert!(at(8) > at(16));
    for run in ["stage1", "s16", "s8"] {
        let unet = out.join(format!(
            "distill/guided/w{}/{run}/unet/config.json",
            g.widths[0]
        ));
        assert!(
            std::fs::read_to_string(unet)
                .unwrap()
                .contains("time_cond_proj_dim")
        );
    }
    let undistilled = cells(out)
        .into_iter()
        .filter(|c| c.steps == 16 && c.sampler.as_str() == "ddim")
        .count();
    assert_eq!(undistilled, grid * g.widths.len());
    let section = html.split("Guided distillation (App. C)").nth(1).unwrap();
    assert!(section.contains("<td>s16</td>") && section.contains("<td>s8</td>"));
    let verdict = "</table><p><b>NOT MEASURED</b>";
    assert!(section.contains(verdict), "one width decides nothing");
}
