//! realtime-edge: an edge-proxy sidecar that gives every browser one
//! WebSocket (`/v2/realtime/stream`) and serves it, per organisation, from
//! shared V1 long-pollers or the backend's native stream, switched live by
//! hot-reloaded feature flags.
//!
//! This crate is the production library: everything `realtime-edge serve`
//! runs, and nothing else. Layout: [`config`] (the YAML file), [`gateway`]
//! (client listener: the stream and pass-through), [`hub`] (per-org stream:
//! positions, replay, de-duplication, batching, source switching),
//! [`upstream`] (V1 poller and native link), [`flags`] (flag store, file
//! watcher, rollout decision), [`facade`] (the V1 endpoints served from the
//! hub), [`uploads`] and [`chat`] (their relays), [`admin`] (admin API),
//! [`metrics`], and [`app`] (start-up and the drain that ends it).
//!
//! The rest of the workspace is built on it and never part of it: the
//! simulated backend (`realtime-edge-sim`), the ops clients and local runs
//! (`realtime-edge-tools`: demo, simulate, watch, the admin client), the
//! benchmark (`realtime-edge-bench`), and the binary with the integration
//! tests at the workspace root.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod assets;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod config;
pub mod drain;
pub mod facade;
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
