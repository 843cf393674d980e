//! The Kiln update server: an Omaha v3 endpoint for update_engine and the Kiln agent, apps with
//! channels and a staged rollout policy, instance tracking, payload serving with Range, and a
//! JSON admin API behind a bearer token. State is decided in memory and persisted through a
//! [`store::Store`] (SQLite by default; PostgreSQL for several servers, one of which leads: `shared`).

pub mod client;
pub mod clock;
pub mod context;
pub mod dashboard;
pub mod discovery;
pub mod engine;
mod form;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod payloads;
mod random;
mod range;
pub mod rollout;
pub mod serve;
pub mod shared;
pub mod store;
pub mod verify;
mod writer;

pub use engine::error::EngineError;
pub use engine::{Engine, EngineConfig};
