//! Tests of the whole file (defaults, parsing, problems collected across
//! sections) and the helpers the section tests share.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml("edge.yaml", text, &EnvSecrets::default())
}

pub(super) fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e.lines(),
    }
}

#[test]
fn empty_file_gives_contract_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.upstream.base_url.as_str(), "http://127.0.0.1:4000/");
    assert_eq!(c.upstream.native_stream_path, "/v2/realtime/stream");
    assert_eq!(c.auth.org_claim, "orgId");
    assert_eq!(c.rollout_group, "realtime");
    assert_eq!(c.flags.file, Some(PathBuf::from("flags/flags.yaml")));
    assert_eq!(c.stream.batch_window, Duration::from_millis(50));
    assert_eq!(c.stream.batch_max_events, 100);
    assert_eq!(c.stream.ping_interval, Duration::from_secs(30));
    assert_eq!(c.stream.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.stream.replay_events, 1000);
    // Unset, the queue holds the largest message (a 1 MiB event) and more.
    assert_eq!(c.stream.max_event_bytes, 1_048_576);
    assert!(c.stream.max_queue_bytes >= c.stream.max_message_bytes + 64 * 1024);
    assert_eq!(c.stream.batch_max_bytes, 65_536);
    assert_eq!(c.stream.replay_bytes, 16 << 20);
    assert_eq!(c.stream.resume_ttl, Duration::from_secs(300));
    assert_eq!(c.stream.client_timeout, Duration::from_secs(75));
    assert_eq!(c.services.len(), 10);
    assert_eq!(
        c.services[c.service_index("guest").unwrap()].v1_path,
        "/guest-checkin/realtime/subscribe"
    );
    assert_eq!(c.legacy.cursor_param, "since");
    assert!(c.tls.is_none());
}

#[test]
fn full_file_is_read() {
    let c = parse(
        r#"
listen: "127.0.0.1:18080"
admin_listen: "127.0.0.1:19090"
upstream: {base_url: "http://backend:4000", native_stream_path: "/stream"}
auth: {jwt_secret: "s3cret", org_claim: "org", admin_token: "adm"}
rollout: {group: "g1"}
flags: {file: null, overrides_file: "/tmp/o.yaml"}
stream: {batch_window_ms: 10, batch_max_events: 5, replay_events: 7}
services:
  finance: {v1_path: "/f"}
legacy: {cursor_param: "c", events_field: "e", cursor_field: "n"}
"#,
    )
    .unwrap();
    assert_eq!(c.listen.port(), 18080);
    assert_eq!(c.auth.jwt_secret.as_deref(), Some("s3cret"));
    assert_eq!(c.flags.file, None);
    assert_eq!(
        c.services,
        vec![ServiceConfig {
            name: "finance".into(),
            v1_path: "/f".into()
        }]
    );
    assert_eq!(c.legacy.events_field, "e");
    assert_eq!(c.stream.replay_events, 7);
}

#[test]
fn unknown_key_is_rejected_with_its_path() {
    let lines = problems("stream:\n  batch_windw_ms: 5\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("edge.yaml: stream.batch_windw_ms: unknown field"),
        "{lines:?}"
    );
    // At the top level too, and inside a service's entry.
    let lines = problems("colour: red\n");
    assert!(
        lines[0].starts_with("edge.yaml: colour: unknown field"),
        "{lines:?}"
    );
    let lines = problems("services:\n  finance: {v1_pat: /x}\n");
    assert!(
        lines[0].starts_with("edge.yaml: services.finance.v1_pat: unknown field"),
        "{lines:?}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let lines = problems("stream:\n  batch_window_ms: soon\n");
    assert!(
        lines[0].starts_with("edge.yaml: stream.batch_window_ms: invalid type"),
        "{lines:?}"
    );
}

#[test]
fn every_bad_value_is_reported_together() {
    let lines = problems(
        r#"
listen: "nowhere"
admin_listen: "127.0.0.1:99999"
upstream: {base_url: "ftp://x", native_stream_path: "stream"}
stream: {batch_max_events: 0, ping_interval_s: 0}
passthrough: {buffered_body_bytes: 99999999}
tls: {cert_file: "c.pem"}
services:
  finance: {v1_path: "/same"}
  staff: {v1_path: "/same"}
"#,
    );
    let joined = lines.join("\n");
    for key in [
        "edge.yaml: listen:",
        "edge.yaml: admin_listen:",
        "edge.yaml: upstream.base_url:",
        "edge.yaml: upstream.native_stream_path:",
        "edge.yaml: stream.batch_max_events:",
        "edge.yaml: stream.ping_interval_s:",
        "edge.yaml: passthrough.buffered_body_bytes:",
        "edge.yaml: tls.key_file:",
        "edge.yaml: services.staff.v1_path:",
    ] {
        assert!(joined.contains(key), "missing {key} in\n{joined}");
    }
}

#[test]
fn not_a_mapping_is_rejected() {
    let lines = problems("- a\n- b\n");
    assert!(lines[0].starts_with("edge.yaml:"), "{lines:?}");
}

#[test]
fn cluster_is_off_by_default_and_checked_when_set() {
    let c = parse("").unwrap();
    assert!(c.cluster.redis_url.is_none());
    assert_eq!(c.cluster.name, "realtime-edge");
    assert_eq!(c.cluster.lease, Duration::from_millis(3000));
    let c = parse("cluster: {redis_url: \"redis://127.0.0.1:6379/2\", name: prod}").unwrap();
    assert_eq!(
        c.cluster.redis_url.as_deref(),
        Some("redis://127.0.0.1:6379/2")
    );
    let p = problems(
        "cluster: {redis_url: \"http://x\", name: \"a b\", lease_ms: 100, redis_timeout_ms: 5000}",
    );
    assert!(p.iter().any(|l| l.contains("cluster.redis_url")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("cluster.name")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("cluster.lease_ms")), "{p:?}");
    assert!(
        p.iter().any(|l| l.contains("cluster.redis_timeout_ms")),
        "{p:?}"
    );
}
