//! The backend's idle keep-alive connections, as plain sockets: a LIFO
//! list (the most recently used connection is the one most likely still
//! open, and its buffers warm), at most `passthrough.max_in_flight` of them
//! (the descriptor budget in-flight requests use), each kept at most
//! [`IDLE_KEEP`].

use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle backend connection is kept.
const IDLE_KEEP: Duration = Duration::from_secs(60);
/// How long connecting to the backend may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct BackendPool {
    host: String,
    port: u16,
    max_idle: usize,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl BackendPool {
    pub(super) fn new(host: String, port: u16, max_idle: usize) -> Self {
        BackendPool {
            host,
            port,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently idle connection that still looks open.
    pub(super) fn checkout(&self) -> Option<TcpStream> {
        loop {
            let (stream, since) = self.lock().pop()?;
            if since.elapsed() > IDLE_KEEP {
                // The rest went idle earlier still: all of them are stale.
                let stale = std::mem::take(&mut *self.lock());
                drop(stale);
                return None;
            }
            if looks_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps a connection whose exchange is complete for the next request.
    pub(super) fn checkin(&self, stream: TcpStream) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push((stream, Instant::now()));
        }
    }

    /// A new connection to the backend.
    pub(super) async fn connect(&self) -> std::io::Result<TcpStream> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an idle connection shows no sign of having been closed: an idle
/// connection has nothing to read, so one with an end of stream or bytes
/// to read was closed by the backend (or sent bytes nobody asked for).
/// The peek is a system call only when the reactor saw the socket become
/// readable since it was last read to the end.
fn looks_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    stream
        .poll_peek(&mut cx, &mut ReadBuf::new(&mut byte))
        .is_pending()
}
