//! The reader of one org's stream on one replica: one task per org with
//! local demand (not per client), blocking XREAD on its own connection,
//! feeding the org's hub, which batches, delivers and replays with the
//! cluster positions.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::{mpsc, oneshot};

use super::org::{ClusterUpdate, LinkUpdate};
use super::stream::{StreamEvent, parse_entry};
use crate::auth::OrgId;

/// Where and how one reader reads.
pub struct ReaderSpec<M> {
    pub org: OrgId,
    /// The id of the org link the reader belongs to.
    pub link: u64,
    pub key: String,
    /// The entry id after which reading starts.
    pub after: String,
    /// Service names in index order (entries name their service).
    pub names: Arc<[String]>,
    /// Entries taken per read at most (`cluster.read_batch`).
    pub batch: usize,
    /// How long one XREAD blocks.
    pub block: Duration,
    /// The inbox of the org's hub.
    pub hub: mpsc::Sender<M>,
}

/// Reads until the connection fails (reported through `failed`) or the
/// hub is gone; the org's link aborts it when it leaves shared mode.
pub async fn run<M: From<LinkUpdate>>(
    mut conn: MultiplexedConnection,
    spec: ReaderSpec<M>,
    failed: oneshot::Sender<redis::RedisError>,
) {
    let mut after = spec.after.clone();
    let block_ms = usize::try_from(spec.block.as_millis()).unwrap_or(usize::MAX);
    let opts = StreamReadOptions::default()
        .block(block_ms)
        .count(spec.batch);
    loop {
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&[&spec.key], &[&after], &opts).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let _ = failed.send(e);
                return;
            }
        };
        let mut events: Vec<StreamEvent> = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                after.clone_from(&entry.id);
                match parse_entry(&entry, &spec.names) {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        tracing::warn!(org = spec.org, error = %e, "skipped a malformed entry of the org's Redis stream");
                    }
                }
            }
        }
        if !events.is_empty()
            && spec
                .hub
                .send(
                    LinkUpdate {
                        link: spec.link,
                        update: ClusterUpdate::Events(events),
                    }
                    .into(),
                )
                .await
                .is_err()
        {
            return;
        }
    }
}
