//! Failover (control path step 6): promoting an in-region replica with fencing, Redis, DNS and
//! region switches. Built so far: the pure choice of the replica to promote (`candidate`) and
//! the guarded DNS switch (`dns`), Redis promotion with fencing (`redis_promote`).

pub mod candidate;
pub mod dns;
pub mod redis_promote;
