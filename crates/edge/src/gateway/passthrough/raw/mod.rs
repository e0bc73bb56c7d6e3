//! Pass-through on the byte path: the plain HTTP/1.1 requests of a client
//! connection (no body, or a `Content-Length` one) are forwarded by
//! rewriting their heads as bytes and copying their bodies between the two
//! sockets, on keep-alive backend connections, in the task that serves the
//! client's connection. The first request of a connection that needs more
//! (the unified stream and the gateway's other endpoints, the facade's
//! paths, upgrades, chunked request bodies, `Expect`, HTTP/1.0, a head
//! httparse refuses) hands the connection to hyper, which serves the rest
//! of it through [`super::Passthrough`] and the gateway.
//!
//! Why: hyper parses every head into a `HeaderMap`, encodes it again and
//! moves bodies through its dispatchers, on both the client's and the
//! backend's connection. For a sidecar in front of all of a backend's
//! traffic that was most of its user-space cost per request
//! (docs/benchmarks.md, "Pass-through against nginx").
//!
//! The guarantees are those of [`super::Passthrough`], with the same
//! bounds: `passthrough.max_in_flight` (503 past it, shared with hyper's
//! path), `passthrough.response_timeout_s` from the end of the request body
//! to the response head (504), `passthrough.idle_timeout_s` on every body
//! read and write (the body is cut), a request body the client cuts or
//! stalls answered 400 or 408, hop-by-hop headers dropped and
//! X-Forwarded-* added; `limits.header_timeout_s` bounds the wait for a
//! request head, idle keep-alive included, as hyper's does.

mod chunked;
mod conn;
mod deadline;
mod heads;
mod pool;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::config::PassthroughConfig;
use crate::http_server::{Front, FrontContext, Prefixed};

pub(crate) use heads::OwnPaths;
use pool::BackendPool;

/// The byte path's front for the client listener.
#[derive(Clone)]
pub(crate) struct RawFront(Arc<Shared>);

/// What every connection on the byte path shares.
struct Shared {
    pool: BackendPool,
    /// The base URL's path without its trailing slash.
    base_path: Vec<u8>,
    /// `Host` for a request that came without one: the backend's authority.
    backend_host: Vec<u8>,
    own_paths: OwnPaths,
    /// X-Forwarded-Proto: the client listener's scheme.
    proto: &'static [u8],
    config: PassthroughConfig,
    /// Shared with hyper's pass-through path.
    in_flight: Arc<Semaphore>,
}

/// Where the byte path connects: a plain `http://` backend.
pub(crate) struct RawBackend {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) authority: Vec<u8>,
    pub(crate) base_path: String,
}

impl RawFront {
    pub(crate) fn new(
        backend: RawBackend,
        own_paths: OwnPaths,
        tls: bool,
        config: PassthroughConfig,
        in_flight: Arc<Semaphore>,
    ) -> Self {
        RawFront(Arc::new(Shared {
            pool: BackendPool::new(backend.host, backend.port, config.max_in_flight),
            base_path: backend.base_path.into_bytes(),
            backend_host: backend.authority,
            own_paths,
            proto: if tls { b"https" } else { b"http" },
            config,
            in_flight,
        }))
    }
}

impl Front for RawFront {
    async fn serve<I>(&self, io: I, context: FrontContext) -> Option<Prefixed<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        conn::serve(&self.0, io, context).await
    }
}
