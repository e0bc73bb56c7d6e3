//! The error codes every upload failure is reported with (CONTRACT 7), the
//! close code that follows each, and their metric label.

use crate::protocol::close;

/// The `code` of an upload `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadCode {
    BadHandshake,
    FileTooLarge,
    UnsupportedType,
    UnknownUpload,
    ChunkOutOfOrder,
    BadChunk,
    SizeMismatch,
    WindowExceeded,
    UpstreamRejected,
    UpstreamError,
    Busy,
}

impl UploadCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UploadCode::BadHandshake => "BAD_HANDSHAKE",
            UploadCode::FileTooLarge => "FILE_TOO_LARGE",
            UploadCode::UnsupportedType => "UNSUPPORTED_TYPE",
            UploadCode::UnknownUpload => "UNKNOWN_UPLOAD",
            UploadCode::ChunkOutOfOrder => "CHUNK_OUT_OF_ORDER",
            UploadCode::BadChunk => "BAD_CHUNK",
            UploadCode::SizeMismatch => "SIZE_MISMATCH",
            UploadCode::WindowExceeded => "WINDOW_EXCEEDED",
            UploadCode::UpstreamRejected => "UPSTREAM_REJECTED",
            UploadCode::UpstreamError => "UPSTREAM_ERROR",
            UploadCode::Busy => "BUSY",
        }
    }

    /// The `reason` label of the failed-uploads counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            UploadCode::BadHandshake => "bad_handshake",
            UploadCode::FileTooLarge => "file_too_large",
            UploadCode::UnsupportedType => "unsupported_type",
            UploadCode::UnknownUpload => "unknown_upload",
            UploadCode::ChunkOutOfOrder => "chunk_out_of_order",
            UploadCode::BadChunk => "bad_chunk",
            UploadCode::SizeMismatch => "size_mismatch",
            UploadCode::WindowExceeded => "window_exceeded",
            UploadCode::UpstreamRejected => "upstream_rejected",
            UploadCode::UpstreamError => "upstream_error",
            UploadCode::Busy => "busy",
        }
    }

    pub(crate) const ALL: [UploadCode; 11] = [
        UploadCode::BadHandshake,
        UploadCode::FileTooLarge,
        UploadCode::UnsupportedType,
        UploadCode::UnknownUpload,
        UploadCode::ChunkOutOfOrder,
        UploadCode::BadChunk,
        UploadCode::SizeMismatch,
        UploadCode::WindowExceeded,
        UploadCode::UpstreamRejected,
        UploadCode::UpstreamError,
        UploadCode::Busy,
    ];

    /// The close code that follows the error: 1008 for what the client (or
    /// its file) got wrong and must not retry as is, 1013 when the sidecar
    /// is full, 1011 when the backend failed (a version-2 client may resume).
    pub(crate) fn close_code(self) -> u16 {
        match self {
            UploadCode::Busy => close::TRY_AGAIN_LATER,
            UploadCode::UpstreamError => close::INTERNAL,
            _ => close::POLICY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(UploadCode::Busy.close_code(), 1013);
        assert_eq!(UploadCode::UpstreamError.close_code(), 1011);
        assert_eq!(UploadCode::BadChunk.close_code(), 1008);
        assert_eq!(UploadCode::UpstreamRejected.close_code(), 1008);
    }
}
