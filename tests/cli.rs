//! The binary's command line: `check`, `flags`, `--help`, `--version`, and `serve` start-up errors.

mod common;

use std::process::Command;
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_realtime-edge"));
    c.env_remove("REALTIME_EDGE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("ADMIN_TOKEN");
    c
}

/// `realtime-edge check --config FILE`.
fn check(cfg: &std::path::Path) -> std::process::Output {
    bin().args(["check", "--config"]).arg(cfg).output().unwrap()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = common::unique_dir("cli").join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_good_file() {
    let flags = temp_file("flags.yaml", "REALTIME_ROLLOUT_PERCENT: 10\n");
    let cfg = temp_file(
        "edge.yaml",
        &format!(
            "listen: \"127.0.0.1:18080\"\nflags: {{file: \"{}\"}}\n",
            flags.display()
        ),
    );
    let out = check(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn check_lists_every_problem_with_file_and_key() {
    let cfg = temp_file(
        "bad.yaml",
        "listen: nowhere\nstream: {batch_max_events: 0}\n",
    );
    let out = check(&cfg);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = cfg.display().to_string();
    assert!(stderr.contains(&format!("{name}: listen:")), "{stderr}");
    assert!(
        stderr.contains(&format!("{name}: stream.batch_max_events:")),
        "{stderr}"
    );

    let cfg = temp_file("typo.yaml", "upstream:\n  base_ulr: \"http://x\"\n");
    let out = check(&cfg);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("base_ulr"));
}

#[test]
fn check_reports_a_bad_flags_file_and_unprotected_admin() {
    let flags = temp_file("flags.yaml", "REALTIME_ROLLOUT_PERCENT: 300\n");
    let cfg = temp_file(
        "edge.yaml",
        &format!(
            "admin_listen: \"0.0.0.0:9999\"\nflags: {{file: \"{}\"}}\n",
            flags.display()
        ),
    );
    let out = check(&cfg);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REALTIME_ROLLOUT_PERCENT"), "{stderr}");
    assert!(stderr.contains("admin_listen"), "{stderr}");
}

#[test]
fn serve_fails_fast_on_a_bad_config() {
    let cfg = temp_file("bad.yaml", "stream: {replay_events: -1}\n");
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream.replay_events"));
    // The environment variable names the file too.
    let out = bin()
        .env("REALTIME_EDGE_CONFIG", &cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "demo", "check", "flags", "watch"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = bin().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn flags_subcommand_talks_to_the_admin_api() {
    let sim = common::start_sim(Duration::from_secs(25)).await;
    let mut cfg = common::config(&sim.base_url(), "");
    cfg.auth.admin_token = Some("adm".into());
    let sc = common::start_sidecar(cfg).await;
    let admin = format!("http://{}", sc.admin_addr);
    let run = |args: Vec<String>| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = bin();
            c.args(["flags", "--admin", &admin, "--token", "adm"])
                .args(args);
            c.output().unwrap()
        })
    };
    let out = run(vec![
        "set".into(),
        "REALTIME_ROLLOUT_PERCENT=33".into(),
        "REALTIME_STREAMING_V2=true".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flags"]["REALTIME_ROLLOUT_PERCENT"], 33);
    let out = run(vec!["evaluate".into(), "5".into()]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["orgId"], 5);
    let out = run(vec!["set".into(), "NOPE=1".into()]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
    let out = run(vec!["get".into()]).await.unwrap();
    assert!(out.status.success());
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn serve_logs_json_events_and_never_a_token() {
    use std::io::{BufRead, BufReader};
    let cfg = temp_file(
        "serve.yaml",
        &format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nauth: {{jwt_secret: \"{}\"}}\nflags: {{file: null}}\nupstream: {{base_url: \"http://127.0.0.1:9\"}}\n",
            common::SECRET
        ),
    );
    let mut child = bin()
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let listen = loop {
        let line = rx.recv_timeout(common::WAIT).expect("serving line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        lines.push(line);
        if v["message"] == "realtime-edge serving" {
            break v["listen"]
                .as_str()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
    };
    let token = common::token(77);
    let mut ws = common::connect(listen, &token).await;
    common::handshake(&mut ws, &common::hello(&["finance"])).await;
    // A pass-through request with the token in the query string.
    let _ = common::http(
        "GET",
        &format!("http://{listen}/api/x?access_token={token}"),
        Some(&token),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    let all = lines.join("\n");
    assert!(all.contains("\"subscribed\""), "{all}");
    assert!(
        all.contains("\"disconnected\"") || all.contains("\"connected\""),
        "{all}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(!all.contains(signature), "a token reached the log:\n{all}");
}
