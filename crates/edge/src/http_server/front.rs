//! What a listener may do with a connection before hyper serves it.
//!
//! The client listener forwards plain pass-through requests itself, as
//! bytes (`gateway::passthrough::raw`), and hands the connection to hyper
//! at the first request it does not forward that way: the bytes it already
//! read go to hyper ahead of the socket's ([`Prefixed`]), so hyper sees the
//! connection as if it had read it from the start.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, watch};

/// What a front gets of its listener besides the socket.
pub(crate) struct FrontContext {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// `limits.header_timeout_s`: how long a request head (or the wait for
    /// one on an idle connection) may take.
    pub(crate) header_timeout: Duration,
    /// Turns true when connections should finish their request in flight
    /// and close.
    pub(crate) wind_down: watch::Receiver<bool>,
}

/// Serves a connection's first requests, until it ends or a request needs
/// hyper.
pub(crate) trait Front: Clone + Send + Sync + 'static {
    /// Serves `io`; returns it (with the bytes already read of the next
    /// request) when hyper should serve the rest, `None` when the
    /// connection is done.
    fn serve<I>(
        &self,
        io: I,
        context: FrontContext,
    ) -> impl Future<Output = Option<Prefixed<I>>> + Send
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// No front: hyper serves every request (the admin listener, the simulator,
/// a client listener whose backend is reached over TLS).
#[derive(Clone, Copy)]
pub(crate) struct NoFront;

impl Front for NoFront {
    async fn serve<I>(&self, io: I, _: FrontContext) -> Option<Prefixed<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Some(Prefixed::new(io, Bytes::new()))
    }
}

impl<F: Front> Front for Option<F> {
    async fn serve<I>(&self, io: I, context: FrontContext) -> Option<Prefixed<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Some(front) => front.serve(io, context).await,
            None => NoFront.serve(io, context).await,
        }
    }
}

/// A socket whose reads first return bytes read from it earlier, and
/// which holds its listener permit: the permit is released when the socket
/// is dropped, which for an upgraded connection (a stream, a relayed
/// WebSocket) is when that ends, not when the HTTP exchange does. So the
/// listener's cap counts every open client socket.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(io: I, prefix: Bytes) -> Self {
        Prefixed {
            prefix,
            io,
            _permit: None,
        }
    }

    /// The socket, holding the listener's permit until it is dropped.
    pub(super) fn holding(self, permit: OwnedSemaphorePermit) -> Self {
        Prefixed {
            _permit: Some(permit),
            ..self
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if !this.prefix.has_remaining() {
                // Give the buffer back now, not when the connection ends.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
