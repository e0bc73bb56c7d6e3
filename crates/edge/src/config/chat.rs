//! `chat`: chat rooms (CONTRACT 8), the backend's store endpoints and the
//! rooms' bounds.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `chat.history_path`.
const HISTORY_PATH: &str = "/collaboration/chat/history";
/// `chat.history_limit`.
const HISTORY_LIMIT: u64 = 50;
/// `chat.messages_path`.
const MESSAGES_PATH: &str = "/collaboration/chat/messages";
/// `chat.receipts_path`.
const RECEIPTS_PATH: &str = "/collaboration/chat/receipts";
/// `chat.leave_grace_s`.
const LEAVE_GRACE_S: u64 = 5;
/// `chat.receipt_flush_ms`.
const RECEIPT_FLUSH_MS: u64 = 1000;
/// `chat.max_room_members`.
const MAX_ROOM_MEMBERS: u64 = 1000;
/// `chat.max_messages_per_s`.
const MAX_MESSAGES_PER_S: u64 = 5;
/// `chat.backend_timeout_ms`.
const BACKEND_TIMEOUT_MS: u64 = 5000;
/// `chat.max_response_bytes`.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// `chat.max_queue_bytes`.
const MAX_QUEUE_BYTES: u64 = 1_048_576;
/// `chat.room_inbox`.
const ROOM_INBOX: u64 = 1024;
/// `chat.cluster_publish_queue`.
const CLUSTER_PUBLISH_QUEUE: u64 = 4096;

/// Chat rooms (CONTRACT 8): the backend's store endpoints and the rooms' bounds.
#[derive(Debug, Clone)]
pub(crate) struct ChatConfig {
    /// `GET {history_path}?roomId=R&limit=N` on join.
    pub(crate) history_path: String,
    /// Messages asked for on join.
    pub(crate) history_limit: u64,
    /// `POST {messages_path}` stores one message.
    pub(crate) messages_path: String,
    /// `POST {receipts_path}` stores a user's latest read receipt.
    pub(crate) receipts_path: String,
    /// How long a user whose last connection left stays online.
    pub(crate) leave_grace: Duration,
    /// At most one receipt POST per user and room per this interval.
    pub(crate) receipt_flush: Duration,
    /// Connections in one room at once (every tab counts); the next gets `ROOM_FULL`.
    pub(crate) max_room_members: usize,
    /// Chat messages one user may send per second in a room.
    pub(crate) max_messages_per_s: usize,
    /// How long one backend request (history, message, receipt) may take.
    pub(crate) backend_timeout: Duration,
    /// Largest backend answer read (a history page).
    pub(crate) max_response_bytes: usize,
    /// Send queue of one chat connection, in bytes; past it the client is closed with 1013.
    pub(crate) max_queue_bytes: usize,
    /// Messages waiting in one room's inbox; senders wait when it is full.
    pub(crate) room_inbox: usize,
    /// Cluster mode: room messages waiting to be published to the other
    /// replicas; past it they are dropped and counted.
    pub(crate) cluster_publish_queue: usize,
}

/// `chat` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawChat {
    history_path: Option<String>,
    history_limit: Option<u64>,
    messages_path: Option<String>,
    receipts_path: Option<String>,
    leave_grace_s: Option<u64>,
    receipt_flush_ms: Option<u64>,
    max_room_members: Option<u64>,
    max_messages_per_s: Option<u64>,
    backend_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    max_queue_bytes: Option<u64>,
    room_inbox: Option<u64>,
    cluster_publish_queue: Option<u64>,
}

