//! Starting the org's sources: a V1 poller for one service (from the
//! service's cursor) or a native link for a set of services, each under a
//! fresh source id; and which native link is the newest.

use super::*;

impl OrgHub {
    pub(in crate::hub::org) fn newest_native(&self) -> Option<SourceId> {
        self.sources
            .iter()
            .filter(|(_, r)| matches!(r.kind, SourceKind::Native(_)))
            .map(|(id, _)| *id)
            .max()
    }

    pub(in crate::hub::org) fn alloc_source(&mut self) -> SourceId {
        let id = self.next_source;
        self.next_source += 1;
        id
    }

    pub(in crate::hub::org) fn start_poller(&mut self, service: u16, session: Option<SessionId>) {
        let id = self.alloc_source();
        let cursor = self.slots[service as usize].cursor.clone();
        // A poller that starts from a known cursor covers everything since
        // its predecessor; it is ready at once, and its first answer catches
        // up on the absence.
        let ready = cursor.is_some();
        if ready {
            self.slots[service as usize].catching_up = Some(id);
        }
        let spec = PollerSpec {
            org: self.org,
            service,
            source: id,
            cursor,
            tokens: match session {
                None => TokenChoice::Pool(self.tokens.clone()),
                Some(s) => TokenChoice::Session(self.tokens.clone(), s),
            },
            hub: self.me.clone(),
        };
        tracing::debug!(org = self.org, source = id, service, cursor = ?spec.cursor, "start poller");
        let handle = self.ctx.upstream.spawn_poller(spec);
        let kind = match session {
            None => SourceKind::SharedPoller(service),
            Some(s) => SourceKind::SessionPoller(service, s),
        };
        let running = Running::new(kind, ready, self.recent.inserted(), handle);
        self.sources.insert(id, running);
    }

    pub(in crate::hub::org) fn start_native(&mut self, services: Vec<u16>) {
        let id = self.alloc_source();
        if !self
            .sources
            .values()
            .any(|r| matches!(r.kind, SourceKind::Native(_)) && r.ready)
            && self.native_down_since.is_none()
        {
            self.native_down_since = Some(Instant::now());
        }
        let spec = NativeSpec {
            org: self.org,
            services: services.clone(),
            source: id,
            last_seq: self.native_seq,
            tokens: self.tokens.clone(),
            hub: self.me.clone(),
        };
        tracing::debug!(org = self.org, source = id, last_seq = ?spec.last_seq, "start native");
        let handle = self.ctx.upstream.spawn_native(spec);
        let kind = SourceKind::Native(services);
        let running = Running::new(kind, false, self.recent.inserted(), handle);
        self.sources.insert(id, running);
    }
}
