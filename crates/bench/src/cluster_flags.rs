//! Scenario k: flag propagation across replicas (CONTRACT 9). Three sidecar
//! processes share one `redis-server` (started here on a free port, nothing
//! persisted); each change is posted to one replica in turn, and the time
//! from sending the POST until each other replica's `GET /feature-flags`
//! shows the new version is one sample.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cluster::RedisProcess;
use super::{BenchError, Row, SidecarProcess, http_get, start_sim, step};

/// Replicas in the cluster.
const REPLICAS: usize = 3;
/// Changes posted (each observed on the other replicas).
const CHANGES: usize = 200;
/// Longest a change may take to show on a replica before the run fails.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

/// The flags version a replica shows.
async fn version_of(replica: &SidecarProcess) -> Option<u64> {
    let (status, body) = http_get(&format!("http://{}/feature-flags", replica.admin_addr)).await?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["version"].as_u64()
}

/// Waits until `replica` shows at least `version`.
async fn wait_version(replica: &SidecarProcess, version: u64) -> Result<(), BenchError> {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        if version_of(replica).await.is_some_and(|v| v >= version) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(step(format!(
                "flags version {version} did not reach a replica in {PROPAGATION_LIMIT:?}"
            )));
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    let i = ((last as f64) * q).round() as usize;
    sorted.get(i.min(last)).copied().unwrap_or_default()
}

pub(super) async fn flag_propagation(exe: &PathBuf, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let redis = RedisProcess::start().await?;
    let sim = start_sim(Duration::from_secs(25)).await?;
    let extra = format!(
        "cluster: {{redis_url: \"{}\", name: \"bench-flags\"}}\n",
        redis.url
    );
    let mut replicas = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        replicas.push(SidecarProcess::spawn_with(exe, &sim.base_url(), &extra).await?);
    }
    let mut samples = Vec::with_capacity(CHANGES * (REPLICAS - 1));
    for i in 0..CHANGES {
        let via = &replicas[i % REPLICAS];
        let t0 = Instant::now();
        // Alternating values, so every POST is a change and a new version.
        via.set_flags(&format!("REALTIME_ROLLOUT_PERCENT={}", 1 + i % 2))
            .await?;
        let version = version_of(via)
            .await
            .ok_or_else(|| step("a replica did not answer GET /feature-flags"))?;
        for (j, other) in replicas.iter().enumerate() {
            if j != i % REPLICAS {
                wait_version(other, version).await?;
                samples.push(t0.elapsed());
            }
        }
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    rows.push(Row(
        format!("k. flag propagation across {REPLICAS} replicas p50 / p99 / max"),
        format!(
            "{:.1} ms / {:.1} ms / {:.1} ms",
            ms(quantile(&samples, 0.5)),
            ms(quantile(&samples, 0.99)),
            ms(samples.last().copied().unwrap_or_default())
        ),
        format!(
            "{CHANGES} changes, each POSTed to one replica in turn; from sending the POST until GET /feature-flags on each other replica shows the new version ({} samples); one local redis-server",
            samples.len()
        ),
    ));
    for r in replicas {
        r.stop().await;
    }
    sim.shutdown().await;
    drop(redis);
    Ok(())
}
