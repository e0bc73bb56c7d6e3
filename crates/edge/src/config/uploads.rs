//! `uploads`: document uploads over `/v2/documents/upload/stream` (CONTRACT 7).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `uploads.spool_dir`: this directory under the system's temp dir.
const SPOOL_DIR_NAME: &str = "realtime-edge-uploads";
/// `uploads.max_spool_bytes`.
const MAX_SPOOL_BYTES: u64 = 1 << 30;
/// `uploads.max_concurrent`.
const MAX_CONCURRENT: u64 = 256;
/// `uploads.max_file_bytes`.
const MAX_FILE_BYTES: u64 = 104_857_600;
/// `uploads.ack_bytes`.
const ACK_BYTES: u64 = 262_144;
/// `uploads.window_bytes`.
const WINDOW_BYTES: u64 = 4_194_304;
/// `uploads.resume_ttl_s`.
const RESUME_TTL_S: u64 = 3600;
/// `uploads.idle_timeout_s`.
const IDLE_TIMEOUT_S: u64 = 120;
/// `uploads.legacy_path`.
const LEGACY_PATH: &str = "/documents/upload";
/// `uploads.delivery_attempts`.
const DELIVERY_ATTEMPTS: u64 = 3;
/// `uploads.delivery_timeout_s`.
const DELIVERY_TIMEOUT_S: u64 = 120;

/// Document uploads over `/v2/documents/upload/stream`; see CONTRACT 7.
#[derive(Debug, Clone)]
pub(crate) struct UploadsConfig {
    /// Where partial and complete files are spooled (one file per upload,
    /// named by its generated uploadId, never by the client's filename).
    pub(crate) spool_dir: PathBuf,
    /// Bytes all spooled files may take together; a new upload that would
    /// pass it is refused with `BUSY` (close 1013).
    pub(crate) max_spool_bytes: u64,
    /// Upload connections served at once; beyond it `BUSY` (close 1013).
    pub(crate) max_concurrent: usize,
    /// Largest accepted `filesize` (`FILE_TOO_LARGE` above).
    pub(crate) max_file_bytes: u64,
    /// Accepted mimetypes; empty accepts any (`UNSUPPORTED_TYPE` otherwise).
    pub(crate) allowed_mimetypes: Vec<String>,
    /// Version 2: a `progress` at least every this many durable bytes.
    pub(crate) ack_bytes: u64,
    /// Version 2: unacknowledged bytes a client may have in flight.
    pub(crate) window_bytes: u64,
    /// How long a partial file (or a finished upload's result) is kept
    /// after its last activity, for a resume.
    pub(crate) resume_ttl: Duration,
    /// A socket that sends nothing for this long is closed (the partial file stays).
    pub(crate) idle_timeout: Duration,
    /// The backend's multipart endpoint.
    pub(crate) legacy_path: String,
    /// Delivery attempts on 5xx, garbage or timeout before `UPSTREAM_ERROR`.
    pub(crate) delivery_attempts: u32,
    /// How long one delivery attempt may take (request, upload and answer).
    pub(crate) delivery_timeout: Duration,
}

/// `uploads` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUploads {
    spool_dir: Option<String>,
    max_spool_bytes: Option<u64>,
    max_concurrent: Option<u64>,
    max_file_bytes: Option<u64>,
    allowed_mimetypes: Option<Vec<String>>,
    ack_bytes: Option<u64>,
    window_bytes: Option<u64>,
    resume_ttl_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    legacy_path: Option<String>,
    delivery_attempts: Option<u64>,
    delivery_timeout_s: Option<u64>,
}

