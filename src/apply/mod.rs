//! Apply: consume every other region's changes and apply each origin transaction exactly once,
//! as one local transaction under its origin identity, recording progress in `ferry.applied`.

pub mod admit;
pub mod collect;
pub mod metrics;
pub mod parallel;
pub mod reassemble;
pub mod resolve;
pub mod role;
pub mod sql;
pub mod target;
