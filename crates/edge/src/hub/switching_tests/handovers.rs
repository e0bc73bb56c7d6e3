//! Handovers between the V1 poller and the native link: each switch is
//! make-before-break, an outage falls back after the grace time, and a
//! wider link replaces a narrower one only once it is ready.

use super::*;

#[test]
fn poll_to_native_stops_the_poller_only_once_native_is_ready() {
    paused(poll_to_native_stops_the_poller_only_once_native_is_ready_body);
}

async fn poll_to_native_stops_the_poller_only_once_native_is_ready_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0]).await;
    drain(&q);
    let poller = Source::of(&f.scripted, 0);
    poller.events(0, vec![event("a", 1)], Some("c1")).await;
    settle().await;

    set(&f, &native_for(1));
    settle().await;
    assert_eq!(f.scripted.count(), 2);
    assert_eq!(
        f.scripted.kind(1),
        Kind::Native {
            services: vec![0],
            last_seq: None
        }
    );
    assert!(
        !f.scripted.stopped(0),
        "the poller keeps serving until native is ready"
    );
    let native = Source::of(&f.scripted, 1);
    // A request the poller sent before native was ready.
    let sent_early = tokio::time::Instant::now();
    settle().await;
    // During the overlap both deliver; each event reaches the client once.
    native
        .events(0, vec![event("b", 1), event("c", 1)], None)
        .await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    assert!(
        !f.scripted.stopped(0),
        "native is ready, but the poller's coverage does not reach that moment yet"
    );
    // The answer that was in flight when native became ready is not enough
    // (issue 16 item 3: its cut-off may predate the link's start).
    // (Its events are ones the link did not deliver: an answer that reaches
    // the link's live events proves the overlap by content, see below.)
    poller
        .answer(0, vec![event("a", 1)], "c2", sent_early)
        .await;
    settle().await;
    assert!(!f.scripted.stopped(0), "an answer in flight is not enough");
    // The answer to a request sent after native was ready proves the overlap.
    let sent_late = tokio::time::Instant::now();
    poller.answer(0, vec![event("d", 1)], "c3", sent_late).await;
    settle().await;
    assert!(f.scripted.stopped(0), "overlap proven: the poller stops");
    assert!(!f.scripted.stopped(1));
    assert_eq!(event_ids(&drain(&q)), ["a", "b", "c", "d"]);
    assert!(
        q.is_closed().is_none(),
        "the client's stream was never touched"
    );

    // And back: after a native period the new poller starts fresh (issue
    // 16 item 4: its old cursor would replay the whole period), and the
    // native link stays until the poller's first answer.
    set(&f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
    assert_eq!(
        f.scripted.kind(2),
        Kind::Poller {
            service: 0,
            cursor: None
        }
    );
    assert!(!f.scripted.stopped(1));
    let fresh = Source::of(&f.scripted, 2);
    fresh
        .answer(0, vec![], "c9", tokio::time::Instant::now())
        .await;
    fresh.status(SourceStatus::Ready).await;
    settle().await;
    assert!(f.scripted.stopped(1));

    // And native again: a link after a poll period starts fresh too.
    set(&f, &native_for(1));
    settle().await;
    assert_eq!(
        f.scripted.kind(3),
        Kind::Native {
            services: vec![0],
            last_seq: None
        }
    );
}

#[test]
fn native_to_poll_without_a_cursor_keeps_native_until_the_first_answer() {
    paused(native_to_poll_without_a_cursor_keeps_native_until_the_first_answer_body);
}

async fn native_to_poll_without_a_cursor_keeps_native_until_the_first_answer_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let q = join(&f, 1, vec![0]).await;
    assert_eq!(drain(&q)[0]["mode"], "native");
    let native = Source::of(&f.scripted, 0);
    native.status(SourceStatus::Ready).await;
    set(&f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
    assert_eq!(
        f.scripted.kind(1),
        Kind::Poller {
            service: 0,
            cursor: None
        }
    );
    // Long after: the poller has not answered, so native still covers.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!f.scripted.stopped(0));
    native.events(0, vec![event("n1", 1)], None).await;
    let poller = Source::of(&f.scripted, 1);
    poller
        .answer(0, vec![event("n1", 1)], "c9", tokio::time::Instant::now())
        .await;
    poller.status(SourceStatus::Ready).await;
    settle().await;
    assert!(f.scripted.stopped(0));
    assert_eq!(event_ids(&drain(&q)), ["n1"]);
}

#[test]
fn native_outage_falls_back_after_the_grace_time_and_returns() {
    paused(native_outage_falls_back_after_the_grace_time_and_returns_body);
}

async fn native_outage_falls_back_after_the_grace_time_and_returns_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let q = join(&f, 1, vec![0]).await;
    let native = Source::of(&f.scripted, 0);
    native.status(SourceStatus::Ready).await;
    settle().await;
    native.status(SourceStatus::Down).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        f.scripted.count(),
        1,
        "no fallback before native_fallback_s"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        f.scripted.count(),
        2,
        "fallback poller after native_fallback_s"
    );
    assert_eq!(
        f.scripted.kind(1),
        Kind::Poller {
            service: 0,
            cursor: None
        }
    );
    assert!(
        !f.scripted.stopped(0),
        "the native link keeps retrying during the fallback"
    );
    let poller = Source::of(&f.scripted, 1);
    poller.events(0, vec![event("p1", 1)], Some("c1")).await;
    poller.status(SourceStatus::Ready).await;
    settle().await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    assert!(
        !f.scripted.stopped(1),
        "the fallback poller runs until its coverage reaches the link's return"
    );
    poller
        .answer(0, vec![], "c2", tokio::time::Instant::now())
        .await;
    settle().await;
    assert!(
        f.scripted.stopped(1),
        "back on native, the fallback poller stops"
    );
    assert_eq!(event_ids(&drain(&q)), ["p1"]);
    let m = &f.stats;
    assert_eq!(m.connections_native.load(Ordering::Relaxed), 1);
}

#[test]
fn a_service_added_to_native_starts_a_wider_link_before_dropping_the_old() {
    paused(a_service_added_to_native_starts_a_wider_link_before_dropping_the_old_body);
}

async fn a_service_added_to_native_starts_a_wider_link_before_dropping_the_old_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let _a = join(&f, 1, vec![0]).await;
    Source::of(&f.scripted, 0).status(SourceStatus::Ready).await;
    Source::of(&f.scripted, 0)
        .hub
        .send(HubMsg::Source(SourceReport::Events {
            source: f.scripted.sender(0).0,
            service: 0,
            events: vec![event("e", 1)],
            cursor: None,
            native_seq: Some(41),
            requested_at: None,
        }))
        .await
        .unwrap();
    let _b = join(&f, 1, vec![0, 2]).await;
    assert_eq!(
        f.scripted.kind(1),
        Kind::Native {
            services: vec![0, 2],
            last_seq: Some(41)
        },
        "resumes from the org's native position"
    );
    assert!(!f.scripted.stopped(0));
    Source::of(&f.scripted, 1).status(SourceStatus::Ready).await;
    settle().await;
    assert!(f.scripted.stopped(0));
    // A link that dropped on its way out does not count as an outage.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(f.scripted.count(), 2, "no fallback poller");
}
