//! The counters of one sidecar instance behind `GET /v2/realtime/metrics`,
//! and the handles of the series recorded per delivered frame.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{
    AVG_LATENCY_MS, DELIVERY_LATENCY_SECONDS, ERRORS, EVENTS_DELIVERED, ErrorKind, ServingMode,
    label,
};

/// Counters of one sidecar instance, for the JSON metrics endpoint, and
/// the Prometheus handles of the per-frame series. Recording a delivery
/// takes no lock and allocates nothing: per-service counts are atomics
/// indexed by service, and the series handles are resolved once here.
pub struct Stats {
    pub(crate) active_connections: AtomicU64,
    pub(crate) total_connections: AtomicU64,
    pub(crate) events_delivered: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) v1_polls: AtomicU64,
    pub(crate) native_connects: AtomicU64,
    pub(crate) active_orgs: AtomicU64,
    pub(crate) connections_poll: AtomicU64,
    pub(crate) connections_native: AtomicU64,
    pub(crate) connections_mixed: AtomicU64,
    /// Live delivery latency over the last minute (`avgLatencyMs`).
    latency: LatencyWindow,
    /// Per configured service, in configuration order.
    services: Box<[ServiceDeliveries]>,
    /// [`DELIVERY_LATENCY_SECONDS`] by poll and native.
    latency_poll: metrics::Histogram,
    latency_native: metrics::Histogram,
    avg_latency_gauge: metrics::Gauge,
    /// The V1 facade of this instance.
    pub(crate) facade: FacadeStats,
}

/// Events delivered of one service: this instance's count and the
/// process-wide series.
struct ServiceDeliveries {
    name: String,
    events: AtomicU64,
    series: metrics::Counter,
}

impl Default for Stats {
    /// Counters for no configured service (deliveries are then counted in
    /// the totals only).
    fn default() -> Stats {
        Stats::for_services(std::iter::empty::<&str>())
    }
}

/// The V1 facade's counters of one instance (the Prometheus series are process-wide).
#[derive(Default)]
pub(crate) struct FacadeStats {
    /// V1 requests served by the facade.
    pub(crate) requests: AtomicU64,
    /// V1 requests held now.
    pub(crate) held: AtomicU64,
    /// Events answered.
    pub(crate) events: AtomicU64,
    /// V1 requests forwarded to the backend.
    pub(crate) forwarded: AtomicU64,
}

