//! The simulated backend itself: V1 long-polls, the native stream, faults, counters.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn v1_url(sim: &realtime_edge_sim::Simulator, since: Option<&str>) -> String {
    match since {
        Some(c) => format!("{}/finance/realtime/subscribe?since={c}", sim.base_url()),
        None => format!("{}/finance/realtime/subscribe", sim.base_url()),
    }
}

#[tokio::test]
async fn long_poll_holds_then_answers_on_publish_with_cursor_progression() {
    let sim = start_sim(Duration::from_secs(20)).await;
    let t = token(1);
    let url = v1_url(&sim, None);
    let poll = tokio::spawn({
        let t = t.clone();
        async move { http("GET", &url, Some(&t), None).await }
    });
    eventually("the request is held", || async {
        sim.state.stats_json()["activePollsTotal"] == 1
    })
    .await;
    assert!(!poll.is_finished());
    let ids = sim
        .state
        .publish(1, "finance", vec![json!({"propertyId": 3})]);
    let (status, _, body) = poll.await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["eventId"], ids[0].as_str());
    assert_eq!(v["events"][0]["orgId"], 1);
    let cursor = v["cursor"].as_str().unwrap().to_string();

    // Pending events after the cursor are answered at once.
    let more = sim.state.publish(1, "finance", vec![json!({}), json!({})]);
    let (_, _, body) = http("GET", &v1_url(&sim, Some(&cursor)), Some(&t), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let got: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(got, more.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(v["cursor"].as_str().unwrap(), cursor);
    sim.shutdown().await;
}

#[tokio::test]
async fn hold_times_out_empty_and_orgs_are_separate() {
    let sim = start_sim(Duration::from_millis(300)).await;
    sim.state.publish(2, "finance", vec![json!({})]);
    let (status, _, body) = http("GET", &v1_url(&sim, Some("c0")), Some(&token(1)), None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"], json!([]), "org 1 never sees org 2's events");
    assert!(v["cursor"].is_string());
    let (_, _, body) = http("GET", &v1_url(&sim, Some("c0")), Some(&token(2)), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let stats = sim.state.stats_json();
    assert_eq!(stats["requestsByService"]["finance"], 2);
    assert_eq!(stats["requestsByOrg"]["1"], 1);
    assert_eq!(stats["requestsByOrg"]["2"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn unauthorized_and_faults() {
    use realtime_edge_sim::Fault;
    let sim = start_sim(Duration::from_millis(200)).await;
    let (status, _, _) = http("GET", &v1_url(&sim, None), None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = http(
        "GET",
        &v1_url(&sim, None),
        Some(&realtime_edge::auth::mint_hs256("x", "orgId", 1, 60)),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(sim.state.stats_json()["unauthorized"], 2);
    let t = token(1);
    sim.state.set_fault("finance", Fault::Status(500));
    assert_eq!(
        http("GET", &v1_url(&sim, None), Some(&t), None).await.0,
        500
    );
    sim.state.set_fault("finance", Fault::Garbage);
    let (status, _, body) = http("GET", &v1_url(&sim, None), Some(&t), None).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err());
    sim.state.set_fault("finance", Fault::Slow(50));
    assert_eq!(
        http("GET", &v1_url(&sim, None), Some(&t), None).await.0,
        200
    );
    // The other services are untouched by finance's fault.
    let (status, _, _) = http(
        "GET",
        &format!("{}/staff/realtime/subscribe", sim.base_url()),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Drop: the answer breaks off.
    sim.state.set_fault("finance", Fault::Drop);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::get(v1_url(&sim, None))
        .header("authorization", format!("Bearer {t}"))
        .body(Default::default())
        .unwrap();
    let broken = match client.request(req).await {
        Err(_) => true,
        Ok(resp) => http_body_util::BodyExt::collect(resp.into_body())
            .await
            .is_err(),
    };
    assert!(broken);
    // Hang: no answer while the fault lasts.
    sim.state.set_fault("finance", Fault::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(500),
        http("GET", &v1_url(&sim, None), Some(&t), None),
    )
    .await;
    assert!(hung.is_err());
    // Control API over HTTP.
    let (status, _, body) = http(
        "POST",
        &format!("{}/_sim/fault", sim.base_url()),
        None,
        Some((
            "application/json",
            json!({"service": "finance", "kind": "none"}).to_string(),
        )),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http("GET", &v1_url(&sim, None), Some(&t), None).await.0,
        200
    );
    let (status, _, _) = http(
        "POST",
        &format!("{}/_sim/fault", sim.base_url()),
        None,
        Some((
            "application/json",
            json!({"service": "finance", "kind": "boom"}).to_string(),
        )),
    )
    .await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}

async fn native(sim: &realtime_edge_sim::Simulator, org: u64, hello: Value) -> (Ws, Value) {
    let mut req = format!("ws://{}/v2/realtime/stream", sim.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(org)).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    (ws, ack)
}

#[tokio::test]
async fn native_stream_handshake_events_resume_and_counters() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let (mut ws, ack) = native(&sim, 1, hello(&["finance", "staff"])).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["resumed"], false);
    assert_eq!(sim.state.stats_json()["nativeActive"], 1);
    let a = sim.state.publish(1, "finance", vec![json!({}), json!({})]);
    sim.state.publish(1, "tasks", vec![json!({})]);
    sim.state.publish(2, "finance", vec![json!({})]);
    let b = sim.state.publish(1, "staff", vec![json!({})]);
    let m = next_non_ping(&mut ws).await;
    assert_eq!(m["type"], "event");
    assert_eq!(m["service"], "finance");
    let got: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(got, a.iter().map(String::as_str).collect::<Vec<_>>());
    let seq_after_a = m["seq"].as_u64().unwrap();
    let m = next_non_ping(&mut ws).await;
    assert_eq!(
        m["service"], "staff",
        "tasks is not subscribed; org 2 is not ours"
    );
    assert_eq!(m["events"][0]["eventId"], b[0].as_str());
    drop(ws);

    // Resume after the finance batch: exactly the staff event comes again.
    let (mut ws, ack) = native(
        &sim,
        1,
        json!({"services": ["finance", "staff"], "version": 1, "lastSeq": seq_after_a}),
    )
    .await;
    assert_eq!(ack["resumed"], true);
    let m = next_non_ping(&mut ws).await;
    assert_eq!(m["events"][0]["eventId"], b[0].as_str());
    eventually("counters", || async {
        sim.state.stats_json()["nativeTotal"] == 2
    })
    .await;

    // The native fault closes connections and refuses new ones.
    sim.state.set_native_down(true);
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let mut req = format!("ws://{}/v2/realtime/stream", sim.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(1)).parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    sim.state.set_native_down(false);
    let (_ws, ack) = native(&sim, 1, hello(&["finance"])).await;
    assert_eq!(ack["type"], "ack");
    sim.shutdown().await;
}

#[tokio::test]
async fn native_stream_refuses_bad_handshakes() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let (mut ws, err) = native(&sim, 1, json!({"services": ["finance"], "version": 9})).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "UNSUPPORTED_VERSION");
    assert_eq!(close_code(&mut ws).await, Some(1008));
    sim.shutdown().await;
}

#[tokio::test]
async fn generator_publishes_to_every_org() {
    let listener = realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let sim = realtime_edge_sim::Simulator::start(
        realtime_edge_sim::SimConfig {
            jwt_secret: SECRET.into(),
            generator: Some(realtime_edge_sim::GeneratorConfig {
                events_per_second: 2000,
                orgs: 3,
                properties: 2,
                services: vec!["finance".into()],
            }),
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    eventually("events for orgs 1..=3", || async {
        (1..=3).all(|o| sim.state.with_org(o, |log| log.last > 0))
    })
    .await;
    sim.shutdown().await;
}
