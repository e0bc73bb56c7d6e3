//! The simulated backend's data: one event log per org, shared by the V1
//! endpoints and the native stream so both serve the same events, plus the
//! injected faults and the counters tests read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::watch;

use realtime_edge::auth::OrgId;
use realtime_edge::clock;

/// A fault injected into one service's V1 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    None,
    /// Answer with this HTTP status.
    Status(u16),
    /// Delay every answer by this many milliseconds.
    Slow(u64),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Drop the connection mid-answer.
    Drop,
    /// Never answer (until the client gives up).
    Hang,
    /// The next request that carries a cursor is answered 410 Gone (the
    /// backend no longer honours it); then the fault clears itself.
    StaleCursor,
}

impl Fault {
    /// Parses the control API's `{"kind": ..., ...}`.
    pub(crate) fn from_json(v: &Value) -> Result<Fault, String> {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("none");
        Ok(match kind {
            "none" => Fault::None,
            "status" => Fault::Status(
                v.get("status")
                    .and_then(Value::as_u64)
                    .filter(|s| (100..600).contains(s))
                    .ok_or("status fault needs \"status\": 100..599")? as u16,
            ),
            "slow" => Fault::Slow(
                v.get("ms")
                    .and_then(Value::as_u64)
                    .ok_or("slow fault needs \"ms\"")?,
            ),
            "garbage" => Fault::Garbage,
            "drop" => Fault::Drop,
            "hang" => Fault::Hang,
            "stale_cursor" => Fault::StaleCursor,
            other => {
                return Err(format!(
                    "unknown fault kind {other:?} (none, status, slow, garbage, drop, hang, stale_cursor)"
                ));
            }
        })
    }
}

/// One published event.
#[derive(Debug)]
pub(crate) struct LoggedEvent {
    /// Position in the org's log (also the native stream's seq).
    pub(crate) idx: u64,
    pub(crate) service: String,
    pub(crate) json: Box<serde_json::value::RawValue>,
}

pub struct OrgLog {
    pub(crate) events: VecDeque<Arc<LoggedEvent>>,
    /// The newest position; 0 before any event.
    pub last: u64,
    pub(crate) changed: watch::Sender<u64>,
}

impl OrgLog {
    fn new() -> Self {
        OrgLog {
            events: VecDeque::new(),
            last: 0,
            changed: watch::channel(0).0,
        }
    }

    /// Events after `after`, of the given services (all when `None`).
    pub(crate) fn after(&self, after: u64, services: Option<&[String]>) -> Vec<Arc<LoggedEvent>> {
        let start = self.events.partition_point(|e| e.idx <= after);
        self.events
            .range(start..)
            .filter(|e| services.is_none_or(|s| s.iter().any(|x| *x == e.service)))
            .cloned()
            .collect()
    }

