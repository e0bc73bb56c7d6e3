//! Trustworthy delivery, end to end: byte-bounded messages, oversized
//! events, resume across an absence (CONTRACT 2.1, 2.2).

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};

fn ids(v: &[String]) -> HashSet<String> {
    v.iter().cloned().collect()
}

fn padded(bytes: usize) -> Value {
    json!({ "pad": "x".repeat(bytes) })
}

/// Every event message respects the byte bound, or carries one event.
fn assert_byte_bounded(msgs: &[Value], max_bytes: usize) {
    for m in msgs.iter().filter(|m| m["type"] == "event") {
        let events = m["events"].as_array().unwrap();
        let bytes: usize = events.iter().map(|e| e.to_string().len() + 1).sum();
        assert!(
            events.len() == 1 || bytes <= max_bytes,
            "a message of {} events carries {bytes} bytes",
            events.len()
        );
    }
}

/// Issue 16 item 1: 100 events of 8 KB (a batch far above 256 KiB) reach a
/// reading client, in messages of at most `batch_max_bytes`, in both modes.
#[tokio::test]
async fn a_large_burst_reaches_a_reading_client_in_both_modes() {
    let (sim, sc) = rig("").await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=2").await;
    let (mut polled, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (mut native, ack) = subscribe(sc.client_addr, 2, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native");
    pollers(&sim, 1).await;
    eventually("one native link", || async {
        sim.state.stats_json()["nativeActive"] == 1
    })
    .await;
    for (org, ws) in [(1u64, &mut polled), (2, &mut native)] {
        let burst = sim
            .state
            .publish(org, "finance", (0..100).map(|_| padded(8 * 1024)).collect());
        let (got, msgs) = collect_ids(ws, &ids(&burst)).await;
        assert_eq!(got, burst, "org {org}: every event once, in order");
        assert_byte_bounded(&msgs, 65_536);
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

fn small_events_config(backend: &str) -> realtime_edge::config::Config {
    config(
        backend,
        "stream: {batch_window_ms: 20, hub_linger_ms: 500, max_event_bytes: 4096, batch_max_bytes: 4096, max_queue_bytes: 65536}\n",
    )
}

/// Issue 16 item 2: an event over `max_event_bytes` is reported with
/// `EVENT_TOO_LARGE` naming it, never delivered, never replayed; the
/// stream goes on and a resume across it is not closed.
#[tokio::test]
async fn an_oversized_event_is_reported_and_never_replayed() {
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let sc = start_sidecar(small_events_config(&sim.base_url())).await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let before = sim.state.publish(1, "finance", vec![json!({})]);
    let (_, msgs) = collect_ids(&mut ws, &ids(&before)).await;
    let last_seq = msgs.last().unwrap()["seq"].as_u64().unwrap();

    let big = sim.state.publish(
        1,
        "finance",
        vec![json!({"eventId": "huge-1", "pad": "x".repeat(8192)})],
    );
    assert_eq!(big, ["huge-1"]);
    let err = next_non_ping(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "EVENT_TOO_LARGE");
    assert_eq!(err["service"], "finance");
    assert!(err["message"].as_str().unwrap().contains("huge-1"), "{err}");
    let after = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut ws, &ids(&after)).await;
    assert_eq!(got, after, "the stream goes on");

    let (mut back, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": last_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true, "{ack}");
    let (got, _) = collect_ids(&mut back, &ids(&after)).await;
    assert_eq!(got, after, "the replay skips the oversized event");
    let m = sidecar_metrics(&sc).await;
    assert!(m["errorCount"].as_u64().unwrap() >= 1, "{m}");
    sc.shutdown().await;
    sim.shutdown().await;
}

/// A resume whose replay is larger than the client's queue still arrives
/// whole: the replay is not counted against `max_queue_bytes`.
#[tokio::test]
async fn a_replay_larger_than_the_queue_arrives_whole() {
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let sc = start_sidecar(small_events_config(&sim.base_url())).await;
    let (mut keeper, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let first = sim.state.publish(1, "finance", vec![json!({})]);
    let (_, msgs) = collect_ids(&mut keeper, &ids(&first)).await;
    let last_seq = msgs.last().unwrap()["seq"].as_u64().unwrap();
    // 40 events of 3 KB: about twice the 64 KiB queue.
    let mut missed = Vec::new();
    for _ in 0..4 {
        let part = sim
            .state
            .publish(1, "finance", (0..10).map(|_| padded(3000)).collect());
        // Once the keeper has them, the hub has them.
        collect_ids(&mut keeper, &ids(&part)).await;
        missed.extend(part);
    }
    let (mut back, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": last_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true);
    let (got, msgs) = collect_ids(&mut back, &ids(&missed)).await;
    assert_eq!(got, missed);
    assert_byte_bounded(&msgs, 4096);
    sc.shutdown().await;
    sim.shutdown().await;
}

/// The chaos soak's 1013 (issue 16): a burst of legal events many times
/// larger than the client's queue, and larger than the org's replay window
/// (a V1 answer after a long upstream outage, a resumed native backlog),
/// reaches the hub in one go and is pushed in one turn, before the
/// connection could write anything. A client that reads gets every event
/// once and in order, in both modes, and then live events again; it is not
/// closed with 1013.
#[tokio::test]
async fn a_burst_larger_than_the_queue_and_the_window_reaches_a_reading_client() {
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let sc = start_sidecar(config(
        &sim.base_url(),
        "stream: {batch_window_ms: 20, hub_linger_ms: 500, max_event_bytes: 4096, batch_max_bytes: 4096, max_queue_bytes: 65536, replay_events: 100}\n",
    ))
    .await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=2").await;
    let (mut polled, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (mut native, ack) = subscribe(sc.client_addr, 2, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native");
    pollers(&sim, 1).await;
    eventually("one native link", || async {
        sim.state.stats_json()["nativeActive"] == 1
    })
    .await;
    for (org, ws) in [(1u64, &mut polled), (2, &mut native)] {
        // 300 events of 3 KB: about 14 times the 64 KiB queue, three times
        // the 100 events of the window.
        let burst = sim
            .state
            .publish(org, "finance", (0..300).map(|_| padded(3000)).collect());
        let (got, msgs) = collect_ids(ws, &ids(&burst)).await;
        assert_eq!(got, burst, "org {org}: every event once, in order");
        assert_byte_bounded(&msgs, 4096);
        let live = sim.state.publish(org, "finance", vec![json!({})]);
        let (got, _) = collect_ids(ws, &ids(&live)).await;
        assert_eq!(got, live, "org {org}: live again after the burst");
    }
    let m = sidecar_metrics(&sc).await;
    assert_eq!(m["activeConnections"], 2, "{m}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[test]
fn the_queue_must_hold_the_largest_event() {
    let err = realtime_edge::config::Config::from_yaml(
        "edge.yaml",
        "stream: {max_event_bytes: 1048576, max_queue_bytes: 1048576}\n",
        &realtime_edge::config::EnvSecrets::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("edge.yaml"), "{err}");
    assert!(err.contains("stream.max_queue_bytes"), "{err}");
    assert!(err.contains("max_event_bytes"), "{err}");
    let err = realtime_edge::config::Config::from_yaml(
        "edge.yaml",
        "stream: {max_event_bytes: 4096, replay_bytes: 1000}\n",
        &realtime_edge::config::EnvSecrets::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("stream.replay_bytes"), "{err}");
}

fn last_event_seq(msgs: &[Value]) -> u64 {
    msgs.iter()
        .filter(|m| m["type"] == "event")
        .filter_map(|m| m["seq"].as_u64())
        .max()
        .unwrap()
}

/// Issue 16 items 7 and 8: once an org's last client is gone its pollers
/// stop (no token-less polling, no error counted), and a client back
/// within `resume_ttl_s` resumes and receives what was published while
/// nobody was connected.
#[tokio::test]
async fn resume_after_an_absence_delivers_what_was_published_meanwhile() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    pollers(&sim, 2).await;
    // Each poller gets an answer, hence a cursor to restart from (a V1
    // request without a cursor only sees events published after it).
    let mut first = sim.state.publish(1, "finance", vec![json!({})]);
    first.extend(sim.state.publish(1, "staff", vec![json!({})]));
    let (_, msgs) = collect_ids(&mut ws, &ids(&first)).await;
    let last_seq = last_event_seq(&msgs);
    drop(ws);
    // No client: the pollers stop, with nothing counted as an error.
    pollers(&sim, 0).await;
    eventually("the stream is gone", || async {
        sidecar_metrics(&sc).await["activeConnections"] == 0
    })
    .await;
    let errors_before = sidecar_metrics(&sc).await["errorCount"].clone();

    // Published an hour "ago": if their catch-up counted as live delivery,
    // avgLatencyMs would jump to an hour.
    let hour_ago = realtime_edge::clock::format_rfc3339_millis(
        realtime_edge::clock::unix_millis() - 3_600_000,
    );
    let old = || json!({ "timestamp": hour_ago });
    let mut missed = sim.state.publish(1, "finance", vec![old(), old()]);
    missed.extend(sim.state.publish(1, "staff", vec![old()]));
    let (mut back, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance", "staff"], "version": 1, "lastSeq": last_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true, "{ack}");
    let (got, _) = collect_ids(&mut back, &ids(&missed)).await;
    assert_eq!(ids(&got), ids(&missed));
    assert_eq!(got.len(), missed.len(), "no duplicates: {got:?}");
    let live = sim.state.publish(1, "staff", vec![json!({})]);
    let (got, _) = collect_ids(&mut back, &ids(&live)).await;
    assert_eq!(got, live);
    let m = sidecar_metrics(&sc).await;
    assert_eq!(
        m["errorCount"], errors_before,
        "an idle org's pollers report no errors"
    );
    assert!(
        m["avgLatencyMs"].as_f64().unwrap() < 60_000.0,
        "catching up is not live delivery: {m}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Issue 16 item 5: a cursor the backend no longer honours does not stop
/// the service: the poller restarts without it and reports it once.
#[tokio::test]
async fn a_dead_cursor_restarts_the_poller_fresh() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let first = sim.state.publish(1, "finance", vec![json!({})]);
    collect_ids(&mut ws, &ids(&first)).await;
    // The poller now holds a cursor; the next request carrying it gets 410.
    sim.state
        .set_fault("finance", realtime_edge_sim::Fault::StaleCursor);
    // Whether the poller is parked with its cursor or about to send it, the
    // next request carrying the cursor is refused.
    sim.state.publish(1, "finance", vec![json!({})]);
    let err = loop {
        let m = next_non_ping(&mut ws).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(err["code"], "UPSTREAM_ERROR", "{err}");
    assert!(err["message"].as_str().unwrap().contains("410"), "{err}");
    // A fresh poll is parked again; later events flow.
    pollers(&sim, 1).await;
    let after = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut ws, &ids(&after)).await;
    assert_eq!(got, after);
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Issue 16 items 3 and 4: flips back and forth while V1 answers are slow
/// and events keep coming lose nothing and duplicate nothing.
#[tokio::test]
async fn flips_under_slow_v1_answers_lose_and_duplicate_nothing() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 5, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    // Slow answers from now on (the parked first request already covers
    // everything after it arrived).
    sim.state
        .set_fault("finance", realtime_edge_sim::Fault::Slow(300));
    // The publisher paces events (load, not synchronisation).
    let state = sim.state.clone();
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        for _ in 0..150 {
            tick.tick().await;
            ids.extend(state.publish(5, "finance", vec![json!({})]));
        }
        ids
    });
    let mut got = Vec::new();
    let mut flips = 0;
    let mut native = false;
    while !publisher.is_finished() {
        // Flip every 25 events received.
        if got.len() >= (flips + 1) * 25 && flips < 4 {
            native = !native;
            let form = if native {
                "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=5"
            } else {
                "REALTIME_STREAMING_V2=false"
            };
            set_flags(&sc, form).await;
            flips += 1;
        }
        let m = next_json(&mut ws).await;
        if m["type"] == "event" {
            for e in m["events"].as_array().unwrap() {
                got.push(e["eventId"].as_str().unwrap().to_string());
            }
        }
    }
    let published = publisher.await.unwrap();
    let rest: HashSet<String> = published
        .iter()
        .filter(|id| !got.contains(id))
        .cloned()
        .collect();
    let (more, _) = collect_ids(&mut ws, &rest).await;
    got.extend(more);
    assert!(flips >= 2, "flipped {flips} times");
    assert_eq!(ids(&got), ids(&published), "nothing lost");
    assert_eq!(got.len(), published.len(), "nothing duplicated");
    sc.shutdown().await;
    sim.shutdown().await;
}
