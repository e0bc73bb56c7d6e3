//! The client protocol of CONTRACT section 2: the handshake a client sends,
//! and the JSON text messages the server sends. The same protocol is spoken
//! by the backend's native stream, so the native link and the simulator use
//! these types too.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock;
use crate::metrics::ServingMode;

/// The only protocol version.
pub const PROTOCOL_VERSION: u64 = 1;
/// Most service names one handshake may list (a deployment has ten): a
/// longer list is refused before any name is looked at.
pub const MAX_HANDSHAKE_SERVICES: usize = 64;

/// Machine-readable codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadHandshake,
    UnsupportedVersion,
    UnknownService,
    UpstreamError,
    UpstreamAuth,
    EventTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadHandshake => "BAD_HANDSHAKE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownService => "UNKNOWN_SERVICE",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ErrorCode::UpstreamAuth => "UPSTREAM_AUTH",
            ErrorCode::EventTooLarge => "EVENT_TOO_LARGE",
        }
    }
}

/// WebSocket close codes the server uses.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// A property id in canonical text form, so `123` and `"123"` compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PropertyKey(pub Box<str>);

impl PropertyKey {
    /// Canonical form of a JSON value; `None` for null, objects and lists.
    pub fn from_json(v: &serde_json::Value) -> Option<PropertyKey> {
        match v {
            serde_json::Value::Number(n) => Some(PropertyKey(n.to_string().into())),
            serde_json::Value::String(s) => Some(PropertyKey(s.as_str().into())),
            _ => None,
        }
    }
}

/// A validated handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake {
    pub services: Vec<String>,
    pub property: Option<PropertyKey>,
    pub last_seq: Option<u64>,
}

/// Why a handshake was refused; the socket is then closed with 1008.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Bad(String),
    #[error("protocol version {0} is not supported (supported: 1)")]
    UnsupportedVersion(String),
}

impl HandshakeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::Bad(_) => ErrorCode::BadHandshake,
            HandshakeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        }
    }
}

/// Parses the first client message.
pub fn parse_handshake(text: &str) -> Result<Handshake, HandshakeError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| HandshakeError::Bad(format!("handshake is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| HandshakeError::Bad("handshake must be a JSON object".into()))?;
    match obj.get("version") {
        None => {}
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => return Err(HandshakeError::UnsupportedVersion(v.to_string())),
    }
    let services = match obj.get("services") {
        Some(serde_json::Value::Array(list)) if list.len() > MAX_HANDSHAKE_SERVICES => {
            return Err(HandshakeError::Bad(format!(
                "services lists {} names; at most {MAX_HANDSHAKE_SERVICES} are accepted",
                list.len()
            )));
        }
        Some(serde_json::Value::Array(list)) => {
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for s in list {
                let name = s.as_str().ok_or_else(|| {
                    HandshakeError::Bad("services must be a list of strings".into())
                })?;
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
            if out.is_empty() {
                return Err(HandshakeError::Bad(
                    "services must name at least one service".into(),
                ));
            }
            out
        }
        _ => {
            return Err(HandshakeError::Bad(
                "services must be a list of service names".into(),
            ));
        }
    };
    let property = match obj.get("filters") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(f)) => match f.get("propertyId") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(PropertyKey::from_json(v).ok_or_else(|| {
                HandshakeError::Bad("filters.propertyId must be a number or a string".into())
            })?),
        },
        Some(_) => return Err(HandshakeError::Bad("filters must be an object".into())),
    };
    let last_seq =
        match obj.get("lastSeq") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                HandshakeError::Bad("lastSeq must be a non-negative integer".into())
            })?),
        };
    Ok(Handshake {
        services,
        property,
        last_seq,
    })
}

/// The handshake as a client sends it. Fields in alphabetical order: the
/// bytes stay those of the `serde_json::Value` it was once built from.
#[derive(Serialize)]
struct HandshakeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    filters: Option<FiltersOut<'a>>,
    #[serde(rename = "lastSeq", skip_serializing_if = "Option::is_none")]
    last_seq: Option<u64>,
    services: &'a [String],
    version: u64,
}

#[derive(Serialize)]
struct FiltersOut<'a> {
    #[serde(rename = "propertyId")]
    property_id: &'a serde_json::Value,
}

/// Encodes a handshake (the native link and test clients send one).
pub fn handshake_json(
    services: &[String],
    property: Option<&serde_json::Value>,
    last_seq: Option<u64>,
) -> String {
    encode(&HandshakeOut {
        filters: property.map(|property_id| FiltersOut { property_id }),
        last_seq,
        services,
        version: PROTOCOL_VERSION,
    })
}

/// `ack`: the handshake was accepted.
#[derive(Serialize)]
#[serde(tag = "type", rename = "ack")]
struct Ack<'a> {
    seq: u64,
    timestamp: &'a str,
    mode: &'a str,
    resumed: bool,
}

