//! Tests of the session queue: overflow closes and frees, an event burst past
//! the bound is pinned in order, pinning past the lag budget or control
//! messages past the slack close a lagging queue, and take drains in order.

use super::*;

#[test]
fn overflow_closes_and_frees() {
    let q = SessionQueue::new(10);
    assert!(q.push(Frame::control("12345".into())));
    assert!(q.push(Frame::control("12345".into())));
    assert_eq!(q.queued_bytes(), 10);
    assert!(!q.push(Frame::control("1".into())));
    assert_eq!(q.queued_bytes(), 0);
    assert_eq!(q.is_closed(), Some(QueueClosed::Overflow));
    let mut out = Vec::new();
    assert_eq!(q.take(&mut out), Err(QueueClosed::Overflow));
    assert!(!q.push(Frame::control("1".into())));
}

fn stored(seq: u64, pad: usize) -> Arc<Stored> {
    let raw = format!(r#"{{"eventId":"e{seq}","pad":"{}"}}"#, "x".repeat(pad));
    Arc::new(Stored {
        seq,
        service: 0,
        raw: serde_json::value::RawValue::from_string(raw).unwrap(),
        property: None,
        origin_ms: 0,
        live: true,
    })
}

fn event(seq: u64, pad: usize) -> Frame {
    Frame::events(&[stored(seq, pad)], "finance", Some(ServingMode::Poll)).unwrap()
}

/// A burst larger than the queue makes it lag instead of closing: the
/// events that do not fit are pinned, in order after what was queued,
/// and once the connection took everything the queue takes text again.
#[test]
fn an_event_burst_past_the_bound_is_pinned_in_order() {
    let q = SessionQueue::with_lag_budget(2 * event(1, 100).text.len() + 10, 10_000);
    assert_eq!(q.offer(event(1, 100)), Pushed::Queued);
    assert_eq!(q.offer(event(2, 100)), Pushed::Queued);
    assert_eq!(q.offer(event(3, 100)), Pushed::Lagging);
    assert!(q.push_lagged(vec![stored(3, 100)]));
    // Lagging: later messages are pinned too, even ones that would fit.
    assert_eq!(q.offer(event(4, 10)), Pushed::Lagging);
    assert!(q.push_lagged(vec![stored(4, 10)]));
    assert!(q.push(Frame::control("x".repeat(200))));
    assert_eq!(q.is_closed(), None);
    let mut out = Vec::new();
    q.take(&mut out).unwrap();
    let seqs: Vec<String> = out
        .iter()
        .map(|o| match o {
            Outgoing::Frame(f) if f.delivery.is_some() => "frame".into(),
            Outgoing::Frame(_) => "control".into(),
            Outgoing::Replay(p) => format!("{:?}", p.iter().map(|e| e.seq).collect::<Vec<_>>()),
        })
        .collect();
    assert_eq!(seqs, ["frame", "frame", "[3, 4]", "control"]);
    assert_eq!(q.offer(event(5, 10)), Pushed::Queued);
}

/// A client that stops reading is closed once what it pins passes the
/// lag budget.
#[test]
fn pinning_past_the_lag_budget_closes() {
    let q = SessionQueue::with_lag_budget(event(1, 100).text.len(), 1000);
    assert_eq!(q.offer(event(1, 100)), Pushed::Queued);
    assert_eq!(q.offer(event(2, 400)), Pushed::Lagging);
    assert!(q.push_lagged(vec![stored(2, 400)]));
    assert!(!q.push_lagged(vec![stored(3, 400), stored(4, 400)]));
    assert_eq!(q.is_closed(), Some(QueueClosed::Overflow));
    assert_eq!(q.queued_bytes(), 0);
    // A queue without a lag budget closes at the first pin.
    let q = SessionQueue::new(event(1, 100).text.len());
    assert_eq!(q.offer(event(1, 100)), Pushed::Queued);
    assert_eq!(q.offer(event(2, 100)), Pushed::Lagging);
    assert!(!q.push_lagged(vec![stored(2, 100)]));
}

/// A lagging queue gives control messages only a bounded slack.
#[test]
fn control_messages_past_the_slack_close_a_lagging_queue() {
    let q = SessionQueue::with_lag_budget(event(1, 200).text.len() + 10, 10_000);
    assert_eq!(q.offer(event(1, 200)), Pushed::Queued);
    assert_eq!(q.offer(event(2, 200)), Pushed::Lagging);
    assert!(q.push(Frame::control("x".repeat(CONTROL_SLACK / 2))));
    assert!(!q.push(Frame::control("x".repeat(CONTROL_SLACK))));
    assert_eq!(q.is_closed(), Some(QueueClosed::Overflow));
    assert_eq!(q.queued_bytes(), 0);
}

#[test]
fn take_drains_in_order() {
    let q = SessionQueue::new(100);
    q.push(Frame::control("a".into()));
    q.push(Frame::control("b".into()));
    let mut out = Vec::new();
    q.take(&mut out).unwrap();
    let texts: Vec<&str> = out
        .iter()
        .map(|f| match f {
            Outgoing::Frame(f) => f.text.as_str(),
            Outgoing::Replay(_) => "replay",
        })
        .collect();
    assert_eq!(texts, ["a", "b"]);
    assert_eq!(q.queued_bytes(), 0);
}
