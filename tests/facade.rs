//! The legacy V1 facade (CONTRACT 3.4): which V1 requests it serves and
//! which it forwards, held requests, cursors, exactly-once across polls,
//! the flag's rollback and a retired V1 endpoint served natively.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use realtime_edge::Sidecar;
use realtime_edge_sim::Simulator;
use serde_json::{Value, json};

const FINANCE: &str = "/finance/realtime/subscribe";

/// A rig with a short backend hold (so forwarded polls come back quickly)
/// and the facade on.
async fn facade_rig(extra: &str) -> (Simulator, Sidecar) {
    let sim = start_sim(Duration::from_millis(300)).await;
    let sc = start_sidecar(config(&sim.base_url(), extra)).await;
    set_flags(&sc, "REALTIME_V1_FACADE=true").await;
    (sim, sc)
}

async fn v1_get(sc: &Sidecar, query: &str, token: Option<&str>) -> (u16, http::HeaderMap, Value) {
    let url = format!("http://{}{FINANCE}{query}", sc.client_addr);
    let (status, headers, body) = http("GET", &url, token, None).await;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, headers, v)
}

fn publish(sim: &Simulator, org: u64, n: usize) -> Vec<String> {
    sim.state
        .publish(org, "finance", (0..n).map(|i| json!({ "n": i })).collect())
}

fn ids(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {answer}"))
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_string())
        .collect()
}

/// The sidecar's cursors are opaque base64url; the simulated backend's are `c<hex>`.
fn is_backend_cursor(answer: &Value) -> bool {
    answer["cursor"]
        .as_str()
        .and_then(|c| c.strip_prefix('c'))
        .is_some_and(|n| u64::from_str_radix(n, 16).is_ok())
}

