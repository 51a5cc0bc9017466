//! ferry keeps the databases of a PSI (purchase-sale-inventory) system in sync across regions
//! and keeps the service up when a node, a database, a cache or a region fails.
//!
//! Module map (each module's own docs state its contract):
//! - [`config`]: typed configuration, loading with `FERRY__*` env overrides, validation that
//!   reports every problem with its YAML path.
//! - [`apply`]: consuming other regions' changes, applying them exactly once (deciding
//!   conflicts by the rules), dead letters.
//! - [`conflict`]: the conflict rules (pure), their schema checks, the conflict log.
//! - [`watch`]: the health loop: probes, state machine, load-balancer members, leases, alerts.
//! - [`failover`]: candidate choice, fencing, promotion, re-pointing, DNS/HAProxy and region switches.
//! - [`bench`]: `ferry bench`, measurements against a same-machine baseline.
//! - [`capture`]: binlog source, row decoding, transactions.
//! - [`catalog`]: a table's definition as a server reports it; rows read as text and typed.
//! - [`check`]: `ferry check`: chunked comparison of the regions, settled drill-down, repair.
//! - [`cli`]: the command line (clap) and exit codes.
//! - [`app`]: the supervisor: starts the roles, readiness, ordered shutdown under a grace timeout.
//! - [`runtime`]: what a role is (trait, context, shutdown stages); roles depend on it, not on `app`.
//! - [`sync`]: `ferry sync`: asking another region for an initial sync, and its progress.
//! - [`status`]: the board where roles report their state; backs `/health/ready` and `/status`.
//! - [`metrics`]: metric names (one table), registry, process metrics, the HTTP listener.
//! - [`model`]: GTIDs and positions, typed column values, row changes (plain data).
//! - [`schema`]: DDL of the `ferry` metadata schema every primary carries.
//! - [`setup`]: what `ferry run` needs from the servers, checked online by `ferry validate`.
//! - [`transport`]: the versioned wire envelope, Kafka publishing, topic names.
//! - [`sandbox`]: real servers of a local multi-region topology; also the test harness.
//! - [`logging`]: tracing set-up (text or JSON).

pub mod app;
pub mod apply;
pub mod bench;
pub mod capture;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod failover;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod sandbox;
pub mod schema;
pub mod setup;
pub mod status;
pub mod sync;
pub mod transport;
pub mod watch;

/// ferry's version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
