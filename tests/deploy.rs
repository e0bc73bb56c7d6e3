//! Everything under deploy/ is checked here: the alert rules, the dashboard,
//! the example config and flags file, the container image definition
//! (hadolint), the compose file (structurally, and its Prometheus config
//! with promtool), the Kubernetes overlays (rendered with `kubectl
//! kustomize`, validated against the Kubernetes schemas with
//! `kubernetes-validate`, then checked for what operations rely on), and
//! the systemd unit (`systemd-analyze verify`). `.ci/run` installs the
//! tools; outside CI a missing one is skipped with a note.

use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::flags::FlagSchema;
use realtime_edge::metrics as m;

const METRICS: [&str; 19] = [
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
    m::FACADE_REQUESTS,
    m::FACADE_HELD,
    m::FACADE_EVENTS,
    m::FACADE_FORWARDED,
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
    // The load-test processor reads these; its check relies on the defaults.
    let run = std::process::Command::new(name)
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("LOAD_TEST_ORGS")
        .output();
    match run {
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

/// Loads a config file as the sidecar would, with the secrets its
/// deployment provides through the environment.
fn load_config(path: &str, text: &str) -> Config {
    let secrets = EnvSecrets {
        jwt_secret: Some("from-a-secret".into()),
        admin_token: Some("from-a-secret".into()),
    };
    Config::from_yaml(path, text, &secrets).unwrap_or_else(|e| panic!("{}", e.lines().join("\n")))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn example_config_and_default_flags_file_are_valid() {
    let cfg = load_config(
        "deploy/realtime-edge.yaml",
        &read("deploy/realtime-edge.yaml"),
    );
    // Reachable by Prometheus and the kubelet, protected by the token.
    assert!(!cfg.admin_listen.ip().is_loopback());
    assert!(
        Config::from_yaml(
            "deploy/realtime-edge.yaml",
            &read("deploy/realtime-edge.yaml"),
            &EnvSecrets::default()
        )
        .map(|c| realtime_edge::Sidecar::preflight(&c).is_err())
        .unwrap_or(true),
        "the example must not start without an admin token"
    );
    let schema = FlagSchema::new(cfg.services.iter().map(|s| s.name.clone()).collect());
    let flags = read("flags/flags.yaml");
    let layer = schema.parse_yaml_file(&flags).unwrap();
    for key in schema.keys() {
        assert!(
            layer.contains_key(&key),
            "flags/flags.yaml does not list {key}"
        );
    }
    // The Kubernetes base carries copies (kustomize reads only files under
    // its own directory); they must not drift.
    assert_eq!(
        read("deploy/k8s/base/config.yaml"),
        read("deploy/realtime-edge.yaml")
    );
    assert_eq!(read("deploy/k8s/base/flags.yaml"), flags);
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_ships_the_binary_only() {
    let text = read("deploy/Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last = &instructions[*froms.last().unwrap()..];
    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies.len(),
        1,
        "the final stage copies the binary only: {copies:?}"
    );
    assert!(copies[0].starts_with("COPY --from=") && copies[0].contains("realtime-edge"));
    assert!(
        !last.iter().any(|l| l.starts_with("RUN")),
        "nothing installed in the final stage"
    );
    let user = last
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    // The build context is the repository root: target/ stays out of it.
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), "{rules:?}");
    assert!(!rules.iter().any(|r| r.starts_with("!target")), "{rules:?}");
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/", "!crates/"] {
        assert!(
            rules.contains(&needed),
            "{needed} missing from .dockerignore"
        );
    }
    // Files the binary embeds (include_str!/include_bytes!) must be in the
    // build context and copied into the build stage.
    let copied: Vec<&str> = instructions[..*froms.last().unwrap()]
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    // The binary's sources: src/ and the workspace crates it is built from.
    let sources = ["src", "crates"].map(std::path::Path::new);
    for embedded in sources.iter().flat_map(|dir| embedded_files(dir)) {
        let top = embedded
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            copied.iter().any(|c| c.trim_end_matches('/') == top),
            "{} is embedded but deploy/Dockerfile does not copy {top}/",
            embedded.display()
        );
        assert!(
            rules
                .iter()
                .any(|r| r.trim_start_matches('!').trim_end_matches('/') == top),
            "{} is embedded but .dockerignore keeps {top}/ out of the context",
            embedded.display()
        );
    }
    if let Some(out) = tool("hadolint", &["deploy/Dockerfile"]) {
        assert!(out.status.success(), "hadolint:\n{}", output_text(&out));
    }
}

