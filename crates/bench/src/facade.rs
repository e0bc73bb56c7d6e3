//! (f) The V1 facade: old clients' long-polls answered by the sidecar.
//!
//! The same crowd of V1 clients polls (1) the backend directly, (2) the
//! sidecar with the facade off (pass-through), (3) the sidecar with the
//! facade on, at growing crowd sizes. Reported: V1 requests per second
//! reaching the backend, event latency at the clients, and the sidecar's
//! memory per held request.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    BenchError, BenchOptions, Row, SECRET, SERVICES, SidecarProcess, V1Clients, generator,
    http_get, ms, start_sim, v1_paths, v1_request_rate, wait_for,
};
use crate::histogram::Merged;
use realtime_edge_sim::Simulator;

/// Events per second published while the request rate is measured, as in (a).
const RATE: u32 = 20;

/// Crowd sizes with the facade on; the rate should stay flat across them.
const CROWDS: [usize; 3] = [100, 1000, 3000];

pub(super) async fn v1_facade(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let cfg = |n: usize| {
        format!(
            "{n} V1 clients, {} orgs, {} services, {RATE} events/s",
            o.orgs,
            SERVICES.len()
        )
    };
    let n = o.clients;

    // (1) Directly at the backend: the baseline rate and latency.
    let sim = start_sim(Duration::from_secs(25)).await?;
    let base = sim.base_url();
    let (direct_rate, direct_latency) = crowd(&sim, &base, n, o, None).await?;
    sim.shutdown().await;
    rows.push(Row(
        "f. V1 requests/s, clients polling the backend".into(),
        format!("{direct_rate:.0} req/s"),
        cfg(n),
    ));

    // (2) and (3): through one sidecar, facade off then on.
    let sim = start_sim(Duration::from_secs(25)).await?;
    // With the facade off every client's polls are forwarded and held at
    // the backend: `passthrough.max_in_flight` (256 by default) must hold
    // them all, and the connection caps fit the descriptor budget with it.
    let forwarded = n * SERVICES.len() + 64;
    let connections = CROWDS[CROWDS.len() - 1].max(n) * SERVICES.len() + 1000;
    let extra = format!(
        "legacy: {{facade_max_held: 18000}}\npassthrough: {{max_in_flight: {forwarded}}}\n\
         stream: {{max_connections: {connections}}}\nlimits: {{client_connections: {connections}}}\n"
    );
    let sidecar = SidecarProcess::spawn_with(exe, &sim.base_url(), &extra).await?;
    let front = format!("http://{}", sidecar.client_addr);
    let (off_rate, _) = crowd(&sim, &front, n, o, None).await?;
    rows.push(Row(
        "f. V1 requests/s, facade off (forwarded)".into(),
        format!("{off_rate:.0} req/s"),
        cfg(n),
    ));
    sidecar.set_flags("REALTIME_V1_FACADE=true").await?;
    let idle_rss = sidecar.rss_kib();
    for size in CROWDS {
        let (rate, latency) = crowd(&sim, &front, size, o, Some(&sidecar)).await?;
        // One label per crowd: `--runs` merges rows by label.
        rows.push(Row(
            format!("f. V1 requests/s, facade on, {size} clients"),
            format!("{rate:.1} req/s"),
            format!(
                "{}; {:.0}x fewer than polling directly",
                cfg(size),
                direct_rate * size as f64 / n as f64 / rate.max(0.001)
            ),
        ));
        if size == n {
            for (label, h) in [("backend directly", &direct_latency), ("facade", &latency)] {
                rows.push(Row(
                    format!("f. V1 event latency p50 / p99, {label}"),
                    format!("{} / {}", ms(h.quantile_ms(0.5)), ms(h.quantile_ms(0.99))),
                    format!("{}; {} events received", cfg(size), h.total()),
                ));
            }
        }
    }
    // Memory: the largest crowd, held, against the sidecar before any facade request.
    let held = (CROWDS[CROWDS.len() - 1] * SERVICES.len()) as u64;
    let clients = V1Clients::start(
        &front,
        &v1_paths(&sim),
        CROWDS[CROWDS.len() - 1],
        o.orgs,
        SECRET,
    );
    wait_held(&sidecar, held).await?;
    let rss = sidecar.rss_kib();
    clients.stop();
    rows.push(Row(
        "f. sidecar memory per held V1 request".into(),
        format!(
            "{:.1} KiB",
            rss.saturating_sub(idle_rss) as f64 / held as f64
        ),
        format!(
            "{held} held requests; sidecar RSS {} MiB (before {} MiB)",
            rss / 1024,
            idle_rss / 1024
        ),
    ));
    sidecar.stop().await;
    sim.shutdown().await;
    Ok(())
}

/// Runs `size` V1 clients against `base` until they all wait, then
/// measures the backend's V1 request rate and the clients' latency.
async fn crowd(
    sim: &Simulator,
    base: &str,
    size: usize,
    o: &BenchOptions,
    facade: Option<&SidecarProcess>,
) -> Result<(f64, Merged), BenchError> {
    let clients = V1Clients::start(base, &v1_paths(sim), size, o.orgs, SECRET);
    let want = (size * SERVICES.len()) as i64;
    match facade {
        // Held at the sidecar: the backend sees only the shared pollers.
        Some(sidecar) => wait_held(sidecar, want as u64).await?,
        None => {
            let parked = wait_for("parked V1 polls", Duration::from_secs(60), || {
                sim.state.active_polls() >= want
            })
            .await;
            parked.map_err(|e| {
                super::step(format!(
                    "{e}: {} of {want} parked at the backend, {} V1 requests in all",
                    sim.state.active_polls(),
                    sim.state.total_requests()
                ))
            })?
        }
    }
    clients.latency.reset();
    let rate = v1_request_rate(sim, generator(RATE, o.orgs), o.measure).await;
    let mut latency = Merged::default();
    latency.add(&clients.latency.snapshot());
    clients.stop();
    Ok((rate, latency))
}

/// Waits until the sidecar holds `want` facade requests.
async fn wait_held(sidecar: &SidecarProcess, want: u64) -> Result<(), BenchError> {
    let url = format!("http://{}/metrics", sidecar.admin_addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, text)) = http_get(&url).await {
            let held = text
                .lines()
                .find_map(|l| l.strip_prefix("streaming_facade_held_requests "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if held as u64 >= want {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(super::step(format!(
                "timed out waiting for {want} held V1 requests"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
