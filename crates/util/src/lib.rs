//! What every crate and binary of ldmscale shares below the models: stable hashing for seeds,
//! the one log subscriber, the lock on an output directory, the launcher's ranks and the rank-0 handshake,
//! and the data order of sets too large to shuffle in memory.

pub mod hash;
pub mod launch;
pub mod lock;
pub mod logging;
pub mod permutation;
pub mod rendezvous;
