//! The chat protocol of CONTRACT 8: the handshake, the messages a client
//! sends, and the JSON text messages the sidecar sends back. Parsing never
//! panics on what a peer sends; every refusal names an error code.

use serde_json::{Map, Value, json};

use crate::clock;

/// Longest room id (bytes; room ids are ASCII).
pub(crate) const MAX_ROOM_ID: usize = 128;
/// Longest chat text, in bytes.
pub(crate) const MAX_TEXT_BYTES: usize = 4096;
/// Longest `clientMsgId` (it travels as the `Idempotency-Key` header).
pub(crate) const MAX_CLIENT_MSG_ID: usize = 128;
/// Longest `messageId` accepted in an ack.
pub(crate) const MAX_MESSAGE_ID: usize = 256;

/// Machine-readable codes of chat `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatErrorCode {
    BadHandshake,
    BadMessage,
    RoomFull,
    RateLimited,
    SendFailed,
    HistoryFailed,
    UpstreamError,
    UpstreamAuth,
}

impl ChatErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChatErrorCode::BadHandshake => "BAD_HANDSHAKE",
            ChatErrorCode::BadMessage => "BAD_MESSAGE",
            ChatErrorCode::RoomFull => "ROOM_FULL",
            ChatErrorCode::RateLimited => "RATE_LIMITED",
            ChatErrorCode::SendFailed => "SEND_FAILED",
            ChatErrorCode::HistoryFailed => "HISTORY_FAILED",
            ChatErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ChatErrorCode::UpstreamAuth => "UPSTREAM_AUTH",
        }
    }
}

/// A presence status a client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// Any status, as replicas tell each other (cluster mode).
    pub(crate) fn from_wire(s: &str) -> Option<Status> {
        match s {
            "offline" => Some(Status::Offline),
            other => Self::from_client(other),
        }
    }

    /// The statuses a client may choose (`offline` is the sidecar's to say).
    fn from_client(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// A refused client message: the code, a human message, and the
/// `clientMsgId` it concerned when it had one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    pub(crate) code: ChatErrorCode,
    pub(crate) message: String,
    pub(crate) client_msg_id: Option<String>,
}

impl Refusal {
    fn bad(message: impl Into<String>, client_msg_id: Option<String>) -> Refusal {
        Refusal {
            code: ChatErrorCode::BadMessage,
            message: message.into(),
            client_msg_id,
        }
    }
}

/// Whether `id` is a valid room id: 1-128 of `A-Za-z0-9._:-`.
pub(crate) fn valid_room_id(id: &str) -> bool {
    (1..=MAX_ROOM_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Parses the handshake `{"roomId": "..."}`; the error is the message sent
/// with `BAD_HANDSHAKE` before closing with 1008.
pub fn parse_handshake(text: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("handshake is not valid JSON: {e}"))?;
    let room = value
        .as_object()
        .ok_or("handshake must be a JSON object")?
        .get("roomId")
        .and_then(Value::as_str)
        .ok_or("handshake needs roomId (a string)")?;
    if !valid_room_id(room) {
        return Err(format!(
            "roomId must be 1-{MAX_ROOM_ID} characters of A-Za-z0-9._:-"
        ));
    }
    Ok(room.to_string())
}

/// A message from a client after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClientMessage {
    Chat {
        text: String,
        client_msg_id: String,
    },
    Typing,
    Presence(Status),
    /// `messageId` as the client sent it (a string or an integer).
    Ack(Value),
}

/// Parses one client message.
pub(crate) fn parse_client(text: &str) -> Result<ClientMessage, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::bad(format!("not valid JSON: {e}"), None))?;
    let Some(obj) = value.as_object() else {
        return Err(Refusal::bad("a message must be a JSON object", None));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("chat") => parse_chat(obj),
        Some("typing") => Ok(ClientMessage::Typing),
        Some("presence") => obj
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::from_client)
            .map(ClientMessage::Presence)
            .ok_or_else(|| Refusal::bad("presence status must be online, away or busy", None)),
        Some("ack") => match obj.get("messageId") {
            Some(Value::String(s)) if (1..=MAX_MESSAGE_ID).contains(&s.len()) => {
                Ok(ClientMessage::Ack(Value::String(s.clone())))
            }
            Some(v @ Value::Number(n)) if n.is_u64() || n.is_i64() => {
                Ok(ClientMessage::Ack(v.clone()))
            }
            _ => Err(Refusal::bad(
                format!("ack needs messageId (a string of 1-{MAX_MESSAGE_ID} bytes or an integer)"),
                None,
            )),
        },
        Some(other) => Err(Refusal::bad(
            format!("unknown message type {other:?} (chat, typing, presence, ack)"),
            None,
        )),
        None => Err(Refusal::bad("a message needs a type", None)),
    }
}