    /// The eventIds of the events after position `after` of the given
    /// services, oldest first (what a client of those services should get).
    pub fn event_ids_after(&self, after: u64, services: &[&str]) -> Vec<String> {
        let start = self.events.partition_point(|e| e.idx <= after);
        self.events
            .range(start..)
            .filter(|e| services.contains(&e.service.as_str()))
            .filter_map(|e| {
                serde_json::from_str::<serde_json::Value>(e.json.get())
                    .ok()?
                    .get("eventId")?
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    pub(crate) fn first_idx(&self) -> u64 {
        self.events.front().map_or(self.last + 1, |e| e.idx)
    }
}

/// Counters the control API reports.
#[derive(Default)]
pub(crate) struct SimCounters {
    pub(crate) requests_by_service: Mutex<BTreeMap<String, u64>>,
    pub(crate) requests_by_org: Mutex<BTreeMap<OrgId, u64>>,
    pub(crate) active_polls: Mutex<BTreeMap<String, i64>>,
    pub(crate) active_polls_total: AtomicI64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) native_active: AtomicI64,
    pub(crate) native_total: AtomicU64,
    pub(crate) published: AtomicU64,
}

/// What the simulated backend holds: per-org event logs, faults, the
/// native stream's switches and the request counters.
pub struct SimState {
    /// (name, v1_path) of each service.
    pub services: Vec<(String, String)>,
    orgs: Mutex<HashMap<OrgId, OrgLog>>,
    faults: Mutex<HashMap<String, Fault>>,
    /// Bumped to close every native connection; while true, new ones get 503.
    pub(crate) native_down: watch::Sender<bool>,
    pub(crate) counters: SimCounters,
    log_capacity: usize,
    next_event: AtomicU64,
    /// Tokens the backend refuses with 401 although they verify.
    revoked: Mutex<std::collections::HashSet<String>>,
    /// The key set served at `/.well-known/jwks.json`.
    pub(crate) jwks: super::jwks::JwksDoc,
}

impl SimState {
    pub(crate) fn new(services: Vec<(String, String)>, log_capacity: usize) -> Arc<SimState> {
        Arc::new(SimState {
            services,
            orgs: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            native_down: watch::channel(false).0,
            counters: SimCounters::default(),
            log_capacity: log_capacity.max(1),
            next_event: AtomicU64::new(1),
            revoked: Mutex::new(std::collections::HashSet::new()),
            jwks: Default::default(),
        })
    }

    pub(crate) fn has_service(&self, name: &str) -> bool {
        self.services.iter().any(|(n, _)| n == name)
    }

    /// Runs `f` on an org's log, creating it when needed.
    pub fn with_org<R>(&self, org: OrgId, f: impl FnOnce(&mut OrgLog) -> R) -> R {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        f(orgs.entry(org).or_insert_with(OrgLog::new))
    }

    /// Publishes events into `org`'s log for `service`. Missing `eventId`,
    /// `orgId` and `timestamp` are filled in; a given `orgId` is kept as
    /// is, so a test can make the backend misbehave. Returns the eventIds.
    pub fn publish(&self, org: OrgId, service: &str, events: Vec<Value>) -> Vec<String> {
        let mut ids = Vec::with_capacity(events.len());
        let mut prepared = Vec::with_capacity(events.len());
        for mut e in events {
            if !e.is_object() {
                e = json!({ "data": e });
            }
            let obj = e.as_object_mut().expect("made an object above");
            if !obj.contains_key("eventId") {
                let n = self.next_event.fetch_add(1, Ordering::Relaxed);
                obj.insert("eventId".into(), json!(format!("evt-{org}-{n}")));
            }
            obj.entry("orgId").or_insert(json!(org));
            obj.entry("timestamp")
                .or_insert_with(|| json!(clock::now_rfc3339()));
            obj.entry("type")
                .or_insert_with(|| json!(format!("{service}.updated")));
            ids.push(match &obj["eventId"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            prepared.push(e);
        }
        self.counters
            .published
            .fetch_add(prepared.len() as u64, Ordering::Relaxed);
        self.with_org(org, |log| {
            for e in prepared {
                log.last += 1;
                let raw = serde_json::value::to_raw_value(&e).expect("JSON values serialise");
                log.events.push_back(Arc::new(LoggedEvent {
                    idx: log.last,
                    service: service.to_string(),
                    json: raw,
                }));
            }
            while log.events.len() > self.log_capacity {
                log.events.pop_front();
            }
            log.changed.send_replace(log.last);
        });
        ids
    }

    /// Injects a fault into one service's V1 endpoint (`Fault::None` clears it).
    pub fn set_fault(&self, service: &str, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.insert(service.to_string(), fault);
        }
    }

    pub(crate) fn fault(&self, service: &str) -> Fault {
        self.faults
            .lock()
            .ok()
            .and_then(|f| f.get(service).cloned())
            .unwrap_or(Fault::None)
    }

    /// Makes the backend refuse `token` from now on.
    pub fn revoke_token(&self, token: &str) {
        if let Ok(mut r) = self.revoked.lock() {
            r.insert(token.to_string());
        }
    }

    pub(crate) fn is_revoked(&self, token: &str) -> bool {
        self.revoked
            .lock()
            .map(|r| r.contains(token))
            .unwrap_or(false)
    }

    /// Takes the native stream down (its links are closed and refused) or back up.
    pub fn set_native_down(&self, down: bool) {
        self.native_down.send_replace(down);
    }

    pub(crate) fn count_request(&self, service: &str, org: Option<OrgId>) {
        if let Ok(mut m) = self.counters.requests_by_service.lock() {
            *m.entry(service.to_string()).or_default() += 1;
        }
        if let Some(o) = org
            && let Ok(mut m) = self.counters.requests_by_org.lock()
        {
            *m.entry(o).or_default() += 1;
        }
    }

    pub(crate) fn poll_started(&self, service: &str, delta: i64) {
        self.counters
            .active_polls_total
            .fetch_add(delta, Ordering::Relaxed);
        if let Ok(mut m) = self.counters.active_polls.lock() {
            *m.entry(service.to_string()).or_default() += delta;
        }
    }

    /// Events published since the start.
    pub fn published(&self) -> u64 {
        self.counters.published.load(Ordering::Relaxed)
    }

    /// V1 polls parked at the backend now.
    pub fn active_polls(&self) -> i64 {
        self.counters.active_polls_total.load(Ordering::Relaxed)
    }

    /// Native stream connections open right now.
    pub fn native_active(&self) -> i64 {
        self.counters.native_active.load(Ordering::Relaxed)
    }

    /// Total V1 requests so far.
    pub fn total_requests(&self) -> u64 {
        self.counters
            .requests_by_service
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// The counters as `GET /_sim/stats` shows them.
    pub fn stats_json(&self) -> Value {
        let c = &self.counters;
        let by_org: BTreeMap<String, u64> = c
            .requests_by_org
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default();
        json!({
            "requestsByService": c.requests_by_service.lock().map(|m| m.clone()).unwrap_or_default(),
            "requestsByOrg": by_org,
            "requestsTotal": self.total_requests(),
            "activePolls": c.active_polls.lock().map(|m| m.clone()).unwrap_or_default(),
            "activePollsTotal": c.active_polls_total.load(Ordering::Relaxed),
            "unauthorized": c.unauthorized.load(Ordering::Relaxed),
            "nativeActive": c.native_active.load(Ordering::Relaxed),
            "nativeTotal": c.native_total.load(Ordering::Relaxed),
            "published": c.published.load(Ordering::Relaxed),
            "nativeDown": *self.native_down.borrow(),
        })
    }
}
