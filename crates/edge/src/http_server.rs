//! The accept loop shared by the client listener, the admin listener and
//! the simulator: optional TLS, HTTP/1.1 with upgrades, a cap on open
//! connections, a header-read timeout, and graceful drain on shutdown.
#![warn(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

mod front;

pub(crate) use front::{Front, FrontContext, NoFront, Prefixed};

/// Any error a body or handler may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every handler answers with.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("{}")))
}

/// `{"error": message}` with a status.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Pending connections the kernel may queue before `accept`. tokio's
/// default (1024) overflows when a thousand clients reconnect at once, and a
/// dropped SYN costs the client a one-second retransmit; the kernel caps it
/// at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: u32 = 8192;

/// Binds a listener with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The 101 answer that completes a WebSocket upgrade for `key`.
/// The `Sec-WebSocket-Key` of a WebSocket upgrade request (GET, `Upgrade:
/// websocket`, version 13), or the answer to give a request that is not one.
pub(crate) fn websocket_upgrade_key<B>(
    req: &Request<B>,
) -> Result<http::HeaderValue, Box<Response<Body>>> {
    let is_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade && req.method() == http::Method::GET, key) else {
        return Err(Box::new(json_error(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only",
        )));
    };
    if req
        .headers()
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version (13 required)",
        )));
    }
    Ok(key)
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade with this
/// `Sec-WebSocket-Key`.
pub fn switching_protocols(key: &http::HeaderValue) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(
            http::header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(full(""))
        .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "upgrade response"))
}

/// Limits of one listener.
#[derive(Clone, Copy)]
pub struct ServerLimits {
    /// Open connections at once, upgraded ones included (the permit lives as
    /// long as the socket); beyond it new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (and for a TLS handshake).
    pub header_timeout: Duration,
}

/// How a listener ends.
pub(crate) struct Lifecycle {
    /// Turns true when connections should finish their request in flight and
    /// close; connections accepted afterwards serve one request each.
    pub(crate) wind_down: watch::Receiver<bool>,
    /// Turns true to stop accepting; connections still open get
    /// [`STOP_GRACE`] more, then are dropped.
    pub(crate) stop: watch::Receiver<bool>,
    /// Every connection task is spawned here, so a drain can wait for it.
    pub(crate) tracker: TaskTracker,
}

/// How long connections still open when a listener stops may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Connections being refused with [`OVERLOADED`] at once; past it a
/// refused socket is closed without an answer.
const REFUSALS_AT_ONCE: usize = 256;
/// Backoff after a failed `accept` (out of descriptors and the like).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 48\r\nconnection: close\r\n\r\n{\"error\":\"too many connections; retry shortly\"}\n";

/// Accepts connections until `shutdown` turns true, handing each request to
/// `handler`; connections open then get a short grace to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    handler: H,
    shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let lifecycle = Lifecycle {
        wind_down: shutdown.clone(),
        stop: shutdown,
        tracker: TaskTracker::new(),
    };
    serve_with(listener, tls, limits, handler, NoFront, lifecycle).await
}

/// [`serve`] with a front that serves a connection's requests until it
/// hands the connection to hyper, a separate wind-down and stop, and
/// connection tasks on a tracker (the sidecar's drain).
pub(crate) async fn serve_with<H, F, P>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    handler: H,
    front: P,
    lifecycle: Lifecycle,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    P: Front,
{
    let Lifecycle {
        wind_down,
        mut stop,
        tracker,
    } = lifecycle;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: the error repeats until
                    // some connection closes. Say so once, back off, retry.
                    let (wait, first) = backoff.failed();
                    if first {
                        tracing::warn!(error = %e, "accept failing; backing off until it succeeds again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if backoff.succeeded() {
            tracing::info!("accepting connections again");
        }
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _refusal = refusal;
                    let mut tcp = tcp;
                    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(OVERLOADED))
                        .await;
                });
            }
            continue;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let front = front.clone();
        let conn = ConnParts {
            peer,
            permit,
            limits,
            wind_down: wind_down.clone(),
            stop: stop.clone(),
        };
        tracker.spawn(async move {
            match tls {
                None => serve_socket(tcp, conn, front, handler).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_socket(stream, conn, front, handler).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// What a connection's task holds besides its socket.
struct ConnParts {
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    limits: ServerLimits,
    wind_down: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// Serves one accepted (and, with TLS, handshaken) socket: the front
/// first, then hyper if the front hands the connection over.
async fn serve_socket<I, H, F, P>(io: I, conn: ConnParts, front: P, handler: H)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    P: Front,
{
    let ConnParts {
        peer,
        permit,
        limits,
        wind_down,
        stop,
    } = conn;
    let context = FrontContext {
        peer,
        header_timeout: limits.header_timeout,
        wind_down: wind_down.clone(),
    };
    // Boxed: the front's state (its buffers, timers, the exchange in
    // progress) is freed at the hand-over instead of staying in this
    // task's allocation for as long as hyper serves the connection (a
    // facade poll held for 25 s, an idle keep-alive connection).
    let handed_over = tokio::select! {
        handed_over = Box::pin(front.serve(io, context)) => handed_over,
        _ = stopped_a_while_ago(stop.clone()) => None,
    };
    let Some(io) = handed_over else {
        return;
    };
    let io = TokioIo::new(io.holding(permit));
    serve_conn(io, peer, limits, handler, wind_down, stop).await
}

/// Completes [`STOP_GRACE`] after the listener was told to stop.
async fn stopped_a_while_ago(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
    tokio::time::sleep(STOP_GRACE).await;
}

/// The state of a failing `accept`: one log line per change of state, and
/// a wait that doubles up to [`ACCEPT_BACKOFF_MAX`] instead of a spin.
#[derive(Debug, Default)]
struct AcceptBackoff {
    current: Option<Duration>,
}

impl AcceptBackoff {
    /// Another failure: how long to wait, and whether this started a failing spell.
    fn failed(&mut self) -> (Duration, bool) {
        let (wait, first) = match self.current {
            None => (ACCEPT_BACKOFF_MIN, true),
            Some(b) => ((b * 2).min(ACCEPT_BACKOFF_MAX), false),
        };
        self.current = Some(wait);
        (wait, first)
    }

    /// A success: whether it ended a failing spell.
    fn succeeded(&mut self) -> bool {
        self.current.take().is_some()
    }
}

async fn serve_conn<I, H, F>(
    io: I,
    peer: SocketAddr,
    limits: ServerLimits,
    handler: H,
    mut wind_down: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h(req, peer).await) }
    });
    let winding_down = *wind_down.borrow_and_update();
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(!winding_down)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    if !winding_down {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection error");
                }
                return;
            }
            _ = wind_down.wait_for(|w| *w) => {}
        }
        // Finish the request in flight (or close an idle connection now).
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection error");
            }
        }
        _ = stopped_a_while_ago(stop) => {}
    }
}

#[cfg(test)]
mod tests;
