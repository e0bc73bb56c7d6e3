//! The bodies pass-through streams: the client's request body on its way
//! to the backend and the backend's response body on its way back, each cut
//! when it moves nothing for `passthrough.idle_timeout_s`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Response, StatusCode};

use super::upstream::{Plain, Upstream, UpstreamPool};
use crate::http_server::{Body, BoxError, json_error};

/// How a client broke its own request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientFault {
    /// Not valid HTTP framing (e.g. malformed chunked encoding) or cut off.
    Malformed,
    /// Stopped sending for the idle timeout.
    Stalled,
}

impl ClientFault {
    pub(crate) fn response(self) -> Response<Body> {
        let (status, message) = self.status_and_message();
        json_error(status, message)
    }

    /// The answer's status and `error` message (both pass-through paths).
    pub(crate) fn status_and_message(self) -> (StatusCode, &'static str) {
        match self {
            ClientFault::Malformed => (
                StatusCode::BAD_REQUEST,
                "malformed or incomplete request body",
            ),
            ClientFault::Stalled => (StatusCode::REQUEST_TIMEOUT, "request body stalled"),
        }
    }
}

/// What the request body's side of an exchange tells the side waiting for
/// the response: whether the body is all sent, and how the client broke it.
/// One byte, set from the body (polled by the backend connection) and read
/// by the exchange; both run in the same task.
#[derive(Default)]
pub(super) struct ExchangeState(AtomicU8);

const SENT: u8 = 1;
const MALFORMED: u8 = 2;
const STALLED: u8 = 4;

impl ExchangeState {
    pub(super) fn new(body_sent: bool) -> Self {
        ExchangeState(AtomicU8::new(if body_sent { SENT } else { 0 }))
    }

    pub(super) fn body_sent(&self) -> bool {
        self.0.load(Ordering::Relaxed) & SENT != 0
    }

    fn set(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    /// How the client broke its request body, if it did (the first fault).
    pub(super) fn client_fault(&self) -> Option<ClientFault> {
        let s = self.0.load(Ordering::Relaxed);
        if s & MALFORMED != 0 {
            Some(ClientFault::Malformed)
        } else if s & STALLED != 0 {
            Some(ClientFault::Stalled)
        } else {
            None
        }
    }

    fn record(&self, fault: ClientFault) {
        if self.client_fault().is_none() {
            self.set(match fault {
                ClientFault::Malformed => MALFORMED,
                ClientFault::Stalled => STALLED,
            });
        }
    }
}

/// How long a body has been waiting without moving, and the timer that
/// ends the wait at the limit.
///
/// The clock is read only when the body has to wait (its source had nothing
/// ready): a frame that passes just marks the wait as over, and a small body
/// that is ready at once (most requests) never reads the clock or registers
/// a timer. The wait is counted from the moment the body found nothing to
/// pass on, so time the body was not asked for a frame (its receiver was
/// slow) is not counted as the source's silence.
pub(super) struct IdleTimer {
    limit: Duration,
    waiting_since: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            waiting_since: None,
            sleep: None,
        }
    }

    fn progressed(&mut self) {
        self.waiting_since = None;
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + self.limit;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The client's request body on its way to the backend: cut when idle, and
/// its failures recorded as the client's.
pub(super) struct ClientBody {
    pub(crate) inner: Incoming,
    pub(crate) idle: IdleTimer,
    /// Where the end of the body and the client's faults are recorded.
    pub(crate) state: Arc<ExchangeState>,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                self.idle.progressed();
                if self.inner.is_end_stream() {
                    self.state.set(SENT);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.record(ClientFault::Malformed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.state.set(SENT);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.idle.expired(cx) {
                    self.state.record(ClientFault::Stalled);
                    return Poll::Ready(Some(Err("request body stalled".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The backend's response body on its way to the client: cut when idle;
/// runs the backend connection it comes from (when that is pooled) and
/// gives it back once the body is complete; holds the in-flight permit
/// until it is done.
pub(super) struct BackendBody {
    pub(crate) inner: Incoming,
    pub(crate) idle: IdleTimer,
    /// The connection the body arrives on, while it is this body's to run.
    pub(crate) upstream: Option<Box<Upstream<Plain>>>,
    pub(crate) pool: Arc<UpstreamPool>,
    /// Held until the body is done.
    pub(crate) _in_flight: tokio::sync::OwnedSemaphorePermit,
}

impl BackendBody {
    /// The body is complete: the connection may serve another request.
    fn complete(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.pool.checkin(up);
        }
    }
}

impl hyper::body::Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(up) = &mut self.upstream {
            up.drive(cx);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                self.idle.progressed();
                if self.inner.is_end_stream() {
                    self.complete();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.upstream = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.complete();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.idle.expired(cx) {
                    tracing::warn!("backend response body stalled; cut");
                    self.upstream = None;
                    return Poll::Ready(Some(Err("backend response body stalled".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        // A body without content (HEAD, 204, 304, length 0) may never be
        // polled; a body dropped before its end leaves the connection in
        // the middle of a response, and it is closed.
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.complete();
        }
    }
}
