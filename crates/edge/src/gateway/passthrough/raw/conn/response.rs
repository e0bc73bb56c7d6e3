//! The response side of an exchange: waiting for the backend's head
//! (while noticing a client that leaves), and copying the body back.

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{After, BODY_READ, Conn, HEAD_READ, RESPONSE_READ};
use crate::gateway::passthrough::raw::chunked::Chunked;
use crate::gateway::passthrough::raw::deadline::Waited;
use crate::gateway::passthrough::raw::heads::{
    Framing, MAX_HEAD_BYTES, RequestPlan, ResponseHead, ResponsePlan, rewrite_response,
};

impl<I> Conn<'_, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Sends the response head in `out` with the body bytes read along with
    /// it in `scratch`, then the rest of the body; keeps the backend
    /// connection if its exchange completed.
    pub(super) async fn copy_response(
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

/// Completes when the client closed its connection (or it failed) while
/// its request waits for the backend's answer, as hyper's server notices
/// it. Bytes of a next request that arrive meanwhile are kept in `inbuf`
/// (up to a head's worth).
pub(super) async fn client_gone<I: AsyncRead + Unpin>(client: &mut I, inbuf: &mut Vec<u8>) {
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
pub(super) async fn read_response_head(
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
