//! Failover (control path step 6): promoting an in-region replica with fencing, Redis, DNS and
//! region switches.
//!
//! - `candidate`: the pure choice of the MariaDB replica to promote.
//! - `mysql`, `redis_promote`: each server-side step (observe, locate, fence, promote,
//!   re-point, rejoin), read back from the server.
//! - `dns`: the guarded record switch.
//! - `run`: one whole in-region failover, timed phase by phase; the watch loop runs it when a
//!   primary target goes Down.

pub mod candidate;
pub mod dns;
pub mod mysql;
pub mod redis_promote;
pub mod region;
pub mod run;
