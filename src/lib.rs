//! realtime-edge: an edge-proxy sidecar that gives every browser one
//! WebSocket (`/v2/realtime/stream`) and serves it, per organisation, from
//! shared V1 long-pollers or the backend's native stream, switched live by
//! hot-reloaded feature flags.
//!
//! Layout: [`config`] (the YAML file), [`gateway`] (client listener: the
//! stream and pass-through), [`hub`] (per-org stream: positions, replay,
//! de-duplication, batching, source switching), [`upstream`] (V1 poller and
//! native link), [`flags`] (flag store, file watcher, rollout decision),
//! [`admin`] (admin API), [`metrics`], [`sim`] (the simulated backend), and
//! the tools built on them ([`demo`], [`watch`], [`admin_client`], [`bench`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod app;
pub mod assets;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod cli_output;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod drain;
pub mod facade;
pub mod flags;
pub mod gateway;
pub mod http_server;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod sim;
pub mod simulate;
pub mod tls;
pub mod uploads;
pub mod upstream;
pub mod watch;

pub use app::{Listeners, Sidecar, StartError};
pub use config::Config;
