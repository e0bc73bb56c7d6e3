//! Positions and readers: de-duplication, the cross-org guard and the
//! positions of delivered events, and the replay window answering readers.

use super::*;

#[test]
fn dedup_cross_org_guard_and_positions() {
    paused(dedup_cross_org_guard_and_positions_body);
}

async fn dedup_cross_org_guard_and_positions_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0]).await;
    assert_eq!(
        f.scripted.kind(0),
        Kind::Poller {
            service: 0,
            cursor: None
        }
    );
    let ack = drain(&q).remove(0);
    assert_eq!(ack["type"], "ack");
    let base = ack["seq"].as_u64().unwrap();
    let poller = Source::of(&f.scripted, 0);
    poller
        .events(
            0,
            vec![event("a", 1), event("b", 1), event("a", 1), event("x", 2)],
            Some("c1"),
        )
        .await;
    settle().await;
    let msgs = drain(&q);
    assert_eq!(
        event_ids(&msgs),
        ["a", "b"],
        "duplicate and foreign events are dropped"
    );
    assert_eq!(msgs[0]["seq"], base + 2);
    assert_eq!(
        f.stats.errors.load(Ordering::Relaxed),
        1,
        "the foreign event is counted"
    );
    // The same ids again, later: still not delivered twice.
    poller
        .events(0, vec![event("b", 1), event("c", 1)], None)
        .await;
    settle().await;
    assert_eq!(event_ids(&drain(&q)), ["c"]);
}

#[test]
fn the_window_answers_readers_and_wakes_them() {
    paused(the_window_answers_readers_and_wakes_them_body);
}

async fn the_window_answers_readers_and_wakes_them_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0, 1]).await;
    let base = drain(&q)[0]["seq"].as_u64().unwrap();
    let poller = Source::of(&f.scripted, 0);
    poller
        .events(
            0,
            vec![event("a", 1), event("b", 1), event("c", 1)],
            Some("c1"),
        )
        .await;
    settle().await;
    let read = |after: u64, max_events: usize| {
        f.registry.read(
            1,
            crate::hub::ReadRequest {
                services: vec![0],
                property: None,
                after,
                max_events,
                max_bytes: usize::MAX,
                reply: oneshot::channel().0,
            },
        )
    };
    let ids = |r: &crate::hub::ReadReply| -> Vec<String> {
        r.events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e.raw.get()).unwrap();
                v["eventId"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let first = read(base, 2).await.unwrap();
    assert_eq!(ids(&first), ["a", "b"]);
    assert!(first.complete);
    assert_eq!(first.head, base + 3);
    let rest = read(first.events[1].seq, 10).await.unwrap();
    assert_eq!(ids(&rest), ["c"]);
    // A reader waits for the next event on `heads`.
    let mut heads = first.heads;
    heads.borrow_and_update();
    poller.events(0, vec![event("d", 1)], None).await;
    heads.changed().await.unwrap();
    assert_eq!(*heads.borrow(), base + 4);
    // A position that is not this hub's is not complete.
    assert!(!read(base - 5, 10).await.unwrap().complete);
}