fn backend_requests_for(sim: &Simulator, org: u64) -> u64 {
    sim.state.stats_json()["requestsByOrg"][org.to_string()]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn held_polls_get_each_event_exactly_once_from_one_shared_poller() {
    let (sim, sc) = facade_rig("").await;
    let t = token(11);
    // Twenty old clients poll at once: one upstream poll serves them all.
    let mut held = Vec::new();
    for _ in 0..20 {
        let addr_t = t.clone();
        let client = sc.client_addr;
        held.push(tokio::spawn(async move {
            let url = format!("http://{client}{FINANCE}");
            http("GET", &url, Some(&addr_t), None).await
        }));
    }
    pollers(&sim, 1).await;
    eventually("20 facade requests held", || async {
        held_now(&sc).await == 20.0
    })
    .await;
    let first = publish(&sim, 11, 1);
    let mut cursors = HashSet::new();
    for h in held {
        let (status, headers, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["cache-control"], "no-store");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ids(&v), first);
        assert!(!is_backend_cursor(&v));
        cursors.insert(v["cursor"].as_str().unwrap().to_string());
    }
    assert_eq!(
        sim.state.active_polls(),
        1,
        "still one upstream poll in flight"
    );

    // Events published between polls are answered at once on the next poll,
    // in order, and never again.
    let cursor = cursors.into_iter().next().unwrap();
    let mut expected = publish(&sim, 11, 3);
    expected.extend(publish(&sim, 11, 2));
    let mut got = Vec::new();
    let mut cursor = cursor;
    while got.len() < expected.len() {
        let (status, _, v) = v1_get(&sc, &format!("?since={cursor}"), Some(&t)).await;
        assert_eq!(status, 200, "{v}");
        got.extend(ids(&v));
        cursor = v["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(got, expected);
    // Nothing new: held until the next event, which alone is answered.
    let next = {
        let sc_addr = sc.client_addr;
        let (t, cursor) = (t.clone(), cursor.clone());
        tokio::spawn(async move {
            let url = format!("http://{sc_addr}{FINANCE}?since={cursor}");
            http("GET", &url, Some(&t), None).await
        })
    };
    eventually("the next poll is held", || async {
        held_now(&sc).await == 1.0
    })
    .await;
    let later = publish(&sim, 11, 1);
    let (status, _, body) = next.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ids(&serde_json::from_str(&body).unwrap()), later);
    assert_eq!(sidecar_metrics(&sc).await["facade"]["events"], 26);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_empty_hold_ends_with_no_events_and_a_cursor_that_loses_nothing() {
    let (sim, sc) = facade_rig("legacy: {facade_hold_s: 1}\n").await;
    let t = token(12);
    let (status, _, v) = v1_get(&sc, "", Some(&t)).await;
    assert_eq!(status, 200);
    assert_eq!(v["events"], json!([]));
    // Published while no request was held: the cursor still covers it.
    pollers(&sim, 1).await;
    let missed = publish(&sim, 12, 2);
    let cursor = v["cursor"].as_str().unwrap();
    let (_, _, v) = v1_get(&sc, &format!("?since={cursor}"), Some(&t)).await;
    assert_eq!(ids(&v), missed);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn requests_that_are_not_the_facades_go_to_the_backend_unchanged() {
    let (sim, sc) = facade_rig("").await;
    let t = token(13);

    // No token, a bad token: the backend's own 401.
    let (status, _, _) = v1_get(&sc, "", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = v1_get(&sc, "", Some("not-a-token")).await;
    assert_eq!(status, 401);

    // A parameter other than the cursor.
    let before = backend_requests_for(&sim, 13);
    let (status, _, v) = v1_get(&sc, "?propertyId=4", Some(&t)).await;
    assert_eq!(status, 200);
    assert!(is_backend_cursor(&v), "{v}");
    assert_eq!(backend_requests_for(&sim, 13), before + 1);

    // The backend's own cursor, a forged one: not ours.
    let (status, _, v) = v1_get(&sc, "?since=c0", Some(&t)).await;
    assert_eq!(status, 200);
    assert!(is_backend_cursor(&v));
    let forged = "AQAAAAAAAAAHAAAAAAAAAA0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (status, _, _) = v1_get(&sc, &format!("?since={forged}"), Some(&t)).await;
    assert_eq!(status, 400, "the backend refuses a cursor it never made");

    // Another org's facade cursor is not this org's.
    let (_, _, theirs) = {
        let other = token(14);
        let waiter = v1_get(&sc, "", Some(&other));
        let (r, _) = tokio::join!(waiter, async {
            pollers(&sim, 1).await;
            eventually("held", || async { held_now(&sc).await == 1.0 }).await;
            publish(&sim, 14, 1);
        });
        r
    };
    let theirs = theirs["cursor"].as_str().unwrap().to_string();
    assert!(!is_backend_cursor(&json!({ "cursor": theirs })));
    let (status, _, _) = v1_get(&sc, &format!("?since={theirs}"), Some(&t)).await;
    assert_eq!(status, 400);

    // A deny-listed org is forwarded.
    set_flags(&sc, "REALTIME_DENYLIST_ORGS=13").await;
    let (status, _, v) = v1_get(&sc, "", Some(&t)).await;
    assert_eq!(status, 200);
    assert!(is_backend_cursor(&v));

    assert!(
        metric(
            &sc,
            "streaming_facade_forwarded_total{reason=\"denylisted\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &sc,
            "streaming_facade_forwarded_total{reason=\"foreign_cursor\"}"
        )
        .await
            >= 3.0
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_cursor_from_an_earlier_run_is_forwarded() {
    let (sim, first) = facade_rig("legacy: {facade_hold_s: 1}\n").await;
    let t = token(15);
    let (_, _, v) = v1_get(&first, "", Some(&t)).await;
    let cursor = v["cursor"].as_str().unwrap().to_string();
    first.shutdown().await;
    let second = start_sidecar(config(&sim.base_url(), "")).await;
    set_flags(&second, "REALTIME_V1_FACADE=true").await;
    let (status, _, _) = v1_get(&second, &format!("?since={cursor}"), Some(&t)).await;
    assert_eq!(status, 400, "forwarded as is; the backend refuses it");
    second.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_cursor_outside_the_replay_window_becomes_a_first_poll_at_the_backend() {
    let (sim, sc) = facade_rig(
        "legacy: {facade_hold_s: 1}\nstream: {batch_window_ms: 5, replay_events: 5, hub_linger_ms: 60000}\n",
    )
    .await;
    let t = token(16);
    let (_, _, v) = v1_get(&sc, "", Some(&t)).await;
    let cursor = v["cursor"].as_str().unwrap().to_string();
    pollers(&sim, 1).await;
    publish(&sim, 16, 12);
    eventually("the window moved past the cursor", || async {
        let (status, _, v) = v1_get(&sc, &format!("?since={cursor}"), Some(&t)).await;
        status == 200 && is_backend_cursor(&v)
    })
    .await;
    assert!(
        metric(
            &sc,
            "streaming_facade_forwarded_total{reason=\"expired_cursor\"}"
        )
        .await
            >= 1.0
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn turning_the_facade_off_answers_held_polls_and_forwards_later_ones_without_the_cursor() {
    let (sim, sc) = facade_rig("").await;
    let t = token(17);
    let held = {
        let (addr, t) = (sc.client_addr, t.clone());
        tokio::spawn(async move {
            http("GET", &format!("http://{addr}{FINANCE}"), Some(&t), None).await
        })
    };
    eventually("held", || async { held_now(&sc).await == 1.0 }).await;
    set_flags(&sc, "REALTIME_V1_FACADE=false").await;
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"], json!([]));
    let cursor = v["cursor"].as_str().unwrap();
    // The backend sees a first poll (it would refuse our cursor with 400).
    let (status, _, v) = v1_get(&sc, &format!("?since={cursor}"), Some(&t)).await;
    assert_eq!(status, 200, "{v}");
    assert!(is_backend_cursor(&v));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_retired_v1_endpoint_is_served_from_the_native_stream() {
    let (sim, sc) = facade_rig("").await;
    set_flags(&sc, "FINANCE_REALTIME_V1=false").await;
    let t = token(18);
    let held = {
        let (addr, t) = (sc.client_addr, t.clone());
        tokio::spawn(async move {
            http("GET", &format!("http://{addr}{FINANCE}"), Some(&t), None).await
        })
    };
    eventually("the native link is up", || async {
        sim.state.native_active() == 1
    })
    .await;
    eventually("held", || async { held_now(&sc).await == 1.0 }).await;
    let want = publish(&sim, 18, 1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ids(&serde_json::from_str(&body).unwrap()), want);
    assert_eq!(backend_requests_for(&sim, 18), 0, "no V1 request at all");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn past_the_held_cap_new_polls_get_503() {
    let (sim, sc) = facade_rig("legacy: {facade_max_held: 1}\n").await;
    let t = token(19);
    let held = {
        let (addr, t) = (sc.client_addr, t.clone());
        tokio::spawn(async move {
            http("GET", &format!("http://{addr}{FINANCE}"), Some(&t), None).await
        })
    };
    eventually("held", || async { held_now(&sc).await == 1.0 }).await;
    let (status, _, v) = v1_get(&sc, "", Some(&t)).await;
    assert_eq!(status, 503);
    assert!(v["error"].as_str().is_some(), "{v}");
    pollers(&sim, 1).await;
    publish(&sim, 19, 1);
    assert_eq!(held.await.unwrap().0, 200);
    sc.shutdown().await;
    sim.shutdown().await;
}

/// V1 requests this sidecar holds now.
async fn held_now(sc: &Sidecar) -> f64 {
    sidecar_metrics(sc).await["facade"]["held"]
        .as_f64()
        .unwrap_or(-1.0)
}

/// One series' value from the Prometheus text, 0 when absent.
fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn metric(sc: &Sidecar, series: &str) -> f64 {
    let (_, _, text) = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await;
    metric_value(&text, series)
}
