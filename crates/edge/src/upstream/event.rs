//! One event as a source read it from the backend: the raw JSON, kept as
//! it was sent, and the few fields the hub needs (eventId, orgId,
//! propertyId, timestamp). Both sources parse with [`IncomingEvent::parse`].

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::OrgId;
use crate::protocol::PropertyKey;

/// One event as a source delivered it, with the fields the hub needs.
#[derive(Debug)]
pub(crate) struct IncomingEvent {
    /// The event object exactly as the backend sent it.
    pub raw: Box<RawValue>,
    /// Its `eventId` (a number is kept as its decimal text).
    pub id: Box<str>,
    /// Its `orgId`, when it has a readable one.
    pub org: Option<OrgId>,
    /// Its `propertyId`, when it has one.
    pub property: Option<PropertyKey>,
    /// The event's own timestamp (epoch ms), or its arrival when it has none.
    pub origin_ms: i64,
    /// Cleared by the hub for events a source caught up on after an absence.
    pub live: bool,
}

#[derive(Deserialize)]
struct EventMeta {
    #[serde(rename = "eventId")]
    event_id: Option<serde_json::Value>,
    #[serde(rename = "orgId")]
    org_id: Option<serde_json::Value>,
    #[serde(rename = "propertyId")]
    property_id: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
}

/// Why an upstream event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    /// The event is not a JSON object (or its fields are not readable).
    #[error("event is not a JSON object")]
    NotAnObject,
    /// The event has no usable `eventId`.
    #[error("event has no eventId")]
    NoEventId,
}

impl IncomingEvent {
    /// Reads the fields the hub needs from an upstream event object.
    pub fn parse(raw: Box<RawValue>, arrival_ms: i64) -> Result<IncomingEvent, EventError> {
        let meta: EventMeta =
            serde_json::from_str(raw.get()).map_err(|_| EventError::NotAnObject)?;
        let id: Box<str> = match meta.event_id {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.into(),
            Some(serde_json::Value::Number(n)) => n.to_string().into(),
            _ => return Err(EventError::NoEventId),
        };
        let org = match meta.org_id {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let origin_ms = match meta.timestamp {
            Some(serde_json::Value::String(s)) => crate::clock::parse_rfc3339_millis(&s),
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .unwrap_or(arrival_ms);
        Ok(IncomingEvent {
            raw,
            id,
            org,
            property: meta.property_id.as_ref().and_then(PropertyKey::from_json),
            origin_ms,
            live: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn parses_event_fields() {
        let e = IncomingEvent::parse(
            raw(r#"{"eventId":"e1","orgId":"7","propertyId":12,"timestamp":"2023-11-14T22:13:20.000Z","x":[1]}"#),
            5,
        )
        .unwrap();
        assert_eq!(&*e.id, "e1");
        assert_eq!(e.org, Some(7));
        assert_eq!(e.property, Some(PropertyKey("12".into())));
        assert_eq!(e.origin_ms, 1_700_000_000_000);
        let e = IncomingEvent::parse(raw(r#"{"eventId":5,"timestamp":"bad"}"#), 9).unwrap();
        assert_eq!(e.org, None);
        assert_eq!(e.origin_ms, 9);
        assert_eq!(
            IncomingEvent::parse(raw(r#"{"orgId":1}"#), 0).unwrap_err(),
            EventError::NoEventId
        );
        assert_eq!(
            IncomingEvent::parse(raw("[1]"), 0).unwrap_err(),
            EventError::NotAnObject
        );
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use crate::protocol::ServerMessage;
    use proptest::prelude::*;

    proptest! {
        /// Any message on the native stream parses or is refused; every
        /// event in it is accepted or refused with a typed error.
        #[test]
        fn any_native_frame_is_read_without_panic(v in crate::protocol::strategies::json_value()) {
            let text = v.to_string();
            if let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) {
                for raw in msg.events.unwrap_or_default() {
                    let _ = IncomingEvent::parse(raw.to_owned(), 0);
                }
            }
        }
    }
}
