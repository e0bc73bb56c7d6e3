//! Where overlapping sources are cut: an overlap longer than the
//! de-duplication bound, a resumed native backlog, and a poller's late
//! answer each stop where the other source's coverage lies.

use super::*;

#[test]
fn an_overlap_longer_than_the_dedup_bound_is_cut_short() {
    paused(an_overlap_longer_than_the_dedup_bound_is_cut_short_body);
}

async fn an_overlap_longer_than_the_dedup_bound_is_cut_short_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0]).await;
    drain(&q);
    let poller = Source::of(&f.scripted, 0);
    let sent_early = tokio::time::Instant::now();
    set(&f, &native_for(1));
    settle().await;
    Source::of(&f.scripted, 1).status(SourceStatus::Ready).await;
    settle().await;
    assert!(!f.scripted.stopped(0), "overlapping");
    // The retiring poller delivers more than half of what the 4096-id
    // de-duplication set holds: it stops at once.
    let flood: Vec<IncomingEvent> = (0..2100).map(|i| event(&format!("o{i}"), 1)).collect();
    poller.answer(0, flood, "c1", sent_early).await;
    settle().await;
    assert!(f.scripted.stopped(0), "the overlap was cut short");
    assert!(!f.scripted.stopped(1));
}

#[test]
fn a_resumed_native_backlog_stops_where_the_pollers_coverage_began() {
    paused(a_resumed_native_backlog_stops_where_the_pollers_coverage_began_body);
}

async fn a_resumed_native_backlog_stops_where_the_pollers_coverage_began_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let q = join(&f, 1, vec![0]).await;
    let native = Source::of(&f.scripted, 0);
    native.status(SourceStatus::Ready).await;
    settle().await;
    native.status(SourceStatus::Down).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The fallback poller covers from its first request on.
    let poller = Source::of(&f.scripted, 1);
    poller
        .answer(
            0,
            vec![event("p1", 1), event("p2", 1)],
            "c1",
            tokio::time::Instant::now(),
        )
        .await;
    poller.status(SourceStatus::Ready).await;
    settle().await;
    // The link is back and replays its backlog: the gap, then what the
    // poller delivered, then (evicted from a small set, say) more of it.
    native.status(SourceStatus::Ready).await;
    let backlog = |id: &str| {
        let mut e = event(id, 1);
        e.live = false;
        e
    };
    native
        .events(
            0,
            vec![backlog("g1"), backlog("p1"), backlog("p0-evicted")],
            None,
        )
        .await;
    settle().await;
    assert_eq!(event_ids(&drain(&q)), ["p1", "p2", "g1"]);
}

#[test]
fn a_resumed_native_backlog_longer_than_the_dedup_set_is_not_redelivered() {
    paused(a_resumed_native_backlog_longer_than_the_dedup_set_is_not_redelivered_body);
}

/// The chaos soak's duplicates: the fallback poller delivered more events
/// than the de-duplication set remembers before the link came back, so the
/// first ones it delivered were forgotten when the link's backlog replayed
/// them, and were delivered a second time.
async fn a_resumed_native_backlog_longer_than_the_dedup_set_is_not_redelivered_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let q = join(&f, 1, vec![0]).await;
    let native = Source::of(&f.scripted, 0);
    native.status(SourceStatus::Ready).await;
    settle().await;
    native.status(SourceStatus::Down).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let poller = Source::of(&f.scripted, 1);
    let polled: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
    let now = tokio::time::Instant::now();
    poller
        .answer(
            0,
            vec![event(&polled[0], 1), event(&polled[1], 1)],
            "c1",
            now,
        )
        .await;
    poller.status(SourceStatus::Ready).await;
    let rest: Vec<IncomingEvent> = polled[2..].iter().map(|id| event(id, 1)).collect();
    poller.answer(0, rest, "c2", now).await;
    settle().await;
    native.status(SourceStatus::Ready).await;
    let backlog = |id: &str| {
        let mut e = event(id, 1);
        e.live = false;
        e
    };
    let mut replay = vec![backlog("g1")];
    replay.extend(polled.iter().map(|id| backlog(id)));
    native.events(0, replay, None).await;
    settle().await;
    let got = event_ids(&drain(&q));
    let mut want = polled.clone();
    want.push("g1".into());
    assert_eq!(got.len(), want.len(), "no event twice");
    assert_eq!(got, want);
}

#[test]
fn a_retiring_pollers_late_answer_stops_where_native_coverage_began() {
    paused(a_retiring_pollers_late_answer_stops_where_native_coverage_began_body);
}

