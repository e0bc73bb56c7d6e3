//! Cluster mode: the same room on the other replicas. The room publishes
//! on the room bus ([`crate::chat::cluster`]) what members elsewhere must
//! see, replays what the room did elsewhere, and keeps their members so
//! presence spans the replicas: a user is in the room while any replica
//! has them, `online` when they first appear anywhere, `offline` when they
//! are gone everywhere.

use std::sync::Arc;

use super::{RemoteUser, Room};
use crate::chat::cluster::{Remote, Wire, WireMember};
use crate::chat::protocol::{self, Status};

impl Room {
    /// Cluster mode: whether another replica (but `except`) has this user.
    pub(super) fn is_remote(&self, user_id: &str, except: Option<&str>) -> bool {
        self.remote
            .iter()
            .any(|(replica, users)| Some(&**replica) != except && users.contains_key(user_id))
    }

    /// Whether the room has this user anywhere but on replica `except`.
    fn is_member_elsewhere(&self, user_id: &str, except: &str) -> bool {
        self.users.contains_key(user_id) || self.is_remote(user_id, Some(except))
    }

    fn publish(&self, wire: Wire) {
        if let Some(bus) = &self.bus {
            bus.publish(&self.key, wire);
        }
    }

    pub(super) fn publish_frame(&self, frame: &str) {
        if self.bus.is_some() {
            self.publish(Wire::Frame {
                frame: frame.to_string(),
            });
        }
    }

    pub(super) fn publish_presence(&self, user_id: &str, user_name: &str, status: Status) {
        self.publish(Wire::Presence {
            user_id: user_id.to_string(),
            user_name: user_name.to_string(),
            status: status.as_str().to_string(),
        });
    }

    /// This replica's members, as the other replicas are told them.
    fn local_members(&self) -> Vec<WireMember> {
        self.users
            .iter()
            .map(|(id, u)| WireMember {
                user_id: id.to_string(),
                user_name: u.name.to_string(),
                status: u.status.as_str().to_string(),
            })
            .collect()
    }

    /// Tells the same room elsewhere that it lives here, with its members.
    pub(super) fn hello(&self) {
        if self.bus.is_some() {
            self.publish(Wire::Hello {
                members: self.local_members(),
            });
        }
    }

    /// What the same room did on another replica.
    pub(super) fn remote(&mut self, Remote { from, wire }: Remote) {
        match wire {
            Wire::Frame { frame } => self.broadcast(frame, None),
            Wire::Presence {
                user_id,
                user_name,
                status,
            } => self.remote_presence(&from, &user_id, &user_name, &status),
            Wire::Hello { members } => {
                for m in &members {
                    self.remote_presence(&from, &m.user_id, &m.user_name, &m.status);
                }
                let answer = Wire::Members {
                    to: from.to_string(),
                    members: self.local_members(),
                };
                self.publish(answer);
            }
            Wire::Members { to, members } => {
                if self.bus.as_ref().is_some_and(|b| b.replica() == to) {
                    for m in &members {
                        self.remote_presence(&from, &m.user_id, &m.user_name, &m.status);
                    }
                }
            }
        }
    }

    /// A user's presence on replica `from`: the room says `online` when the
    /// user is new to it, `offline` when gone everywhere, and every change
    /// of status of a user it knows.
    fn remote_presence(&mut self, from: &Arc<str>, user_id: &str, user_name: &str, status: &str) {
        let Some(status) = Status::from_wire(status) else {
            return;
        };
        let elsewhere = self.is_member_elsewhere(user_id, from);
        if status == Status::Offline {
            let removed = self
                .remote
                .get_mut(from)
                .and_then(|users| users.remove(user_id));
            if self.remote.get(from).is_some_and(|u| u.is_empty()) {
                self.remote.remove(from);
            }
            if removed.is_some() && !elsewhere {
                self.broadcast(
                    protocol::presence(user_id, user_name, Status::Offline),
                    None,
                );
            }
            return;
        }
        let previous = self.remote.entry(from.clone()).or_default().insert(
            Arc::from(user_id),
            RemoteUser {
                name: Arc::from(user_name),
                status,
            },
        );
        let changed = match previous {
            None => !elsewhere,
            Some(p) => p.status != status,
        };
        if changed {
            self.broadcast(protocol::presence(user_id, user_name, status), None);
        }
    }

    /// Replica `replica` left the cluster: its users are offline unless the
    /// room has them elsewhere.
    pub(super) fn replica_gone(&mut self, replica: &str) {
        let Some(users) = self.remote.remove(replica) else {
            return;
        };
        for (user_id, u) in users {
            if !self.users.contains_key(&user_id) && !self.is_remote(&user_id, None) {
                self.broadcast(protocol::presence(&user_id, &u.name, Status::Offline), None);
            }
        }
    }
}
