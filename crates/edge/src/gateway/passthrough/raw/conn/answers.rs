//! The answers the byte path gives itself: `{"error": ...}` with the
//! pass-through's statuses (the same as hyper's path).

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{After, Conn};
use crate::gateway::passthrough::body::ClientFault;
use crate::gateway::passthrough::raw::deadline::Waited;
use crate::gateway::passthrough::raw::heads::RequestPlan;

impl<I> Conn<'_, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Writes `out` to the client, within the idle timeout.
    pub(super) async fn send_out(&mut self) -> Waited<std::io::Result<()>> {
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
    pub(super) async fn answer(
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

    pub(super) async fn backend_unavailable(
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

    pub(super) async fn head_overdue(&mut self, request: &RequestPlan, close: bool) -> After {
        let timeout = self.shared.config.response_timeout;
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "backend sent no response head in time"
        );
        let message = format!("backend did not answer within {} s", timeout.as_secs());
        self.answer(StatusCode::GATEWAY_TIMEOUT, &message, request, close)
            .await
    }

    pub(super) async fn backend_broken_framing(
        &mut self,
        request: &RequestPlan,
        close: bool,
    ) -> After {
        tracing::warn!("backend response body framing broken");
        let message = "backend sent a malformed response";
        self.answer(StatusCode::BAD_GATEWAY, message, request, close)
            .await
    }

    /// The client cut or stalled its request body: its fault, 400 or 408,
    /// and the connection closes (the rest of the body is not coming).
    pub(super) async fn client_fault(
        &mut self,
        fault: ClientFault,
        request: &RequestPlan,
    ) -> After {
        tracing::debug!("pass-through request body broken by the client");
        let (status, message) = fault.status_and_message();
        self.answer(status, message, request, true).await;
        After::Close
    }
}

pub(super) fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "backend stopped reading the request",
    )
}
