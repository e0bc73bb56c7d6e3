//! What members say in the room: chat messages (saved by the backend,
//! then broadcast; a failure told to the sender alone), typing (throttled,
//! to everyone else), presence changes, and read receipts (broadcast at
//! once, stored coalesced per user through the receipt slots).

use std::cmp::Reverse;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{ConnId, JobDone, Room, Timer};
use crate::chat::protocol::{self, ChatErrorCode, Status};
use crate::chat::receipts::{Next, Receipt};
use crate::metrics as m;

impl Room {
    pub(super) fn chat(
        &mut self,
        conn: ConnId,
        user_id: Arc<str>,
        text: String,
        client_msg_id: String,
    ) {
        let Some(token) = self.token_of(conn) else {
            return;
        };
        let Some(user) = self.users.get_mut(&user_id) else {
            return;
        };
        if !user
            .sends
            .try_send(Instant::now(), self.cfg.max_messages_per_s)
        {
            ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::RateLimited.as_str()).increment(1);
            let msg = format!(
                "more than {} messages per second; not sent",
                self.cfg.max_messages_per_s
            );
            self.tell(
                conn,
                protocol::error(ChatErrorCode::RateLimited, &msg, Some(&client_msg_id)),
            );
            return;
        }
        let user_name = user.name.clone();
        let store = self.store.clone();
        let room = self.key.room.clone();
        self.jobs.spawn(async move {
            let result = store
                .save_message(&token, &room, &text, &client_msg_id)
                .await;
            JobDone::Saved {
                conn,
                user_id,
                user_name,
                text,
                client_msg_id,
                result,
            }
        });
    }

    fn token_of(&self, conn: ConnId) -> Option<Arc<str>> {
        self.conns.get(&conn).map(|c| c.token.clone())
    }

    /// Typing goes to every connection but the one typing (a user's other
    /// tabs included: the client filters its own user if it wants to).
    pub(super) fn typing(&mut self, conn: ConnId, user_id: &Arc<str>) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        if !user.typing.allow(Instant::now()) {
            return;
        }
        let frame = protocol::typing(user_id, &user.name);
        self.publish_frame(&frame);
        self.broadcast(frame, Some(conn));
    }

    pub(super) fn presence(&mut self, user_id: &Arc<str>, status: Status) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        user.status = status;
        let name = user.name.clone();
        let frame = protocol::presence(user_id, &name, status);
        self.broadcast(frame, None);
        self.publish_presence(user_id, &name, status);
    }

    pub(super) fn ack(&mut self, conn: ConnId, user_id: Arc<str>, message_id: Value) {
        let frame = protocol::receipt(&user_id, &message_id);
        self.publish_frame(&frame);
        self.broadcast(frame, None);
        let Some(token) = self.token_of(conn) else {
            return;
        };
        let slot = self.receipts.entry(user_id.clone()).or_default();
        let next = slot.ack(
            Receipt { message_id, token },
            Instant::now(),
            self.cfg.receipt_flush,
        );
        self.receipt_next(user_id, next);
    }

    /// Acts on what a user's receipt slot asks for.
    pub(super) fn receipt_next(&mut self, user_id: Arc<str>, next: Next) {
        match next {
            Next::Store(r) => {
                let store = self.store.clone();
                let room = self.key.room.clone();
                self.jobs.spawn(async move {
                    let result = store.save_receipt(&r.token, &room, &r.message_id).await;
                    JobDone::Receipt { user_id, result }
                });
            }
            Next::WakeAt(at) => self.timers.push(Reverse((at, Timer::Receipt(user_id)))),
            Next::Wait => {}
        }
    }

    pub(super) fn job_done(&mut self, done: JobDone) {
        match done {
            JobDone::Saved {
                conn,
                user_id,
                user_name,
                text,
                client_msg_id,
                result,
            } => match result {
                Ok(mut saved) => {
                    ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::Saved.as_str()).increment(1);
                    // The backend's saved message is what everyone sees;
                    // fields it left out come from what the sidecar knows.
                    saved.entry("userId").or_insert_with(|| json!(&*user_id));
                    saved
                        .entry("userName")
                        .or_insert_with(|| json!(&*user_name));
                    saved.entry("text").or_insert_with(|| json!(text));
                    saved
                        .entry("timestamp")
                        .or_insert_with(|| json!(crate::clock::now_rfc3339()));
                    let frame = protocol::chat(saved, &client_msg_id);
                    self.publish_frame(&frame);
                    self.broadcast(frame, None);
                }
                Err(e) => {
                    ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::Failed.as_str()).increment(1);
                    tracing::info!(org = self.key.org, error = %e, "chat message not saved");
                    let msg = format!("message not saved: {e}");
                    self.tell(
                        conn,
                        protocol::error(ChatErrorCode::SendFailed, &msg, Some(&client_msg_id)),
                    );
                }
            },
            JobDone::Receipt { user_id, result } => {
                if let Err(e) = result {
                    tracing::info!(org = self.key.org, error = %e, "read receipt not stored");
                }
                let next = self
                    .receipts
                    .get_mut(&user_id)
                    .map(|slot| slot.stored(Instant::now(), self.cfg.receipt_flush));
                if let Some(next) = next {
                    self.receipt_next(user_id, next);
                }
            }
        }
    }
}
