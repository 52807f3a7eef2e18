//! The study: sweeps of model size x sampler x steps x guidance as typed stages, a results
//! store, the paper's analysis and findings, plots, a report, and a budget planner.

pub mod analysis;
pub mod bootstrap;
pub mod cell;
pub mod config;
pub mod context;
pub mod distill;
pub mod dreambooth;
pub mod dry_run;
pub mod error;
pub mod findings;
pub mod fingerprint;
pub mod grid;
pub mod in_domain;
pub mod latents;
pub mod pairing;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod report;
pub mod scaling_law;
pub mod separation;
pub mod stage;
pub mod stages;
pub mod store;
pub mod super_res;

pub use cell::{Cell, CellKey, Variant};
pub use context::{RunOptions, StudyContext};
pub use error::StudyError;
pub use stage::Stage;
pub use store::Store;
