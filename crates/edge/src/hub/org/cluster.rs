//! The hub in cluster mode (CONTRACT 9): what changes when the org's stream
//! is shared through Redis.
//!
//! - While this replica has demand for the org it holds an [`OrgLink`].
//!   Joins and reads wait until the link says how the org is served
//!   (`Joined`: from the shared stream, whose window it loaded; `Local`:
//!   on this replica's own), so a resume is answered against the right
//!   positions.
//! - Shared: the sources run only on the owner, whose flushes go to Redis
//!   (one append for everything pending, with the source positions); every
//!   replica delivers what its reader reads, with the stream's positions.
//! - Local (Redis unavailable, or too slow for the owner's appends): the
//!   hub runs its own sources and positions, as without a cluster.
//!
//! Positions only grow for a connected client. Where they cannot be proven
//! continuous (entering or leaving local mode, a jump in the stream's
//! positions: a rejoin raised them, a new generation, entries trimmed
//! before they were read) the hub draws a *boundary*: the window restarts
//! empty and only positions from the boundary on resume, so a `lastSeq`
//! from across it gets `resumed: false`, never wrong events. Delivered
//! eventIds are remembered (`delivered`), so what a connected client got
//! from local sources is not sent again from the stream.

use std::sync::Arc;

use tokio::time::Instant;

use super::*;
use crate::cluster::org::{AppendBatch, ClusterUpdate, OrgLink};
use crate::cluster::stream::{Outgoing, SourceAfter, SourcePositions, StreamEvent};

mod delivery;

/// How the hub serves an org in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serving {
    /// Waiting for the link's first word (joins and reads wait too).
    Waiting,
    /// From the shared stream.
    Shared,
    /// On its own (Redis unavailable).
    Local,
}

pub(super) struct ClusterSide {
    pub(super) link: Option<OrgLink>,
    pub(super) serving: Serving,
    pub(super) owner: bool,
    /// Joins and reads that arrived while `Waiting`.
    pub(super) waiting: Vec<HubMsg>,
    /// Nothing was ever served: the first `Joined` may set the positions.
    pub(super) fresh: bool,
    /// Joins whose `lastSeq` is ahead of what this replica has read (it
    /// came from a replica whose reader is a little ahead), until the
    /// reader reaches it or `cluster.redis_timeout_ms` passed.
    pub(super) ahead: Vec<(Instant, JoinRequest)>,
}

impl ClusterSide {
    pub(super) fn new() -> ClusterSide {
        ClusterSide {
            link: None,
            serving: Serving::Waiting,
            owner: false,
            waiting: Vec::new(),
            fresh: true,
            ahead: Vec::new(),
        }
    }
}

impl OrgHub {
    /// Whether this hub runs the org's sources: always without a cluster;
    /// in a cluster when it owns the org or serves it on its own.
    pub(super) fn runs_sources(&self) -> bool {
        match &self.cluster {
            None => true,
            Some(c) => c.owner || c.serving == Serving::Local,
        }
    }

