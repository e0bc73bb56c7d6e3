//! The flag control plane, native mode and live switching, end to end.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn temp_dir(name: &str) -> PathBuf {
    unique_dir(name)
}

async fn flags_of(sc: &realtime_edge::Sidecar) -> Value {
    get_json(&format!("http://{}/feature-flags", sc.admin_addr), None).await
}

#[tokio::test]
async fn form_and_json_bodies_apply_and_bad_input_changes_nothing() {
    let (sim, sc) = rig("").await;
    let admin = format!("http://{}/feature-flags", sc.admin_addr);
    let v = set_flags(&sc, "REALTIME_ROLLOUT_PERCENT=10").await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 10);
    assert_eq!(v["sources"]["REALTIME_ROLLOUT_PERCENT"], "override");
    assert_eq!(v["sources"]["REALTIME_STREAMING_V2"], "default");
    assert!(v["lastError"].is_null());
    // Several -d joined with &, as curl sends them.
    let v = set_flags(
        &sc,
        "REALTIME_STREAMING_V2=on&REALTIME_ALLOWLIST_ORGS=1,2,3",
    )
    .await;
    assert_eq!(v["flags"]["REALTIME_STREAMING_V2"], true);
    assert_eq!(v["flags"]["REALTIME_ALLOWLIST_ORGS"], json!([1, 2, 3]));
    let (status, _, body) = http(
        "POST",
        &admin,
        None,
        Some((
            "application/json",
            r#"{"REALTIME_ROLLOUT_PERCENT": 20, "FINANCE_REALTIME_V1": false}"#.into(),
        )),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 20);
    assert_eq!(v["flags"]["FINANCE_REALTIME_V1"], false);
    let version = v["version"].clone();
    for (ct, body) in [
        (
            "application/x-www-form-urlencoded",
            "REALTIME_ROLLOUT_PERCENT=30&NOT_A_FLAG=1",
        ),
        (
            "application/x-www-form-urlencoded",
            "REALTIME_ROLLOUT_PERCENT=130",
        ),
        (
            "application/x-www-form-urlencoded",
            "REALTIME_STREAMING_V2=maybe",
        ),
        ("application/x-www-form-urlencoded", ""),
        (
            "application/json",
            r#"{"REALTIME_ROLLOUT_PERCENT": 30, "REALTIME_DENYLIST_ORGS": ["x"]}"#,
        ),
        ("application/json", "[1]"),
        ("application/json", "{broken"),
    ] {
        let (status, _, resp) = http("POST", &admin, None, Some((ct, body.to_string()))).await;
        assert_eq!(status, 400, "{body}: {resp}");
        let err: Value = serde_json::from_str(&resp).unwrap();
        assert!(err["error"].is_string());
    }
    let v = flags_of(&sc).await;
    assert_eq!(v["version"], version, "nothing applied");
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 20);
    // DELETE drops the override.
    let (status, _, _) = http(
        "DELETE",
        &format!("{admin}/REALTIME_ROLLOUT_PERCENT"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 0);
    assert_eq!(v["sources"]["REALTIME_ROLLOUT_PERCENT"], "default");
    // Evaluate.
    let e = get_json(&format!("{admin}/evaluate?orgId=2"), None).await;
    assert_eq!(e["orgId"], 2);
    assert_eq!(e["mode"], "native");
    assert_eq!(e["reason"], "org in REALTIME_ALLOWLIST_ORGS");
    assert_eq!(e["services"]["finance"], "native");
    let b = e["bucket"].as_u64().unwrap();
    assert!((1..=100).contains(&b));
    assert_eq!(b as u32, realtime_edge::flags::bucket("realtime", 2));
    let (status, _, _) = http("GET", &format!("{admin}/evaluate?orgId=abc"), None, None).await;
    assert_eq!(status, 400);
    // History: who, key, old -> new.
    let h = get_json(&format!("{admin}/history"), None).await;
    let changes = h["history"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["key"] == "REALTIME_ROLLOUT_PERCENT"
                && c["old"] == "10"
                && c["new"] == "20")
    );
    assert!(
        changes
            .iter()
            .all(|c| c["who"].as_str().unwrap().starts_with("api 127.0.0.1"))
    );
    assert!(changes.iter().all(|c| c["time"].is_string()));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_token_is_enforced() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let mut cfg = config(&sim.base_url(), "");
    cfg.auth.admin_token = Some("s3cret-admin".into());
    let sc = start_sidecar(cfg).await;
    let url = format!("http://{}/feature-flags", sc.admin_addr);
    assert_eq!(http("GET", &url, None, None).await.0, 401);
    assert_eq!(http("GET", &url, Some("wrong"), None).await.0, 401);
    assert_eq!(http("GET", &url, Some("s3cret-admin"), None).await.0, 200);
    assert_eq!(
        http(
            "GET",
            &format!("http://{}/metrics", sc.admin_addr),
            None,
            None
        )
        .await
        .0,
        401
    );
    // Probes stay open.
    assert_eq!(
        http(
            "GET",
            &format!("http://{}/healthz", sc.admin_addr),
            None,
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        http(
            "GET",
            &format!("http://{}/readyz", sc.admin_addr),
            None,
            None
        )
        .await
        .0,
        200
    );
    sc.shutdown().await;

    // A non-loopback admin address without a token is refused at start.
    let mut cfg = config(&sim.base_url(), "");
    cfg.admin_listen = "0.0.0.0:0".parse().unwrap();
    let listeners = realtime_edge::Listeners::bind(&cfg).await.unwrap();
    let err = realtime_edge::Sidecar::start(cfg, listeners)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("admin_listen"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn flags_file_hot_reload_in_place_rename_symlink_and_broken() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let dir = temp_dir("flagfile");
    let file = dir.join("flags.yaml");
    std::fs::write(&file, "REALTIME_ROLLOUT_PERCENT: 5\n").unwrap();
    let extra = format!("flags: {{file: \"{}\"}}\n", file.display());
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 5);
    assert_eq!(v["sources"]["REALTIME_ROLLOUT_PERCENT"], "file");

    async fn wait_percent(sc: &realtime_edge::Sidecar, p: u64) {
        eventually(&format!("percent {p}"), || async {
            flags_of(sc).await["flags"]["REALTIME_ROLLOUT_PERCENT"] == p
        })
        .await;
    }
    // Rewritten in place.
    std::fs::write(&file, "REALTIME_ROLLOUT_PERCENT: 15\n").unwrap();
    wait_percent(&sc, 15).await;
    // Replaced by rename, as editors do.
    let tmp = dir.join("flags.yaml.swp");
    std::fs::write(&tmp, "REALTIME_ROLLOUT_PERCENT: 25\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_percent(&sc, 25).await;
    // Swapped through a symlink, as a Kubernetes ConfigMap does.
    let link_dir = temp_dir("flaglink");
    let (a, b) = (link_dir.join("a.yaml"), link_dir.join("b.yaml"));
    std::fs::write(&a, "REALTIME_ROLLOUT_PERCENT: 35\n").unwrap();
    std::fs::write(&b, "REALTIME_ROLLOUT_PERCENT: 45\n").unwrap();
    let link = link_dir.join("flags.yaml");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    sc.shutdown().await;
    let extra = format!("flags: {{file: \"{}\"}}\n", link.display());
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    wait_percent(&sc, 35).await;
    let tmp_link = link_dir.join("flags.yaml.new");
    std::os::unix::fs::symlink(&b, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &link).unwrap();
    wait_percent(&sc, 45).await;
    // A broken file is rejected whole; the last good flags stay.
    std::fs::write(
        &b,
        "REALTIME_ROLLOUT_PERCENT: 55\nREALTIME_STREAMING_V2: perhaps\n",
    )
    .unwrap();
    eventually("lastError", || async {
        flags_of(&sc).await["lastError"].is_string()
    })
    .await;
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 45);
    assert!(
        v["lastError"]
            .as_str()
            .unwrap()
            .contains("REALTIME_STREAMING_V2")
    );
    let prom = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await
    .2;
    assert!(
        prom.contains("streaming_flag_reloads_total{result=\"error\"}"),
        "{prom}"
    );
    std::fs::write(&b, "REALTIME_ROLLOUT_PERCENT: 65\n").unwrap();
    wait_percent(&sc, 65).await;
    assert!(flags_of(&sc).await["lastError"].is_null());
    let h = get_json(
        &format!("http://{}/feature-flags/history", sc.admin_addr),
        None,
    )
    .await;
    assert!(
        h["history"].as_array().unwrap().iter().any(|c| c["who"]
            .as_str()
            .unwrap()
            .starts_with("file ")
            && c["new"] == "65")
    );
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(link_dir);
}

