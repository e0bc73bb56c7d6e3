//! The JSON text messages the server sends (`ack`, `ping`, `error`,
//! `event`), as serde types written in one pass; event objects are
//! `RawValue`s copied as they are.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{ErrorCode, encode};
use crate::clock;
use crate::metrics::ServingMode;

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

/// The `ack` that answers an accepted handshake.
pub fn ack_message(seq: u64, mode: ServingMode, resumed: bool) -> String {
    encode(&Ack {
        seq,
        timestamp: &clock::now_rfc3339(),
        mode: mode.as_str(),
        resumed,
    })
}

/// The periodic `ping`, with the current position.
pub fn ping_message(seq: u64) -> String {
    encode(&Ping {
        seq,
        timestamp: &clock::now_rfc3339(),
    })
}

/// An `error` about the whole stream (no service) or one service.
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
pub(crate) fn event_envelope_bytes(service_name_len: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
