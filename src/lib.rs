//! hail — a ride-hailing dispatch service.
//!
//! Passengers request taxis over REST, drivers stream their positions and answer offers
//! over a WebSocket, operators watch and steer. Every acknowledged change is committed to
//! the store first, so a `kill -9` loses nothing that anyone was told happened; several
//! nodes on one PostgreSQL share the work, and any of them can die.
//!
//! **Where does a ping go?** [`gateway::driver_socket`] reads it, [`rides::drivers`]
//! validates it into the [`fleet`] (an R-tree in memory); in a cluster the node holding
//! the socket tells the others through the [`bus`], batched.
//!
//! **Where does a trip change state?** In [`rides`]: every operation checks who asks,
//! has the [`store`] commit the change (the rules are [`trip`]'s), and passes the result
//! through the one commit path, `Rides::commit`, which updates the fleet and the
//! dispatcher, tells the sockets through the [`hub`], and the other nodes through the bus.
//!
//! **Where is it written?** [`store`]: one transaction per change, on SQLite or PostgreSQL.
//!
//! The modules, from the edge inwards; each uses only those below it:
//!
//! - [`server`] — wiring and background tasks; what `main` and the tests start.
//! - [`gateway`] — REST, the driver socket, trip streams, the operator stream and console.
//! - [`auth`] — bearer tokens to principals; who may see what.
//! - [`ops`] — the operators' figures, snapshot and cluster view.
//! - [`rides`] — what each request means, and the commit path.
//! - [`cluster`] — this node's identity and the dispatch lease it keeps.
//! - [`dispatch`] — matching trips to drivers: a pure book of offers and deadlines, and
//!   the loop that performs its decisions under the lease.
//! - [`bus`] — NATS between nodes (or nothing, for one node).
//! - [`hub`] — fans committed changes out to this node's sockets.
//! - [`fleet`] — every online driver, in memory, behind one handle.
//! - [`store`] — the source of truth: trips, events, offers, the lease, the nodes.
//! - [`protocol`] — every message on the wire, typed, shared with `sim` and the tests.
//! - [`trip`], [`geometry`] — the state machine, fares, coordinates; pure.
//! - [`error`], [`metrics`], [`config`], [`ids`], [`shutdown`] — what everyone shares.
//! - [`sim`] — `hail sim`: a simulated city of real HTTP/WebSocket clients.

pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod geometry;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod rides;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod trip;
