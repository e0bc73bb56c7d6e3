//! The first message of an upload stream (CONTRACT 7): parsing and
//! validation against `uploads.*`.

use serde_json::{Map, Value};

use super::UploadCode;
use crate::config::UploadsConfig;

/// Longest accepted filename, in bytes.
pub(crate) const MAX_FILENAME_BYTES: usize = 255;
/// Longest accepted text of the other handshake fields, in bytes.
pub(crate) const MAX_FIELD_BYTES: usize = 1024;

/// A rejected handshake: the code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct HandshakeError {
    pub(crate) code: UploadCode,
    pub(crate) message: String,
}

fn bad(message: impl Into<String>) -> HandshakeError {
    HandshakeError {
        code: UploadCode::BadHandshake,
        message: message.into(),
    }
}

/// What the client says about its file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileMeta {
    pub(crate) filename: String,
    pub(crate) filesize: u64,
    /// `None` when absent or empty (a browser's `file.type` for an unknown type).
    pub(crate) mimetype: Option<String>,
    pub(crate) document_type: Option<Value>,
    pub(crate) guest_id: Option<Value>,
    pub(crate) property_id: Option<Value>,
}

impl FileMeta {
    /// The handshake's fields that were present, as text, in contract order
    /// (the multipart text fields of a legacy delivery).
    pub(crate) fn text_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("filename", self.filename.clone())];
        if let Some(m) = &self.mimetype {
            out.push(("mimetype", m.clone()));
        }
        for (name, v) in [
            ("documentType", &self.document_type),
            ("guestId", &self.guest_id),
            ("propertyId", &self.property_id),
        ] {
            if let Some(v) = v {
                out.push((name, scalar_text(v)));
            }
        }
        out
    }

    /// The handshake a version-1 client sends for this file (native delivery).
    pub(crate) fn v1_handshake(&self) -> Value {
        let mut m = Map::new();
        m.insert("filename".into(), Value::from(self.filename.clone()));
        m.insert("filesize".into(), Value::from(self.filesize));
        m.insert(
            "mimetype".into(),
            Value::from(self.mimetype.clone().unwrap_or_default()),
        );
        for (name, v) in [
            ("documentType", &self.document_type),
            ("guestId", &self.guest_id),
            ("propertyId", &self.property_id),
        ] {
            if let Some(v) = v {
                m.insert(name.into(), v.clone());
            }
        }
        m.insert("version".into(), Value::from(1));
        Value::Object(m)
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parsed handshake.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Handshake {
    /// A new upload of either version.
    New { version: u8, meta: FileMeta },
    /// Version 2 resuming `upload_id`; `filesize`, when sent, must match.
    Resume {
        upload_id: String,
        filesize: Option<u64>,
    },
}

/// Parses and validates the first message.
pub(crate) fn parse(text: &str, cfg: &UploadsConfig) -> Result<Handshake, HandshakeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("handshake is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad("handshake must be a JSON object"));
    };
    let version = match obj.get("version") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(1) => 1,
            Some(2) => 2,
            _ => return Err(bad(format!("unsupported version {v} (1 or 2)"))),
        },
    };
    let filesize = match obj.get("filesize") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "filesize must be a positive integer number of bytes, not {v}"
            ))
        })?),
    };
    match obj.get("uploadId") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if version == 2 => {
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(HandshakeError {
                    code: UploadCode::UnknownUpload,
                    message: "no such upload".into(),
                });
            }
            return Ok(Handshake::Resume {
                upload_id: id.clone(),
                filesize,
            });
        }
        Some(Value::String(_)) => {
            return Err(bad("uploadId is only accepted with version 2"));
        }
        Some(_) => return Err(bad("uploadId must be a string")),
    }
    let filename = match obj.get("filename") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad("filename (a string) is required")),
    };
    check_filename(&filename)?;
    let filesize = filesize.ok_or_else(|| bad("filesize is required"))?;
    if filesize == 0 {
        return Err(bad("filesize must be at least 1"));
    }
    if filesize > cfg.max_file_bytes {
        return Err(HandshakeError {
            code: UploadCode::FileTooLarge,
            message: format!(
                "filesize {filesize} is larger than the limit of {} bytes",
                cfg.max_file_bytes
            ),
        });
    }
    let mimetype = match obj.get("mimetype") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_text("mimetype", s)?;
            Some(s.clone()).filter(|s| !s.is_empty())
        }
        Some(_) => return Err(bad("mimetype must be a string")),
    };
    if !cfg.allowed_mimetypes.is_empty() {
        let ok = mimetype.as_deref().is_some_and(|m| {
            cfg.allowed_mimetypes
                .iter()
                .any(|a| a.eq_ignore_ascii_case(m))
        });
        if !ok {
            return Err(HandshakeError {
                code: UploadCode::UnsupportedType,
                message: format!(
                    "mimetype {:?} is not accepted (allowed: {})",
                    mimetype.unwrap_or_default(),
                    cfg.allowed_mimetypes.join(", ")
                ),
            });
        }
    }
    let scalar = |name: &str| -> Result<Option<Value>, HandshakeError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                check_text(name, &scalar_text(v))?;
                Ok(Some(v.clone()))
            }
            Some(_) => Err(bad(format!("{name} must be a string or a number"))),
        }
    };
    let meta = FileMeta {
        filename,
        filesize,
        mimetype,
        document_type: scalar("documentType")?,
        guest_id: scalar("guestId")?,
        property_id: scalar("propertyId")?,
    };
    Ok(Handshake::New { version, meta })
}

fn check_filename(name: &str) -> Result<(), HandshakeError> {
    if name.is_empty() {
        return Err(bad("filename must not be empty"));
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(bad(format!(
            "filename is {} bytes long (at most {MAX_FILENAME_BYTES})",
            name.len()
        )));
    }
    if name.contains(['/', '\\']) {
        return Err(bad("filename must not contain path separators"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("filename must not contain control characters"));
    }
    if name == "." || name == ".." {
        return Err(bad("filename must name a file"));
    }
    Ok(())
}

fn check_text(name: &str, value: &str) -> Result<(), HandshakeError> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(bad(format!(
            "{name} is longer than {MAX_FIELD_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(format!("{name} must not contain control characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
