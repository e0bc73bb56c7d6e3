//! Chat rooms spanning replicas (CONTRACT 8 + 9): the room bus on Redis
//! pub/sub.
//!
//! Every replica keeps its own room actor for its own connections; what one
//! room does that members elsewhere must see (a saved message, typing, a
//! receipt, a presence change) is published on the room's channel
//! `{cluster.name}:chat:{org}:{roomId}` and replayed into the same room on
//! the other replicas. A room that starts says `hello` with its members and
//! the others answer with theirs, so the presence list spans replicas; a
//! replica that leaves the cluster membership takes its users offline in
//! every other replica's rooms.
//!
//! One pattern subscription per replica (`{cluster.name}:chat:*`, on its own
//! connection, renewed after a reconnect) receives every room's traffic; a
//! message for a room this replica does not host is dropped on arrival.
//! Publishing goes through one bounded queue (`chat.cluster_publish_queue`)
//! and one task, so a replica's messages keep their order.
//!
//! While Redis is unreachable each replica's rooms carry on alone (members
//! on other replicas are not reached); when it is back the rooms say
//! `hello` again and their presence lists converge.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::registry::{RoomKey, RoomRegistry};
use super::room::RoomMsg;
use crate::cluster::ClusterLink;
use crate::metrics as m;

/// Messages published in one pipeline at most.
const PUBLISH_BATCH: usize = 64;

/// One room member as replicas tell each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMember {
    pub user_id: String,
    pub user_name: String,
    /// `online`, `away` or `busy`.
    pub status: String,
}

/// What one replica's room tells the same room elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Wire {
    /// A frame for every connection of the room (chat, typing, receipt).
    Frame { frame: String },
    /// A user's presence on the sending replica changed.
    #[serde(rename_all = "camelCase")]
    Presence {
        user_id: String,
        user_name: String,
        status: String,
    },
    /// The room started (or rejoined after Redis was away) on the sender:
    /// its members; answer with [`Wire::Members`].
    Hello { members: Vec<WireMember> },
    /// The answer to a hello from replica `to`.
    Members {
        to: String,
        members: Vec<WireMember>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending replica.
    from: String,
    #[serde(flatten)]
    body: Wire,
}

/// A remote room event as the room actor gets it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub from: Arc<str>,
    pub wire: Wire,
}

/// This replica's end of the room bus.
pub struct ChatBus {
    link: Arc<ClusterLink>,
    out: mpsc::Sender<(String, String)>,
    prefix: String,
}

impl ChatBus {
    /// The bus and its publishing end's receiver (for [`ChatBus::run`]).
    pub fn new(
        link: Arc<ClusterLink>,
        publish_queue: usize,
    ) -> (Arc<ChatBus>, mpsc::Receiver<(String, String)>) {
        let (out, rx) = mpsc::channel(publish_queue);
        let prefix = link.key("chat:");
        (Arc::new(ChatBus { link, out, prefix }), rx)
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        self.link.replica()
    }

    fn channel(&self, key: &RoomKey) -> String {
        format!("{}{}:{}", self.prefix, key.org, key.room)
    }

    /// The room of a channel name, if it is one of ours.
    fn room_of(&self, channel: &str) -> Option<RoomKey> {
        let rest = channel.strip_prefix(&self.prefix)?;
        let (org, room) = rest.split_once(':')?;
        Some(RoomKey {
            org: org.parse().ok()?,
            room: Arc::from(room),
        })
    }

    /// Queues `wire` for the same room on the other replicas; never waits
    /// (a full queue drops it, counted).
    pub fn publish(&self, key: &RoomKey, wire: Wire) {
        let envelope = Envelope {
            from: self.replica().to_string(),
            body: wire,
        };
        let Ok(text) = serde_json::to_string(&envelope) else {
            return;
        };
        if self.out.try_send((self.channel(key), text)).is_err() {
            ::metrics::counter!(m::CHAT_CLUSTER_DROPPED, "reason" => "publish_queue_full")
                .increment(1);
        }
    }

    /// Publishes, receives and watches the membership until `stop`.
    pub async fn run(
        self: Arc<Self>,
        rooms: Weak<RoomRegistry>,
        outgoing: mpsc::Receiver<(String, String)>,
        stop: watch::Receiver<bool>,
    ) {
        tokio::join!(
            self.publish_loop(outgoing, stop.clone()),
            self.receive_loop(rooms.clone(), stop.clone()),
            self.membership_loop(rooms, stop),
        );
    }

