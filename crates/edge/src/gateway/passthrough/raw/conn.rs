//! One client connection on the byte path: read a request head, forward
//! the request on a backend connection, copy the response back, and again,
//! until the connection ends or a request is hyper's.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::FutureExt;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::Shared;
use super::deadline::{Deadline, Waited};
use super::heads::{RequestEdits, RequestHead, RequestPlan, rewrite_request};
use crate::gateway::passthrough::body::ClientFault;
use crate::http_server::{FrontContext, Prefixed};

mod answers;
mod response;

use answers::timed_out;
use response::{client_gone, read_response_head};

/// What a read of a request head asks for at least, and gets at first
/// (a browser's request head fits; a longer one takes another read).
const HEAD_READ: usize = 2 * 1024;
/// The buffer a response head is read into.
const RESPONSE_READ: usize = 16 * 1024;
/// The most one read of a response body takes at once.
const BODY_READ: usize = 64 * 1024;

pub(super) async fn serve<I>(
    shared: &Shared,
    client: I,
    context: FrontContext,
) -> Option<Prefixed<I>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted_in_wind_down = *context.wind_down.borrow();
    let mut conn = Conn {
        shared,
        peer_ip: context.peer.ip().to_string(),
        client,
        inbuf: Vec::new(),
        out: Vec::new(),
        scratch: Vec::new(),
        served: 0,
        accepted_in_wind_down,
        head_wait: Deadline::new(context.header_timeout),
        response_wait: Deadline::new(shared.config.response_timeout),
        idle: Deadline::new(shared.config.idle_timeout),
        drain_started: None,
        wind_down: context.wind_down,
    };
    loop {
        let plan = match conn.next_request().await {
            Next::Forward(plan) => plan,
            Next::HandOff => {
                // Exactly the bytes read: the read buffer is freed now, not
                // kept for the life of a stream or relay hyper serves.
                let read = Bytes::copy_from_slice(&conn.inbuf);
                drop(conn.inbuf);
                return Some(Prefixed::new(conn.client, read));
            }
            Next::Closed => return None,
        };
        conn.served += 1;
        if conn.forward(plan).await == After::Close {
            let _ = conn.idle.run(conn.client.shutdown()).await;
            return None;
        }
    }
}