    /// Whether delivery comes from the shared stream.
    pub(super) fn shared(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.serving != Serving::Local)
    }

    /// Holds a join or read back while the link has not said how the org
    /// is served (starting the link for it); returns it when it may go on.
    pub(super) fn hold_until_served(&mut self, msg: HubMsg) -> Option<HubMsg> {
        let org = self.org;
        let Some(link) = self.ctx.cluster.clone() else {
            return Some(msg);
        };
        let me = self.me.clone();
        let cfg = self.cfg.clone();
        let c = self.cluster.as_mut()?;
        if c.link.is_none() {
            c.link = Some(OrgLink::start(link, org, &cfg, me));
            c.serving = Serving::Waiting;
            c.owner = false;
        }
        if c.serving == Serving::Waiting {
            c.waiting.push(msg);
            return None;
        }
        c.fresh = false;
        Some(msg)
    }

    /// Holds back a join whose `lastSeq` is a position of the shared
    /// stream this replica has not read yet; returns it when it may go on.
    pub(super) fn wait_until_read(&mut self, req: JoinRequest) -> Option<JoinRequest> {
        let seq = self.seq;
        let timeout = self.cfg.cluster.redis_timeout;
        let Some(c) = self.cluster.as_mut() else {
            return Some(req);
        };
        match req.last_seq {
            Some(n) if c.serving == Serving::Shared && n > seq => {
                c.ahead.push((Instant::now() + timeout, req));
                None
            }
            _ => Some(req),
        }
    }

    /// Lets held-back joins go on: those whose position was read, those
    /// that waited long enough (they get `resumed: false`), or all.
    pub(super) fn release_ahead(&mut self, now: Instant, all: bool) {
        let seq = self.seq;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.ahead.is_empty() {
            return;
        }
        let (ready, held): (Vec<_>, Vec<_>) =
            std::mem::take(&mut c.ahead)
                .into_iter()
                .partition(|(deadline, r)| {
                    all || now >= *deadline || r.last_seq.is_none_or(|n| n <= seq)
                });
        c.ahead = held;
        for (_, req) in ready {
            self.join_now(req);
        }
    }

    /// When the oldest held-back join stops waiting.
    pub(super) fn ahead_deadline(&self) -> Option<Instant> {
        self.cluster
            .as_ref()
            .and_then(|c| c.ahead.iter().map(|(d, _)| *d).min())
    }

    /// Drops the link when the org has no local demand left (the lease and
    /// demand are released); called from `reconcile`.
    pub(super) fn track_demand(&mut self, demand: bool) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !demand && c.waiting.is_empty() && c.ahead.is_empty() && c.link.take().is_some() {
            c.owner = false;
            c.serving = Serving::Waiting;
        }
    }

    pub(super) fn cluster_update(&mut self, link: u64, update: ClusterUpdate) {
        let current = self
            .cluster
            .as_ref()
            .and_then(|c| c.link.as_ref())
            .is_some_and(|l| l.id() == link);
        if !current {
            return;
        }
        match update {
            ClusterUpdate::Joined { head, window } => self.joined(head, window),
            ClusterUpdate::Events(events) => self.deliver_stream(events),
            ClusterUpdate::Owner { stored } => self.became_owner(stored),
            ClusterUpdate::NotOwner => {
                if let Some(c) = self.cluster.as_mut() {
                    c.owner = false;
                }
                if self.shared() {
                    // The new owner fetches from the stored positions;
                    // ours are history, and what is pending is its to append.
                    self.drop_pending();
                    for slot in &mut self.slots {
                        slot.cursor = None;
                    }
                    self.native_seq = None;
                }
                self.reconcile();
            }
            ClusterUpdate::Local => self.go_local(),
            ClusterUpdate::Unappended(events) => {
                if !self.shared() {
                    self.deliver_local(events);
                }
            }
        }
    }

    fn release_waiting(&mut self) {
        let waiting = self
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.waiting))
            .unwrap_or_default();
        for msg in waiting {
            self.handle(msg);
        }
    }

    /// The link read the shared stream's head and window.
    fn joined(&mut self, head: crate::cluster::stream::Head, window: Vec<StreamEvent>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was_local = c.serving == Serving::Local;
        let fresh = c.fresh;
        c.serving = Serving::Shared;
        if fresh {
            // Nobody saw a position of this hub: take the stream's.
            self.replay =
                ReplayWindow::new(self.cfg.stream.replay_events, self.cfg.stream.replay_bytes);
            self.base_seq = head.generation;
            self.seq = head.generation;
            self.deliver_stream(window);
            self.seq = self.seq.max(head.head);
            self.heads.send_replace(self.seq);
        } else {
            if was_local {
                tracing::info!(org = self.org, "org serves from the shared stream again");
            }
            self.deliver_stream(window);
            if head.head > self.seq {
                self.boundary();
                self.seq = head.head;
                self.heads.send_replace(self.seq);
            }
        }
        // Local sources stop unless this replica owns the org.
        self.reconcile();
        self.release_waiting();
    }

    fn became_owner(&mut self, stored: SourcePositions) {
        let running = self.runs_sources();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.owner = true;
        if running {
            // Serving on its own until now: the same sources go on, and
            // their next flushes are appended.
            return;
        }
        // Sources start from where the last owner stopped (or, when Redis
        // holds nothing, from where this replica's own ones were).
        for (_, r) in self.sources.drain() {
            r.handle.stop();
        }
        for slot in &mut self.slots {
            slot.pending.clear();
            slot.pending_since = None;
            slot.catching_up = None;
            slot.serving = None;
        }
        for (s, cursor) in stored.cursors {
            if let Some(slot) = self.slots.get_mut(s as usize) {
                slot.cursor = Some(cursor);
            }
        }
        if stored.native.is_some() {
            self.native_seq = stored.native;
        }
        // Redis de-duplicates the overlap with what the last owner appended.
        self.recent = RecentIds::new(self.cfg.stream.dedup_events);
        self.reconcile();
    }

    /// Redis is unavailable: serve on our own, in positions of our own.
    fn go_local(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.owner = false;
        c.serving = Serving::Local;
        // Local positions start above the shared ones and apart from what
        // other replicas hand out meanwhile (as a single sidecar's would).
        self.boundary();
        let local_base = (crate::clock::unix_millis().max(0) as u64).saturating_mul(1000);
        self.seq = self.seq.max(local_base);
        self.base_seq = self.seq;
        self.heads.send_replace(self.seq);
        if let Some(link) = self.cluster.as_ref().and_then(|c| c.link.as_ref()) {
            link.set_floor(self.seq);
        }
        self.reconcile();
        self.release_waiting();
        self.release_ahead(Instant::now(), true);
    }

    /// Starts a new run of positions at the current one: the window
    /// restarts, and only a `lastSeq` from here on resumes.
    fn boundary(&mut self) {
        self.replay =
            ReplayWindow::new(self.cfg.stream.replay_events, self.cfg.stream.replay_bytes);
        self.base_seq = self.seq;
    }

    fn drop_pending(&mut self) {
        for slot in &mut self.slots {
            slot.pending.clear();
            slot.pending_since = None;
        }
    }
}
