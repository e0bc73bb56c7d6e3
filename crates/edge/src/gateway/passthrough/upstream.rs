//! The backend's HTTP/1 connections for pass-through, run by the task that
//! serves the client's request.
//!
//! hyper's pooled `Client` runs every backend connection as a task of its
//! own: each request hops from the serving task to the connection's task
//! and back (a channel, a wake-up, often of the other worker thread), and
//! its pool spawns one more task per streamed response to notice when the
//! connection is idle again. Here the serving task polls the backend
//! connection itself: the request is written, the response head read and
//! its body streamed back within that task, and a connection whose exchange
//! completed goes back to a LIFO list of idle connections for the next
//! request. Nothing is spawned per request, except to finish sending a
//! request body the backend answered before reading to its end.
//!
//! Bounds: at most `passthrough.max_in_flight` idle connections (the
//! budget in-flight requests use), each kept at most [`IDLE_KEEP`].

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::body::{ClientBody, ExchangeState};
use crate::http_server::BoxError;

/// A backend connection's byte stream: TCP, or TLS over TCP for an
/// `https://` base URL.
type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
/// The driver of a connection that is pooled: plain HTTP/1 exchanges.
pub(super) type Plain = http1::Connection<Io, ClientBody>;
/// The driver of a connection that carries an upgrade request: it hands the
/// socket over once the backend switched protocols.
pub(super) type Upgradeable = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// How long an idle backend connection is kept.
const IDLE_KEEP: Duration = Duration::from_secs(60);

/// One backend connection: where requests go in, and the future that runs
/// the connection (writes requests, reads responses), polled by whoever
/// uses the connection.
pub(super) struct Upstream<D> {
    sender: SendRequest<ClientBody>,
    /// `None` once the connection ended.
    driver: Option<D>,
    /// The response-head timer, kept from one exchange to the next (see
    /// [`Upstream::head_overdue`]).
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Taken from the idle list (a request it could not send may be retried
    /// on a new connection).
    reused: bool,
}

/// Why an exchange gave no response.
pub(super) enum Failure {
    /// The connection failed before the request went out: it can be sent
    /// again on another connection.
    NotSent(Box<Request<ClientBody>>, hyper::Error),
    /// The connection failed with the request (partly) sent.
    Failed(hyper::Error),
    /// No response head within the response timeout after the request body
    /// was sent.
    HeadOverdue,
}

impl<D> Upstream<D>
where
    D: Future<Output = hyper::Result<()>> + Unpin,
{
    fn new(sender: SendRequest<ClientBody>, driver: D) -> Self {
        Upstream {
            sender,
            driver: Some(driver),
            head_timer: None,
            reused: false,
        }
    }

    /// Lets the connection make progress; false once it has ended.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(end) = Pin::new(driver).poll(cx)
        {
            if let Err(e) = end {
                tracing::debug!(error = %e, "backend connection ended");
            }
            self.driver = None;
        }
        self.driver.is_some()
    }

    /// Whether the connection is open and waiting for its next request.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// The connection's driver, for a task that finishes its work.
    pub(super) fn into_driver(self) -> Option<D> {
        self.driver
    }

