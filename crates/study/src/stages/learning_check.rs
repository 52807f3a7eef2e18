//! Stage 9: whether the models learned: the largest width at 50 DDIM steps, trained against
//! the same width untrained.

use ldmscale_diffusion::SamplerId;
use ldmscale_model::UNet;
use ldmscale_model::init::seeded_init;
use ldmscale_model::weights::{load_unet, write_atomic};

use super::family::Family;
use super::grids::{self, DdimProbe};
use super::sweep;
use crate::analysis::{optimal_cfg, settings};
use crate::bootstrap::FidCi;
use crate::cell::Cell;
use crate::config::StudyConfig;
use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;
use crate::grid;
use crate::stage::Stage;

const FILE: &str = "learning-check.txt";
const STEPS: u32 = 50;

/// Compares the largest trained width with its untrained initialisation.
pub struct LearningCheckStage<'a> {
    /// The trained widths.
    pub family: &'a Family,
    /// The sweep's cells (the width's optimal guidance).
    pub cells: &'a [Cell],
    /// How samples are drawn.
    pub probe: DdimProbe<'a>,
}

/// What the check depends on.
pub fn fingerprint(config: &StudyConfig) -> Fingerprint {
    Fingerprint::of("learning-check", &sweep::fingerprint(config))
}

impl Stage for LearningCheckStage<'_> {
    type Output = String;
    const NAME: &'static str = "learning-check";

    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint {
        fingerprint(cx.config)
    }

    fn load(&self, cx: &StudyContext) -> Result<Option<String>, StudyError> {
        let text = std::fs::read_to_string(cx.path(grids::DIR).join(FILE)).ok();
        Ok(text.map(|t| t.trim().to_string()))
    }

    fn run(&self, cx: &StudyContext) -> Result<String, StudyError> {
        let Some((width, dir)) = self.family.models.iter().max_by_key(|(w, _)| *w) else {
            return Ok("no model trained".into());
        };
        tracing::info!("learning check: width {width}, trained and untrained, {STEPS} DDIM steps");
        let optimal = optimal_cfg(&settings(self.cells));
        let ddim = SamplerId::Ddim.as_str();
        let cfg = grid::optimal_guidance(&optimal, *width as u32, ddim, STEPS).unwrap_or(1.0);
        let (unet_config, trained) = load_unet(dir, &cx.device)?;
        // Seeded as training initialises it.
        let untrained = seeded_init(&cx.device, 0, || UNet::new(&unet_config, &cx.device));
        let (_, fid_trained, ci_trained) = self.probe.measure(cx, &trained, STEPS, cfg, 1)?;
        let (_, fid_untrained, ci_untrained) = self.probe.measure(cx, &untrained, STEPS, cfg, 2)?;
        let ci = |c: Option<FidCi>| c.map(|c| format!(" {}", c.text())).unwrap_or_default();
        let text = format!(
            "{width}-filter model, DDIM {STEPS} steps, guidance {cfg:.1}: FID {fid_trained:.2}{} after {} training steps vs {fid_untrained:.2}{} untrained (trained {:.0}% lower)",
            ci(ci_trained),
            cx.config.recipe.steps,
            ci(ci_untrained),
            100.0 * (1.0 - fid_trained / fid_untrained)
        );
        let dir = cx.path(grids::DIR);
        std::fs::create_dir_all(&dir).map_err(StudyError::io(&dir))?;
        write_atomic(&dir.join(FILE), format!("{text}\n").as_bytes())?;
        Ok(text)
    }
}