/// The 120 s soak's duplicates: a poller whose requests kept failing while
/// the org moved to native answered at last from its old cursor, repeating
/// more of what the link had delivered than the de-duplication set holds.
async fn a_retiring_pollers_late_answer_stops_where_native_coverage_began_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0]).await;
    drain(&q);
    let poller = Source::of(&f.scripted, 0);
    let sent_early = tokio::time::Instant::now();
    set(&f, &native_for(1));
    settle().await;
    let native = Source::of(&f.scripted, 1);
    native.status(SourceStatus::Ready).await;
    let live: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
    for chunk in live.chunks(500) {
        native
            .events(0, chunk.iter().map(|id| event(id, 1)).collect(), None)
            .await;
        settle().await;
    }
    assert!(!f.scripted.stopped(0), "no answer yet: still overlapping");
    // The late answer: the gap before the link began, then all it delivered.
    let mut late = vec![event("g1", 1), event("g2", 1)];
    late.extend(live.iter().map(|id| event(id, 1)));
    poller.answer(0, late, "c-old", sent_early).await;
    settle().await;
    assert!(
        f.scripted.stopped(0),
        "the poller stops at native's coverage"
    );
    let got = event_ids(&drain(&q));
    let mut want = live.clone();
    want.extend(["g1".to_string(), "g2".to_string()]);
    assert_eq!(got.len(), want.len(), "no event twice, none lost");
    assert_eq!(got, want);
}

#[test]
fn a_serving_pollers_late_answer_skips_what_native_delivered_meanwhile() {
    paused(a_serving_pollers_late_answer_skips_what_native_delivered_meanwhile_body);
}

/// The 120 s soak's duplicates, second kind: the org went back to polling
/// while the poller's requests kept failing, so the native link (kept until
/// the poller answers) went on delivering, dropping and resuming meanwhile;
/// the poller's answer at last, from its old cursor, held all of that, more
/// than the de-duplication set remembers. What lies before the link's
/// coverage and what is newer than anything delivered arrive; nothing twice.
async fn a_serving_pollers_late_answer_skips_what_native_delivered_meanwhile_body() {
    let f = fixture();
    let (q, poller, native, sent_early) = back_to_polling_with_the_link_kept(&f).await;
    assert!(
        !f.scripted.stopped(1),
        "the link runs until the poller answers"
    );
    let live: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
    for (i, chunk) in live.chunks(500).enumerate() {
        if i == 4 {
            // A drop the link resumes from: its coverage goes on.
            native.status(SourceStatus::Down).await;
            native.status(SourceStatus::Ready).await;
        }
        native
            .events(0, chunk.iter().map(|id| event(id, 1)).collect(), None)
            .await;
        settle().await;
    }
    let mut late = vec![event("g1", 1), event("g2", 1)];
    late.extend(live.iter().map(|id| event(id, 1)));
    late.extend([event("x1", 1), event("x2", 1)]);
    poller.answer(0, late, "c2", sent_early).await;
    settle().await;
    let got = event_ids(&drain(&q));
    let mut want = vec!["a1".to_string()];
    want.extend(live.iter().cloned());
    want.extend(["g1", "g2", "x1", "x2"].map(String::from));
    assert_eq!(got.len(), want.len(), "no event twice, none lost");
    assert_eq!(got, want);
}

#[test]
fn a_late_answer_after_a_link_restarted_without_resuming_keeps_the_gap() {
    paused(a_late_answer_after_a_link_restarted_without_resuming_keeps_the_gap_body);
}

/// A link that could not resume covers only what came after: what a
/// poller's late answer holds from before that is delivered, not skipped.
async fn a_late_answer_after_a_link_restarted_without_resuming_keeps_the_gap_body() {
    let f = fixture();
    let (q, poller, native, sent_early) = back_to_polling_with_the_link_kept(&f).await;
    let before: Vec<String> = (0..3000).map(|i| format!("b{i}")).collect();
    native
        .events(0, before.iter().map(|id| event(id, 1)).collect(), None)
        .await;
    settle().await;
    // Down, and back without its resume: "h1" and "h2" are in no source
    // but the poller's answer.
    native.status(SourceStatus::Down).await;
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    let after: Vec<String> = (0..3000).map(|i| format!("n{i}")).collect();
    native
        .events(0, after.iter().map(|id| event(id, 1)).collect(), None)
        .await;
    settle().await;
    let mut late: Vec<IncomingEvent> = before.iter().map(|id| event(id, 1)).collect();
    late.extend([event("h1", 1), event("h2", 1)]);
    late.extend(after.iter().map(|id| event(id, 1)));
    poller.answer(0, late, "c2", sent_early).await;
    settle().await;
    let got = event_ids(&drain(&q));
    for hole in ["h1", "h2"] {
        assert_eq!(
            got.iter().filter(|g| *g == hole).count(),
            1,
            "{hole} arrives once"
        );
    }
    let twice = after
        .iter()
        .filter(|id| got.iter().filter(|g| g == id).count() != 1);
    assert_eq!(
        twice.count(),
        0,
        "what the restarted link delivered arrives once"
    );
}

#[test]
fn a_late_answer_keeps_what_a_resumed_backlog_left_to_the_poller() {
    paused(a_late_answer_keeps_what_a_resumed_backlog_left_to_the_poller_body);
}