/// Paths (relative to the repository root) of the files that the sources
/// under `dir` embed with `include_str!` or `include_bytes!`.
fn embedded_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(embedded_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in text.match_indices(macro_name) {
                let rest = &text[i + macro_name.len()..];
                let Some(end) = rest.find('"') else { continue };
                let joined = path.parent().unwrap().join(&rest[..end]);
                // Normalise `..` without touching the file system.
                let mut normal = std::path::PathBuf::new();
                for c in joined.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        std::path::Component::CurDir => {}
                        other => normal.push(other),
                    }
                }
                out.push(normal);
            }
        }
    }
    out
}

#[test]
fn compose_runs_simulate_two_replicas_redis_prometheus_and_grafana() {
    let doc: serde_json::Value = yaml_serde::from_str(&read("deploy/compose.yaml")).unwrap();
    let services = doc["services"].as_object().unwrap();
    let command = |name: &str| -> Vec<String> {
        services[name]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has a command list"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(command("simulate")[0], "simulate");
    let replicas: Vec<&String> = services
        .keys()
        .filter(|k| services[k.as_str()]["command"][0] == "serve")
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    for name in ["redis", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "{name} missing");
    }
    // Every bind mount names a file or directory of the repository.
    let mut mounts = std::collections::HashMap::new();
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().unwrap();
            let mut parts = v.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
            let path = std::path::Path::new("deploy").join(host);
            assert!(path.exists(), "{name}: {host} does not exist");
            mounts.insert((name.clone(), container.to_string()), path);
        }
    }
    // The replicas' config: valid, aimed at the simulate service, admin
    // reachable by Prometheus.
    let simulate_port = command("simulate")
        .iter()
        .find_map(|a| a.strip_prefix("0.0.0.0:").map(str::to_string))
        .expect("simulate listens on all interfaces");
    let mut admin_targets = Vec::new();
    for r in &replicas {
        let args = command(r);
        let cfg_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
        let host_file = &mounts[&((*r).clone(), cfg_path.clone())];
        let cfg = load_config(
            &host_file.display().to_string(),
            &std::fs::read_to_string(host_file).unwrap(),
        );
        assert_eq!(
            cfg.upstream.base_url.to_string().trim_end_matches('/'),
            format!("http://simulate:{simulate_port}")
        );
        assert!(!cfg.admin_listen.ip().is_loopback());
        assert_eq!(
            cfg.cluster.redis_url.as_deref(),
            Some("redis://redis:6379"),
            "{r}: the replicas share the compose Redis"
        );
        let flags = cfg.flags.file.as_ref().expect("a flags file");
        let dir = flags.parent().unwrap().display().to_string();
        assert!(
            mounts.contains_key(&((*r).clone(), dir.clone())),
            "{r}: the flags file's directory {dir} is not mounted"
        );
        assert_eq!(
            services[r.as_str()]["environment"]["JWT_SECRET"],
            services["simulate"]["environment"]["JWT_SECRET"]
        );
        admin_targets.push(format!("{r}:{}", cfg.admin_listen.port()));
    }
    // Prometheus scrapes both replicas with the admin token and loads the rules.
    let prom_file = &mounts[&(
        "prometheus".to_string(),
        "/etc/prometheus/prometheus.yml".to_string(),
    )];
    let prom: serde_json::Value =
        yaml_serde::from_str(&std::fs::read_to_string(prom_file).unwrap()).unwrap();
    let job = &prom["scrape_configs"][0];
    let targets: Vec<String> = job["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, admin_targets);
    assert_eq!(
        job["authorization"]["credentials"],
        services[replicas[0].as_str()]["environment"]["ADMIN_TOKEN"]
    );
    let rules = prom["rule_files"][0].as_str().unwrap();
    let rules_host = &mounts[&("prometheus".to_string(), rules.to_string())];
    assert_eq!(
        rules_host,
        std::path::Path::new("deploy/./prometheus-alerts.yaml")
    );
    // Grafana: the dashboard provider reads the directory the dashboard is mounted in.
    let provider_dir = &mounts[&(
        "grafana".to_string(),
        "/etc/grafana/provisioning/dashboards".to_string(),
    )];
    let provider: serde_json::Value = yaml_serde::from_str(
        &std::fs::read_to_string(provider_dir.join("realtime-edge.yaml")).unwrap(),
    )
    .unwrap();
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        mounts
            .keys()
            .any(|(s, c)| s == "grafana" && c.starts_with(dash_dir) && c.ends_with(".json")),
        "no dashboard mounted under {dash_dir}"
    );
    // promtool checks the Prometheus config with the rules at their host path.
    let dir = common_dir("compose");
    let checked = dir.join("prometheus.yml");
    let rules_abs = std::fs::canonicalize("deploy/prometheus-alerts.yaml").unwrap();
    std::fs::write(
        &checked,
        std::fs::read_to_string(prom_file)
            .unwrap()
            .replace(rules, &rules_abs.display().to_string()),
    )
    .unwrap();
    if let Some(out) = tool("promtool", &["check", "config", checked.to_str().unwrap()]) {
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

/// A fresh directory for files a check writes.
fn common_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "re-deploy-{tag}-{}-{}",
        std::process::id(),
        realtime_edge::clock::unix_micros()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One rendered overlay's resources, by kind.
struct Rendered(Vec<serde_json::Value>);

impl Rendered {
    fn one(&self, kind: &str) -> &serde_json::Value {
        let all: Vec<&serde_json::Value> = self.0.iter().filter(|r| r["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "one {kind} expected");
        all[0]
    }

    fn config_map(&self, name_prefix: &str) -> &serde_json::Value {
        self.0
            .iter()
            .find(|r| {
                r["kind"] == "ConfigMap"
                    && r["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with(name_prefix)
            })
            .unwrap_or_else(|| panic!("ConfigMap {name_prefix} missing"))
    }
}

/// Renders an overlay with `kubectl kustomize` and validates every resource
/// against the Kubernetes schemas.
fn render(overlay: &str) -> Option<Rendered> {
    let dir = format!("deploy/k8s/overlays/{overlay}");
    let out = tool("kubectl", &["kustomize", &dir])?;
    assert!(
        out.status.success(),
        "kustomize {dir}:\n{}",
        output_text(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let file = common_dir(overlay).join("rendered.yaml");
    std::fs::write(&file, &text).unwrap();
    if let Some(v) = tool(
        "kubernetes-validate",
        &[
            "--strict",
            "--quiet",
            "-k",
            "1.32.0",
            file.to_str().unwrap(),
        ],
    ) {
        assert!(v.status.success(), "{dir}:\n{}", output_text(&v));
    }
    use serde::Deserialize;
    let docs = yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    Some(Rendered(docs))
}

/// What every overlay must hold for the sidecar to be operable.
fn check_overlay(overlay: &str, service_name: &str) {
    let Some(r) = render(overlay) else { return };
    let deployment = r.one("Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let edge = containers
        .iter()
        .find(|c| c["name"] == "realtime-edge")
        .expect("the realtime-edge container");
    // A pinned image, set by the base's `images:`.
    let image = edge["image"].as_str().unwrap();
    assert!(image.contains('/') && image.contains(':'), "image {image}");
    // The config comes from the ConfigMap and loads.
    let args: Vec<&str> = edge["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = edge["volumeMounts"].as_array().unwrap();
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let volume_of = |mount_path: &str| -> (&serde_json::Value, &serde_json::Value) {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        (m, v)
    };
    let (m, v) = volume_of(config_path);
    let cm = r.config_map("realtime-edge-config");
    assert_eq!(v["configMap"]["name"], cm["metadata"]["name"]);
    let text = cm["data"][m["subPath"].as_str().unwrap()].as_str().unwrap();
    let cfg = load_config(&format!("{overlay} ConfigMap"), text);
    assert!(
        !cfg.admin_listen.ip().is_loopback(),
        "probes and Prometheus must reach the admin API"
    );
    let admin_port = cfg.admin_listen.port();
    // The flags file: a ConfigMap mounted as a directory, so edits reach it.
    let flags = cfg.flags.file.as_ref().unwrap();
    let (m, v) = volume_of(flags.parent().unwrap().to_str().unwrap());
    assert!(
        m.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap edits"
    );
    let fcm = r.config_map("realtime-edge-flags");
    assert_eq!(v["configMap"]["name"], fcm["metadata"]["name"]);
    let schema = FlagSchema::new(cfg.services.iter().map(|s| s.name.clone()).collect());
    let file_name = flags.file_name().unwrap().to_str().unwrap();
    schema
        .parse_yaml_file(fcm["data"][file_name].as_str().unwrap())
        .unwrap();
    // Secrets from a Secret.
    let env = edge["env"].as_array().unwrap();
    for key in ["ADMIN_TOKEN", "JWT_SECRET"] {
        let e = env
            .iter()
            .find(|e| e["name"] == key)
            .unwrap_or_else(|| panic!("{key}"));
        assert!(
            e["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{key} from a Secret"
        );
    }
    // Probes on the admin port.
    let port_named = |name: &serde_json::Value| -> u64 {
        match name.as_u64() {
            Some(n) => n,
            None => edge["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
                .as_u64()
                .unwrap(),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &edge[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_named(&get["port"]), u64::from(admin_port), "{probe}");
    }
    assert_eq!(
        port_named(&serde_json::json!("client")),
        u64::from(cfg.listen.port())
    );
    // preStop drains through the admin API.
    let pre_stop: Vec<&str> = edge["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(pre_stop[1], "drain", "{pre_stop:?}");
    let admin_url = pre_stop[pre_stop.iter().position(|a| *a == "--admin").unwrap() + 1];
    assert_eq!(admin_url, format!("http://127.0.0.1:{admin_port}"));
    // The grace period outlasts the whole drain (CONTRACT 2.2 defaults
    // unless the config sets them) and the preStop wait.
    let raw: serde_json::Value = yaml_serde::from_str(text).unwrap();
    let prestop_delay = raw["shutdown"]["prestop_delay_s"].as_u64().unwrap_or(5);
    let drain_s = raw["shutdown"]["drain_s"].as_u64().unwrap_or(20);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace > prestop_delay + drain_s + 5, "grace {grace}s");
    let wait: u64 = pre_stop[pre_stop.iter().position(|a| *a == "--wait-s").unwrap() + 1]
        .parse()
        .unwrap();
    assert!(
        wait < grace && wait >= prestop_delay + drain_s + 5,
        "preStop waits {wait}s"
    );
    // Requests for the scheduler, on every container.
    for c in containers {
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{}",
            c["name"]
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{}",
            c["name"]
        );
    }
    // The PodDisruptionBudget and the Service select these pods.
    let selects = |selector: &serde_json::Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let pdb = r.one("PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    let svc = r.one("Service");
    assert_eq!(svc["metadata"]["name"], service_name);
    assert!(selects(&svc["spec"]["selector"]));
    let svc_ports = svc["spec"]["ports"].as_array().unwrap();
    assert!(
        svc_ports
            .iter()
            .any(|p| port_named(&p["targetPort"]) == u64::from(cfg.listen.port()))
    );
}

#[test]
fn kubernetes_standalone_overlay_is_valid_and_operable() {
    check_overlay("standalone", "realtime-edge");
}

#[test]
fn kubernetes_sidecar_overlay_is_valid_and_operable() {
    check_overlay("sidecar", "backend");
}

#[test]
fn systemd_unit_verifies() {
    let unit = read("deploy/systemd/realtime-edge.service");
    for line in [
        "ExecStart=/usr/local/bin/realtime-edge serve --config /etc/realtime-edge/config.yaml",
        "KillSignal=SIGTERM",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(line), "{line} missing");
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > 5 + 20 + 5, "TimeoutStopSec={stop}");
    // Verified with the binary just built in place of the installed one.
    let dir = common_dir("systemd");
    let file = dir.join("realtime-edge.service");
    std::fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/realtime-edge",
            env!("CARGO_BIN_EXE_realtime-edge"),
        ),
    )
    .unwrap();
    if let Some(out) = tool("systemd-analyze", &["verify", file.to_str().unwrap()]) {
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

#[test]
fn load_test_runs_on_artillery_2_and_checks_that_events_arrive() {
    let doc: serde_json::Value = yaml_serde::from_str(&read("deploy/load-test.yml")).unwrap();
    let processor_path = doc["config"]["processor"].as_str().unwrap();
    let processor = read(&format!(
        "deploy/{}",
        processor_path.trim_start_matches("./")
    ));
    let exported = |name: &str| {
        processor.contains(&format!("function {name}("))
            && processor
                .lines()
                .any(|l| l.starts_with("module.exports") && l.contains(name))
    };
    let scenario = &doc["scenarios"][0];
    assert_eq!(scenario["engine"], "ws");
    let flow = scenario["flow"].as_array().unwrap();
    // Artillery 2's ws engine takes the connection from the first step only,
    // and a plain `connect: <url>` cannot carry a per-user token.
    let connect = flow[0]["connect"]["function"]
        .as_str()
        .expect("connect.function first");
    assert!(exported(connect), "{connect} not exported by the processor");
    let functions: Vec<&str> = flow[1..]
        .iter()
        .filter_map(|s| s["function"].as_str())
        .collect();
    assert!(functions.contains(&"subscribe") && functions.contains(&"awaitFirstEvent"));
    for f in &functions {
        assert!(exported(f), "{f} not exported by the processor");
        // The ws engine fails a user only on a rejected promise.
        assert!(
            processor.contains(&format!("async function {f}(")),
            "{f} must be async"
        );
    }
    // `send: {payload: ...}` would send {"payload": ...}: the seed's mistake.
    assert!(!flow.iter().any(|s| s["send"].get("payload").is_some()));
    // The handshake is the protocol's, on the stream path, with a bearer token.
    for needed in [
        "'/v2/realtime/stream'",
        "version: 1",
        "Authorization: `Bearer ${",
        "createHmac('sha256'",
    ] {
        assert!(
            processor.contains(needed),
            "{needed} missing from the processor"
        );
    }
    // The processor is valid JavaScript, and its tokens verify with the
    // sidecar's secret and name an org the simulated backend publishes to.
    let script = format!(
        "const p = require('./deploy/{}'); const a = {{target: 'ws://127.0.0.1:8080/'}}; \
         p.connectWithToken(a, {{vars: {{}}}}, () => console.log(JSON.stringify(a)));",
        processor_path.trim_start_matches("./")
    );
    let Some(out) = tool("node", &["-e", &script]) else {
        return;
    };
    assert!(out.status.success(), "{}", output_text(&out));
    let args: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(args["target"], "ws://127.0.0.1:8080/v2/realtime/stream");
    let bearer = args["options"]["headers"]["Authorization"]
        .as_str()
        .unwrap();
    // The processor's defaults: JWT_SECRET demo-secret, orgs 1..=3.
    let cfg = Config::from_yaml(
        "t.yaml",
        "auth: {jwt_secret: demo-secret}\n",
        &EnvSecrets::default(),
    )
    .unwrap();
    let verifier = realtime_edge::auth::Verifier::new(&cfg.auth).unwrap();
    let org = verifier
        .verify(bearer.strip_prefix("Bearer ").unwrap())
        .unwrap()
        .org_id;
    assert!((1..=3).contains(&org), "org {org}");
}

#[test]
fn local_config_fronts_simulate_with_its_defaults() {
    let cfg = Config::from_yaml(
        "deploy/local.yaml",
        &read("deploy/local.yaml"),
        &EnvSecrets::default(),
    )
    .unwrap();
    realtime_edge::Sidecar::preflight(&cfg).unwrap();
    #[derive(clap::Parser)]
    struct Simulate {
        #[command(flatten)]
        options: realtime_edge_tools::simulate::SimulateOptions,
    }
    let sim = <Simulate as clap::Parser>::parse_from(["simulate"]).options;
    assert_eq!(
        cfg.upstream.base_url.to_string().trim_end_matches('/'),
        format!("http://{}", sim.listen)
    );
    // simulate's default secret (JWT_SECRET in the environment overrides it).
    assert_eq!(
        cfg.auth.jwt_secret.as_deref(),
        Some(realtime_edge_tools::demo::DEMO_SECRET)
    );
    assert_eq!(
        cfg.flags.file.as_deref(),
        Some(std::path::Path::new("flags/flags.yaml"))
    );
}
