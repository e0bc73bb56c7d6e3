//! Slow and broken peers cannot hold the sidecar's slots: a backend that
//! never answers (504), a client whose chunked body is malformed (400, the
//! client's fault), header-trickling clients, and half-sent admin bodies.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that accepts connections and never answers; keeps them open.
async fn silent_backend() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (url, task)
}

/// Sends raw bytes and reads until the peer closes; returns what came back.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the sidecar closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_backend_without_an_answer_gives_504_json() {
    let (backend, task) = silent_backend().await;
    let sc = start_sidecar(config(&backend, "passthrough: {response_timeout_s: 1}\n")).await;
    let (status, headers, body) = http(
        "GET",
        &format!("http://{}/slow", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("1 s"), "{v}");
    sc.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let answer = raw_exchange(
        sc.client_addr,
        b"POST /_sim/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\nzz-not-a-size\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_after_the_idle_timeout() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(
        &sim.base_url(),
        "passthrough: {idle_timeout_s: 1}\n",
    ))
    .await;
    // 3 of 100 promised bytes, then nothing.
    let answer = raw_exchange(
        sc.client_addr,
        b"POST /_sim/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\nabc",
    )
    .await;
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 408")
            || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    // Whatever the exchange looked like, the slot is free again.
    let (status, _, _) = http(
        "GET",
        &format!("http://{}/_sim/echo", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn header_tricklers_are_dropped_on_both_listeners() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), "limits: {header_timeout_s: 1}\n")).await;
    for addr in [sc.client_addr, sc.admin_addr] {
        // Headers that never end: the connection is closed, not held.
        let answer = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: a").await;
        assert!(!answer.contains("200 OK"), "{answer}");
        // Nothing at all, and an idle keep-alive connection after a request.
        assert_eq!(raw_exchange(addr, b"").await, "");
        let answer = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1"), "{answer}");
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn half_sent_admin_bodies_do_not_fill_the_admin_listener() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(
        &sim.base_url(),
        "limits: {admin_body_timeout_s: 1, admin_connections: 4}\n",
    ))
    .await;
    // As many half-sent POSTs as the admin listener has slots.
    let mut posts = Vec::new();
    for _ in 0..4 {
        let addr = sc.admin_addr;
        posts.push(tokio::spawn(async move {
            raw_exchange(
                addr,
                b"POST /feature-flags HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\ncontent-type: application/x-www-form-urlencoded\r\n\r\nREA",
            )
            .await
        }));
    }
    for p in posts {
        let answer = p.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let (status, _, _) = http(
        "GET",
        &format!("http://{}/healthz", sc.admin_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_after_the_idle_timeout() {
    // A backend that promises 100 bytes, sends 3 and stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                .await;
            held.push(s);
        }
    });
    let sc = start_sidecar(config(&backend, "passthrough: {idle_timeout_s: 1}\n")).await;
    let answer = raw_exchange(
        sc.client_addr,
        b"GET /stall HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body, "abc", "the body is cut, the connection closed");
    sc.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn an_idle_relayed_websocket_is_closed_with_1001() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(
        &sim.base_url(),
        "passthrough: {idle_timeout_s: 1}\n",
    ))
    .await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/_sim/ws-echo", sc.client_addr))
            .await
            .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert_eq!(back.unwrap().unwrap(), Message::Text("hi".into()));
    // Then nothing either way: the relay closes it.
    assert_eq!(close_code(&mut ws).await, Some(1001));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_upload_that_keeps_moving_outlasts_the_response_timeout() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    // A backend that answers only once the whole (chunked) body arrived.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.ends_with(b"0\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nreceived")
                    .await;
            });
        }
    });
    let sc = start_sidecar(config(
        &backend,
        "passthrough: {response_timeout_s: 1, idle_timeout_s: 10}\n",
    ))
    .await;
    // Seven chunks 300 ms apart: the upload takes longer than the response
    // timeout, which only starts once the body is sent.
    let chunks = Box::pin(futures_util::stream::unfold(0u32, |i| async move {
        if i == 7 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let frame: Result<Frame<bytes::Bytes>, std::io::Error> =
            Ok(Frame::data(bytes::Bytes::from(format!("part-{i};"))));
        Some((frame, i + 1))
    }));
    let req = http::Request::post(format!("http://{}/upload", sc.client_addr))
        .body(StreamBody::new(chunks))
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"received");
    sc.shutdown().await;
    task.abort();
}
