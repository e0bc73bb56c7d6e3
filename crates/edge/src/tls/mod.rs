//! TLS both ways. [`client`] builds the one verifying rustls client
//! configuration used for every outgoing connection to the backend (V1
//! polls, pass-through, the native `wss://` link) and for fetching a JWKS;
//! [`reload`] serves the client-facing certificate and re-reads it when its
//! files change, without touching open connections.
#![warn(missing_docs)]

pub(crate) mod client;
pub(crate) mod reload;

pub(crate) use client::{HttpsConnector, https_connector};
pub use client::{TlsClientError, client_config};
pub use reload::{CertError, ServerCert};
