//! The task behind one org's link: it keeps the demand and the lease, loads
//! and reads the shared stream, appends what the hub accepts while this
//! replica owns the org, and falls back to local serving (and back) as
//! Redis comes and goes. The parent module holds the handle the hub uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{AppendBatch, ClusterUpdate, LinkUpdate};
use crate::auth::OrgId;
use crate::cluster::ClusterLink;
use crate::cluster::ownership::{Claim, Ownership, OwnershipScripts};
use crate::cluster::reader::{self, ReaderSpec};
use crate::cluster::stream::{
    AppendTarget, Appended, OrgKeys, Scripts, StreamBounds, StreamEvent, parse_entry,
    source_positions,
};
use crate::config::Config;
use crate::metrics as m;

/// A reader task, aborted when dropped.
struct Reader {
    task: JoinHandle<()>,
    failed: oneshot::Receiver<redis::RedisError>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task behind an [`OrgLink`](super::OrgLink): owns the org's
/// demand, lease, reader and appends.
pub(super) struct Agent<M> {
    id: u64,
    link: Arc<ClusterLink>,
    keys: OrgKeys,
    org: OrgId,
    names: Arc<[String]>,
    bounds: StreamBounds,
    read_batch: usize,
    state_ttl_ms: u64,
    timeout: Duration,
    hub: mpsc::Sender<M>,
    floor: watch::Receiver<u64>,
    /// The lease value while this replica owns the org.
    held: Option<String>,
    /// Whether the hub serves from the shared stream.
    shared: bool,
    /// Whether the hub was last told to serve on its own.
    local_told: bool,
    reader: Option<Reader>,
    scripts: Scripts,
    ownership: OwnershipScripts,
}

impl<M: From<LinkUpdate> + Send + 'static> Agent<M> {
    /// The agent of `org`'s link `id`, not yet running.
    pub(super) fn new(
        id: u64,
        link: Arc<ClusterLink>,
        org: OrgId,
        config: &Config,
        hub: mpsc::Sender<M>,
        floor: watch::Receiver<u64>,
    ) -> Agent<M> {
        let names: Arc<[String]> = config.services.iter().map(|s| s.name.clone()).collect();
        Agent {
            id,
            keys: OrgKeys::new(&link, org),
            org,
            names,
            bounds: StreamBounds {
                replay_events: config.stream.replay_events,
                dedup_events: config.stream.dedup_events,
            },
            read_batch: config.cluster.read_batch,
            state_ttl_ms: u64::try_from(
                config
                    .stream
                    .resume_ttl
                    .saturating_mul(2)
                    .max(link.lease() * 10)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            timeout: config.cluster.redis_timeout,
            link,
            hub,
            floor,
            held: None,
            shared: false,
            local_told: false,
            reader: None,
            scripts: Scripts::default(),
            ownership: OwnershipScripts::default(),
        }
    }

    pub(super) async fn run(mut self, mut appends: mpsc::Receiver<AppendBatch>) {
        let mut tick = tokio::time::interval(self.link.lease() / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = self.link.up();
        loop {
            let reader_failed = async {
                match self.reader.as_mut() {
                    Some(r) => (&mut r.failed).await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => self.round().await,
                batch = appends.recv() => match batch {
                    Some(batch) => self.append(batch).await,
                    None => break,
                },
                failed = reader_failed => {
                    self.reader = None;
                    if let Some(e) = failed {
                        self.go_local(&e.to_string()).await;
                    }
                }
                changed = up.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let is_up = *up.borrow_and_update();
                    if !is_up && self.shared {
                        self.go_local("Redis heartbeat failed").await;
                    } else if is_up && !self.shared {
                        self.round().await;
                    }
                }
            }
            if self.hub.is_closed() {
                break;
            }
        }
        self.leave().await;
    }

    fn claim(&self) -> Claim<'_> {
        Claim {
            keys: &self.keys,
            replica: self.link.replica(),
            org: self.org,
            lease_ms: u64::try_from(self.link.lease().as_millis()).unwrap_or(u64::MAX),
            state_ttl_ms: self.state_ttl_ms,
        }
    }

    async fn tell(&self, update: ClusterUpdate) {
        let _ = self
            .hub
            .send(
                LinkUpdate {
                    link: self.id,
                    update,
                }
                .into(),
            )
            .await;
    }

    /// One renewal round: join the shared stream first if not reading it
    /// (at once for a hub that waits; when back from local serving, once
    /// Redis is up and the org has an owner), then renew demand and the
    /// lease, or take a free one.
    async fn round(&mut self) {
        if !self.shared {
            let redis_up = *self.link.up().borrow();
            // Members are known once a heartbeat succeeded: Redis was up
            // and is down now, so there is no point in waiting for it.
            let known_down = !redis_up && !self.link.members().borrow().is_empty();
            if self.local_told {
                if !redis_up || !self.rejoin().await {
                    return;
                }
            } else if known_down {
                self.local_told = true;
                self.tell(ClusterUpdate::Local).await;
                return;
            } else if let Err(e) = self.join().await {
                tracing::debug!(org = self.org, error = %e, "org could not join the shared stream");
                self.local_told = true;
                self.tell(ClusterUpdate::Local).await;
                return;
            }
        }
        let result = self.ownership_tick().await;
        match result {
            Ok(Ownership::Kept) => {}
            Ok(Ownership::Taken { lease, stored }) => {
                if self.held.is_some() {
                    // Our lease lapsed and we took it again: a new epoch.
                    self.tell(ClusterUpdate::NotOwner).await;
                }
                self.take(lease, stored).await;
            }
            Ok(Ownership::Other { holder }) => {
                if let Some(lost) = self.held.take() {
                    tracing::warn!(org = self.org, lease = %lost, holder = ?holder,
                        "lost the org's lease: its sources stop here");
                    self.tell(ClusterUpdate::NotOwner).await;
                }
            }
            Err(e) => self.go_local(&e.to_string()).await,
        }
    }

    async fn ownership_tick(&mut self) -> redis::RedisResult<Ownership> {
        let mut conn = self.link.conn();
        let held = self.held.clone();
        let claim = self.claim();
        self.ownership
            .tick(&mut conn, &claim, held.as_deref())
            .await
    }

    async fn take(&mut self, lease: String, stored: HashMap<String, String>) {
        tracing::info!(org = self.org, lease = %lease, "took over the org's sources");
        ::metrics::counter!(m::CLUSTER_OWNERSHIPS).increment(1);
        self.held = Some(lease);
        let stored = source_positions(&stored, &self.names);
        self.tell(ClusterUpdate::Owner { stored }).await;
    }

    /// Back from serving on its own: the hub's local sources keep running
    /// until the org has an owner, this replica (whose sources then simply
    /// go on, now appending) or another one (whose coverage has begun), so
    /// nothing falls between the two. True once the stream is read again.
    async fn rejoin(&mut self) -> bool {
        match self.ownership_tick().await {
            Ok(Ownership::Taken { lease, stored }) => self.take(lease, stored).await,
            Ok(Ownership::Other { holder: Some(_) }) => {}
            Ok(_) | Err(_) => return false,
        }
        match self.join().await {
            Ok(()) => true,
            Err(e) => {
                self.go_local(&e.to_string()).await;
                false
            }
        }
    }

    /// Loads the generation, head and window and starts the reader.
    async fn join(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.link.conn();
        let floor = *self.floor.borrow();
        let head = self.scripts.load(&mut conn, &self.keys, floor).await?;
        let range: StreamRangeReply = conn
            .xrevrange_count(
                &self.keys.events,
                "+",
                "-",
                self.bounds.replay_events.max(1),
            )
            .await?;
        let after = range
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |e| e.id.clone());
        let mut window: Vec<StreamEvent> = range
            .ids
            .iter()
            .rev()
            .filter_map(|e| parse_entry(e, &self.names).ok())
            .filter(|e| e.generation == head.generation)
            .collect();
        window.sort_by_key(|e| e.seq);
        let reader_conn = self
            .link
            .client()
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.link.lease() + self.timeout)),
            )
            .await?;
        let (failed_tx, failed) = oneshot::channel();
        let spec = ReaderSpec {
            org: self.org,
            link: self.id,
            key: self.keys.events.clone(),
            after,
            names: self.names.clone(),
            batch: self.read_batch,
            block: self.link.lease(),
            hub: self.hub.clone(),
        };
        // The hub learns the window before the reader's first events.
        self.tell(ClusterUpdate::Joined { head, window }).await;
        self.reader = Some(Reader {
            task: tokio::spawn(reader::run(reader_conn, spec, failed_tx)),
            failed,
        });
        self.shared = true;
        self.local_told = false;
        tracing::debug!(
            org = self.org,
            generation = head.generation,
            head = head.head,
            "org serves from the shared stream"
        );
        Ok(())
    }

    async fn append(&mut self, batch: AppendBatch) {
        let Some(lease) = self.held.clone().filter(|_| self.shared) else {
            // Not (any more) the owner: the new owner fetches these again
            // from the stored positions. Served locally: they are the hub's.
            if !self.shared {
                self.tell(ClusterUpdate::Unappended(batch.events)).await;
            }
            return;
        };
        let mut conn = self.link.conn();
        let result = self
            .scripts
            .append(
                &mut conn,
                &AppendTarget {
                    keys: &self.keys,
                    lease: &lease,
                    bounds: self.bounds,
                    names: &self.names,
                },
                &batch.events,
                &batch.positions,
            )
            .await;
        match result {
            Ok(Appended::Stored { appended, .. }) => {
                ::metrics::counter!(m::CLUSTER_EVENTS_APPENDED).increment(appended);
            }
            Ok(Appended::Fenced) => {
                self.held = None;
                tracing::warn!(org = self.org, lease = %lease, "append fenced off: another replica owns the org");
                self.tell(ClusterUpdate::NotOwner).await;
            }
            Err(e) => {
                self.go_local(&e.to_string()).await;
                self.tell(ClusterUpdate::Unappended(batch.events)).await;
            }
        }
    }

    /// Leaves shared mode: the hub serves its clients on its own.
    async fn go_local(&mut self, why: &str) {
        self.reader = None;
        // Serving locally, the hub keeps its sources (it no longer owns the
        // org: `Local` says so, or `NotOwner` when it already serves locally).
        let held = self.held.take();
        if self.shared || !self.local_told {
            self.shared = false;
            self.local_told = true;
            tracing::debug!(org = self.org, error = %why, "org served by this replica alone until Redis is back");
            self.tell(ClusterUpdate::Local).await;
        } else if held.is_some() {
            self.tell(ClusterUpdate::NotOwner).await;
        }
    }

    /// Releases the lease and demand (bounded by the Redis timeout).
    async fn leave(&mut self) {
        self.reader = None;
        let mut conn = self.link.conn();
        let held = self.held.take();
        let claim = self.claim();
        let release = self.ownership.release(&mut conn, &claim, held.as_deref());
        if let Ok(Err(e)) = tokio::time::timeout(self.timeout, release).await {
            tracing::debug!(org = self.org, error = %e, "could not release the org's lease");
        }
    }
}
