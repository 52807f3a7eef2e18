//! What every crate and binary of ldmscale shares below the models: stable hashing for seeds,
//! and the one log subscriber.

pub mod hash;
pub mod logging;
