//! `ferry bench`: performance measured against a baseline run on the same machine in the same
//! run, reported as ratios. Never a timed assertion in a test.

pub mod apply;
pub mod capture;
pub mod check;
pub mod e2e;
