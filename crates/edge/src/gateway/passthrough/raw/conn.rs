//! One client connection on the byte path: read a request head, forward
//! the request on a backend connection, copy the response back, and again,
//! until the connection ends or a request is hyper's.

use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, Bytes};
use futures_util::FutureExt;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shared;
use super::chunked::Chunked;
use super::deadline::{Deadline, Waited};
use super::heads::{
    Framing, MAX_HEAD_BYTES, RequestEdits, RequestHead, RequestPlan, ResponseHead, ResponsePlan,
    rewrite_request, rewrite_response,
};
use crate::gateway::passthrough::body::ClientFault;
use crate::http_server::{FrontContext, Prefixed};

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
        };
        // Closed by a drain while nothing of a request has come, unless it
        // was accepted during the drain: then it gets its one request.
        let idle = inbuf.is_empty() && (*served > 0 || !*accepted_in_wind_down);
        let read_head = async {
            loop {
                if !inbuf.is_empty() {
                    match rewrite_request(inbuf, &edits, out) {
                        RequestHead::Forward(plan)
                            if plan.body_len > shared.config.buffered_body_bytes as u64 =>
                        {
                            return Next::HandOff;
                        }
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
        let Some(body_len) = usize::try_from(plan.body_len)
            .ok()
            .filter(|b| *b <= shared.config.buffered_body_bytes)
        else {
            return After::Close; // classified as hyper's; not reached
        };
        let request_len = plan.head_len + body_len;
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

    /// Sends the response head in `out` with the body bytes read along with
    /// it in `scratch`, then the rest of the body; keeps the backend
    /// connection if its exchange completed.
    async fn copy_response(
        &mut self,
        mut backend: TcpStream,
        scratch: &mut Vec<u8>,
        request: &RequestPlan,
        response: ResponsePlan,
    ) -> After {
        let mut keep = response.backend_keeps;
        let mut chunks = Chunked::new();
        let mut body = Body {
            framing: response.framing,
            chunks: &mut chunks,
            left: match response.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
        };
        let Some((taken, mut finished)) = body.take(&scratch[response.head_len..]) else {
            return self.backend_broken_framing(request, response.close).await;
        };
        let end = response.head_len + taken;
        keep &= end == scratch.len();
        self.out.extend_from_slice(&scratch[response.head_len..end]);
        if !matches!(self.send_out().await, Waited::Done(Ok(()))) {
            return After::Close;
        }
        while !finished {
            scratch.clear();
            let want = match body.framing {
                Framing::Length(_) => {
                    usize::try_from(body.left).map_or(BODY_READ, |l| l.min(BODY_READ))
                }
                _ => BODY_READ,
            };
            scratch.reserve(want);
            let mut room = (&mut *scratch).limit(want);
            match self.idle.run(backend.read_buf(&mut room)).await {
                Waited::Done(Ok(0)) if body.framing == Framing::UntilClose => {
                    finished = true;
                    keep = false;
                    continue;
                }
                Waited::Done(Ok(n)) if n > 0 => {}
                // Cut: the client sees the connection close before the end.
                _ => return After::Close,
            }
            let Some((taken, done)) = body.take(scratch) else {
                return After::Close;
            };
            keep &= taken == scratch.len();
            finished = done;
            let write = self.client.write_all(&scratch[..taken]);
            if !matches!(self.idle.run(write).await, Waited::Done(Ok(()))) {
                return After::Close;
            }
        }
        if !matches!(
            self.idle.run(self.client.flush()).await,
            Waited::Done(Ok(()))
        ) {
            return After::Close;
        }
        if keep {
            self.shared.pool.checkin(backend);
        }
        if response.close {
            After::Close
        } else {
            After::KeepAlive
        }
    }
}

impl<I> Conn<'_, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Writes `out` to the client, within the idle timeout.
    async fn send_out(&mut self) -> Waited<std::io::Result<()>> {
        let (client, out) = (&mut self.client, &self.out);
        self.idle
            .run(async move {
                client.write_all(out).await?;
                client.flush().await
            })
            .await
    }

    /// Answers with `{"error": message}` (its head only to a HEAD request);
    /// the connection stays open unless `close`.
    async fn answer(
        &mut self,
        status: StatusCode,
        message: &str,
        request: &RequestPlan,
        close: bool,
    ) -> After {
        let body = serde_json::json!({ "error": message }).to_string();
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_str().as_bytes());
        self.out.push(b' ');
        self.out
            .extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        self.out.extend_from_slice(
            format!(
                "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !request.is_head {
            self.out.extend_from_slice(body.as_bytes());
        }
        match self.send_out().await {
            Waited::Done(Ok(())) if !close => After::KeepAlive,
            _ => After::Close,
        }
    }

    async fn backend_unavailable(
        &mut self,
        error: &std::io::Error,
        request: &RequestPlan,
        close: bool,
    ) -> After {
        tracing::warn!(%error, "backend unreachable for pass-through");
        self.answer(
            StatusCode::BAD_GATEWAY,
            "backend unavailable",
            request,
            close,
        )
        .await
    }

    async fn head_overdue(&mut self, request: &RequestPlan, close: bool) -> After {
        let timeout = self.shared.config.response_timeout;
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "backend sent no response head in time"
        );
        let message = format!("backend did not answer within {} s", timeout.as_secs());
        self.answer(StatusCode::GATEWAY_TIMEOUT, &message, request, close)
            .await
    }

    async fn backend_broken_framing(&mut self, request: &RequestPlan, close: bool) -> After {
        tracing::warn!("backend response body framing broken");
        let message = "backend sent a malformed response";
        self.answer(StatusCode::BAD_GATEWAY, message, request, close)
            .await
    }

    /// The client cut or stalled its request body: its fault, 400 or 408,
    /// and the connection closes (the rest of the body is not coming).
    async fn client_fault(&mut self, fault: ClientFault, request: &RequestPlan) -> After {
        tracing::debug!("pass-through request body broken by the client");
        let (status, message) = fault.status_and_message();
        self.answer(status, message, request, true).await;
        After::Close
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "backend stopped reading the request",
    )
}

/// Completes when the client closed its connection (or it failed) while
/// its request waits for the backend's answer, as hyper's server notices
/// it. Bytes of a next request that arrive meanwhile are kept in `inbuf`
/// (up to a head's worth).
async fn client_gone<I: AsyncRead + Unpin>(client: &mut I, inbuf: &mut Vec<u8>) {
    // A read of a socket the reactor has not seen become readable is no
    // system call: this costs nothing while the client is quiet.
    while inbuf.len() < MAX_HEAD_BYTES {
        inbuf.reserve(HEAD_READ);
        match client.read_buf(inbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending::<()>().await
}

/// Reads from the backend until a final response head is complete and
/// rewritten into `out`; 1xx heads other than 101 are skipped. An
/// `UnexpectedEof` error means the backend closed (or reset) the connection
/// before any byte of a response.
async fn read_response_head(
    backend: &mut TcpStream,
    scratch: &mut Vec<u8>,
    request: &RequestPlan,
    close: bool,
    out: &mut Vec<u8>,
) -> std::io::Result<ResponsePlan> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    loop {
        if !scratch.is_empty() {
            match rewrite_response(scratch, request, close, out) {
                ResponseHead::Final(plan) => return Ok(plan),
                ResponseHead::Informational(len) => {
                    scratch.drain(..len);
                    continue;
                }
                ResponseHead::Partial => {}
                ResponseHead::SwitchedProtocols => {
                    return Err(invalid("backend switched protocols unasked"));
                }
                ResponseHead::Invalid => return Err(invalid("malformed response head")),
            }
        }
        if scratch.capacity() - scratch.len() < RESPONSE_READ / 4 {
            scratch.reserve(RESPONSE_READ);
        }
        match backend.read_buf(scratch).await {
            Ok(n) if n > 0 => {}
            // Nothing of an answer came: the request may be sent again.
            Ok(_) | Err(_) if scratch.is_empty() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "backend closed the connection without answering",
                ));
            }
            Ok(_) => {
                return Err(invalid(
                    "backend closed the connection within a response head",
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where a response body stands while it is copied.
struct Body<'a> {
    framing: Framing,
    chunks: &'a mut Chunked,
    /// Bytes left of a `Content-Length` body.
    left: u64,
}

impl Body<'_> {
    /// How many of `bytes` belong to the body, and whether it is complete
    /// with them; `None` for broken chunked framing.
    fn take(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        match self.framing {
            Framing::Empty => Some((0, true)),
            Framing::Length(_) => {
                let taken = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                self.left -= taken as u64;
                Some((taken, self.left == 0))
            }
            Framing::Chunked => {
                let taken = self.chunks.advance(bytes).ok()?;
                Some((taken, self.chunks.is_done()))
            }
            Framing::UntilClose => Some((bytes.len(), false)),
        }
    }
}