impl RawUploads {
    pub(super) fn validate(self, p: &mut Problems) -> UploadsConfig {
        let spool_dir = match self.spool_dir {
            None => std::env::temp_dir().join(SPOOL_DIR_NAME),
            Some(d) if d.trim().is_empty() => {
                p.push("uploads.spool_dir", "must not be empty");
                std::env::temp_dir().join(SPOOL_DIR_NAME)
            }
            Some(d) => PathBuf::from(d),
        };
        let max_file_bytes = p.range(
            "uploads.max_file_bytes",
            self.max_file_bytes,
            MAX_FILE_BYTES,
            1,
            1 << 40,
        );
        let max_spool_bytes = p.range(
            "uploads.max_spool_bytes",
            self.max_spool_bytes,
            MAX_SPOOL_BYTES,
            1,
            1 << 50,
        );
        let ack_bytes = p.range(
            "uploads.ack_bytes",
            self.ack_bytes,
            ACK_BYTES,
            1024,
            1 << 30,
        );
        let window_bytes = p.range(
            "uploads.window_bytes",
            self.window_bytes,
            WINDOW_BYTES,
            1024,
            1 << 30,
        );
        if window_bytes < ack_bytes {
            p.push(
                "uploads.window_bytes",
                format!("{window_bytes} must be at least uploads.ack_bytes ({ack_bytes}), or a client waiting for an acknowledgement would wait forever"),
            );
        }
        let allowed_mimetypes = self.allowed_mimetypes.unwrap_or_default();
        if allowed_mimetypes.iter().any(|m| m.trim().is_empty()) {
            p.push(
                "uploads.allowed_mimetypes",
                "must not contain empty entries",
            );
        }
        let legacy_path = p.path(
            "uploads.legacy_path",
            self.legacy_path.as_deref().unwrap_or(LEGACY_PATH),
        );
        UploadsConfig {
            spool_dir,
            max_spool_bytes,
            max_concurrent: p.range(
                "uploads.max_concurrent",
                self.max_concurrent,
                MAX_CONCURRENT,
                1,
                1_000_000,
            ) as usize,
            max_file_bytes,
            allowed_mimetypes,
            ack_bytes,
            window_bytes,
            resume_ttl: Duration::from_secs(p.range(
                "uploads.resume_ttl_s",
                self.resume_ttl_s,
                RESUME_TTL_S,
                1,
                30 * 86_400,
            )),
            idle_timeout: Duration::from_secs(p.range(
                "uploads.idle_timeout_s",
                self.idle_timeout_s,
                IDLE_TIMEOUT_S,
                1,
                86_400,
            )),
            legacy_path,
            delivery_attempts: p.range(
                "uploads.delivery_attempts",
                self.delivery_attempts,
                DELIVERY_ATTEMPTS,
                1,
                100,
            ) as u32,
            delivery_timeout: Duration::from_secs(p.range(
                "uploads.delivery_timeout_s",
                self.delivery_timeout_s,
                DELIVERY_TIMEOUT_S,
                1,
                3600,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, problems};

    #[test]
    fn uploads_defaults_and_rejections() {
        let u = parse("").unwrap().uploads;
        assert_eq!(u.max_spool_bytes, 1 << 30);
        assert_eq!(u.max_concurrent, 256);
        assert_eq!(u.max_file_bytes, 104_857_600);
        assert!(u.allowed_mimetypes.is_empty());
        assert_eq!(u.ack_bytes, 262_144);
        assert_eq!(u.window_bytes, 4_194_304);
        assert_eq!(u.resume_ttl, Duration::from_secs(3600));
        assert_eq!(u.idle_timeout, Duration::from_secs(120));
        assert_eq!(u.legacy_path, "/documents/upload");
        assert_eq!(u.delivery_attempts, 3);
        assert!(u.spool_dir.starts_with(std::env::temp_dir()));
        let joined = problems(
            "uploads: {legacy_path: documents, ack_bytes: 8192, window_bytes: 4096, delivery_attempts: 0, allowed_mimetypes: [\"\"]}\n",
        )
        .join("\n");
        for key in [
            "edge.yaml: uploads.legacy_path:",
            "edge.yaml: uploads.window_bytes:",
            "edge.yaml: uploads.delivery_attempts:",
            "edge.yaml: uploads.allowed_mimetypes:",
        ] {
            assert!(joined.contains(key), "missing {key} in\n{joined}");
        }
    }
}
