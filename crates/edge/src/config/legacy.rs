//! `services` and `legacy`: the backend services with a V1 long-poll
//! endpoint, the V1 field names, and the V1 facade's bounds.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// The ten services of CONTRACT section 6, in its order.
pub const DEFAULT_SERVICES: [(&str, &str); 10] = [
    ("finance", "/finance/realtime/subscribe"),
    ("guest", "/guest-checkin/realtime/subscribe"),
    ("staff", "/staff/realtime/subscribe"),
    ("tasks", "/tasks/realtime/subscribe"),
    ("properties", "/properties/realtime/subscribe"),
    ("users", "/users/realtime/subscribe"),
    ("dashboard", "/dashboard/realtime/subscribe"),
    ("branding", "/branding/realtime/subscribe"),
    ("analytics", "/analytics/realtime/subscribe"),
    ("reports", "/reports/realtime/subscribe"),
];
/// `legacy.cursor_param`.
const CURSOR_PARAM: &str = "since";
/// `legacy.events_field`.
const EVENTS_FIELD: &str = "events";
/// `legacy.cursor_field`.
const CURSOR_FIELD: &str = "cursor";
/// `legacy.facade_hold_s`.
const FACADE_HOLD_S: u64 = 25;
/// `legacy.facade_max_held`.
const FACADE_MAX_HELD: u64 = 1000;

/// One backend service with a V1 long-poll endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service's name (`services.<name>`); it names its flag `<NAME>_REALTIME_V1`.
    pub name: String,
    /// Path of its V1 long-poll endpoint.
    pub(crate) v1_path: String,
}

/// Field and parameter names of the V1 endpoints.
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// The query parameter carrying the cursor.
    pub(crate) cursor_param: String,
    /// The answer's field holding the events.
    pub(crate) events_field: String,
    /// The answer's field holding the next cursor.
    pub(crate) cursor_field: String,
    /// How long the V1 facade holds a request with nothing to answer (CONTRACT 3.4).
    pub(crate) facade_hold: Duration,
    /// V1 facade requests held at once; past it new ones get 503.
    pub(crate) facade_max_held: usize,
}

/// One entry of `services` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    v1_path: String,
}

/// `legacy` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLegacy {
    cursor_param: Option<String>,
    events_field: Option<String>,
    cursor_field: Option<String>,
    facade_hold_s: Option<u64>,
    facade_max_held: Option<u64>,
}

/// The configured services (the CONTRACT's ten when `services` is absent):
/// names usable in a flag key, paths plain and distinct.
pub(super) fn validate_services(
    p: &mut Problems,
    services: Option<BTreeMap<String, RawService>>,
) -> Vec<ServiceConfig> {
    let Some(map) = services else {
        return DEFAULT_SERVICES
            .iter()
            .map(|(n, v)| ServiceConfig {
                name: n.to_string(),
                v1_path: v.to_string(),
            })
            .collect();
    };
    if map.is_empty() {
        p.push("services", "must list at least one service");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (name, svc) in map {
        let key = format!("services.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            p.push(&key, "service names are lowercase letters, digits and '_' (they name the flag <SERVICE>_REALTIME_V1)");
        }
        let path = p.path(&format!("{key}.v1_path"), &svc.v1_path);
        if !seen.insert(path.clone()) {
            p.push(
                format!("{key}.v1_path"),
                format!("{path:?} is used by another service"),
            );
        }
        out.push(ServiceConfig {
            name,
            v1_path: path,
        });
    }
    out
}

impl RawLegacy {
    pub(super) fn validate(self, p: &mut Problems) -> LegacyConfig {
        LegacyConfig {
            cursor_param: p.name(
                "legacy.cursor_param",
                self.cursor_param.as_deref(),
                CURSOR_PARAM,
            ),
            events_field: p.name(
                "legacy.events_field",
                self.events_field.as_deref(),
                EVENTS_FIELD,
            ),
            cursor_field: p.name(
                "legacy.cursor_field",
                self.cursor_field.as_deref(),
                CURSOR_FIELD,
            ),
            facade_hold: Duration::from_secs(p.range(
                "legacy.facade_hold_s",
                self.facade_hold_s,
                FACADE_HOLD_S,
                1,
                300,
            )),
            facade_max_held: p.range(
                "legacy.facade_max_held",
                self.facade_max_held,
                FACADE_MAX_HELD,
                0,
                100_000,
            ) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;

    #[test]
    fn empty_service_table_is_rejected() {
        let lines = problems("services: {}\n");
        assert!(
            lines[0].contains("services: must list at least one service"),
            "{lines:?}"
        );
    }

    #[test]
    fn bad_service_name_is_rejected() {
        let lines = problems("services:\n  Fin-ance: {v1_path: /x}\n");
        assert!(lines[0].contains("services.Fin-ance"), "{lines:?}");
    }
}