/// `ping`: the periodic keepalive, with the current position.
#[derive(Serialize)]
#[serde(tag = "type", rename = "ping")]
struct Ping<'a> {
    seq: u64,
    timestamp: &'a str,
}

/// `error`: a problem with the whole stream (no service) or one service.
#[derive(Serialize)]
#[serde(tag = "type", rename = "error")]
struct ErrorOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    code: ErrorCode,
    message: &'a str,
    seq: u64,
    timestamp: &'a str,
}

/// `event`: events of one service; `seq` is the last one's position.
#[derive(Serialize)]
#[serde(tag = "type", rename = "event", bound = "EventList<I>: Serialize")]
struct EventOut<'s, I> {
    service: &'s str,
    events: EventList<I>,
    seq: u64,
    timestamp: &'s str,
}

/// Already-serialised events, written as they are: a `RawValue` is copied,
/// never parsed or re-serialised.
struct EventList<I>(I);

impl<'a, I: Iterator<Item = &'a RawValue> + Clone> Serialize for EventList<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// One message as JSON text.
fn encode(message: &impl Serialize) -> String {
    // These types hold strings, numbers, booleans and valid raw JSON only,
    // so serialising cannot fail; an empty text would be refused by any
    // reader rather than taken for a message.
    serde_json::to_string(message).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a server message could not be serialised");
        String::new()
    })
}

pub fn ack_message(seq: u64, mode: ServingMode, resumed: bool) -> String {
    encode(&Ack {
        seq,
        timestamp: &clock::now_rfc3339(),
        mode: mode.as_str(),
        resumed,
    })
}

pub fn ping_message(seq: u64) -> String {
    encode(&Ping {
        seq,
        timestamp: &clock::now_rfc3339(),
    })
}

pub fn error_message(service: Option<&str>, code: ErrorCode, message: &str, seq: u64) -> String {
    encode(&ErrorOut {
        service,
        code,
        message,
        seq,
        timestamp: &clock::now_rfc3339(),
    })
}

/// Bytes an `event` message adds around its events, at most: the fixed
/// fields, a 20-digit seq, the timestamp, the service name (service names
/// need no JSON escaping) and the commas between events are counted by the
/// batcher itself. Rounded up generously.
pub fn event_envelope_bytes(service_name_len: usize) -> usize {
    const FIXED: usize = 192;
    FIXED.saturating_add(service_name_len)
}

/// An `event` message around already-serialised event objects.
pub fn event_message<'a>(
    service: &'a str,
    events: impl Iterator<Item = &'a RawValue> + Clone,
    seq: u64,
) -> String {
    encode(&EventOut {
        service,
        events: EventList(events),
        seq,
        timestamp: &clock::now_rfc3339(),
    })
}

