//! A steady stream of made-up events for the demo and the benchmark.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::SimState;

/// What the generator publishes.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Events published per second, spread over orgs and services.
    pub events_per_second: u32,
    /// Orgs 1..=orgs receive events.
    pub orgs: u64,
    /// Properties 1..=properties per org.
    pub properties: u64,
    /// Services to publish to (all configured when empty).
    pub services: Vec<String>,
}

const TICK: Duration = Duration::from_millis(10);

pub(super) async fn run(
    state: Arc<SimState>,
    cfg: GeneratorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let services: Vec<String> = if cfg.services.is_empty() {
        state.services.iter().map(|(n, _)| n.clone()).collect()
    } else {
        cfg.services.clone()
    };
    if services.is_empty() || cfg.orgs == 0 || cfg.events_per_second == 0 {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Carry fractional events from tick to tick so low rates still publish.
    let per_tick = cfg.events_per_second as f64 * TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            n += 1;
            let org = rand::random_range(1..=cfg.orgs);
            let service = &services[rand::random_range(0..services.len())];
            let property = rand::random_range(1..=cfg.properties.max(1));
            // `t_us` (publish time in Unix microseconds) lets the benchmark
            // measure delivery latency finer than the millisecond timestamp.
            let event = json!({
                "propertyId": property,
                "t_us": realtime_edge::clock::unix_micros(),
                "data": { "seqNo": n, "amount": rand::random_range(1..10_000) },
            });
            state.publish(org, service, vec![event]);
        }
    }
}
