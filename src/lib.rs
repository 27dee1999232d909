//! hail — a ride-hailing dispatch service.
//!
//! Passengers request taxis over REST, drivers stream their positions and answer offers
//! over a WebSocket, operators watch and steer. Every acknowledged change is committed to
//! the store first, so a `kill -9` loses nothing that anyone was told happened.
//!
//! The modules, in the order a request flows through them (see `ARCHITECTURE` in the
//! README and `DESIGN.md` §1):
//!
//! - [`config`] — `hail serve` flags and `HAIL_*` variables, every number with its unit.
//! - [`http`] — the REST gateway: routes, authentication, handlers.
//! - [`ws`] — the WebSocket gateways: the driver socket and trip streams.
//! - [`fleet`] — the in-memory fleet index: an R-tree of available drivers plus their
//!   state. Where a location ping goes.
//! - [`rides`] — what each ride request does: check, commit, then update memory and
//!   watchers. Where a trip changes state.
//! - [`dispatch`] — matching requested trips to drivers: offers, deadlines, ranking.
//! - [`trip`] — the trip state machine and fares; pure: which changes are allowed.
//! - [`store`] — the source of truth on SQLite or PostgreSQL. Where a change is written.
//! - [`hub`] — fans committed events out to sockets.
//! - [`metrics`] — Prometheus counters and histograms.
//! - [`ops`] — the operator's snapshot, figures, offer audit log and live stream.
//! - [`geometry`] — validated coordinates and distances on the sphere; pure.
//! - [`error`] — the one client-visible error type and its wire format.
//! - [`server`] — wiring and the background tasks; what `main` and the tests start.
//! - [`sim`] — `hail sim`: a simulated city of real HTTP/WebSocket clients, for the
//!   demo and for load.

pub mod config;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod geometry;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod ops;
pub mod rides;
pub mod server;
pub mod sim;
pub mod store;
pub mod trip;
pub mod ws;
