//! Shared helpers: the simulated backend and the sidecar on loopback port 0,
//! a stream client, and bounded waiting.
#![allow(dead_code)]

pub mod redis;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::{Listeners, Sidecar};
use realtime_edge_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// A fresh directory under the system temp dir, unique per call.
pub fn unique_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!(
        "re-{tag}-{}-{n}-{}",
        std::process::id(),
        realtime_edge::clock::unix_micros()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn token(org: u64) -> String {
    realtime_edge::auth::mint_hs256(SECRET, "orgId", org, 3600)
}

pub async fn start_sim(hold: Duration) -> Simulator {
    let listener = realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into()).unwrap();
    Simulator::start(
        SimConfig {
            jwt_secret: SECRET.into(),
            hold,
            ping_interval: Duration::from_secs(5),
            ..SimConfig::default()
        },
        listener,
    )
    .await
    .unwrap()
}

/// Sidecar config for tests: loopback port 0, the test secret, no flags file
/// unless `extra` sets one. `extra` is YAML merged at the top level.
pub fn config(backend: &str, extra: &str) -> Config {
    let mut yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nauth: {{jwt_secret: \"{SECRET}\"}}\n"
    );
    if !extra.contains("upstream:") {
        yaml.push_str(&format!(
            "upstream: {{base_url: \"{backend}\", native_fallback_s: 2}}\n"
        ));
    }
    if !extra.contains("flags:") {
        yaml.push_str("flags: {file: null}\n");
    }
    if !extra.contains("stream:") {
        yaml.push_str("stream: {batch_window_ms: 20, hub_linger_ms: 500}\n");
    }
    yaml.push_str(extra);
    Config::from_yaml("test.yaml", &yaml, &EnvSecrets::default()).unwrap()
}

/// The simulated backend (25 s hold) and a sidecar in front of it.
pub async fn rig(extra: &str) -> (Simulator, Sidecar) {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), extra)).await;
    (sim, sc)
}

/// Waits until `n` V1 requests are parked at the backend.
pub async fn pollers(sim: &Simulator, n: i64) {
    eventually(&format!("{n} parked V1 polls"), || async {
        sim.state.active_polls() == n
    })
    .await;
}

pub async fn start_sidecar(cfg: Config) -> Sidecar {
    let listeners = Listeners::bind(&cfg).await.unwrap();
    Sidecar::start(cfg, listeners).await.unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn stream_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/v2/realtime/stream")
}

pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
    let mut req = stream_url(addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// Sends a handshake on an open stream and returns the ack.
pub async fn handshake(ws: &mut Ws, handshake: &Value) -> Value {
    ws.send(Message::Text(handshake.to_string().into()))
        .await
        .unwrap();
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// Connects, sends a handshake and returns the client with the ack.
pub async fn subscribe(addr: SocketAddr, org: u64, hs: Value) -> (Ws, Value) {
    let mut ws = connect(addr, &token(org)).await;
    let ack = handshake(&mut ws, &hs).await;
    (ws, ack)
}

pub fn hello(services: &[&str]) -> Value {
    json!({"services": services, "version": 1})
}

/// The next text message as JSON; pings are returned too.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

/// The next message that is not a ping.
pub async fn next_non_ping(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "ping" {
            return v;
        }
    }
}

/// The close code the server ends the stream with (None: ended without a close frame).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// Reads event messages until every id in `want` arrived; returns every
/// eventId received in order (duplicates included) and the messages.
pub async fn collect_ids(ws: &mut Ws, want: &HashSet<String>) -> (Vec<String>, Vec<Value>) {
    let mut got = Vec::new();
    let mut msgs = Vec::new();
    let mut seen = HashSet::new();
    while !want.iter().all(|w| seen.contains(w)) {
        let v = next_json(ws).await;
        if v["type"] == "event" {
            for e in v["events"].as_array().unwrap() {
                let id = e["eventId"].as_str().unwrap().to_string();
                seen.insert(id.clone());
                got.push(id);
            }
        }
        msgs.push(v);
    }
    (got, msgs)
}

/// Reads for `quiet` and returns the eventIds of events that arrived meanwhile.
pub async fn drain_ids(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "event" {
                for e in v["events"].as_array().unwrap() {
                    got.push(e["eventId"].as_str().unwrap().to_string());
                }
            }
        }
    }
    got
}

/// Polls `check` every 20 ms until it is true; panics after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 request on loopback; returns status, headers and body.
pub async fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let payload = match body {
        Some((ct, text)) => {
            b = b.header("content-type", ct);
            text
        }
        None => String::new(),
    };
    let req = b.body(Full::new(bytes::Bytes::from(payload))).unwrap();
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get_json(url: &str, token: Option<&str>) -> Value {
    let (status, _, body) = http("GET", url, token, None).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn sidecar_metrics(sidecar: &Sidecar) -> Value {
    get_json(
        &format!("http://{}/v2/realtime/metrics", sidecar.admin_addr),
        None,
    )
    .await
}

pub async fn set_flags(sidecar: &Sidecar, form: &str) -> Value {
    let (status, _, body) = http(
        "POST",
        &format!("http://{}/feature-flags", sidecar.admin_addr),
        None,
        Some(("application/x-www-form-urlencoded", form.to_string())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
