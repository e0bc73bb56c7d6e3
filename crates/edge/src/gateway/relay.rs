//! Relays a passed-through WebSocket byte for byte between the client and
//! the backend, while following the frame boundaries of each direction, so
//! that the sidecar can close it properly: on drain (close 1001 at the
//! relay's moment of the drain window) and when nothing moved either way
//! for `passthrough.idle_timeout_s`. A close frame is written only between
//! two frames (RFC 6455 allows a control frame between the fragments of a
//! message), never inside one; extensions and fragmentation pass untouched.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain::StreamClose;
use crate::protocol::close;

/// Bytes read per step in each direction.
const RELAY_BUFFER: usize = 16 * 1024;
/// After a close frame went out, how long a frame in progress in the other
/// direction may take to end before the relay is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Follows frame boundaries in a byte stream of WebSocket frames.
#[derive(Debug, Default)]
pub(crate) struct FrameCursor {
    header: [u8; 14],
    /// Header bytes seen of the frame being read.
    have: usize,
    /// Payload bytes still to come of the current frame.
    remaining: u64,
}

impl FrameCursor {
    /// True between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Accounts for bytes that passed.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (data.len() as u64).min(self.remaining);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.remaining = self.payload_len();
                self.have = 0;
            }
        }
    }

    fn header_len(&self) -> usize {
        let masked = self.header[1] & 0x80 != 0;
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if masked { 4 } else { 0 }
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }
}

/// A close frame: unmasked towards the client, masked towards the backend
/// (RFC 6455 5.3: a client masks every frame).
pub(crate) fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame's payload is at most 125 bytes.
    payload.extend(reason.as_bytes().iter().take(123));
    let mut out = vec![0x88, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        let key: [u8; 4] = rand::random();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// One side closed its connection.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The drain closed it with 1001.
    Drain,
}

/// One direction of the relay.
struct Direction {
    cursor: FrameCursor,
    /// The source reached EOF or the sidecar closed this direction.
    done: bool,
    /// A close frame is owed to this direction's destination.
    close_owed: bool,
    buf: Vec<u8>,
}

impl Direction {
    fn new() -> Self {
        Direction {
            cursor: FrameCursor::default(),
            done: false,
            close_owed: false,
            buf: vec![0; RELAY_BUFFER],
        }
    }
}

/// Relays until one side ends, the relay is idle too long, or the drain
/// closes it. `client` is the browser side, `backend` the backend side.
pub(crate) async fn run<C, B>(
    client: C,
    backend: B,
    idle: Duration,
    mut drain: StreamClose,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, mut backend) = (client, backend);
    // `up`: client → backend; `down`: backend → client.
    let mut up = Direction::new();
    let mut down = Direction::new();
    let mut last_progress = Instant::now();
    let mut closing: Option<(RelayEnd, Instant)> = None;
    // One drain waiter and one timer for the relay's life, not one per
    // message: the timer fires at most once per idle period and is then
    // moved to the real deadline if something moved meanwhile.
    let drained = drain.wait();
    tokio::pin!(drained);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        // A branch's future is dropped before its handler runs: the two
        // reads borrow one socket each, and a handler writes to the other
        // without a lock between the halves.
        tokio::select! {
            r = client.read(&mut up.buf), if !up.done => {
                match r {
                    Ok(n) if n > 0 => {
                        let data = &up.buf[..n];
                        if tokio::time::timeout(idle, backend.write_all(data)).await.is_err_or_inner_err() {
                            return end(closing, RelayEnd::Closed);
                        }
                        up.cursor.feed(data);
                        last_progress = Instant::now();
                    }
                    _ => {
                        up.done = true;
                        let _ = backend.shutdown().await;
                    }
                }
            }
            r = backend.read(&mut down.buf), if !down.done => {
                match r {
                    Ok(n) if n > 0 => {
                        let data = &down.buf[..n];
                        if tokio::time::timeout(idle, client.write_all(data)).await.is_err_or_inner_err() {
                            return end(closing, RelayEnd::Closed);
                        }
                        down.cursor.feed(data);
                        last_progress = Instant::now();
                    }
                    _ => {
                        down.done = true;
                        let _ = client.shutdown().await;
                    }
                }
            }
            _ = &mut drained, if closing.is_none() => {
                let cut_at = Instant::now() + CLOSE_GRACE;
                closing = Some((RelayEnd::Drain, cut_at));
                timer.as_mut().reset(cut_at);
                up.close_owed = true;
                down.close_owed = true;
            }
            _ = &mut timer => {
                let due = match closing {
                    Some((_, cut_at)) => cut_at,
                    None => last_progress + idle,
                };
                if Instant::now() < due {
                    timer.as_mut().reset(due);
                    continue;
                }
                if closing.is_some() {
                    // A frame in progress did not end in time: cut.
                    return end(closing, RelayEnd::Closed);
                }
                let cut_at = Instant::now() + CLOSE_GRACE;
                closing = Some((RelayEnd::Idle, cut_at));
                timer.as_mut().reset(cut_at);
                up.close_owed = true;
                down.close_owed = true;
            }
        }
        if let Some((why, _)) = closing {
            let reason = match why {
                RelayEnd::Idle => "idle timeout",
                _ => "sidecar shutting down",
            };
            if down.close_owed && down.cursor.at_boundary() {
                down.close_owed = false;
                down.done = true;
                let frame = close_frame(close::GOING_AWAY, reason, false);
                let _ = tokio::time::timeout(CLOSE_GRACE, client.write_all(&frame)).await;
                let _ = client.shutdown().await;
            }
            if up.close_owed && up.cursor.at_boundary() {
                up.close_owed = false;
                up.done = true;
                let frame = close_frame(close::GOING_AWAY, reason, true);
                let _ = tokio::time::timeout(CLOSE_GRACE, backend.write_all(&frame)).await;
                let _ = backend.shutdown().await;
            }
        }
        if up.done && down.done {
            return end(closing, RelayEnd::Closed);
        }
    }
}

fn end(closing: Option<(RelayEnd, Instant)>, otherwise: RelayEnd) -> RelayEnd {
    closing.map(|(why, _)| why).unwrap_or(otherwise)
}

/// A write with a timeout failed or timed out.
trait WriteOutcome {
    fn is_err_or_inner_err(&self) -> bool;
}

impl<E1, E2> WriteOutcome for Result<Result<(), E2>, E1> {
    fn is_err_or_inner_err(&self) -> bool {
        !matches!(self, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests;
