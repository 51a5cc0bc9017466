//! Watch: the health loop. Probes each configured target every `interval`, counts failures
//! and successes (`state`), and on Down / Up drains or re-enables its load-balancer member
//! and alerts on-call. Only the leader acts; a loop that runs late stops acting (`state::Tilt`).

pub mod alert;
pub mod kube;
pub mod lb;
pub mod leader;
pub mod net;
pub mod primary;
pub mod probe;
pub mod region;
pub mod role;
pub mod state;
