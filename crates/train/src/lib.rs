//! Training text-to-image LDMs from scratch: one recipe for every width of a family, exact
//! resume, and training compute accounted as the paper does (normalised cost x iterations).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod ema;
pub mod optimizer;
pub mod parallel;
pub mod params;
pub mod trainer;

pub use checkpoint::TrainState;
pub use config::{Family, ModelConfig, Objective, TrainConfig};
pub use data::{SyntheticData, TrainingData};
pub use trainer::{EvalHook, RunSummary, train, train_with_hook};
