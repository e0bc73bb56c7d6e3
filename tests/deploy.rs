//! The shipped alert rules, dashboard, example config and flags file are valid
//! and refer to metrics and flags that exist.

use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::flags::FlagSchema;
use realtime_edge::metrics as m;

const METRICS: [&str; 15] = [
    m::ACTIVE_CONNECTIONS,
    m::AVG_LATENCY_MS,
    m::ERRORS,
    m::DELIVERY_LATENCY_SECONDS,
    m::EVENTS_DELIVERED,
    m::CONNECTIONS_TOTAL,
    m::CONNECTIONS_CLOSED,
    m::UPSTREAM_REQUESTS,
    m::UPSTREAM_POLLERS,
    m::UPSTREAM_NATIVE_LINKS,
    m::MODE_SWITCHES,
    m::FLAG_RELOADS,
    m::FLAGS_VERSION,
    m::CROSS_ORG_DROPPED,
    m::ACTIVE_ORGS,
];

/// Metric names used in a PromQL expression (identifiers starting with `streaming_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("streaming_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        out.push(base.to_string());
        i = end;
    }
    out
}

/// Runs an external checker. Outside CI a missing tool skips the check
/// with a note on stderr; in CI (`CI` set) it fails the test, since
/// `.ci/run` installs every tool.
fn tool(name: &str, args: &[&str]) -> Option<std::process::Output> {
    match std::process::Command::new(name).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{name} is required in CI (.ci/run installs it): {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: {name} {} ({name} not available: {e})",
                args.join(" ")
            );
            None
        }
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn alert_rules_keep_the_seed_rules_and_use_known_metrics() {
    let text = std::fs::read_to_string("deploy/prometheus-alerts.yaml").unwrap();
    let doc: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    let rules: Vec<&serde_json::Value> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    // The rules the migration already runs: names, thresholds, durations
    // and severities exactly as they were.
    for (name, expr, for_, severity) in [
        (
            "StreamingConnectionsDrop",
            "streaming_active_connections < 50",
            "5m",
            "warning",
        ),
        (
            "StreamingHighLatency",
            "streaming_avg_latency_ms > 200",
            "10m",
            "warning",
        ),
        (
            "StreamingHighErrors",
            "rate(streaming_errors[5m]) > 0.01",
            "5m",
            "critical",
        ),
    ] {
        let r = rule(name);
        assert_eq!(r["expr"].as_str().unwrap().trim(), expr, "{name}");
        assert_eq!(r["for"], for_, "{name}");
        assert_eq!(r["labels"]["severity"], severity, "{name}");
    }
    for extra in [
        "StreamingConnectionsHalved",
        "StreamingDeliveryP99High",
        "StreamingUpstreamErrorRate",
        "StreamingFlagReloadFailed",
        "StreamingCrossOrgEvents",
    ] {
        rule(extra);
    }
    for r in &rules {
        let expr = r["expr"].as_str().unwrap();
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{expr}");
        for u in used {
            assert!(
                METRICS.contains(&u.as_str()),
                "unknown metric {u} in {expr}"
            );
        }
    }
    // promtool is installed by .ci/run.
    if let Some(out) = tool(
        "promtool",
        &["check", "rules", "deploy/prometheus-alerts.yaml"],
    ) {
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

#[test]
fn dashboard_parses_and_uses_known_metrics() {
    let text = std::fs::read_to_string("deploy/grafana-dashboard.json").unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = doc["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Active connections",
        "Delivery latency p50 / p95 / p99",
        "Events delivered by service",
        "Error rate by kind",
        "Upstream request rate",
        "Flags version",
    ] {
        assert!(titles.contains(&want), "{want} missing");
    }
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            for u in metric_names(t["expr"].as_str().unwrap()) {
                assert!(METRICS.contains(&u.as_str()), "unknown metric {u}");
            }
        }
    }
}

#[test]
fn example_config_and_default_flags_file_are_valid() {
    let text = std::fs::read_to_string("deploy/realtime-edge.yaml").unwrap();
    let cfg =
        Config::from_yaml("deploy/realtime-edge.yaml", &text, &EnvSecrets::default()).unwrap();
    let schema = FlagSchema::new(cfg.services.iter().map(|s| s.name.clone()).collect());
    let flags = std::fs::read_to_string("flags/flags.yaml").unwrap();
    let layer = schema.parse_yaml_file(&flags).unwrap();
    for key in schema.keys() {
        assert!(
            layer.contains_key(&key),
            "flags/flags.yaml does not list {key}"
        );
    }
}