    /// Sends `req` and waits for the response head, running the connection
    /// meanwhile; `state` says when the request body is all sent, from
    /// which point the head has `timeout` to arrive.
    pub(super) async fn exchange(
        &mut self,
        req: Request<ClientBody>,
        state: &ExchangeState,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Failure> {
        let response = self.sender.try_send_request(req);
        let mut response = std::pin::pin!(response);
        let mut deadline = None;
        poll_fn(|cx| {
            self.drive(cx);
            if let Poll::Ready(answer) = response.as_mut().poll(cx) {
                return Poll::Ready(answer.map_err(|mut e| match e.take_message() {
                    Some(req) => Failure::NotSent(Box::new(req), e.into_error()),
                    None => Failure::Failed(e.into_error()),
                }));
            }
            if state.body_sent() {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                if self.head_overdue(deadline, cx) {
                    return Poll::Ready(Err(Failure::HeadOverdue));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether `deadline` has passed; otherwise this task is woken when it
    /// does.
    ///
    /// The timer is reused across the connection's exchanges and only moved
    /// when it fires before the current deadline: exchanges on a connection
    /// follow each other, so an earlier exchange's timer is never later
    /// than the current deadline, and a connection answering quickly moves
    /// its timer about once per timeout instead of once per request.
    fn head_overdue(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let timer = self
            .head_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

/// Connects to the backend and keeps the idle connections.
pub(super) struct UpstreamPool {
    connector: crate::tls::HttpsConnector,
    /// The backend's scheme and authority (what the connector needs).
    origin: http::Uri,
    /// Most recently used last.
    idle: Mutex<VecDeque<(Instant, Box<Upstream<Plain>>)>>,
    max_idle: usize,
    /// Owns the tasks that finish sending a request body (a drain waits
    /// for them).
    tasks: tokio_util::task::TaskTracker,
}

impl UpstreamPool {
    pub(super) fn new(
        connector: crate::tls::HttpsConnector,
        origin: http::Uri,
        max_idle: usize,
        tasks: tokio_util::task::TaskTracker,
    ) -> Self {
        UpstreamPool {
            connector,
            origin,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            tasks,
        }
    }

    /// A connection ready for a request: the most recently used idle one
    /// that is still open, or a new one.
    pub(super) async fn checkout(&self) -> Result<Box<Upstream<Plain>>, BoxError> {
        while let Some(mut up) = self.take_idle() {
            // An idle connection was ready when it came back; one that is not
            // now was closed by the backend meanwhile.
            if poll_fn(|cx| Poll::Ready(up.ready(cx))).await {
                up.reused = true;
                return Ok(up);
            }
        }
        let io = self.connect().await?;
        let (sender, driver) = http1::handshake(io).await?;
        Ok(Box::new(Upstream::new(sender, driver)))
    }

    /// A new connection for an upgrade request (never pooled).
    pub(super) async fn connect_upgradeable(&self) -> Result<Upstream<Upgradeable>, BoxError> {
        let io = self.connect().await?;
        let (sender, driver) = http1::handshake(io).await?;
        let driver: Upgradeable = Box::pin(driver.with_upgrades());
        Ok(Upstream::new(sender, driver))
    }

    async fn connect(&self) -> Result<Io, BoxError> {
        self.connector.clone().call(self.origin.clone()).await
    }

    fn take_idle(&self) -> Option<Box<Upstream<Plain>>> {
        self.idle.lock().ok()?.pop_back().map(|(_, up)| up)
    }

    /// Takes back a connection whose exchange is complete: kept when it is
    /// ready for another request and there is room, closed otherwise. A
    /// connection still sending a request body the backend answered early
    /// gets a task that finishes sending it first.
    pub(super) fn checkin(self: &std::sync::Arc<Self>, mut up: Box<Upstream<Plain>>) {
        let waker = std::task::Waker::noop();
        if up.ready(&mut Context::from_waker(waker)) {
            self.keep(up);
            return;
        }
        if up.driver.is_none() || up.sender.is_closed() {
            return;
        }
        // The request body is still on its way (it is cut when it stalls for
        // the idle timeout, which ends this task).
        let pool = self.clone();
        self.tasks.spawn(async move {
            if poll_fn(|cx| {
                if up.ready(cx) {
                    Poll::Ready(true)
                } else if up.driver.is_none() {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                }
            })
            .await
            {
                pool.keep(up);
            }
        });
    }

    fn keep(&self, up: Box<Upstream<Plain>>) {
        let now = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        while idle
            .front()
            .is_some_and(|(since, _)| now.saturating_duration_since(*since) > IDLE_KEEP)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back((now, up));
        }
    }
}

impl<D> Upstream<D> {
    /// Taken from the idle list.
    pub(super) fn reused(&self) -> bool {
        self.reused
    }
}
