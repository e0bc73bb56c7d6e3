//! What ops watch: the JSON metrics and the Prometheus text.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn metrics_report_connections_events_latency_and_errors() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    pollers(&sim, 2).await;
    let ids = sim
        .state
        .publish(1, "finance", vec![json!({}), json!({}), json!({})]);
    collect_ids(&mut ws, &ids.iter().cloned().collect()).await;
    // A refused stream counts as an auth error.
    let (status, _, _) = http(
        "GET",
        &format!("http://{}/v2/realtime/stream", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);

    let m = sidecar_metrics(&sc).await;
    assert_eq!(m["activeConnections"], 1, "{m}");
    assert_eq!(m["totalConnections"], 1);
    assert_eq!(m["eventsDelivered"], 3);
    assert_eq!(m["eventsByService"]["finance"], 3);
    assert!(m["errorCount"].as_u64().unwrap() >= 1);
    assert!(m["avgLatencyMs"].as_f64().unwrap() >= 0.0);
    assert_eq!(m["connectionsByMode"]["poll"], 1);
    assert_eq!(m["activeOrgs"], 1);
    assert!(m["upstream"]["v1Polls"].as_u64().unwrap() >= 1);
    assert!(m["flagsVersion"].as_u64().unwrap() >= 1);

    let (status, headers, text) = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for name in [
        "streaming_active_connections",
        "streaming_avg_latency_ms",
        "streaming_errors{kind=\"auth\"}",
        "streaming_delivery_latency_seconds_bucket{mode=\"poll\"",
        "streaming_events_delivered_total{service=\"finance\"}",
        "streaming_upstream_requests_total{service=\"finance\",mode=\"poll\",status=\"2xx\"}",
        "streaming_upstream_pollers",
        "streaming_flags_version",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(text.contains("# TYPE streaming_errors counter"));
    assert!(text.contains("# TYPE streaming_active_connections gauge"));

    // Gone connections leave every count.
    drop(ws);
    eventually("connection gone", || async {
        sidecar_metrics(&sc).await["activeConnections"] == 0
    })
    .await;
    eventually("mode counts back to zero", || async {
        let m = sidecar_metrics(&sc).await;
        m["connectionsByMode"] == json!({"poll": 0, "native": 0, "mixed": 0})
    })
    .await;
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Native link attempts are counted by outcome: a link that connects is a
/// successful upstream request (the upstream-error alert must not see it as
/// a failure), a link that cannot connect at all is a failed one. One test,
/// in this order, because the Prometheus recorder is process-wide.
#[tokio::test]
async fn native_links_count_as_upstream_requests_by_outcome() {
    let (sim, sc) = rig("").await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=9").await;
    let (ws, ack) = subscribe(sc.client_addr, 9, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native", "{ack}");
    eventually("native link open", || async {
        sim.state.native_active() >= 1
    })
    .await;
    let url = format!("http://{}/metrics", sc.admin_addr);
    let native_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                l.starts_with("streaming_upstream_requests_total{") && l.contains("mode=\"native\"")
            })
            .map(str::to_string)
            .collect()
    };
    eventually("the link is counted", || async {
        let (_, _, text) = http("GET", &url, None, None).await;
        native_lines(&text)
            .iter()
            .any(|l| l.contains("status=\"2xx\""))
    })
    .await;
    let (_, _, text) = http("GET", &url, None, None).await;
    for line in native_lines(&text) {
        assert!(
            line.contains("status=\"2xx\""),
            "a healthy link counted as {line}"
        );
    }
    drop(ws);
    sc.shutdown().await;
    sim.shutdown().await;

    // A port nothing listens on: bind, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config(
        "",
        &format!("upstream: {{base_url: \"http://{closed}\", native_fallback_s: 30}}\n"),
    );
    let sc = start_sidecar(cfg).await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=11").await;
    let (_ws, ack) = subscribe(sc.client_addr, 11, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native", "{ack}");
    let url = format!("http://{}/metrics", sc.admin_addr);
    eventually("the refused link is counted", || async {
        let (_, _, text) = http("GET", &url, None, None).await;
        native_lines(&text)
            .iter()
            .any(|l| l.contains("status=\"error\""))
    })
    .await;
    sc.shutdown().await;
}
