//! The streaming scenarios: (a) upstream load, (b) latency and (d)
//! fan-out, (c) memory, (e) flag-flip propagation.

use super::*;

/// V1 requests per second reaching the backend while `events` are published.
pub(super) async fn v1_request_rate(
    sim: &Simulator,
    events: GeneratorConfig,
    measure: Duration,
) -> f64 {
    let _generator = sim.spawn_generator(events);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sim.state.total_requests();
    tokio::time::sleep(measure).await;
    (sim.state.total_requests() - before) as f64 / measure.as_secs_f64()
}

/// (a) V1 requests per second: clients polling directly vs through the sidecar.
pub(super) async fn upstream_load(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let rate = 20;
    let sim = start_sim(Duration::from_secs(25)).await?;
    // Today's behaviour: every client long-polls every service itself.
    let clients = V1Clients::start(&sim.base_url(), &v1_paths(&sim), o.clients, o.orgs, SECRET);
    let want = (o.clients * SERVICES.len()) as i64;
    wait_for("direct long-polls", Duration::from_secs(60), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let direct = v1_request_rate(&sim, generator(rate, o.orgs), o.measure).await;
    clients.stop();
    sim.shutdown().await;

    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let mut w = WorkerProcess::standard(exe, sidecar, o).await?;
    w.wait_connected(o.clients).await?;
    let want = o.orgs as i64 * SERVICES.len() as i64;
    wait_for("shared pollers", Duration::from_secs(30), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let through = v1_request_rate(sim, generator(rate, o.orgs), o.measure).await;
    rig.finish(vec![w]).await;
    let cfg = format!(
        "{} clients, {} orgs, {} services, {rate} events/s",
        o.clients,
        o.orgs,
        SERVICES.len()
    );
    rows.push(Row(
        "a. V1 requests/s, clients polling directly".into(),
        format!("{direct:.0} req/s"),
        cfg.clone(),
    ));
    rows.push(Row(
        "a. V1 requests/s, through realtime-edge".into(),
        format!("{through:.1} req/s"),
        cfg,
    ));
    rows.push(Row(
        "a. upstream load ratio".into(),
        format!("{:.0}x", direct / through.max(0.001)),
        format!(
            "target >= clients/orgs = {}x",
            o.clients as u64 / o.orgs.max(1)
        ),
    ));
    Ok(())
}

/// (b) latency in poll and native mode, and (d) fan-out at growing rates.
pub(super) async fn latency_and_fanout(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
    latency: bool,
    fanout: bool,
) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let mut workers = vec![WorkerProcess::standard(exe, sidecar, o).await?];
    workers[0].wait_connected(o.clients).await?;
    let want = o.orgs as i64 * SERVICES.len() as i64;
    wait_for("shared pollers", Duration::from_secs(30), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let cfg = format!(
        "{} clients in {} orgs, {} events/s, batch window 50 ms",
        o.clients, o.orgs, o.events_per_second
    );
    if latency {
        let gen_stop = sim.spawn_generator(generator(o.events_per_second, o.orgs));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (h, events, _) = measure(&mut workers, o.measure).await?;
        rows.push(latency_row("poll", &h, &cfg, events));
        sidecar
            .set_flags("REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100")
            .await?;
        wait_for("native mode", Duration::from_secs(30), || {
            sim.state.active_polls() == 0 && sim.state.native_active() >= o.orgs as i64
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (h, events, _) = measure(&mut workers, o.measure).await?;
        rows.push(latency_row("native", &h, &cfg, events));
        drop(gen_stop);
        sidecar.set_flags("REALTIME_STREAMING_V2=false").await?;
        wait_for("poll mode", Duration::from_secs(30), || {
            sim.state.native_active() == 0
        })
        .await?;
    }
    if fanout {
        for &rate in &o.fanout_rates {
            let gen_stop = sim.spawn_generator(generator(rate, o.orgs));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let cpu0 = sidecar.cpu_ticks();
            let t0 = Instant::now();
            let (h, events, _) = measure(&mut workers, o.measure).await?;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = (sidecar.cpu_ticks() - cpu0) as f64 / TICKS_PER_SEC / secs * 100.0;
            drop(gen_stop);
            rows.push(Row(
                format!("d. fan-out at {rate} events/s published"),
                format!(
                    "{:.0} events/s delivered",
                    events as f64 / o.measure.as_secs_f64()
                ),
                format!(
                    "sidecar CPU {cpu:.0}% of one core; p99 {}; {} clients",
                    ms(h.quantile_ms(0.99)),
                    o.clients
                ),
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    rig.finish(workers).await;
    Ok(())
}

/// (c) resident memory per idle connection.
pub(super) async fn memory(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let sidecar = &rig.sidecar;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = sidecar.rss_kib();
    let mut workers: Vec<WorkerProcess> = Vec::new();
    let mut held = 0usize;
    let per_worker = 5000usize;
    let mut ip = 2;
    for &target in &o.memory_steps {
        while held < target {
            let n = (target - held).min(per_worker);
            let mut w = WorkerProcess::spawn(
                exe,
                sidecar.client_addr,
                &format!("127.0.0.{ip}"),
                n,
                1,
                100,
                &["finance"],
            )
            .await?;
            ip += 1;
            w.wait_connected(n).await?;
            held += n;
            workers.push(w);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = sidecar.rss_kib();
        let per = (rss.saturating_sub(base)) as f64 / held as f64;
        rows.push(Row(
            format!("c. memory, {held} idle connections"),
            format!("{per:.1} KiB/connection"),
            format!(
                "sidecar RSS {} MiB (idle {} MiB); 100 orgs, 1 service",
                rss / 1024,
                base / 1024
            ),
        ));
    }
    rig.finish(workers).await;
    Ok(())
}

/// (e) time from the admin POST returning to every org serving from its new source.
pub(super) async fn flag_flip(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let n = o.flip_orgs;
    let mut w = WorkerProcess::spawn(
        exe,
        sidecar.client_addr,
        "127.0.0.2",
        n,
        1,
        n as u64,
        &["finance"],
    )
    .await?;
    w.wait_connected(n).await?;
    wait_for("a poller per org", Duration::from_secs(60), || {
        sim.state.active_polls() >= n as i64
    })
    .await?;
    sidecar
        .set_flags("REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100")
        .await?;
    let t0 = Instant::now();
    wait_for("every native link open", Duration::from_secs(60), || {
        sim.state.native_active() >= n as i64
    })
    .await?;
    let links_open = t0.elapsed();
    wait_for("every org native", Duration::from_secs(60), || {
        sim.state.native_active() >= n as i64 && sim.state.active_polls() == 0
    })
    .await?;
    let to_native = t0.elapsed();
    sidecar.set_flags("REALTIME_STREAMING_V2=false").await?;
    let t0 = Instant::now();
    wait_for("every org polling", Duration::from_secs(60), || {
        sim.state.active_polls() >= n as i64
    })
    .await?;
    let to_poll = t0.elapsed();
    // The native links stay until each new poller has its first cursor, so
    // nothing published in between is lost; with no events that is the
    // backend's hold time.
    wait_for("native links closed", Duration::from_secs(60), || {
        sim.state.native_active() == 0
    })
    .await?;
    let overlap = t0.elapsed();
    let r = w.report().await?;
    rows.push(Row(
        format!("e. flag flip poll -> native, {n} orgs"),
        format!("{:.0} ms", to_native.as_secs_f64() * 1000.0),
        format!(
            "POST returned -> every org's native link acked and its poller gone (all {n} links open after {:.0} ms)",
            links_open.as_secs_f64() * 1000.0
        ),
    ));
    rows.push(Row(
        format!("e. rollback native -> poll, {n} orgs"),
        format!("{:.0} ms", to_poll.as_secs_f64() * 1000.0),
        format!(
            "POST returned -> every org's poller parked at the backend; native links kept {:.1} s as overlap until the pollers' first answers; {} client closes",
            overlap.as_secs_f64(),
            r.closed
        ),
    ));
    rig.finish(vec![w]).await;
    Ok(())
}