/// The link's resume backlog reached what the poller had delivered, so the
/// rest of it ("e2", "e3") was left to the poller; the poller's requests
/// then failed while the link delivered more than the de-duplication set
/// holds. Its late answer must still deliver "e2" and "e3", holes in the
/// link's coverage, while skipping what the link delivered.
async fn a_late_answer_keeps_what_a_resumed_backlog_left_to_the_poller_body() {
    let f = fixture();
    let q = join(&f, 1, vec![0]).await;
    let poller = Source::of(&f.scripted, 0);
    poller
        .answer(0, vec![event("a1", 1)], "c1", tokio::time::Instant::now())
        .await;
    settle().await;
    set(&f, &native_for(1));
    settle().await;
    let native = Source::of(&f.scripted, 1);
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    let first: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    native
        .events(0, first.iter().map(|id| event(id, 1)).collect(), None)
        .await;
    settle().await;
    set(&f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
    native.status(SourceStatus::Down).await;
    settle().await;
    let mut answer: Vec<IncomingEvent> = first.iter().map(|id| event(id, 1)).collect();
    answer.push(event("e1", 1));
    let sent_before_back = tokio::time::Instant::now();
    poller.answer(0, answer, "c2", sent_before_back).await;
    settle().await;
    native.status(SourceStatus::Ready).await;
    let backlog = |id: &str| {
        let mut e = event(id, 1);
        e.live = false;
        e
    };
    native
        .events(0, vec![backlog("e1"), backlog("e2"), backlog("e3")], None)
        .await;
    settle().await;
    assert!(
        !f.scripted.stopped(1),
        "the link runs until the poller answers"
    );
    let live: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    for chunk in live.chunks(500) {
        native
            .events(0, chunk.iter().map(|id| event(id, 1)).collect(), None)
            .await;
        settle().await;
    }
    let mut late = vec![event("e2", 1), event("e3", 1)];
    late.extend(live.iter().map(|id| event(id, 1)));
    late.push(event("x1", 1));
    poller.answer(0, late, "c3", sent_before_back).await;
    settle().await;
    let got = event_ids(&drain(&q));
    let mut want = vec!["a1".to_string()];
    want.extend(first.iter().cloned());
    want.push("e1".into());
    want.extend(live.iter().cloned());
    want.extend(["e2", "e3", "x1"].map(String::from));
    assert_eq!(got.len(), want.len(), "no event twice, none lost");
    assert_eq!(got, want);
}

#[test]
fn a_late_answer_delivers_what_a_backlog_left_to_it_across_two_resumes() {
    paused(a_late_answer_delivers_what_a_backlog_left_to_it_across_two_resumes_body);
}

/// The 120 s soak's loss: the link came back (so the fallback poller was
/// being replaced) and left the rest of its backlog to that poller, dropped
/// and resumed again, leaving that backlog too; the poller's late answer
/// then stopped at the link's live marks from between the two resumes,
/// before what the link had left to it.
async fn a_late_answer_delivers_what_a_backlog_left_to_it_across_two_resumes_body() {
    let f = fixture();
    set(&f, &native_for(1));
    let q = join(&f, 1, vec![0]).await;
    let native = Source::of(&f.scripted, 0);
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    native.events(0, vec![event("n1", 1)], None).await;
    settle().await;
    native.status(SourceStatus::Down).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let poller = Source::of(&f.scripted, 1);
    let sent = tokio::time::Instant::now();
    poller.answer(0, vec![event("q1", 1)], "c1", sent).await;
    poller.status(SourceStatus::Ready).await;
    settle().await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    assert!(!f.scripted.stopped(1), "the poller overlaps the link");
    let backlog = |id: &str| {
        let mut e = event(id, 1);
        e.live = false;
        e
    };
    native
        .events(0, vec![backlog("g1"), backlog("q1"), backlog("q2")], None)
        .await;
    let marks: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    native
        .events(0, marks.iter().map(|id| event(id, 1)).collect(), None)
        .await;
    settle().await;
    native.status(SourceStatus::Down).await;
    native.status(SourceStatus::Ready).await;
    native
        .events(0, vec![backlog("r1"), backlog("r2")], None)
        .await;
    settle().await;
    let mut late = vec![event("q2", 1)];
    late.extend(marks.iter().map(|id| event(id, 1)));
    late.extend([event("r1", 1), event("r2", 1)]);
    poller.answer(0, late, "c2", sent).await;
    settle().await;
    let got = event_ids(&drain(&q));
    let mut want: Vec<String> = ["n1", "q1", "g1", "q2"].map(String::from).to_vec();
    want.extend(marks.iter().cloned());
    want.extend(["r1", "r2"].map(String::from));
    for id in &want {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "{id} once: {got:?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:?}");
}

/// Polling (the poller answered "a1"), then native (a fresh link, up),
/// then polling again before the poller answered a request sent after the
/// link was up: the link runs on until it does. Returns the client's queue,
/// the poller, the link, and when the poller's pending request was sent.
async fn back_to_polling_with_the_link_kept(
    f: &Fixture,
) -> (Arc<SessionQueue>, Source, Source, tokio::time::Instant) {
    let q = join(f, 1, vec![0]).await;
    let poller = Source::of(&f.scripted, 0);
    poller
        .answer(0, vec![event("a1", 1)], "c1", tokio::time::Instant::now())
        .await;
    settle().await;
    let sent_early = tokio::time::Instant::now();
    set(f, &native_for(1));
    settle().await;
    let native = Source::of(&f.scripted, 1);
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    set(f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
    (q, poller, native, sent_early)
}
