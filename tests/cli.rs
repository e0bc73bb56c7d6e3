//! The binary's command line: `check`, `flags`, `watch`, `demo`, `simulate`
//! (with `serve` against it as processes), `--help`, `--version`, `serve`
//! start-up errors, and output into a closed pipe.

mod common;

use std::process::Command;

use realtime_edge::config::{Config, EnvSecrets};
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
fn check_reports_config_start_up_and_flags_problems_in_one_run() {
    let flags = temp_file("flags.yaml", "REALTIME_ROLLOUT_PERCENT: 300\n");
    let dir = common::unique_dir("cli");
    let cfg = temp_file(
        "edge.yaml",
        &format!(
            "admin_listen: \"0.0.0.0:9999\"\nstream: {{batch_max_events: 0}}\ntls: {{cert_file: \"{cert}\", key_file: \"{key}\"}}\nflags: {{file: \"{flags}\"}}\n",
            cert = dir.join("absent-cert.pem").display(),
            key = dir.join("absent-key.pem").display(),
            flags = flags.display()
        ),
    );
    let out = check(&cfg);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = cfg.display().to_string();
    // A bad config value, two start-up problems and a bad flags file: all at once.
    assert!(
        stderr.contains(&format!("{name}: stream.batch_max_events:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}: admin_listen:")),
        "{stderr}"
    );
    assert!(stderr.contains("absent-cert.pem"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: ", flags.display()))
            && stderr.contains("REALTIME_ROLLOUT_PERCENT"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

#[test]
fn check_does_not_say_ok_without_the_flags_file() {
    let absent = common::unique_dir("cli").join("no-flags.yaml");
    let cfg = temp_file(
        "edge.yaml",
        &format!("flags: {{file: \"{}\"}}\n", absent.display()),
    );
    let out = check(&cfg);
    // Serve starts without the file, so this is not a failure ...
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... but the answer says what will happen instead of "ok".
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("defaults apply: "), "{stdout}");
    assert!(
        stdout.contains(&format!("flags file {} (missing)", absent.display())),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such file") && stderr.contains("defaults"),
        "{stderr}"
    );
}

#[test]
fn check_names_unchecked_files_when_the_config_is_not_yaml() {
    let cfg = temp_file("broken.yaml", "- a\n- b\n");
    let out = check(&cfg);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:", cfg.display())),
        "{stderr}"
    );
    assert!(stderr.contains("were not checked"), "{stderr}");
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
    for cmd in [
        "serve", "demo", "simulate", "check", "flags", "drain", "watch",
    ] {
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

/// A child process that is killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The lines a child writes to a pipe, as they come.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line of `rx` that `pick` accepts, with its value.
fn first_line<T>(
    rx: &std::sync::mpsc::Receiver<String>,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    loop {
        let line = rx.recv_timeout(common::WAIT).expect("the expected line");
        if let Some(v) = pick(&line) {
            return v;
        }
    }
}

/// Starts `simulate` on a free port and returns it with its base URL.
fn start_simulate(extra: &[&str]) -> (Running, String) {
    let mut child = bin()
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            common::SECRET,
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let running = Running(child);
    let base = first_line(&out, |l| {
        l.strip_prefix("simulated backend listening on ")
            .map(str::to_string)
    });
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || while out.recv().is_ok() {});
    (running, base)
}

/// Starts `serve` with `config` and returns it with its client and admin addresses.
fn start_serve(config: &std::path::Path) -> (Running, std::net::SocketAddr, std::net::SocketAddr) {
    let mut child = bin()
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines_of(child.stderr.take().unwrap());
    let running = Running(child);
    let (listen, admin) = first_line(&log, |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "realtime-edge serving").then(|| {
            (
                v["listen"].as_str().unwrap().parse().unwrap(),
                v["admin"].as_str().unwrap().parse().unwrap(),
            )
        })
    });
    std::thread::spawn(move || while log.recv().is_ok() {});
    (running, listen, admin)
}

#[tokio::test]
async fn simulate_and_serve_as_processes_deliver_the_walkthrough_write() {
    let (mut sim, backend) = start_simulate(&["--events-per-second", "0"]);
    // A real flags file: org 7 on the native stream.
    let flags = temp_file(
        "flags.yaml",
        "REALTIME_STREAMING_V2: true\nREALTIME_ALLOWLIST_ORGS: [7]\n",
    );
    let cfg = temp_file(
        "edge.yaml",
        &format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nupstream: {{base_url: \"{backend}\"}}\nauth: {{jwt_secret: \"{}\"}}\nflags: {{file: \"{}\"}}\n",
            common::SECRET,
            flags.display()
        ),
    );
    let (mut serve, listen, _admin) = start_serve(&cfg);
    let token = common::token(7);
    let mut ws = common::connect(listen, &token).await;
    let ack = common::handshake(&mut ws, &common::hello(&["finance"])).await;
    assert_eq!(
        ack["mode"], "native",
        "the flags file was not applied: {ack}"
    );
    // The migration guide's walkthrough, through the sidecar's pass-through:
    // create a revenue, see its event on the stream. Repeated until one
    // arrives, since the native link may still be connecting.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let event = 'found: loop {
        assert!(tokio::time::Instant::now() < deadline, "no revenue event");
        let (status, _, body) = common::http(
            "POST",
            &format!("http://{listen}/finance/revenue"),
            Some(&token),
            Some((
                "application/x-www-form-urlencoded",
                r#"{"amount": 1000, "propertyId": 1}"#.into(),
            )),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(created["amount"], 1000);
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut ws)).await
        {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "event" && v["events"][0]["type"] == "revenue_created" {
                    break 'found v;
                }
            }
        }
    };
    assert_eq!(event["service"], "finance");
    let e = &event["events"][0];
    assert_eq!(
        (e["orgId"].as_u64(), e["propertyId"].as_u64()),
        (Some(7), Some(1))
    );
    assert_eq!(e["data"]["amount"], 1000);
    // A write without a valid token is refused like any backend call.
    let (status, _, _) = common::http(
        "POST",
        &format!("{backend}/finance/revenue"),
        None,
        Some(("application/json", "{}".into())),
    )
    .await;
    assert_eq!(status, 401);
    drop(ws);
    assert!(serve.terminate().success());
    assert!(sim.terminate().success());
}

