//! What the client-facing WebSocket endpoints (the unified stream and
//! chat) share: the connection's buffer limits and a close handshake
//! bounded in time.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

/// How long a close handshake may take before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Buffers of a client WebSocket: small, since most connections are idle
/// and clients send almost nothing after the handshake (tungstenite's
/// 128 KiB default read buffer would dominate memory; it still grows for a
/// larger frame, up to `max_frame_size`).
pub fn server_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Closes `ws` with `code` and `reason`, waiting at most [`CLOSE_GRACE`]
/// for the peer.
pub(crate) async fn close_with<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
}