    async fn publish_loop(
        &self,
        mut outgoing: mpsc::Receiver<(String, String)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            tokio::select! {
                n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
                _ = stopped(&mut stop) => return,
            }
            let mut pipe = redis::pipe();
            for (channel, text) in batch.drain(..) {
                pipe.cmd("PUBLISH").arg(channel).arg(text).ignore();
            }
            let sent: redis::RedisResult<()> = pipe.query_async(&mut self.link.conn()).await;
            if let Err(e) = sent {
                ::metrics::counter!(m::CHAT_CLUSTER_DROPPED, "reason" => "publish_failed")
                    .increment(1);
                tracing::debug!(error = %e, "chat: cannot publish to the other replicas");
            }
        }
    }

    async fn receive_loop(&self, rooms: Weak<RoomRegistry>, mut stop: watch::Receiver<bool>) {
        let retry = self.link.lease() / 3;
        let pattern = format!("{}*", self.prefix);
        loop {
            let subscribed = tokio::select! {
                s = self.subscribe(&pattern) => s,
                _ = stopped(&mut stop) => return,
            };
            let mut messages = match subscribed {
                Ok(pubsub) => pubsub.into_on_message(),
                Err(e) => {
                    tracing::debug!(error = %e, "chat: cannot subscribe to the room bus; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            // Whatever was said while we were not listening: rooms say hello
            // again, so presence lists converge.
            let Some(registry) = rooms.upgrade() else {
                return;
            };
            registry.send_all(|| RoomMsg::Rejoin);
            drop(registry);
            loop {
                let msg = tokio::select! {
                    msg = messages.next() => msg,
                    _ = stopped(&mut stop) => return,
                };
                let Some(msg) = msg else { break };
                let Some(key) = self.room_of(msg.get_channel_name()) else {
                    continue;
                };
                let Ok(envelope) = serde_json::from_slice::<Envelope>(msg.get_payload_bytes())
                else {
                    tracing::debug!(
                        channel = msg.get_channel_name(),
                        "chat: ignoring a malformed room bus message"
                    );
                    continue;
                };
                if envelope.from == self.replica() {
                    continue;
                }
                let Some(registry) = rooms.upgrade() else {
                    return;
                };
                let remote = Remote {
                    from: Arc::from(envelope.from),
                    wire: envelope.body,
                };
                if !registry.send_to(&key, RoomMsg::Remote(remote)) {
                    ::metrics::counter!(m::CHAT_CLUSTER_DROPPED, "reason" => "room_inbox_full")
                        .increment(1);
                }
            }
        }
    }

    async fn subscribe(&self, pattern: &str) -> redis::RedisResult<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = self.link.client().get_async_pubsub().await?;
            pubsub.psubscribe(pattern).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(self.link.lease(), connect)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "Redis did not answer in time",
                )))
            })
    }

    /// Tells every room when replicas leave the membership, so their users
    /// go offline here, and when replicas join it, so they say hello.
    async fn membership_loop(&self, rooms: Weak<RoomRegistry>, mut stop: watch::Receiver<bool>) {
        let mut members = self.link.members();
        let mut known: BTreeSet<String> = members.borrow_and_update().iter().cloned().collect();
        loop {
            tokio::select! {
                changed = members.changed() => if changed.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
            let now: BTreeSet<String> = members.borrow_and_update().iter().cloned().collect();
            let Some(registry) = rooms.upgrade() else {
                return;
            };
            for gone in known.difference(&now) {
                let gone: Arc<str> = Arc::from(gone.as_str());
                registry.send_all(|| RoomMsg::ReplicaGone(gone.clone()));
            }
            // A replica (re)joined — after a Redis restart it may have been
            // counted as gone a moment ago: the rooms say hello, so their
            // presence lists include its members again.
            if now
                .iter()
                .any(|r| !known.contains(r) && r != self.replica())
            {
                registry.send_all(|| RoomMsg::Rejoin);
            }
            known = now;
        }
    }
}

/// Resolves when the stop signal is true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let e = Envelope {
            from: "r1".into(),
            body: Wire::Presence {
                user_id: "u".into(),
                user_name: "U".into(),
                status: "away".into(),
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""kind":"presence""#), "{text}");
        assert!(text.contains(r#""userId":"u""#), "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.body, e.body);
        let hello: Envelope =
            serde_json::from_str(r#"{"from":"r2","kind":"hello","members":[]}"#).unwrap();
        assert_eq!(hello.body, Wire::Hello { members: vec![] });
        assert!(serde_json::from_str::<Envelope>(r#"{"from":"r2","kind":"nope"}"#).is_err());
    }
}