impl RawChat {
    pub(super) fn validate(self, p: &mut Problems) -> ChatConfig {
        let c = self;
        ChatConfig {
            history_path: p.path(
                "chat.history_path",
                c.history_path.as_deref().unwrap_or(HISTORY_PATH),
            ),
            history_limit: p.range(
                "chat.history_limit",
                c.history_limit,
                HISTORY_LIMIT,
                0,
                10_000,
            ),
            messages_path: p.path(
                "chat.messages_path",
                c.messages_path.as_deref().unwrap_or(MESSAGES_PATH),
            ),
            receipts_path: p.path(
                "chat.receipts_path",
                c.receipts_path.as_deref().unwrap_or(RECEIPTS_PATH),
            ),
            leave_grace: Duration::from_secs(p.range(
                "chat.leave_grace_s",
                c.leave_grace_s,
                LEAVE_GRACE_S,
                0,
                3600,
            )),
            receipt_flush: Duration::from_millis(p.range(
                "chat.receipt_flush_ms",
                c.receipt_flush_ms,
                RECEIPT_FLUSH_MS,
                0,
                3_600_000,
            )),
            max_room_members: p.range(
                "chat.max_room_members",
                c.max_room_members,
                MAX_ROOM_MEMBERS,
                1,
                1_000_000,
            ) as usize,
            max_messages_per_s: p.range(
                "chat.max_messages_per_s",
                c.max_messages_per_s,
                MAX_MESSAGES_PER_S,
                1,
                10_000,
            ) as usize,
            backend_timeout: Duration::from_millis(p.range(
                "chat.backend_timeout_ms",
                c.backend_timeout_ms,
                BACKEND_TIMEOUT_MS,
                10,
                600_000,
            )),
            max_response_bytes: p.range(
                "chat.max_response_bytes",
                c.max_response_bytes,
                MAX_RESPONSE_BYTES,
                1024,
                1 << 30,
            ) as usize,
            max_queue_bytes: p.range(
                "chat.max_queue_bytes",
                c.max_queue_bytes,
                MAX_QUEUE_BYTES,
                16 * 1024,
                1 << 30,
            ) as usize,
            room_inbox: p.range("chat.room_inbox", c.room_inbox, ROOM_INBOX, 16, 1_000_000)
                as usize,
            cluster_publish_queue: p.range(
                "chat.cluster_publish_queue",
                c.cluster_publish_queue,
                CLUSTER_PUBLISH_QUEUE,
                16,
                1_000_000,
            ) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, problems};

    #[test]
    fn chat_keys_default_and_reject_bad_values() {
        let c = parse("").unwrap();
        assert_eq!(c.auth.user_claim, "sub");
        assert_eq!(c.auth.name_claim, "name");
        assert_eq!(c.chat.history_path, "/collaboration/chat/history");
        assert_eq!(c.chat.history_limit, 50);
        assert_eq!(c.chat.messages_path, "/collaboration/chat/messages");
        assert_eq!(c.chat.receipts_path, "/collaboration/chat/receipts");
        assert_eq!(c.chat.leave_grace, Duration::from_secs(5));
        assert_eq!(c.chat.receipt_flush, Duration::from_millis(1000));
        assert_eq!(c.chat.max_room_members, 1000);
        assert_eq!(c.chat.max_messages_per_s, 5);
        assert_eq!(c.chat.cluster_publish_queue, 4096);
        let c = parse("auth: {user_claim: uid, name_claim: display}\nchat: {history_limit: 10, leave_grace_s: 0}\n").unwrap();
        assert_eq!(
            (c.auth.user_claim.as_str(), c.auth.name_claim.as_str()),
            ("uid", "display")
        );
        assert_eq!(c.chat.history_limit, 10);
        assert_eq!(c.chat.leave_grace, Duration::ZERO);
        let joined = problems(
            "auth: {user_claim: \"\"}\nchat: {messages_path: nope, max_room_members: 0, max_messages_per_s: 0, room_inbox: 1, colour: red}\n",
        )
        .join("\n");
        assert!(joined.contains("colour"), "{joined}");
        let joined = problems(
            "auth: {user_claim: \"\"}\nchat: {messages_path: nope, max_room_members: 0, max_messages_per_s: 0, room_inbox: 1, cluster_publish_queue: 0}\n",
        )
        .join("\n");
        for key in [
            "chat.cluster_publish_queue",
            "auth.user_claim",
            "chat.messages_path",
            "chat.max_room_members",
            "chat.max_messages_per_s",
            "chat.room_inbox",
        ] {
            assert!(
                joined.contains(&format!("edge.yaml: {key}:")),
                "missing {key} in\n{joined}"
            );
        }
    }
}
