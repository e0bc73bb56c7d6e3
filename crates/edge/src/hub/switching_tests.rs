//! The hub against scripted sources: de-duplication, the cross-org guard,
//! positions, and the make-before-break order of every switch, with
//! tokio's paused clock instead of sleeping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    HubContext, HubMsg, HubRegistry, IncomingEvent, JoinRequest, SessionQueue, SourceId,
    SourceStatus,
};
use crate::config::{Config, EnvSecrets};
use crate::flags::{FlagSchema, FlagStore, FlagValue};
use crate::metrics::Stats;
use crate::upstream::{NativeSpec, PollerSpec, SourceHandle, SourceSpawner};

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Poller {
        service: u16,
        cursor: Option<String>,
    },
    Native {
        services: Vec<u16>,
        last_seq: Option<u64>,
    },
}

struct Spawned {
    kind: Kind,
    source: SourceId,
    hub: mpsc::Sender<HubMsg>,
    stop: oneshot::Receiver<()>,
}

impl Spawned {
    fn stopped(&mut self) -> bool {
        !matches!(
            self.stop.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

#[derive(Default)]
struct Scripted {
    spawned: Mutex<Vec<Spawned>>,
}

impl Scripted {
    fn record(&self, kind: Kind, source: SourceId, hub: mpsc::Sender<HubMsg>) -> SourceHandle {
        let (handle, stop) = SourceHandle::new();
        self.spawned.lock().unwrap().push(Spawned {
            kind,
            source,
            hub,
            stop,
        });
        handle
    }

    fn count(&self) -> usize {
        self.spawned.lock().unwrap().len()
    }

    /// Runs `f` on the i-th source started.
    fn with<R>(&self, i: usize, f: impl FnOnce(&mut Spawned) -> R) -> R {
        f(&mut self.spawned.lock().unwrap()[i])
    }

    fn kind(&self, i: usize) -> Kind {
        self.with(i, |s| s.kind.clone())
    }

    fn stopped(&self, i: usize) -> bool {
        self.with(i, |s| s.stopped())
    }

    fn sender(&self, i: usize) -> (SourceId, mpsc::Sender<HubMsg>) {
        self.with(i, |s| (s.source, s.hub.clone()))
    }
}

struct ScriptedSpawner(Arc<Scripted>);

impl SourceSpawner<HubMsg> for ScriptedSpawner {
    fn spawn_poller(&self, spec: PollerSpec<HubMsg>) -> SourceHandle {
        let kind = Kind::Poller {
            service: spec.service,
            cursor: spec.cursor,
        };
        self.0.record(kind, spec.source, spec.hub)
    }

    fn spawn_native(&self, spec: NativeSpec<HubMsg>) -> SourceHandle {
        let kind = Kind::Native {
            services: spec.services,
            last_seq: spec.last_seq,
        };
        self.0.record(kind, spec.source, spec.hub)
    }
}

/// A source handle as the test drives it.
struct Source {
    source: SourceId,
    hub: mpsc::Sender<HubMsg>,
}

impl Source {
    fn of(s: &Scripted, i: usize) -> Source {
        let (source, hub) = s.sender(i);
        Source { source, hub }
    }

    async fn events(&self, service: u16, events: Vec<IncomingEvent>, cursor: Option<&str>) {
        self.send_events(service, events, cursor, None).await;
    }

    /// A poller's answer to a request it sent at `sent_at`.
    async fn answer(
        &self,
        service: u16,
        events: Vec<IncomingEvent>,
        cursor: &str,
        sent_at: tokio::time::Instant,
    ) {
        self.send_events(service, events, Some(cursor), Some(sent_at))
            .await;
    }

    async fn send_events(
        &self,
        service: u16,
        events: Vec<IncomingEvent>,
        cursor: Option<&str>,
        requested_at: Option<tokio::time::Instant>,
    ) {
        let msg = HubMsg::Events {
            source: self.source,
            service,
            events,
            cursor: cursor.map(String::from),
            native_seq: None,
            requested_at,
        };
        self.hub.send(msg).await.unwrap();
    }

    async fn status(&self, status: SourceStatus) {
        self.hub
            .send(HubMsg::Status {
                source: self.source,
                status,
            })
            .await
            .unwrap();
    }
}

struct Fixture {
    registry: Arc<HubRegistry>,
    scripted: Arc<Scripted>,
    flags: Arc<FlagStore>,
    stats: Arc<Stats>,
    _shutdown: watch::Sender<bool>,
}

fn fixture() -> Fixture {
    let cfg = Config::from_yaml(
        "test.yaml",
        "flags: {file: null}\nupstream: {native_fallback_s: 2}\nstream: {hub_linger_ms: 600000, ping_interval_s: 3600}\n",
        &EnvSecrets::default(),
    )
    .unwrap();
    let schema = FlagSchema::new(cfg.services.iter().map(|s| s.name.clone()).collect());
    let flags = FlagStore::new(schema, BTreeMap::new(), None);
    let stats = Arc::new(Stats::default());
    let scripted = Arc::new(Scripted::default());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let registry = HubRegistry::new(HubContext {
        config: Arc::new(cfg),
        flags: flags.clone(),
        stats: stats.clone(),
        upstream: Arc::new(ScriptedSpawner(scripted.clone())),
        shutdown,
        cluster: None,
    });
    Fixture {
        registry,
        scripted,
        flags,
        stats,
        _shutdown: shutdown_tx,
    }
}

fn event(id: &str, org: u64) -> IncomingEvent {
    let raw = RawValue::from_string(format!(r#"{{"eventId":"{id}","orgId":{org}}}"#)).unwrap();
    IncomingEvent::parse(raw, 0).unwrap()
}

/// Runs a test body on tokio's paused clock in a thread of its own and
/// fails the test if it takes a minute of real time. With the paused clock
/// a hub loop that spins never lets time advance, so without this such a
/// bug would hang the run; only this test fails (the spinning thread is
/// left behind), the rest of the binary goes on.
fn paused<F: std::future::Future<Output = ()> + 'static>(body: fn() -> F) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a test runtime");
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(body())));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("a hub test ran for 60 s of real time: a hub loop is spinning"),
    }
}

/// Lets the hub task run (the paused clock moves on when all are idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn join(f: &Fixture, org: u64, services: Vec<u16>) -> Arc<SessionQueue> {
    let queue = SessionQueue::new(1 << 20);
    let (reply, rx) = oneshot::channel();
    let req = Box::new(JoinRequest {
        session: f.registry.next_session_id(),
        queue: queue.clone(),
        services,
        unknown_services: Vec::new(),
        property: None,
        last_seq: None,
        token: "token".into(),
        expires_at: None,
        reply,
    });
    f.registry.join(org, req, rx).await.unwrap();
    settle().await;
    queue
}

