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