fn parse_chat(obj: &Map<String, Value>) -> Result<ClientMessage, Refusal> {
    let client_msg_id = match obj.get("clientMsgId").and_then(Value::as_str) {
        Some(id)
            if (1..=MAX_CLIENT_MSG_ID).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_string()
        }
        _ => {
            return Err(Refusal::bad(
                format!("chat needs clientMsgId: 1-{MAX_CLIENT_MSG_ID} printable ASCII characters"),
                None,
            ));
        }
    };
    match obj.get("text").and_then(Value::as_str) {
        Some(t) if (1..=MAX_TEXT_BYTES).contains(&t.len()) => Ok(ClientMessage::Chat {
            text: t.to_string(),
            client_msg_id,
        }),
        _ => Err(Refusal::bad(
            format!("chat text must be a string of 1-{MAX_TEXT_BYTES} bytes"),
            Some(client_msg_id),
        )),
    }
}

// ---- server messages -------------------------------------------------------

/// `{"type": "error", "code", "message"[, "clientMsgId"]}`.
pub(crate) fn error(code: ChatErrorCode, message: &str, client_msg_id: Option<&str>) -> String {
    let mut v = json!({
        "type": "error",
        "code": code.as_str(),
        "message": message,
        "timestamp": clock::now_rfc3339(),
    });
    if let Some(id) = client_msg_id {
        v["clientMsgId"] = json!(id);
    }
    v.to_string()
}

pub(crate) fn history(messages: &[Value]) -> String {
    json!({"type": "history", "messages": messages, "timestamp": clock::now_rfc3339()}).to_string()
}

/// One member as listed in a presence snapshot.
pub(crate) struct MemberView<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) user_name: &'a str,
    pub(crate) status: Status,
}

pub(crate) fn presence_snapshot(members: &[MemberView<'_>]) -> String {
    let list: Vec<Value> = members
        .iter()
        .map(|m| json!({"userId": m.user_id, "userName": m.user_name, "status": m.status.as_str()}))
        .collect();
    json!({"type": "presence", "members": list, "timestamp": clock::now_rfc3339()}).to_string()
}

pub(crate) fn presence(user_id: &str, user_name: &str, status: Status) -> String {
    json!({
        "type": "presence",
        "userId": user_id,
        "userName": user_name,
        "status": status.as_str(),
        "timestamp": clock::now_rfc3339(),
    })
    .to_string()
}

pub(crate) fn typing(user_id: &str, user_name: &str) -> String {
    json!({"type": "typing", "userId": user_id, "userName": user_name, "timestamp": clock::now_rfc3339()})
        .to_string()
}

pub(crate) fn receipt(user_id: &str, message_id: &Value) -> String {
    json!({"type": "receipt", "userId": user_id, "messageId": message_id, "timestamp": clock::now_rfc3339()})
        .to_string()
}

/// The saved message as broadcast: the backend's object with `type` and
/// the sender's `clientMsgId` added.
pub(crate) fn chat(mut saved: Map<String, Value>, client_msg_id: &str) -> String {
    saved.insert("type".into(), json!("chat"));
    saved.insert("clientMsgId".into(), json!(client_msg_id));
    Value::Object(saved).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(valid_room_id("property-123"));
        assert!(valid_room_id("a.b_c:d-E9"));
        assert!(valid_room_id(&"x".repeat(128)));
        assert!(!valid_room_id(&"x".repeat(129)));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id("a b"));
        assert!(!valid_room_id("a/b"));
        assert!(!valid_room_id("ä"));
    }

    #[test]
    fn handshakes() {
        assert_eq!(parse_handshake(r#"{"roomId":"r1"}"#), Ok("r1".into()));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"roomId":5}"#,
            r#"{"roomId":"a?b"}"#,
            "nope",
        ] {
            assert!(parse_handshake(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_client(r#"{"type":"chat","text":"hi","clientMsgId":"c1"}"#),
            Ok(ClientMessage::Chat {
                text: "hi".into(),
                client_msg_id: "c1".into()
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"typing"}"#),
            Ok(ClientMessage::Typing)
        );
        assert_eq!(
            parse_client(r#"{"type":"presence","status":"away"}"#),
            Ok(ClientMessage::Presence(Status::Away))
        );
        assert_eq!(
            parse_client(r#"{"type":"ack","messageId":7}"#),
            Ok(ClientMessage::Ack(json!(7)))
        );
        let long = format!(
            r#"{{"type":"chat","text":"{}","clientMsgId":"c2"}}"#,
            "x".repeat(4097)
        );
        let r = parse_client(&long).unwrap_err();
        assert_eq!(r.code, ChatErrorCode::BadMessage);
        assert_eq!(r.client_msg_id.as_deref(), Some("c2"));
        for bad in [
            r#"{"type":"dance"}"#,
            r#"{"type":"chat","text":"","clientMsgId":"c"}"#,
            r#"{"type":"chat","text":"x"}"#,
            r#"{"type":"chat","text":"x","clientMsgId":"a b"}"#,
            r#"{"type":"presence","status":"offline"}"#,
            r#"{"type":"ack","messageId":1.5}"#,
            r#"{"type":"ack"}"#,
            "[1]",
            "{",
        ] {
            assert_eq!(
                parse_client(bad).unwrap_err().code,
                ChatErrorCode::BadMessage,
                "{bad}"
            );
        }
    }
}
