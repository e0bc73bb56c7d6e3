//! Old clients that long-poll the V1 endpoints themselves, as browsers do
//! before they migrate: poll, receive, poll again with the cursor. They
//! poll the backend directly (the baseline) or through the sidecar (the V1
//! facade, or pass-through when it is off), and record each event's
//! delivery latency from the `t_us` the generator wrote into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::histogram::Histogram;
use super::worker::publish_times;

/// A crowd of V1 long-poll loops.
pub(crate) struct V1Clients {
    running: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// Publish-to-answer latency of every event received, in microseconds.
    pub(crate) latency: Arc<Histogram>,
}

impl V1Clients {
    /// `clients` browsers spread over orgs 1..=orgs, each polling every path
    /// of `paths` at `base_url` (no trailing slash).
    pub(crate) fn start(
        base_url: &str,
        paths: &[String],
        clients: usize,
        orgs: u64,
        secret: &str,
    ) -> V1Clients {
        let running = Arc::new(AtomicBool::new(true));
        let latency = Arc::new(Histogram::default());
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(20_000)
            .build_http();
        let mut tasks = Vec::with_capacity(clients * paths.len());
        for i in 0..clients {
            let org = 1 + (i as u64 % orgs.max(1));
            let token = realtime_edge::auth::mint_hs256(secret, "orgId", org, 3600);
            for path in paths {
                tasks.push(tokio::spawn(poll_loop(
                    client.clone(),
                    format!("{base_url}{path}"),
                    token.clone(),
                    running.clone(),
                    latency.clone(),
                )));
            }
        }
        V1Clients {
            running,
            tasks,
            latency,
        }
    }

    pub(crate) fn stop(self) {
        self.running.store(false, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn poll_loop(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    base: String,
    token: String,
    running: Arc<AtomicBool>,
    latency: Arc<Histogram>,
) {
    let mut cursor: Option<String> = None;
    while running.load(Ordering::Relaxed) {
        let url = match &cursor {
            Some(c) => format!("{base}?since={c}"),
            None => base.clone(),
        };
        let Ok(req) = http::Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
        else {
            return;
        };
        let Ok(resp) = client.request(req).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ok = resp.status().is_success();
        let Ok(body) = resp.into_body().collect().await else {
            continue;
        };
        let body = body.to_bytes();
        if !ok {
            // A refusal (503 past a cap, 400 for a stale cursor): start over.
            cursor = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let now = realtime_edge::clock::unix_micros();
        if let Ok(text) = std::str::from_utf8(&body) {
            for t in publish_times(text) {
                latency.record(now.saturating_sub(t).max(0) as u64);
            }
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            cursor = v["cursor"].as_str().map(String::from);
        }
    }
}
