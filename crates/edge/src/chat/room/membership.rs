//! Joining and leaving the room: the member cap, a user's first
//! connection announcing them (here, and to the other replicas), the
//! presence snapshot for the newcomer, and the leave grace before a user
//! whose last connection left is said to be offline.

use super::*;

impl Room {
    pub(super) fn join(&mut self, member: Member) -> JoinOutcome {
        // Members are connections: every tab costs the room a queue and a
        // share of each broadcast, so every tab counts against the cap.
        if self.conns.len() >= self.cfg.max_room_members {
            return JoinOutcome::Full;
        }
        let returning = match self.users.get_mut(&member.user_id) {
            Some(user) => {
                user.conns += 1;
                user.offline_at = None;
                true
            }
            None => {
                self.users.insert(
                    member.user_id.clone(),
                    User {
                        name: member.user_name.clone(),
                        conns: 1,
                        status: Status::Online,
                        offline_at: None,
                        sends: SendWindow::default(),
                        typing: TypingThrottle::default(),
                    },
                );
                false
            }
        };
        if !returning {
            // Someone the room already has through another replica is not new.
            if !self.is_remote(&member.user_id, None) {
                let frame = protocol::presence(&member.user_id, &member.user_name, Status::Online);
                self.broadcast(frame, None);
            }
            self.publish_presence(&member.user_id, &member.user_name, Status::Online);
        }
        self.conns.insert(
            member.conn,
            Conn {
                user: member.user_id.clone(),
                token: member.token.clone(),
                queue: member.queue.clone(),
            },
        );
        let mut members: Vec<MemberView<'_>> = self
            .users
            .iter()
            .map(|(id, u)| MemberView {
                user_id: id,
                user_name: &u.name,
                status: u.status,
            })
            .collect();
        // Members on other replicas, each user once.
        let mut listed: std::collections::HashSet<&str> = self.users.keys().map(|k| &**k).collect();
        for users in self.remote.values() {
            for (id, u) in users {
                if listed.insert(id) {
                    members.push(MemberView {
                        user_id: id,
                        user_name: &u.name,
                        status: u.status,
                    });
                }
            }
        }
        member
            .queue
            .push(Frame::control(protocol::presence_snapshot(&members)));
        JoinOutcome::Joined
    }

    pub(super) fn leave(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(user) = self.users.get_mut(&c.user) else {
            return;
        };
        user.conns = user.conns.saturating_sub(1);
        if user.conns == 0 {
            let at = Instant::now() + self.cfg.leave_grace;
            user.offline_at = Some(at);
            self.timers.push(Reverse((at, Timer::Offline(c.user))));
        }
    }
}