/// The messages queued so far, parsed.
fn drain(q: &SessionQueue) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    q.take(&mut frames).unwrap();
    frames
        .iter()
        .map(|f| match f {
            super::queue::Outgoing::Frame(f) => serde_json::from_str(f.text.as_str()).unwrap(),
            super::queue::Outgoing::Replay(_) => panic!("no replays in these tests"),
        })
        .collect()
}

fn event_ids(msgs: &[serde_json::Value]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m["type"] == "event")
        .flat_map(|m| {
            m["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["eventId"].as_str().unwrap().to_string())
        })
        .collect()
}

fn set(f: &Fixture, pairs: &[(&str, FlagValue)]) {
    let changes = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    f.flags.set_overrides("test", changes).unwrap();
}

fn native_for(org: u64) -> [(&'static str, FlagValue); 2] {
    [
        (crate::flags::STREAMING_V2, FlagValue::Bool(true)),
        (
            crate::flags::ALLOWLIST,
            FlagValue::Orgs(BTreeSet::from([org])),
        ),
    ]
}

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
        .send(HubMsg::Events {
            source: f.scripted.sender(0).0,
            service: 0,
            events: vec![event("e", 1)],
            cursor: None,
            native_seq: Some(41),
            requested_at: None,
        })
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
            super::ReadRequest {
                services: vec![0],
                property: None,
                after,
                max_events,
                max_bytes: usize::MAX,
                reply: oneshot::channel().0,
            },
        )
    };
    let ids = |r: &super::ReadReply| -> Vec<String> {
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
    let q = join(&f, 1, vec![0]).await;
    let poller = Source::of(&f.scripted, 0);
    poller
        .answer(0, vec![event("a1", 1)], "c1", tokio::time::Instant::now())
        .await;
    settle().await;
    let sent_early = tokio::time::Instant::now();
    set(&f, &native_for(1));
    settle().await;
    let native = Source::of(&f.scripted, 1);
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    set(&f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
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
    let q = join(&f, 1, vec![0]).await;
    let poller = Source::of(&f.scripted, 0);
    poller
        .answer(0, vec![event("a1", 1)], "c1", tokio::time::Instant::now())
        .await;
    settle().await;
    let sent_early = tokio::time::Instant::now();
    set(&f, &native_for(1));
    settle().await;
    let native = Source::of(&f.scripted, 1);
    native.status(SourceStatus::Unresumed).await;
    native.status(SourceStatus::Ready).await;
    settle().await;
    set(&f, &[(crate::flags::STREAMING_V2, FlagValue::Bool(false))]);
    settle().await;
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