#[tokio::test]
async fn overrides_survive_a_restart() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let dir = temp_dir("overrides");
    let extra = format!(
        "flags: {{file: null, overrides_file: \"{}\"}}\n",
        dir.join("overrides.yaml").display()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    set_flags(&sc, "REALTIME_ROLLOUT_PERCENT=42&REALTIME_DENYLIST_ORGS=9").await;
    sc.shutdown().await;
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 42);
    assert_eq!(v["flags"]["REALTIME_DENYLIST_ORGS"], json!([9]));
    assert_eq!(v["sources"]["REALTIME_ROLLOUT_PERCENT"], "override");
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn native_org_uses_one_upstream_link_and_no_polls() {
    let (sim, sc) = rig("").await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=7").await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (ws, ack) = subscribe(sc.client_addr, 7, hello(&["finance", "staff"])).await;
        assert_eq!(ack["mode"], "native");
        clients.push(ws);
    }
    eventually("one native link", || async {
        sim.state.stats_json()["nativeActive"] == 1
    })
    .await;
    let ids = sim.state.publish(7, "staff", vec![json!({}), json!({})]);
    for ws in clients.iter_mut() {
        let (got, _) = collect_ids(ws, &ids.iter().cloned().collect()).await;
        assert_eq!(got, ids);
    }
    let stats = sim.state.stats_json();
    assert_eq!(stats["nativeActive"], 1);
    assert_eq!(stats["nativeTotal"], 1);
    assert!(
        stats["requestsByOrg"].get("7").is_none(),
        "no V1 polls for a native org: {stats}"
    );
    assert_eq!(stats["activePollsTotal"], 0);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn leader_flag_off_means_one_poller_per_connection() {
    let (sim, sc) = rig("").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(subscribe(sc.client_addr, 3, hello(&["finance"])).await.0);
    }
    pollers(&sim, 1).await;
    set_flags(&sc, "FIN_LEADER_ENABLED=false").await;
    // Make-before-break: the shared poller stays until the new ones have answered.
    eventually("a poller per connection", || async {
        sim.state.stats_json()["activePollsTotal"].as_i64().unwrap() >= 5
    })
    .await;
    let ids = sim.state.publish(3, "finance", vec![json!({})]);
    for ws in clients.iter_mut() {
        let (got, _) = collect_ids(ws, &ids.iter().cloned().collect()).await;
        assert_eq!(got, ids, "each event once, though several pollers saw it");
    }
    pollers(&sim, 5).await;
    set_flags(&sc, "FIN_LEADER_ENABLED=true").await;
    pollers(&sim, 1).await;
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn flag_flips_lose_nothing_duplicate_nothing_and_close_nothing() {
    let sim = Arc::new(start_sim(Duration::from_secs(25)).await);
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let orgs = [11u64, 12, 13];
    let mut clients = Vec::new();
    for &org in &orgs {
        for _ in 0..2 {
            clients.push((
                org,
                subscribe(sc.client_addr, org, hello(&["finance", "staff"]))
                    .await
                    .0,
            ));
        }
    }
    pollers(&sim, 6).await;

    // Publish continuously while the flags flip back and forth.
    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let sim = sim.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let mut published: HashMap<u64, Vec<String>> = HashMap::new();
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                for &org in &[11u64, 12, 13] {
                    let service = if i.is_multiple_of(2) {
                        "finance"
                    } else {
                        "staff"
                    };
                    let ids = sim.state.publish(org, service, vec![json!({"i": i})]);
                    published.entry(org).or_default().extend(ids);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            published
        })
    };
    let flips = [
        "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100",
        "REALTIME_STREAMING_V2=false",
        "REALTIME_STREAMING_V2=true",
        "REALTIME_ROLLOUT_PERCENT=0",
        "REALTIME_ROLLOUT_PERCENT=100",
        "REALTIME_STREAMING_V2=false",
        "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=50",
        "REALTIME_ROLLOUT_PERCENT=100&FINANCE_REALTIME_V1=false",
        "REALTIME_STREAMING_V2=false&FINANCE_REALTIME_V1=true",
        "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100",
        "REALTIME_STREAMING_V2=false",
        "REALTIME_STREAMING_V2=true",
        "REALTIME_STREAMING_V2=false",
    ];
    for flip in flips {
        set_flags(&sc, flip).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    running.store(false, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    for (org, ws) in clients.iter_mut() {
        let want: HashSet<String> = published[org].iter().cloned().collect();
        let (got, _) = collect_ids(ws, &want).await;
        let mut seen = HashSet::new();
        for id in &got {
            assert!(seen.insert(id), "org {org}: {id} delivered twice");
            assert!(want.contains(id), "org {org}: {id} is not this org's");
        }
        assert_eq!(seen.len(), want.len());
    }
    let m = sidecar_metrics(&sc).await;
    assert_eq!(m["activeConnections"], 6, "no connection was closed");
    assert_eq!(m["totalConnections"], 6);
    sc.shutdown().await;
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn native_outage_falls_back_to_polling_and_returns() {
    let (sim, sc) = rig("").await;
    set_flags(
        &sc,
        "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100",
    )
    .await;
    let (mut ws, ack) = subscribe(sc.client_addr, 21, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native");
    eventually("native link", || async {
        sim.state.stats_json()["nativeActive"] == 1
    })
    .await;
    let mut want: Vec<String> = sim.state.publish(21, "finance", vec![json!({})]);
    collect_ids(&mut ws, &want.iter().cloned().collect()).await;

    sim.state.set_native_down(true);
    // After native_fallback_s (2 s in tests) the org polls.
    pollers(&sim, 1).await;
    let during = sim.state.publish(21, "finance", vec![json!({}), json!({})]);
    want.extend(during.iter().cloned());
    let (got, _) = collect_ids(&mut ws, &during.iter().cloned().collect()).await;
    assert_eq!(got, during);
    let m = sidecar_metrics(&sc).await;
    assert_eq!(
        m["connectionsByMode"]["poll"], 1,
        "served by the fallback poller: {m}"
    );
    assert_eq!(m["connectionsByMode"]["native"], 0);

    sim.state.set_native_down(false);
    eventually("native again", || async {
        sim.state.stats_json()["nativeActive"] == 1
    })
    .await;
    // Make-before-break (CONTRACT 3.3): the fallback poller stops only once
    // it has answered a request sent after the link came back; events drive
    // its answers, and each reaches the client once meanwhile.
    for round in 0.. {
        assert!(round < 20, "the fallback poller never handed over");
        let overlap = sim.state.publish(21, "finance", vec![json!({})]);
        let (got, _) = collect_ids(&mut ws, &overlap.iter().cloned().collect()).await;
        assert_eq!(got, overlap);
        if sim.state.stats_json()["activePollsTotal"] == 0 {
            break;
        }
    }
    eventually("polling stopped", || async {
        sim.state.stats_json()["activePollsTotal"] == 0
    })
    .await;
    let after = sim.state.publish(21, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut ws, &after.iter().cloned().collect()).await;
    assert_eq!(got, after, "nothing replayed twice after the return");
    let m = sidecar_metrics(&sc).await;
    assert_eq!(m["connectionsByMode"]["native"], 1, "{m}");
    assert_eq!(m["connectionsByMode"]["poll"], 0);
    assert_eq!(sidecar_metrics(&sc).await["activeConnections"], 1);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn flips_leave_orgs_whose_decision_did_not_change_alone() {
    let (sim, sc) = rig("").await;
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=31").await;
    let (mut native_client, ack) = subscribe(sc.client_addr, 31, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native");
    let (_poll_client, ack) = subscribe(sc.client_addr, 32, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "poll");
    eventually("one link, one poller", || async {
        sim.state.native_active() == 1 && sim.state.active_polls() == 1
    })
    .await;
    let polls_before = sim.state.total_requests();
    // Rollout moves; org 31 stays native through the allow-list and org 32
    // (bucket above 1) stays polling: nothing of theirs is restarted.
    assert!(realtime_edge::flags::bucket("realtime", 32) > 1);
    for p in ["1", "0", "1", "0"] {
        set_flags(&sc, &format!("REALTIME_ROLLOUT_PERCENT={p}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sim.state.stats_json();
    assert_eq!(
        stats["nativeTotal"], 1,
        "the native link was not reconnected: {stats}"
    );
    assert_eq!(
        sim.state.total_requests(),
        polls_before,
        "the poller was not restarted"
    );
    let ids = sim.state.publish(31, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut native_client, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn broken_flags_files_never_take_effect() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let dir = temp_dir("flagbroken");
    let file = dir.join("flags.yaml");
    const GOOD: &str = "REALTIME_ROLLOUT_PERCENT: 7\nREALTIME_DENYLIST_ORGS: [1, 2]\n";

    // At start-up without the file: defaults apply, and lastError says so.
    let extra = format!("flags: {{file: \"{}\"}}\n", file.display());
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    let v = flags_of(&sc).await;
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 0);
    let err = v["lastError"].as_str().expect("lastError set").to_string();
    assert!(err.contains("missing") && err.contains("defaults"), "{err}");

    std::fs::write(&file, GOOD).unwrap();
    eventually("the good file", || async {
        flags_of(&sc).await["lastError"].is_null()
    })
    .await;
    let good_version = flags_of(&sc).await["version"].clone();

    let replace = |how: &dyn Fn(&std::path::Path)| {
        let _ = std::fs::remove_file(&file);
        how(&file);
    };
    type Case<'a> = (&'a str, Box<dyn Fn(&std::path::Path)>);
    let cases: Vec<Case> = vec![
        ("empty", Box::new(|p| std::fs::write(p, "").unwrap())),
        ("empty", Box::new(|p| std::fs::write(p, "  \n\n").unwrap())),
        (
            "empty",
            Box::new(|p| std::fs::write(p, "# nothing here\n").unwrap()),
        ),
        ("empty", Box::new(|p| std::fs::write(p, "~\n").unwrap())),
        ("missing", Box::new(|_| {})),
        (
            "missing",
            Box::new(|p| std::os::unix::fs::symlink("/nonexistent/flags", p).unwrap()),
        ),
        (
            "regular",
            Box::new(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        ),
        (
            "regular",
            Box::new(|p| {
                let ok = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap();
                assert!(ok.success());
            }),
        ),
        (
            "larger",
            Box::new(|p| std::fs::write(p, format!("# {}\n{GOOD}", "x".repeat(1 << 20))).unwrap()),
        ),
        (
            "duplicate",
            Box::new(|p| {
                std::fs::write(
                    p,
                    "REALTIME_ROLLOUT_PERCENT: 7\nREALTIME_ROLLOUT_PERCENT: 9\n",
                )
                .unwrap()
            }),
        ),
        (
            "nested",
            Box::new(|p| {
                std::fs::write(
                    p,
                    format!("REALTIME_DENYLIST_ORGS: {}", "[".repeat(200_000)),
                )
                .unwrap()
            }),
        ),
    ];
    for (why, how) in cases {
        replace(&*how);
        eventually(&format!("rejection: {why}"), || async {
            flags_of(&sc).await["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(why))
        })
        .await;
        let v = flags_of(&sc).await;
        assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 7, "{why}");
        assert_eq!(v["flags"]["REALTIME_DENYLIST_ORGS"], json!([1, 2]), "{why}");
        assert_eq!(v["version"], good_version, "{why}: no flag changed");
        // Back to the good file: accepted again, still the same version.
        replace(&|p| std::fs::write(p, GOOD).unwrap());
        eventually("the good file again", || async {
            flags_of(&sc).await["lastError"].is_null()
        })
        .await;
    }
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_booleans_are_strict_and_a_no_op_keeps_the_version() {
    let sim = start_sim(Duration::from_secs(25)).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let url = format!("http://{}/feature-flags", sc.admin_addr);
    let form = |body: &str| Some(("application/x-www-form-urlencoded", body.to_string()));
    let (status, _, body) = http("POST", &url, None, form("REALTIME_STREAMING_V2=yes")).await;
    assert_eq!(status, 400);
    assert!(body.contains("REALTIME_STREAMING_V2"), "{body}");
    let v = set_flags(&sc, "REALTIME_STREAMING_V2=on").await;
    let version = v["version"].clone();
    let v = set_flags(&sc, "REALTIME_STREAMING_V2=true").await;
    assert_eq!(
        v["version"], version,
        "the same value again is no new version"
    );
    let h = get_json(&format!("{url}/history"), None).await;
    let entries: Vec<&Value> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == "REALTIME_STREAMING_V2")
        .collect();
    assert_eq!(entries.len(), 1, "{h}");
    assert_eq!(entries[0]["version"], version);
    sc.shutdown().await;
    sim.shutdown().await;
}
