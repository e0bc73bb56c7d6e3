//! Everything but the stream goes to the backend unchanged.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn http_request_with_streamed_body_passes_through() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    // A body sent in chunks, without a length, as a streaming client would.
    let chunks: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = (0..64)
        .map(|i| {
            Ok(Frame::data(bytes::Bytes::from(
                format!("chunk-{i:03};").repeat(100),
            )))
        })
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = http::Request::post(format!("http://{}/_sim/echo?a=1&b=two", sc.client_addr))
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(body)
        .unwrap();
    let client: Client<_, StreamBody<_>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let meta: serde_json::Value =
        serde_json::from_str(resp.headers()["x-echo-meta"].to_str().unwrap()).unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let expected: String = (0..64)
        .map(|i| format!("chunk-{i:03};").repeat(100))
        .collect();
    assert_eq!(body.len(), expected.len());
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
    assert_eq!(meta["method"], "POST");
    assert_eq!(meta["path"], "/_sim/echo");
    assert_eq!(meta["query"], "a=1&b=two");
    assert_eq!(meta["headers"]["x-custom"], "kept");
    assert!(
        meta["headers"].get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(meta["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(meta["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        meta["headers"]["x-forwarded-host"],
        sc.client_addr.to_string()
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Sends `msg` and expects it back unchanged.
async fn echoes(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn other_websockets_are_relayed() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/_sim/ws-echo", sc.client_addr))
            .await
            .unwrap();
    for i in 0..20 {
        echoes(&mut ws, Message::Text(format!("hello {i}").into())).await;
    }
    echoes(&mut ws, Message::Binary(vec![0u8, 1, 2, 255].into())).await;
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn backend_down_gives_502_json() {
    // A port that nothing listens on.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let sc = start_sidecar(config(&dead, "")).await;
    let (status, headers, body) = http(
        "GET",
        &format!("http://{}/anything", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].is_string());
    sc.shutdown().await;
}

/// A keep-alive HTTP/1.1 backend on raw sockets that counts the connections
/// it accepted. It answers every request head with 200 "ok" at once (before
/// reading a request body, whose `content-length` bytes it then reads and
/// discards), and with `close_after_answer` closes the connection after each
/// answer without saying so, as a backend dropping idle connections does.
/// Returns its URL and the numbers of connections accepted and closed.
async fn counting_backend(
    close_after_answer: bool,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counter, closes) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let closes = closes.clone();
            let serve = async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut body_left: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    buf.drain(..end + 4);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if close_after_answer {
                        return;
                    }
                    while body_left > 0 {
                        if buf.is_empty() {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let take = body_left.min(buf.len());
                        buf.drain(..take);
                        body_left -= take;
                    }
                }
            };
            tokio::spawn(async move {
                serve.await; // the socket is closed when this returns
                closes.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, accepted, closed)
}

#[tokio::test]
async fn requests_one_after_another_share_one_backend_connection() {
    let (backend, accepted, _) = counting_backend(false).await;
    let sc = start_sidecar(config(&backend, "")).await;
    for i in 0..5 {
        let (status, _, body) = http(
            "GET",
            &format!("http://{}/item/{i}", sc.client_addr),
            None,
            None,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the idle backend connection is reused"
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn idle_backend_connections_the_backend_closed_are_replaced() {
    let (backend, accepted, closed) = counting_backend(true).await;
    let sc = start_sidecar(config(&backend, "")).await;
    for i in 0..4 {
        // The backend closed the previous connection before this request.
        eventually("the backend closed its connection", || {
            let closed = closed.clone();
            async move { closed.load(std::sync::atomic::Ordering::SeqCst) == i }
        })
        .await;
        let (status, _, body) = http(
            "GET",
            &format!("http://{}/item/{i}", sc.client_addr),
            None,
            None,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    sc.shutdown().await;
}

#[tokio::test]
async fn an_upload_answered_before_it_was_read_completes_and_the_next_request_works() {
    let (backend, accepted, _) = counting_backend(false).await;
    let sc = start_sidecar(config(&backend, "")).await;
    let upload = "x".repeat(512 * 1024);
    let (status, _, body) = http(
        "POST",
        &format!("http://{}/upload", sc.client_addr),
        None,
        Some(("application/octet-stream", upload)),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, body) = http(
        "GET",
        &format!("http://{}/after", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The upload's connection finishes sending the body on its own and is
    // then reused, unless the GET came before it was back.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&n), "{n} backend connections");
    sc.shutdown().await;
}
