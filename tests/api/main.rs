//! The contract through real interfaces: a server on a port, real HTTP and WebSocket
//! clients, every test on SQLite and on PostgreSQL. One binary, so the helpers compile
//! once.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod dispatch;
mod hostile;
mod operators;
mod ops;
mod oversight;
mod peak;
mod sim;
mod store;
mod streams;
