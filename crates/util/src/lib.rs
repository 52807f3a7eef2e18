//! What every crate and binary of ldmscale shares below the models: stable hashing for seeds,
//! the one log subscriber, the lock on an output directory, and the launcher's ranks.

pub mod hash;
pub mod launch;
pub mod lock;
pub mod logging;
