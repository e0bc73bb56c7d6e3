//! The simulated backend's write endpoints, so the walkthrough of the
//! streaming migration guide works against `realtime-edge simulate`:
//! `curl -X POST .../finance/revenue -H "Authorization: Bearer T" -d '{...}'`
//! stores nothing but publishes the event the real backend would, on the
//! org's stream, where V1 pollers and native links pick it up.
//!
//! Every service gets `POST {prefix}/{entity}` (created), `PUT|PATCH
//! {prefix}/{entity}/{id}` (updated) and `DELETE {prefix}/{entity}/{id}`
//! (deleted), where `{prefix}` is the part of the service's V1 path before
//! `/realtime/` (`/finance`, `/guest-checkin`, ...).

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// Largest write body the simulator reads.
pub(crate) const MAX_WRITE_BODY_BYTES: usize = 1 << 20;

/// A write the simulator understood: which service it belongs to and which
/// event it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteRoute {
    pub(crate) service: String,
    pub(crate) entity: String,
    pub(crate) id: Option<String>,
    pub(crate) action: &'static str,
}

/// The URL prefix under which a service's writes live.
pub(crate) fn service_prefix(v1_path: &str) -> &str {
    match v1_path.find("/realtime/") {
        Some(i) if i > 0 => &v1_path[..i],
        _ => {
            let first = v1_path.trim_start_matches('/').split('/').next();
            first
                .and_then(|f| v1_path.get(..=f.len()))
                .unwrap_or_default()
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Matches `method path` against the services' write endpoints.
pub(crate) fn route(
    services: &[(String, String)],
    method: &Method,
    path: &str,
) -> Option<WriteRoute> {
    for (name, v1_path) in services {
        let prefix = service_prefix(v1_path);
        if prefix.is_empty() {
            continue;
        }
        let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let mut parts = rest.split('/');
        let entity = parts.next().unwrap_or_default();
        let id = parts.next();
        if parts.next().is_some() || !is_name(entity) || entity == "realtime" {
            continue;
        }
        if id.is_some_and(|i| !is_name(i)) {
            continue;
        }
        let action = match (method, id) {
            (&Method::POST, None) => "created",
            (&Method::PUT | &Method::PATCH, Some(_)) => "updated",
            (&Method::DELETE, Some(_)) => "deleted",
            _ => continue,
        };
        return Some(WriteRoute {
            service: name.clone(),
            entity: entity.to_string(),
            id: id.map(str::to_string),
            action,
        });
    }
    None
}

/// The event a write publishes and the entity the endpoint answers with.
/// `body` must be a JSON object (or empty, for a delete).
pub(crate) fn event_for(
    route: &WriteRoute,
    body: &[u8],
    new_id: u64,
) -> Result<(Value, Value), String> {
    let mut fields: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("the body must be a JSON object".into()),
            Err(e) => return Err(format!("the body is not JSON: {e}")),
        }
    };
    let id = match &route.id {
        Some(id) => id.clone(),
        None => format!("{}-{new_id}", route.entity),
    };
    fields.insert("id".into(), json!(id));
    let entity = Value::Object(fields);
    let mut event = json!({
        "type": format!("{}_{}", route.entity, route.action),
        "entityId": id,
        "data": entity.clone(),
    });
    if let Some(p) = entity.get("propertyId").filter(|p| p.is_u64())
        && let Some(obj) = event.as_object_mut()
    {
        obj.insert("propertyId".into(), p.clone());
    }
    Ok((event, entity))
}

/// The status a successful write answers with.
pub(crate) fn status_for(route: &WriteRoute) -> StatusCode {
    if route.action == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<(String, String)> {
        realtime_edge::config::DEFAULT_SERVICES
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn prefixes() {
        assert_eq!(service_prefix("/finance/realtime/subscribe"), "/finance");
        assert_eq!(
            service_prefix("/guest-checkin/realtime/subscribe"),
            "/guest-checkin"
        );
        assert_eq!(service_prefix("/legacy/poll"), "/legacy");
        assert_eq!(service_prefix("/"), "/");
    }

    #[test]
    fn routes() {
        let s = services();
        let r = route(&s, &Method::POST, "/finance/revenue").unwrap();
        assert_eq!((r.service.as_str(), r.action), ("finance", "created"));
        let r = route(&s, &Method::PATCH, "/guest-checkin/guest/g7").unwrap();
        assert_eq!(
            (r.service.as_str(), r.id.as_deref(), r.action),
            ("guest", Some("g7"), "updated")
        );
        let r = route(&s, &Method::DELETE, "/tasks/task/9").unwrap();
        assert_eq!(r.action, "deleted");
        for (m, p) in [
            (Method::POST, "/finance/realtime"),
            (Method::GET, "/finance/revenue"),
            (Method::POST, "/finance/revenue/1"),
            (Method::DELETE, "/finance/revenue"),
            (Method::POST, "/finance/a/b/c"),
            (Method::POST, "/finance/"),
            (Method::POST, "/nowhere/revenue"),
            (Method::POST, "/finance/re venue"),
        ] {
            assert_eq!(route(&s, &m, p), None, "{m} {p}");
        }
    }

    #[test]
    fn events() {
        let s = services();
        let r = route(&s, &Method::POST, "/finance/revenue").unwrap();
        let (event, entity) = event_for(&r, br#"{"amount": 1000, "propertyId": 1}"#, 5).unwrap();
        assert_eq!(event["type"], "revenue_created");
        assert_eq!(event["propertyId"], 1);
        assert_eq!(event["data"]["amount"], 1000);
        assert_eq!(entity["id"], "revenue-5");
        let r = route(&s, &Method::DELETE, "/finance/revenue/revenue-5").unwrap();
        let (event, _) = event_for(&r, b"", 6).unwrap();
        assert_eq!(event["type"], "revenue_deleted");
        assert_eq!(event["entityId"], "revenue-5");
        assert!(event.get("propertyId").is_none());
        assert!(event_for(&r, b"[1]", 7).is_err());
        assert!(event_for(&r, br#"{"amount": 1000, ...}"#, 7).is_err());
    }
}
