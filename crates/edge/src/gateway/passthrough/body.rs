//! The bodies pass-through streams: the client's request body on its way
//! to the backend and the backend's response body on its way back, each cut
//! when it moves nothing for `passthrough.idle_timeout_s`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Response, StatusCode};

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
        match self {
            ClientFault::Malformed => json_error(
                StatusCode::BAD_REQUEST,
                "malformed or incomplete request body",
            ),
            ClientFault::Stalled => json_error(StatusCode::REQUEST_TIMEOUT, "request body stalled"),
        }
    }
}

/// A deadline pushed back by every frame that passes.
///
/// The timer itself is only armed when the body has to wait: a small body
/// that is ready at once (most requests) never registers a timer, and a
/// frame that passes only records the time instead of moving a timer entry.
pub(super) struct IdleTimer {
    limit: Duration,
    last_progress: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            last_progress: tokio::time::Instant::now(),
            sleep: None,
        }
    }

    fn progressed(&mut self) {
        self.last_progress = tokio::time::Instant::now();
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_progress + self.limit;
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
    pub(crate) fault: Arc<Mutex<Option<ClientFault>>>,
    /// Turns true once the whole body went out.
    pub(crate) sent: tokio::sync::watch::Sender<bool>,
}

impl ClientBody {
    fn record(&self, fault: ClientFault) {
        if let Ok(mut f) = self.fault.lock() {
            f.get_or_insert(fault);
        }
    }
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
                    self.sent.send_replace(true);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.record(ClientFault::Malformed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.sent.send_replace(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.idle.expired(cx) {
                    self.record(ClientFault::Stalled);
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
/// holds the in-flight permit until it is done.
pub(super) struct BackendBody {
    pub(crate) inner: Incoming,
    pub(crate) idle: IdleTimer,
    /// Held until the body is done.
    pub(crate) _in_flight: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                self.idle.progressed();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.idle.expired(cx) {
                    tracing::warn!("backend response body stalled; cut");
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
