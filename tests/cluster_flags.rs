//! Flags shared by the replicas of a cluster (CONTRACT 9): a change through
//! one replica's admin API is in force on every replica with one version
//! sequence and one history; Redis down refuses changes but keeps serving;
//! Redis restarted empty is re-seeded, not reset.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use realtime_edge::Sidecar;
use serde_json::{Value, json};

fn cluster_extra(redis: &RedisServer, name: &str) -> String {
    format!(
        "cluster: {{redis_url: \"{}\", name: \"{name}\", lease_ms: 600, redis_timeout_ms: 150}}\n",
        redis.url()
    )
}

async fn flags_of(sc: &Sidecar) -> Value {
    get_json(&format!("http://{}/feature-flags", sc.admin_addr), None).await
}

async fn history_of(sc: &Sidecar) -> Vec<Value> {
    get_json(
        &format!("http://{}/feature-flags/history", sc.admin_addr),
        None,
    )
    .await["history"]
        .as_array()
        .unwrap()
        .clone()
}

/// Sends a form POST and returns the status and JSON body.
async fn post_flags(sc: &Sidecar, form: &str) -> (u16, Value) {
    let (status, _, body) = http(
        "POST",
        &format!("http://{}/feature-flags", sc.admin_addr),
        None,
        Some(("application/x-www-form-urlencoded", form.to_string())),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap())
}

async fn delete_flag(sc: &Sidecar, key: &str) -> (u16, Value) {
    let (status, _, body) = http(
        "DELETE",
        &format!("http://{}/feature-flags/{key}", sc.admin_addr),
        None,
        None,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap())
}

/// Waits until `sc` shows `version` (and returns its flags).
async fn wait_version(sc: &Sidecar, version: &Value) -> Value {
    eventually(&format!("flags version {version}"), || async {
        flags_of(sc).await["version"] == *version
    })
    .await;
    flags_of(sc).await
}

fn redis_up(sc: &Sidecar) -> bool {
    *sc.cluster.as_ref().unwrap().up().borrow()
}

