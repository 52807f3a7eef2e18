//! A stage of the study: a named step whose result depends on a fingerprint of its inputs,
//! can be loaded when stored, and otherwise is computed. [`StudyContext::ensure`] is the one
//! place that decides between the two.
//!
//! [`StudyContext::ensure`]: crate::context::StudyContext::ensure

use crate::context::StudyContext;
use crate::error::StudyError;
use crate::fingerprint::Fingerprint;

/// One step of the study. A stage value holds the results of the stages it consumes.
pub trait Stage {
    /// What the stage produces.
    type Output;
    /// The stage's name, as `--only` and the logs spell it (one of [`STAGES`]).
    ///
    /// [`STAGES`]: crate::context::STAGES
    const NAME: &'static str;

    /// What the result depends on; a stored result with another fingerprint is recomputed.
    fn fingerprint(&self, cx: &StudyContext) -> Fingerprint;

    /// The stored result, if it is complete (`None`: compute it).
    fn load(&self, cx: &StudyContext) -> Result<Option<Self::Output>, StudyError>;

    /// Computes (or finishes) the result and stores it.
    fn run(&self, cx: &StudyContext) -> Result<Self::Output, StudyError>;
}

/// What a stage will cost and need, for `--dry-run`.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    /// Lines describing the work.
    pub lines: Vec<String>,
    /// Training compute, GFLOPs.
    pub train_gflops: f64,
    /// Sampling compute, GFLOPs.
    pub sample_gflops: f64,
    /// Inputs that are missing.
    pub problems: Vec<String>,
}