impl Stats {
    /// Counters for the configured services (by their index in the
    /// configuration). The series handles come from the recorder installed
    /// now, so this is called after [`install_prometheus`](super::install_prometheus).
    pub(crate) fn for_services<'a>(names: impl IntoIterator<Item = &'a str>) -> Stats {
        let services = names
            .into_iter()
            .map(|name| ServiceDeliveries {
                name: name.to_string(),
                events: AtomicU64::new(0),
                series: metrics::counter!(EVENTS_DELIVERED, label::SERVICE => name.to_string()),
            })
            .collect();
        let latency = |mode: ServingMode| metrics::histogram!(DELIVERY_LATENCY_SECONDS, label::MODE => mode.as_str());
        Stats {
            active_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            v1_polls: AtomicU64::new(0),
            native_connects: AtomicU64::new(0),
            active_orgs: AtomicU64::new(0),
            connections_poll: AtomicU64::new(0),
            connections_native: AtomicU64::new(0),
            connections_mixed: AtomicU64::new(0),
            latency: LatencyWindow::default(),
            services,
            latency_poll: latency(ServingMode::Poll),
            latency_native: latency(ServingMode::Native),
            avg_latency_gauge: metrics::gauge!(AVG_LATENCY_MS),
            facade: FacadeStats::default(),
        }
    }

    pub(crate) fn count_error(&self, kind: ErrorKind) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ERRORS, label::KIND => kind.as_str()).increment(1);
    }

    /// Counts `count` events of the service with this index written to a
    /// client (live or replayed).
    pub(crate) fn count_delivered(&self, service: u16, count: u64) {
        self.events_delivered.fetch_add(count, Ordering::Relaxed);
        if let Some(s) = self.services.get(usize::from(service)) {
            s.events.fetch_add(count, Ordering::Relaxed);
            s.series.increment(count);
        }
    }

    /// Records the latencies (ms) of live events served in `mode`, written
    /// to a client now: the histogram, and the minute's mean.
    pub(crate) fn record_latency(
        &self,
        mode: ServingMode,
        latencies_ms: impl Iterator<Item = i64>,
    ) {
        // Events come from one service's source: never `Mixed`.
        let histogram = match mode {
            ServingMode::Native => &self.latency_native,
            ServingMode::Poll | ServingMode::Mixed => &self.latency_poll,
        };
        let (mut count, mut sum_ms) = (0u64, 0f64);
        for ms in latencies_ms {
            let ms = ms.max(0) as f64;
            histogram.record(ms / 1000.0);
            count += 1;
            sum_ms += ms;
        }
        if count == 0 {
            return;
        }
        let now = crate::clock::unix_millis();
        self.latency.record(now, count, sum_ms);
        self.avg_latency_gauge.set(self.latency.mean_ms(now));
    }

    /// The connections-by-mode counter.
    pub(crate) fn mode_counter(&self, mode: ServingMode) -> &AtomicU64 {
        match mode {
            ServingMode::Poll => &self.connections_poll,
            ServingMode::Native => &self.connections_native,
            ServingMode::Mixed => &self.connections_mixed,
        }
    }

    /// Mean latency of live deliveries over the last minute (see [`LatencyWindow`]).
    pub(crate) fn avg_latency_ms(&self) -> f64 {
        self.latency.mean_ms(crate::clock::unix_millis())
    }

    /// Events delivered by service name, for the services with any.
    pub(crate) fn events_by_service(&self) -> std::collections::BTreeMap<String, u64> {
        self.services
            .iter()
            .map(|s| (s.name.clone(), s.events.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The mean latency of live deliveries over the last minute: six buckets
/// of ten seconds; the mean covers the buckets younger than 60 s (so the
/// newest 50 to 60 s of deliveries), 0 when there were none.
///
/// Lock-free: every connection task records into it. A bucket is recycled
/// by the first recorder to see it stale, which marks it [`RECYCLING`]
/// while it zeroes the sums; a delivery recorded in those few instructions
/// is left out of the mean (never out of the counters or the histogram).
#[derive(Default)]
pub(crate) struct LatencyWindow {
    buckets: [LatencyBucket; LATENCY_BUCKETS],
}

#[derive(Default)]
struct LatencyBucket {
    /// Start of the bucket's ten seconds (epoch ms), or [`RECYCLING`].
    start_ms: AtomicI64,
    events: AtomicU64,
    /// Summed latency in microseconds.
    latency_us: AtomicU64,
}

const LATENCY_BUCKETS: usize = 6;
const LATENCY_BUCKET_MS: i64 = 10_000;
/// The start of a bucket being recycled (older than any real start).
const RECYCLING: i64 = i64::MIN;

impl LatencyWindow {
    pub(crate) fn record(&self, now_ms: i64, count: u64, latency_sum_ms: f64) {
        let start = now_ms - now_ms.rem_euclid(LATENCY_BUCKET_MS);
        let slot = (start / LATENCY_BUCKET_MS).rem_euclid(LATENCY_BUCKETS as i64) as usize;
        let b = &self.buckets[slot];
        let seen = b.start_ms.load(Ordering::Acquire);
        if seen != start {
            if seen == RECYCLING
                || seen > start
                || b.start_ms
                    .compare_exchange(seen, RECYCLING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return;
            }
            b.events.store(0, Ordering::Relaxed);
            b.latency_us.store(0, Ordering::Relaxed);
            b.start_ms.store(start, Ordering::Release);
        }
        // Saturating float-to-int conversion: a sum beyond u64 stays at the top.
        let us = (latency_sum_ms.max(0.0) * 1000.0) as u64;
        b.events.fetch_add(count, Ordering::Relaxed);
        b.latency_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn mean_ms(&self, now_ms: i64) -> f64 {
        let oldest = now_ms - LATENCY_BUCKET_MS * LATENCY_BUCKETS as i64;
        let (n, sum_us) = self
            .buckets
            .iter()
            .filter(|b| b.start_ms.load(Ordering::Acquire) > oldest)
            .map(|b| {
                (
                    b.events.load(Ordering::Relaxed),
                    b.latency_us.load(Ordering::Relaxed),
                )
            })
            .fold((0u64, 0u64), |(n, s), (bn, bs)| {
                (n.saturating_add(bn), s.saturating_add(bs))
            });
        if n == 0 {
            0.0
        } else {
            sum_us as f64 / 1000.0 / n as f64
        }
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn mean_of_the_last_minute() {
        let w = LatencyWindow::default();
        assert_eq!(w.mean_ms(0), 0.0);
        w.record(1_000, 2, 20.0);
        w.record(15_000, 2, 60.0);
        assert_eq!(w.mean_ms(16_000), 20.0);
        // Past a minute the first bucket no longer counts.
        assert_eq!(w.mean_ms(62_000), 30.0);
        assert_eq!(w.mean_ms(200_000), 0.0);
    }

    #[test]
    fn deliveries_by_service_index() {
        let stats = Stats::for_services(["finance", "staff", "tasks"]);
        stats.count_delivered(1, 3);
        stats.count_delivered(1, 2);
        // An index outside the configuration counts in the total only.
        stats.count_delivered(9, 1);
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 6);
        let by_service = stats.events_by_service();
        assert_eq!(by_service.len(), 1, "{by_service:?}");
        assert_eq!(by_service.get("staff"), Some(&5));
    }

    #[test]
    fn latency_mean_of_recorded_deliveries() {
        let stats = Stats::default();
        stats.record_latency(ServingMode::Native, [10, 30, -5].into_iter());
        // A negative latency (a clock ahead of ours) counts as 0.
        assert_eq!(stats.avg_latency_ms(), 40.0 / 3.0);
        stats.record_latency(ServingMode::Poll, std::iter::empty());
        assert_eq!(stats.avg_latency_ms(), 40.0 / 3.0);
    }
}
