//! What every crate and binary of ldmscale shares below the models: stable hashing for seeds,
//! the one log subscriber, and the lock on an output directory.

pub mod hash;
pub mod lock;
pub mod logging;
