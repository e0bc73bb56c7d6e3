//! realtime-edge: an edge-proxy sidecar that gives every browser one
//! WebSocket (`/v2/realtime/stream`) and serves it, per organisation, from
//! shared V1 long-pollers or the backend's native stream, switched live by
//! hot-reloaded feature flags.
//!
//! Layout: [`config`] (the YAML file), [`gateway`] (client listener: the
//! stream and pass-through), [`hub`] (per-org stream: positions, replay,
//! de-duplication, batching, source switching), [`upstream`] (V1 poller and
//! native link), [`flags`] (flag store, file watcher, rollout decision),
//! `admin` (admin API), [`metrics`]. This is the production library, what
//! `serve` runs; the simulated backend, the tools and the benchmark are
//! crates of their own built on it (docs/architecture.md).
//!
//! The modules are layered, leaves first: [`clock`], [`http_server`],
//! [`client_ws`] < [`metrics`], [`assets`] < [`protocol`] < [`config`],
//! [`tls`], `drain` < [`auth`] < [`flags`], [`upstream`] < `cluster`,
//! [`uploads`] < [`hub`] < `facade`, [`chat`], `admin` < [`gateway`] <
//! [`app`]. A module imports from the groups before its own (and, one
//! way, from its own group); the `module_graph` test fails on a cycle
//! (docs/architecture.md, "Module layering").
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub mod assets;
pub mod auth;
pub mod chat;
pub mod client_ws;
pub mod clock;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod drain;
pub(crate) mod facade;
pub mod flags;
pub mod gateway;
pub mod http_server;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod tls;
pub mod uploads;
pub mod upstream;

pub use app::{Listeners, Sidecar, StartError};
pub use config::Config;
