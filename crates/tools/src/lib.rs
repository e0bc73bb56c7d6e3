//! The ops clients and local runs of `realtime-edge`, kept out of the
//! production library: [`demo`] (sidecar plus simulated backend on
//! loopback), [`simulate`] (the simulated backend alone), [`watch`] (a
//! stream client), [`admin_client`] (`flags`, `drain`), and [`cli_output`]
//! (standard output that survives a closed pipe).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin_client;
pub mod cli_output;
pub mod demo;
pub mod simulate;
pub mod watch;