/// Completes when `wind_down` turns true; never if its sender is gone. Once
/// complete it stays pending (the connection closes at the first time).
fn drain_started_signal(
    mut wind_down: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(
        async move {
            if wind_down.wait_for(|w| *w).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        .fuse(),
    )
}

enum Next {
    Forward(RequestPlan),
    HandOff,
    Closed,
}

#[derive(PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

struct Conn<'a, I> {
    shared: &'a Shared,
    peer_ip: String,
    client: I,
    /// What was read from the client and not yet forwarded.
    inbuf: Vec<u8>,
    /// The head being sent (to the backend, then to the client).
    out: Vec<u8>,
    /// What is read from the backend (at most RESPONSE_READ of it kept
    /// between requests).
    scratch: Vec<u8>,
    /// Requests forwarded on this connection so far.
    served: u64,
    /// The drain had begun when this connection was accepted.
    accepted_in_wind_down: bool,
    head_wait: Deadline,
    response_wait: Deadline,
    idle: Deadline,
    wind_down: watch::Receiver<bool>,
    /// Completes when the drain starts: one waiter registered for the
    /// connection's life, not one per request; made at the first wait
    /// that blocks (a stream's upgrade request usually does not).
    drain_started: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<I> Conn<'_, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Reads the next request head: complete within `limits.header_timeout_s`
    /// of the wait's start (an idle keep-alive wait included), or the
    /// connection closes; a drain closes a connection idle between requests.
    async fn next_request(&mut self) -> Next {
        let Conn {
            shared,
            peer_ip,
            client,
            inbuf,
            out,
            served,
            accepted_in_wind_down,
            head_wait,
            drain_started,
            wind_down,
            ..
        } = self;
        let edits = RequestEdits {
            base_path: &shared.base_path,
            backend_host: &shared.backend_host,
            peer_ip: peer_ip.as_bytes(),
            proto: shared.proto,
            own_paths: &shared.own_paths,
            max_body: shared.config.buffered_body_bytes,
        };
        // Closed by a drain while nothing of a request has come, unless it
        // was accepted during the drain: then it gets its one request.
        let idle = inbuf.is_empty() && (*served > 0 || !*accepted_in_wind_down);
        let read_head = async {
            loop {
                if !inbuf.is_empty() {
                    match rewrite_request(inbuf, &edits, out) {
                        RequestHead::Forward(plan) => return Next::Forward(plan),
                        RequestHead::HandOff => return Next::HandOff,
                        RequestHead::Partial => {}
                    }
                }
                if inbuf.capacity() - inbuf.len() < HEAD_READ / 4 {
                    inbuf.reserve(HEAD_READ);
                }
                match client.read_buf(inbuf).await {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                }
            }
        };
        let drained = async {
            if idle {
                drain_started
                    .get_or_insert_with(|| drain_started_signal(wind_down.clone()))
                    .await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        match head_wait.run_or_cancel(read_head, drained).await {
            Waited::Done(next) => next,
            Waited::TimedOut | Waited::Cancelled => Next::Closed,
        }
    }

    /// Forwards one request whose backend head is in `out` and whose bytes
    /// start `inbuf`, and copies the response back.
    async fn forward(&mut self, plan: RequestPlan) -> After {
        let shared = self.shared;
        // The whole body is read before the backend is asked (it is at most
        // `passthrough.buffered_body_bytes`): one write sends the request, a
        // client that breaks its body is answered without the backend, and
        // a request can be sent again on another connection.
        let request_len = plan.head_len + plan.body_len;
        while self.inbuf.len() < request_len {
            self.inbuf.reserve(request_len - self.inbuf.len());
            match self.idle.run(self.client.read_buf(&mut self.inbuf)).await {
                Waited::Done(Ok(n)) if n > 0 => {}
                Waited::Done(_) => return self.client_fault(ClientFault::Malformed, &plan).await,
                _ => return self.client_fault(ClientFault::Stalled, &plan).await,
            }
        }
        self.out
            .extend_from_slice(&self.inbuf[plan.head_len..request_len]);
        self.inbuf.drain(..request_len);
        let close = plan.close || *self.wind_down.borrow();
        let Ok(_in_flight) = shared.in_flight.try_acquire() else {
            let message = "too many pass-through requests in flight; retry shortly";
            return self
                .answer(StatusCode::SERVICE_UNAVAILABLE, message, &plan, close)
                .await;
        };

        // The connection's buffer for the response, kept between requests
        // unless a long body grew it.
        let mut scratch = std::mem::take(&mut self.scratch);
        let (backend, response) = loop {
            let (mut backend, reused) = match shared.pool.checkout() {
                Some(idle) => (idle, true),
                None => match shared.pool.connect().await {
                    Ok(new) => (new, false),
                    Err(e) => return self.backend_unavailable(&e, &plan, close).await,
                },
            };
            // An idle connection the backend closed meanwhile: the request
            // goes out again on a new one.
            match self.idle.run(backend.write_all(&self.out)).await {
                Waited::Done(Ok(())) => {}
                _ if reused => continue,
                Waited::Done(Err(e)) => return self.backend_unavailable(&e, &plan, close).await,
                _ => return self.backend_unavailable(&timed_out(), &plan, close).await,
            }
            scratch.clear();
            let head = read_response_head(&mut backend, &mut scratch, &plan, close, &mut self.out);
            let gone = client_gone(&mut self.client, &mut self.inbuf);
            let answer = async {
                tokio::select! {
                    biased;
                    head = head => Some(head),
                    () = gone => None,
                }
            };
            match self.response_wait.run(answer).await {
                // Nobody to answer: the backend's connection is dropped
                // with its exchange unfinished.
                Waited::Done(None) => return After::Close,
                Waited::Done(Some(Ok(response))) => break (backend, response),
                // Closed without a byte of an answer: sent again only if
                // doing it twice is harmless (RFC 9110 9.2.2).
                Waited::Done(Some(Err(e)))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        && reused
                        && plan.idempotent =>
                {
                    continue;
                }
                Waited::Done(Some(Err(e))) => {
                    return self.backend_unavailable(&e, &plan, close).await;
                }
                _ => return self.head_overdue(&plan, close).await,
            }
        };
        let after = self
            .copy_response(backend, &mut scratch, &plan, response)
            .await;
        if scratch.capacity() <= RESPONSE_READ {
            self.scratch = scratch;
        }
        after
    }
}
