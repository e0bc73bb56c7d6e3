//! The client protocol of CONTRACT section 2: the handshake a client sends,
//! and the JSON text messages the server sends. The same protocol is spoken
//! by the backend's native stream, so the native link and the simulator use
//! these types too. The handshake is in [`handshake`], the messages the
//! server sends in [`messages`].
#![warn(missing_docs)]

mod handshake;
mod messages;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use handshake::{Handshake, HandshakeError, handshake_json, parse_handshake};
pub(crate) use messages::event_envelope_bytes;
pub use messages::{ack_message, error_message, event_message, ping_message};

/// The only protocol version.
pub(crate) const PROTOCOL_VERSION: u64 = 1;
/// Most service names one handshake may list (a deployment has ten): a
/// longer list is refused before any name is looked at.
pub(crate) const MAX_HANDSHAKE_SERVICES: usize = 64;

/// Machine-readable codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The handshake was not valid.
    BadHandshake,
    /// A protocol version other than 1.
    UnsupportedVersion,
    /// The handshake named services that are not configured.
    UnknownService,
    /// The backend failed to serve a service.
    UpstreamError,
    /// The backend refused the token used for a service.
    UpstreamAuth,
    /// An event over `stream.max_event_bytes` was dropped.
    EventTooLarge,
}

impl ErrorCode {
    /// The code as it appears in messages and close reasons.
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
    /// Normal closure.
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down (resume with `lastSeq`).
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// A refused handshake or token.
    pub const POLICY: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    pub(crate) const TOKEN_EXPIRED: u16 = 4001;
}

/// A property id in canonical text form, so `123` and `"123"` compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PropertyKey(pub Box<str>);

impl PropertyKey {
    /// Canonical form of a JSON value; `None` for null, objects and lists.
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<PropertyKey> {
        match v {
            serde_json::Value::Number(n) => Some(PropertyKey(n.to_string().into())),
            serde_json::Value::String(s) => Some(PropertyKey(s.as_str().into())),
            _ => None,
        }
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

/// A server message as a client (the native link, `watch`, tests) reads it.
#[derive(Debug, Deserialize)]
pub struct ServerMessage<'a> {
    /// `type`: ack, event, ping or error.
    #[serde(rename = "type")]
    pub kind: String,
    /// The position (every message has one).
    #[serde(default)]
    pub seq: Option<u64>,
    /// The service of an event or error message.
    #[serde(default)]
    pub service: Option<String>,
    /// The events of an event message, as they were sent.
    #[serde(default, borrow)]
    pub events: Option<Vec<&'a RawValue>>,
    /// The code of an error message.
    #[serde(default)]
    pub code: Option<String>,
    /// The text of an error message.
    #[serde(default)]
    pub message: Option<String>,
    /// The serving mode of an ack.
    #[serde(default)]
    pub mode: Option<String>,
    /// Whether an ack resumed from `lastSeq`.
    #[serde(default)]
    pub resumed: Option<bool>,
}

/// Proptest strategies for peer input (shared by the parsers' tests).
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Arbitrary JSON, biased towards the field names the parsers read.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
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
