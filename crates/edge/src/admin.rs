//! The admin API of CONTRACT section 5: feature flags, metrics, health.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::cluster::flags::{SharedFlags, SharedFlagsError};
use crate::config::Config;
use crate::drain::Drain;
use crate::flags::{FlagStore, FlagValue, Snapshot, bucket, decide, decide_org};
use crate::http_server::{Body, full, json, json_error};
use crate::hub::HubRegistry;
use crate::metrics::Stats;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

pub(crate) struct Admin {
    pub(crate) config: Arc<Config>,
    pub(crate) flags: Arc<FlagStore>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) registry: Arc<HubRegistry>,
    pub(crate) prometheus: Option<PrometheusHandle>,
    pub(crate) ready: Arc<AtomicBool>,
    /// `POST /drain` starts it; `/readyz` is 503 from then on.
    pub(crate) drain: Arc<Drain>,
    /// Not ready until its key set (if any) has loaded.
    pub(crate) verifier: Arc<crate::auth::Verifier>,
    /// In cluster mode, overrides are changed through Redis for every replica.
    pub(crate) shared_flags: Option<Arc<SharedFlags>>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // Health endpoints stay open so orchestrators can probe them.
        match (method.clone(), path.as_str()) {
            // The ops page holds no data; its API calls carry the token.
            (Method::GET, "/") => return crate::assets::ops_page(),
            (Method::GET, "/healthz") => return json(StatusCode::OK, &json!({"status": "ok"})),
            (Method::GET, "/readyz") => {
                return if self.ready.load(Ordering::Acquire)
                    && !self.drain.is_draining()
                    && self.verifier.is_ready()
                {
                    json(StatusCode::OK, &json!({"ready": true}))
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
                };
            }
            _ => {}
        }
        let who = match &self.config.auth.admin_token {
            Some(expected) => {
                let given =
                    crate::auth::token_from_request(req.headers(), None).unwrap_or_default();
                if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    return json_error(
                        StatusCode::UNAUTHORIZED,
                        "admin token required (Authorization: Bearer <ADMIN_TOKEN>)",
                    );
                }
                format!("api {peer} (admin token)")
            }
            None => format!("api {peer}"),
        };
        match (method, path.as_str()) {
            (Method::GET, "/feature-flags") => {
                json(StatusCode::OK, &snapshot_json(&self.flags.current()))
            }
            (Method::POST, "/feature-flags") => self.post_flags(req, &who).await,
            (Method::DELETE, p) if p.starts_with("/feature-flags/") => {
                let key = &p["/feature-flags/".len()..];
                if !self.flags.schema().keys().iter().any(|k| k == key) {
                    return json_error(StatusCode::BAD_REQUEST, &format!("unknown flag {key:?}"));
                }
                if let Some(shared) = &self.shared_flags {
                    return match shared.delete(&who, key).await {
                        Ok(_) => json(StatusCode::OK, &snapshot_json(&self.flags.current())),
                        Err(e) => cluster_error(&e),
                    };
                }
                match self.flags.delete_override_persisted(&who, key).await {
                    Ok(_) => json(StatusCode::OK, &snapshot_json(&self.flags.current())),
                    Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::GET, "/feature-flags/evaluate") => self.evaluate(req.uri().query()),
            (Method::GET, "/feature-flags/history") => {
                let entries: Vec<serde_json::Value> = self
                    .flags
                    .history()
                    .iter()
                    .rev()
                    .map(|h| json!({"time": h.time, "version": h.version, "who": h.who, "key": h.key, "old": h.old, "new": h.new}))
                    .collect();
                json(StatusCode::OK, &json!({ "history": entries }))
            }
            (Method::POST, "/drain") => {
                if self.drain.begin() {
                    tracing::info!(who, "drain requested through the admin API");
                }
                json(
                    StatusCode::ACCEPTED,
                    &json!({"draining": true, "drainS": self.drain.drain_window().as_secs()}),
                )
            }
            (Method::GET, "/v2/realtime/metrics") => json(StatusCode::OK, &self.metrics_json()),
            (Method::GET, "/metrics") => {
                let text = self
                    .prometheus
                    .as_ref()
                    .map(|h| h.render())
                    .unwrap_or_default();
                Response::builder()
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(full(text))
                    .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "metrics"))
            }
            (
                _,
                "/feature-flags"
                | "/feature-flags/evaluate"
                | "/feature-flags/history"
                | "/v2/realtime/metrics"
                | "/metrics"
                | "/drain",
            ) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    async fn post_flags(&self, req: Request<Incoming>, who: &str) -> Response<Body> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        // A half-sent body must not hold an admin connection slot for long.
        let collect = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(self.config.limits.admin_body_timeout, collect).await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Err(_) => {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body did not arrive in time",
                );
            }
            Ok(Err(_)) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large or unreadable",
                );
            }
        };
        let text = String::from_utf8_lossy(&body);
        let schema = self.flags.schema();
        let parsed: Result<BTreeMap<String, FlagValue>, Vec<String>> =
            if is_json || text.trim_start().starts_with('{') {
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(map)) => schema.parse_json_object(&map),
                    Ok(_) => Err(vec!["JSON body must be an object of FLAG: value".into()]),
                    Err(e) => Err(vec![format!("body is not valid JSON: {e}")]),
                }
            } else {
                let mut out = BTreeMap::new();
                let mut problems = Vec::new();
                for (k, v) in url::form_urlencoded::parse(text.trim().as_bytes()) {
                    match schema.parse_text(k.trim(), &v) {
                        Ok(val) => {
                            out.insert(k.trim().to_string(), val);
                        }
                        Err(e) => problems.push(e.to_string()),
                    }
                }
                if problems.is_empty() {
                    Ok(out)
                } else {
                    Err(problems)
                }
            };
        let changes = match parsed {
            Ok(c) if c.is_empty() => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "no flags given (send KEY=VALUE or a JSON object)",
                );
            }
            Ok(c) => c,
            Err(problems) => return json_error(StatusCode::BAD_REQUEST, &problems.join("; ")),
        };
        if let Some(shared) = &self.shared_flags {
            return match shared.set(who, &changes).await {
                Ok(snap) => json(StatusCode::OK, &snapshot_json(&snap)),
                Err(e) => cluster_error(&e),
            };
        }
        match self.flags.set_overrides_persisted(who, changes).await {
            Ok(snap) => json(StatusCode::OK, &snapshot_json(&snap)),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn evaluate(&self, query: Option<&str>) -> Response<Body> {
        let org = query.and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "orgId")
                .map(|(_, v)| v.into_owned())
        });
        let Some(org) = org else {
            return json_error(StatusCode::BAD_REQUEST, "orgId query parameter required");
        };
        let Ok(org) = org.trim().parse::<u64>() else {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("orgId {org:?} is not a non-negative integer"),
            );
        };
        let snap = self.flags.current();
        let group = &self.config.rollout_group;
        let (mode, reason) = decide_org(&snap.flags, group, org);
        let services: serde_json::Map<String, serde_json::Value> = self
            .config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.clone(),
                    json!(decide(&snap.flags, group, org, i).0.as_str()),
                )
            })
            .collect();
        json(
            StatusCode::OK,
            &json!({
                "orgId": org,
                "bucket": bucket(group, org),
                "mode": mode.as_str(),
                "reason": reason.as_str(),
                "services": services,
                "flagsVersion": snap.version,
            }),
        )
    }

    fn metrics_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "activeConnections": r(&s.active_connections),
            "totalConnections": r(&s.total_connections),
            "eventsDelivered": r(&s.events_delivered),
            "eventsByService": s.events_by_service(),
            "errorCount": r(&s.errors),
            "avgLatencyMs": s.avg_latency_ms(),
            "connectionsByMode": {
                "poll": r(&s.connections_poll),
                "native": r(&s.connections_native),
                "mixed": r(&s.connections_mixed),
            },
            "activeOrgs": self.registry.active_orgs(),
            "upstream": {
                "v1Polls": r(&s.v1_polls),
                "nativeConnections": r(&s.native_connects),
            },
            "flagsVersion": self.flags.current().version,
            "facade": {
                "requests": r(&s.facade.requests),
                "held": r(&s.facade.held),
                "events": r(&s.facade.events),
                "forwarded": r(&s.facade.forwarded),
            },
        })
    }
}

/// A shared flag change refused because Redis is unreachable: 503, so an
/// operator does not believe it reached every replica.
fn cluster_error(e: &SharedFlagsError) -> Response<Body> {
    tracing::warn!(error = %e, "flag change refused");
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": e.to_string(), "code": "CLUSTER_UNAVAILABLE"}),
    )
}

/// The body of `GET /feature-flags`.
pub(crate) fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    let flags: serde_json::Map<String, serde_json::Value> = s
        .values
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    let sources: serde_json::Map<String, serde_json::Value> = s
        .sources
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.as_str())))
        .collect();
    json!({
        "flags": flags,
        "version": s.version,
        "sources": sources,
        "lastError": s.last_error,
    })
}