#[test]
fn simulate_prints_a_token_its_secret_verifies() {
    let out = bin()
        .args(["simulate", "--print-token", "--token-org", "42"])
        .env("JWT_SECRET", "s3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let cfg =
        Config::from_yaml("t.yaml", "auth: {jwt_secret: s3}\n", &EnvSecrets::default()).unwrap();
    let verifier = realtime_edge::auth::Verifier::new(&cfg.auth).unwrap();
    assert_eq!(verifier.verify(token.trim()).unwrap().org_id, 42);
}

/// A stream endpoint that reads the handshake and closes with `code` and
/// `reason`, or refuses the upgrade with HTTP 401 when `code` is `None`.
// tungstenite's upgrade callback returns its error response by value.
#[allow(clippy::result_large_err)]
async fn scripted_stream_server(code: Option<u16>, reason: &'static str) -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::{Message, handshake::server};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let callback = move |_: &server::Request, resp: server::Response| match code {
            Some(_) => Ok(resp),
            None => Err(http::Response::builder()
                .status(401)
                .body(Some(format!(r#"{{"error": "{reason}"}}"#)))
                .unwrap()),
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
            return;
        };
        let _ = ws.next().await;
        let frame = CloseFrame {
            code: code.unwrap_or(1000).into(),
            reason: reason.into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    addr
}

/// Runs `watch` against `addr`; returns (success, stdout, stderr).
async fn watch_process(addr: std::net::SocketAddr) -> (bool, String, String) {
    let url = format!("ws://{addr}/v2/realtime/stream");
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["watch", &url, "--token", "t"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn watch_shows_the_close_code_and_reason_once() {
    let addr = scripted_stream_server(Some(1013), "queue full").await;
    let (ok, stdout, stderr) = watch_process(addr).await;
    assert!(!ok);
    assert!(
        stdout.contains("close   code=1013 (too far behind or overloaded; reconnect with lastSeq) reason=queue full"),
        "{stdout}"
    );
    assert_eq!(
        stderr.trim(),
        "error: the server closed the stream with code 1013 (too far behind or overloaded; reconnect with lastSeq): queue full"
    );

    let addr = scripted_stream_server(Some(1000), "bye").await;
    let (ok, stdout, _) = watch_process(addr).await;
    assert!(ok, "a normal close is a normal exit");
    assert!(stdout.contains("close   code=1000"), "{stdout}");

    let addr = scripted_stream_server(None, "token expired").await;
    let (ok, _, stderr) = watch_process(addr).await;
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: the server refused the stream with HTTP 401: token expired"
    );
}

#[tokio::test]
async fn output_into_a_closed_pipe_is_a_normal_exit() {
    let sim = common::start_sim(Duration::from_secs(25)).await;
    let sc = common::start_sidecar(common::config(&sim.base_url(), "")).await;
    for pct in 1..=20 {
        common::set_flags(&sc, &format!("REALTIME_ROLLOUT_PERCENT={pct}")).await;
    }
    let admin = format!("http://{}", sc.admin_addr);
    // `flags history | head -0`: the reader is gone before anything is written.
    let status = tokio::task::spawn_blocking(move || {
        let mut child = bin()
            .args(["flags", "--admin", &admin, "history"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn demo_loads_the_flags_file_and_says_so() {
    let dir = common::unique_dir("demo");
    std::fs::create_dir_all(dir.join("flags")).unwrap();
    std::fs::write(
        dir.join("flags/flags.yaml"),
        "REALTIME_ROLLOUT_PERCENT: 37\n",
    )
    .unwrap();
    let mut child = bin()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let mut demo = Running(child);
    let admin = first_line(&out, |l| {
        l.trim()
            .strip_prefix("admin API         : ")
            .map(str::to_string)
    });
    let flags_line = first_line(&out, |l| {
        l.trim().starts_with("flags ").then(|| l.to_string())
    });
    assert!(
        flags_line.contains("flags file flags/flags.yaml (loaded"),
        "{flags_line}"
    );
    let flags = common::get_json(&format!("{admin}/feature-flags"), None).await;
    assert_eq!(flags["flags"]["REALTIME_ROLLOUT_PERCENT"], 37, "{flags}");
    assert_eq!(flags["sources"]["REALTIME_ROLLOUT_PERCENT"], "file");
    let status = demo.terminate();
    assert!(status.success(), "{status:?}");
}

/// An admin API stand-in for `drain`: answers `POST /drain` (202) and one
/// `GET /healthz`, then stops listening as an exited sidecar would.
/// Returns its address and the request lines it saw (with their
/// Authorization header).
async fn scripted_admin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let first = head.lines().next().unwrap_or_default().to_string();
            let auth = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .unwrap_or("no authorization")
                .to_string();
            log.lock().unwrap().push(format!("{first} | {auth}"));
            let (status, body) = if first.starts_with("POST /drain") {
                ("202 Accepted", r#"{"draining": true, "drainS": 20}"#)
            } else {
                ("200 OK", r#"{"status": "ok"}"#)
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            if first.starts_with("GET /healthz") {
                return; // the listener closes: the sidecar has exited
            }
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn drain_posts_to_the_admin_api_and_waits_for_the_exit() {
    let (addr, seen) = scripted_admin().await;
    let admin = format!("http://{addr}");
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["drain", "--admin", &admin, "--wait-s", "60"])
            .env("ADMIN_TOKEN", "adm")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["draining"], true);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("POST /drain HTTP/1.1 | "), "{seen:?}");
    assert!(seen[0].ends_with("Bearer adm"), "{seen:?}");
    assert!(seen[1].starts_with("GET /healthz"), "{seen:?}");
}
