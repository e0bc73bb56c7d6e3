//! The hub against scripted sources: de-duplication, the cross-org guard,
//! positions, and the make-before-break order of every switch, with
//! tokio's paused clock instead of sleeping.
//!
//! This module is the rig the tests share (a spawner that records the
//! sources the hub starts, a handle to drive each of them, a hub registry
//! with its flags, and helpers to join and read a session); the tests live
//! in the submodules by topic.

mod handovers;
mod overlaps;
mod positions;

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
use crate::upstream::{NativeSpec, PollerSpec, SourceHandle, SourceReport, SourceSpawner};

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
        let msg = HubMsg::Source(SourceReport::Events {
            source: self.source,
            service,
            events,
            cursor: cursor.map(String::from),
            native_seq: None,
            requested_at,
        });
        self.hub.send(msg).await.unwrap();
    }

    async fn status(&self, status: SourceStatus) {
        self.hub
            .send(HubMsg::Source(SourceReport::Status {
                source: self.source,
                status,
            }))
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