/// Two replicas of cluster `name` in front of one simulated backend.
async fn two_replicas(
    redis: &RedisServer,
    name: &str,
) -> (realtime_edge_sim::Simulator, Sidecar, Sidecar) {
    let sim = start_sim(Duration::from_secs(25)).await;
    let a = start_sidecar(config(&sim.base_url(), &cluster_extra(redis, name))).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(redis, name))).await;
    // Both synced with the same (seeded) cluster state.
    eventually("both replicas synced", || async {
        let (va, vb) = (a.flags.cluster_version(), b.flags.cluster_version());
        va.is_some() && va == vb
    })
    .await;
    (sim, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_switches_streams_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (sim, a, b) = two_replicas(&redis, "cf-switch").await;
    let (mut client, ack) = subscribe(b.client_addr, 31, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "poll");
    pollers(&sim, 1).await;

    let (status, v) = post_flags(&a, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=31").await;
    assert_eq!(status, 200, "{v}");
    let on_b = wait_version(&b, &v["version"]).await;
    assert_eq!(on_b["flags"]["REALTIME_STREAMING_V2"], true);
    assert_eq!(on_b["flags"]["REALTIME_ALLOWLIST_ORGS"], json!([31]));
    assert_eq!(on_b["sources"]["REALTIME_ALLOWLIST_ORGS"], "override");
    let evaluated = get_json(
        &format!("http://{}/feature-flags/evaluate?orgId=31", b.admin_addr),
        None,
    )
    .await;
    assert_eq!(evaluated["mode"], "native", "{evaluated}");

    // B's org moved to the native stream without the client reconnecting.
    eventually("org 31 served natively on B", || async {
        sim.state.native_active() == 1
            && sidecar_metrics(&b).await["connectionsByMode"]["native"] == 1
    })
    .await;
    let ids = sim.state.publish(31, "finance", vec![json!({"n": 1})]);
    let (got, _) = collect_ids(&mut client, &ids.iter().cloned().collect::<HashSet<_>>()).await;
    assert_eq!(got, ids);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_version_sequence_one_history_and_shared_deletes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(Duration::from_secs(25)).await;
    // A keeps a local copy of the cluster's overrides in its overrides file.
    let copy = unique_dir("cf-copy").join("overrides.yaml");
    let a_extra = format!(
        "{}flags: {{file: null, overrides_file: \"{}\"}}\n",
        cluster_extra(&redis, "cf-seq"),
        copy.display()
    );
    let a = start_sidecar(config(&sim.base_url(), &a_extra)).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cf-seq"))).await;
    eventually("both replicas synced", || async {
        let (va, vb) = (a.flags.cluster_version(), b.flags.cluster_version());
        va.is_some() && va == vb
    })
    .await;
    let (status, v1) = post_flags(&a, "REALTIME_ROLLOUT_PERCENT=10").await;
    assert_eq!(status, 200, "{v1}");
    let v1 = v1["version"].as_u64().unwrap();
    wait_version(&b, &json!(v1)).await;
    let (status, v2) =
        post_flags(&b, "REALTIME_ROLLOUT_PERCENT=20&REALTIME_DENYLIST_ORGS=4,5").await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], v1 + 1, "one sequence across replicas");
    let on_a = wait_version(&a, &json!(v1 + 1)).await;
    assert_eq!(on_a["flags"]["REALTIME_ROLLOUT_PERCENT"], 20);
    assert_eq!(on_a["flags"]["REALTIME_DENYLIST_ORGS"], json!([4, 5]));
    eventually("A's local copy has B's change", || async {
        std::fs::read_to_string(&copy).is_ok_and(|t| t.contains("REALTIME_ROLLOUT_PERCENT: 20"))
    })
    .await;

    // The same value again is no change: no new version anywhere.
    let (_, same) = post_flags(&a, "REALTIME_ROLLOUT_PERCENT=20").await;
    assert_eq!(same["version"], v1 + 1);

    // One history, newest first, the same on both replicas.
    let (ha, hb) = (history_of(&a).await, history_of(&b).await);
    assert_eq!(ha, hb);
    let rollout: Vec<(u64, &str, &str)> = ha
        .iter()
        .filter(|h| h["key"] == "REALTIME_ROLLOUT_PERCENT")
        .map(|h| {
            (
                h["version"].as_u64().unwrap(),
                h["old"].as_str().unwrap(),
                h["new"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rollout, vec![(v1 + 1, "10", "20"), (v1, "0", "10")]);
    assert!(ha.iter().any(|h| h["key"] == "REALTIME_DENYLIST_ORGS"
        && h["version"] == v1 + 1
        && h["who"].as_str().unwrap().starts_with("api ")));

    // A DELETE through A drops the override on B too.
    let (status, del) = delete_flag(&a, "REALTIME_DENYLIST_ORGS").await;
    assert_eq!(status, 200, "{del}");
    assert_eq!(del["version"], v1 + 2);
    let on_b = wait_version(&b, &json!(v1 + 2)).await;
    assert_eq!(on_b["flags"]["REALTIME_DENYLIST_ORGS"], json!([]));
    assert_eq!(on_b["sources"]["REALTIME_DENYLIST_ORGS"], "default");
    assert_eq!(on_b["sources"]["REALTIME_ROLLOUT_PERCENT"], "override");
    assert_eq!(history_of(&b).await[0]["new"], "[]");
    // Deleting what is not there changes nothing.
    let (status, again) = delete_flag(&b, "REALTIME_DENYLIST_ORGS").await;
    assert_eq!(status, 200);
    assert_eq!(again["version"], v1 + 2);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_changes_keeps_serving_and_converges_when_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (sim, a, b) = two_replicas(&redis, "cf-down").await;
    let (status, set) = post_flags(&a, "REALTIME_ROLLOUT_PERCENT=37").await;
    assert_eq!(status, 200, "{set}");
    let before = set["version"].as_u64().unwrap();
    wait_version(&b, &json!(before)).await;

    redis.kill();
    eventually("Redis seen down", || async {
        !redis_up(&a) && !redis_up(&b)
    })
    .await;
    let (status, refused) = post_flags(&a, "REALTIME_ROLLOUT_PERCENT=50").await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["code"], "CLUSTER_UNAVAILABLE");
    assert!(
        refused["error"].as_str().unwrap().contains("Redis"),
        "{refused}"
    );
    let (status, refused) = delete_flag(&b, "REALTIME_ROLLOUT_PERCENT").await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["code"], "CLUSTER_UNAVAILABLE");
    // Both keep the overrides they knew, and keep serving streams.
    for sc in [&a, &b] {
        let v = flags_of(sc).await;
        assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 37);
        assert_eq!(v["version"], before);
    }
    let (mut client, ack) = subscribe(b.client_addr, 32, hello(&["finance"])).await;
    assert_eq!(ack["type"], "ack");
    pollers(&sim, 1).await;
    let ids = sim.state.publish(32, "finance", vec![json!({"n": 1})]);
    let (got, _) = collect_ids(&mut client, &ids.iter().cloned().collect::<HashSet<_>>()).await;
    assert_eq!(got, ids);

    // Redis comes back empty: the overrides are re-seeded, not reset, with
    // a new version both replicas agree on.
    redis.restart();
    eventually("re-seeded and converged", || async {
        let (fa, fb) = (flags_of(&a).await, flags_of(&b).await);
        fa["version"].as_u64().unwrap() > before
            && fa["version"] == fb["version"]
            && fa["flags"]["REALTIME_ROLLOUT_PERCENT"] == 37
            && fb["flags"]["REALTIME_ROLLOUT_PERCENT"] == 37
    })
    .await;
    assert!(
        history_of(&a).await[0]["who"]
            .as_str()
            .unwrap()
            .contains("re-seeded"),
    );
    // And shared changes work again.
    let (status, after) = post_flags(&b, "REALTIME_ROLLOUT_PERCENT=5").await;
    assert_eq!(status, 200, "{after}");
    let on_a = wait_version(&a, &after["version"]).await;
    assert_eq!(on_a["flags"]["REALTIME_ROLLOUT_PERCENT"], 5);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_change_notice_is_caught_by_the_version_check() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (sim, a, b) = two_replicas(&redis, "cf-lost").await;
    let (_, set) = post_flags(&a, "REALTIME_ROLLOUT_PERCENT=3").await;
    let version = set["version"].as_u64().unwrap();
    wait_version(&b, &json!(version)).await;
    // A change written to Redis without its PUBLISH: as if the notice was lost.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg("cf-lost:flags:overrides")
        .arg("REALTIME_ROLLOUT_PERCENT")
        .arg("4")
        .ignore()
        .cmd("INCR")
        .arg("cf-lost:flags:version")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    for sc in [&a, &b] {
        let v = wait_version(sc, &json!(version + 1)).await;
        assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 4);
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}
