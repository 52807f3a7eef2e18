//! The study: sweeps of model size x sampler x steps x guidance, a results store, the paper's
//! analysis, plots, a report, and a budget planner.

pub mod analysis;
pub mod bootstrap;
pub mod cell;
pub mod config;
pub mod grid;
pub mod in_domain;
pub mod latents;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod report;
pub mod store;

pub use cell::{Cell, CellKey};
pub use store::Store;
