//! The handshake: the first message a client sends (read and validated
//! here), and the one the native link and test clients send.

use serde::Serialize;

use super::{ErrorCode, MAX_HANDSHAKE_SERVICES, PROTOCOL_VERSION, PropertyKey, encode};

/// A validated handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake {
    /// The services asked for, without repeats, in the order given.
    pub services: Vec<String>,
    /// `filters.propertyId`.
    pub(crate) property: Option<PropertyKey>,
    /// The position to resume after.
    pub last_seq: Option<u64>,
}

/// Why a handshake was refused; the socket is then closed with 1008.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a handshake: the message says why.
    #[error("{0}")]
    Bad(String),
    /// A `version` other than 1.
    #[error("protocol version {0} is not supported (supported: 1)")]
    UnsupportedVersion(String),
}

impl HandshakeError {
    /// The code of the `error` message that refuses it.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes the native link and test clients send.
    #[test]
    fn wire_bytes_are_pinned() {
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
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use crate::protocol::strategies;
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
    }
}
