//! hail as processes: `hail serve` children killed with SIGKILL, paused with SIGSTOP,
//! restarted; one node or a cluster of three with its own NATS server. One binary, so
//! the helpers compile once.

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod cluster;
mod fire_drill;
mod invariants;
mod recovery;