/// A server message as a client (the native link, `watch`, tests) reads it.
#[derive(Debug, Deserialize)]
pub struct ServerMessage<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default, borrow)]
    pub events: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub resumed: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_full() {
        let h = parse_handshake(r#"{"services":["finance","staff","finance"],"version":1,"filters":{"propertyId":123},"lastSeq":42}"#).unwrap();
        assert_eq!(h.services, vec!["finance", "staff"]);
        assert_eq!(h.property, Some(PropertyKey("123".into())));
        assert_eq!(h.last_seq, Some(42));
    }

    #[test]
    fn handshake_errors() {
        for (text, code) in [
            ("nope", ErrorCode::BadHandshake),
            ("[1]", ErrorCode::BadHandshake),
            (
                r#"{"services":["a"],"version":2}"#,
                ErrorCode::UnsupportedVersion,
            ),
            (r#"{"services":"a","version":1}"#, ErrorCode::BadHandshake),
            (r#"{"services":[],"version":1}"#, ErrorCode::BadHandshake),
            (
                r#"{"services":["a"],"lastSeq":-1}"#,
                ErrorCode::BadHandshake,
            ),
            (
                r#"{"services":["a"],"filters":[]}"#,
                ErrorCode::BadHandshake,
            ),
            (
                &format!(
                    r#"{{"services":{}}}"#,
                    serde_json::json!(vec!["x"; MAX_HANDSHAKE_SERVICES + 1])
                ),
                ErrorCode::BadHandshake,
            ),
        ] {
            assert_eq!(parse_handshake(text).unwrap_err().code(), code, "{text}");
        }
    }

    /// The message with its timestamp value replaced by `T` (the one field
    /// that changes from run to run), after checking the value is RFC 3339.
    fn with_timestamp_pinned(text: &str) -> String {
        const KEY: &str = r#""timestamp":""#;
        let start = text.find(KEY).expect("a timestamp") + KEY.len();
        let len = text[start..].find('"').expect("a closing quote");
        assert!(clock::parse_rfc3339_millis(&text[start..start + len]).is_some());
        format!("{}T{}", &text[..start], &text[start + len..])
    }

    /// The exact bytes on the wire: the browser client, the native link and
    /// the tests read these, field order and escaping included.
    #[test]
    fn wire_bytes_are_pinned() {
        let raw: Vec<Box<RawValue>> = vec![
            RawValue::from_string(r#"{"eventId":"e1","data":{"a": 1}}"#.into()).unwrap(),
            RawValue::from_string(r#"{"eventId":"e2"}"#.into()).unwrap(),
        ];
        for (text, wire) in [
            (
                ack_message(5, ServingMode::Poll, false),
                r#"{"type":"ack","seq":5,"timestamp":"T","mode":"poll","resumed":false}"#,
            ),
            (
                ack_message(u64::MAX, ServingMode::Native, true),
                r#"{"type":"ack","seq":18446744073709551615,"timestamp":"T","mode":"native","resumed":true}"#,
            ),
            (
                ping_message(0),
                r#"{"type":"ping","seq":0,"timestamp":"T"}"#,
            ),
            (
                error_message(None, ErrorCode::BadHandshake, "bad", 0),
                r#"{"type":"error","code":"BAD_HANDSHAKE","message":"bad","seq":0,"timestamp":"T"}"#,
            ),
            (
                error_message(
                    Some("fin\"ance"),
                    ErrorCode::UpstreamError,
                    "boom \"x\"\n\u{1}é/</",
                    7,
                ),
                "{\"type\":\"error\",\"service\":\"fin\\\"ance\",\"code\":\"UPSTREAM_ERROR\",\"message\":\"boom \\\"x\\\"\\n\\u0001é/</\",\"seq\":7,\"timestamp\":\"T\"}",
            ),
            (
                event_message("finance", raw.iter().map(|r| r.as_ref()), 9),
                r#"{"type":"event","service":"finance","events":[{"eventId":"e1","data":{"a": 1}},{"eventId":"e2"}],"seq":9,"timestamp":"T"}"#,
            ),
            (
                event_message("a\"b", std::iter::empty(), 1),
                r#"{"type":"event","service":"a\"b","events":[],"seq":1,"timestamp":"T"}"#,
            ),
        ] {
            assert_eq!(with_timestamp_pinned(&text), wire);
        }
        let services = vec!["finance".to_string(), "st\"aff".to_string()];
        for (text, wire) in [
            (
                handshake_json(&services, None, None),
                r#"{"services":["finance","st\"aff"],"version":1}"#,
            ),
            (
                handshake_json(&services[..1], Some(&serde_json::json!(12)), Some(3)),
                r#"{"filters":{"propertyId":12},"lastSeq":3,"services":["finance"],"version":1}"#,
            ),
            (
                handshake_json(&services[..1], Some(&serde_json::json!("p-1")), None),
                r#"{"filters":{"propertyId":"p-1"},"services":["finance"],"version":1}"#,
            ),
        ] {
            assert_eq!(text, wire);
        }
    }

    #[test]
    fn messages_are_valid_json_with_required_fields() {
        let raw: Vec<Box<RawValue>> =
            vec![RawValue::from_string(r#"{"eventId":"e1"}"#.into()).unwrap()];
        for text in [
            ack_message(5, ServingMode::Mixed, false),
            ping_message(5),
            error_message(Some("fin\"ance"), ErrorCode::UpstreamError, "boom \"x\"", 5),
            event_message("finance", raw.iter().map(|r| r.as_ref()), 5),
        ] {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["seq"], 5, "{text}");
            let ts = v["timestamp"].as_str().unwrap();
            assert!(clock::parse_rfc3339_millis(ts).is_some(), "{ts}");
            assert!(v["type"].is_string());
        }
    }
}

/// Proptest strategies for peer input (shared by the parsers' tests).
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Arbitrary JSON, biased towards the field names the parsers read.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        "[a-z]{0,6}|eventId|orgId|timestamp|propertyId|events|cursor|seq|type|service|services|version|filters|lastSeq",
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text a client sends as its handshake gets a handshake or a
        /// typed refusal, never a panic.
        #[test]
        fn any_handshake_text_parses_or_is_refused(text in ".{0,200}") {
            let _ = parse_handshake(&text).map_err(|e| e.code());
        }

        #[test]
        fn any_handshake_json_parses_or_is_refused(v in strategies::json_value()) {
            match parse_handshake(&v.to_string()) {
                Ok(h) => prop_assert!(!h.services.is_empty() && h.services.len() <= MAX_HANDSHAKE_SERVICES),
                Err(e) => prop_assert!(matches!(e.code(), ErrorCode::BadHandshake | ErrorCode::UnsupportedVersion)),
            }
        }

        /// Any message on the native stream parses or is refused; every
        /// event in it is accepted or refused with a typed error.
        #[test]
        fn any_native_frame_is_read_without_panic(v in strategies::json_value()) {
            let text = v.to_string();
            if let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) {
                for raw in msg.events.unwrap_or_default() {
                    let _ = crate::hub::IncomingEvent::parse(raw.to_owned(), 0);
                }
            }
        }
    }
}
