//! The drain sequence of CONTRACT 2.2, driven through the admin API and the
//! library: readiness off first, new streams refused after the pre-stop
//! delay, open streams and relayed WebSockets closed with 1001, requests in
//! flight allowed to finish, and the sidecar's run ending by itself.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "adm-token";

/// A sidecar with an admin token and the given drain timings.
async fn drain_rig(
    hold: Duration,
    prestop_s: u64,
    drain_s: u64,
) -> (realtime_edge_sim::Simulator, realtime_edge::Sidecar) {
    let sim = start_sim(hold).await;
    let mut cfg = config(
        &sim.base_url(),
        &format!("shutdown: {{prestop_delay_s: {prestop_s}, drain_s: {drain_s}}}\n"),
    );
    cfg.auth.admin_token = Some(ADMIN.into());
    let sc = start_sidecar(cfg).await;
    (sim, sc)
}

/// The HTTP status a stream upgrade gets (101 when it is accepted; 0 when
/// the connection ended without an answer, which a request racing the
/// listener's switch into the drain window may see).
async fn upgrade_status(addr: std::net::SocketAddr) -> (u16, String) {
    let mut req = stream_url(addr).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(1)).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(
            e @ (tokio_tungstenite::tungstenite::Error::Io(_)
            | tokio_tungstenite::tungstenite::Error::ConnectionClosed
            | tokio_tungstenite::tungstenite::Error::AlreadyClosed
            | tokio_tungstenite::tungstenite::Error::Protocol(_)),
        ) => (0, e.to_string()),
        Err(e) => panic!("upgrade failed oddly: {e}"),
    }
}

#[tokio::test]
async fn post_drain_runs_the_sequence_in_order() {
    let (sim, sc) = drain_rig(Duration::from_secs(25), 2, 1).await;
    let admin = format!("http://{}", sc.admin_addr);
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    assert_eq!(
        get_json(&format!("{admin}/readyz"), None).await["ready"],
        true
    );

    let (status, _, _) = http("POST", &format!("{admin}/drain"), None, None).await;
    assert_eq!(status, 401, "the admin token protects /drain");
    let (status, _, body) = http("POST", &format!("{admin}/drain"), Some(ADMIN), None).await;
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"draining": true, "drainS": 1}));

    // 1. readiness is off at once.
    let (status, _, _) = http("GET", &format!("{admin}/readyz"), None, None).await;
    assert_eq!(status, 503);
    // Open streams are still served while the drain runs.
    pollers(&sim, 1).await;
    let id = sim
        .state
        .publish(1, "finance", vec![serde_json::json!({"n": 1})]);
    let event = next_non_ping(&mut ws).await;
    assert_eq!(event["events"][0]["eventId"], id[0].as_str(), "{event}");
    // 2. after the pre-stop delay, new streams are refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refusal = loop {
        let (status, body) = upgrade_status(sc.client_addr).await;
        if status == 503 {
            break body;
        }
        assert!(
            status == 101 || status == 0,
            "accepted until the pre-stop delay ends: {body}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "new streams never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(v["error"], "draining");
    // 3. the open stream is closed with 1001.
    assert_eq!(close_code(&mut ws).await, Some(1001));
    // 5. nothing is open: the sidecar's run ends by itself.
    tokio::time::timeout(WAIT, sc.run())
        .await
        .expect("the drain ends once nothing is open");
    sim.shutdown().await;
}

#[tokio::test]
async fn requests_in_flight_finish_and_relays_get_1001() {
    // The V1 endpoint answers after 1.5 s without events: a request in flight
    // across the whole drain window (1 s).
    let (sim, sc) = drain_rig(Duration::from_millis(1500), 0, 1).await;
    let (mut relayed, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/_sim/ws-echo", sc.client_addr))
            .await
            .unwrap();
    relayed.send(Message::Text("before".into())).await.unwrap();
    let back = tokio::time::timeout(WAIT, relayed.next()).await.unwrap();
    assert_eq!(back.unwrap().unwrap(), Message::Text("before".into()));

    let url = format!("http://{}/finance/realtime/subscribe", sc.client_addr);
    let in_flight = tokio::spawn(async move { http("GET", &url, Some(&token(1)), None).await });
    eventually("the request reached the backend", || async {
        sim.state.active_polls() >= 1
    })
    .await;
    sc.drain().begin();

    assert_eq!(close_code(&mut relayed).await, Some(1001));
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "a request in flight finishes: {body}");
    tokio::time::timeout(WAIT, sc.run())
        .await
        .expect("the drain ends once nothing is open");
    sim.shutdown().await;
}

/// The real binary, serving a config with the given shutdown timings;
/// returns the child, its log lines and the line saying it serves.
fn spawn_binary(
    prestop_s: u64,
    drain_s: u64,
) -> (Binary, std::sync::mpsc::Receiver<String>, String) {
    use std::io::BufRead;
    let dir = unique_dir("drain-bin");
    let cfg = dir.join("edge.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nflags: {{file: null}}\nshutdown: {{prestop_delay_s: {prestop_s}, drain_s: {drain_s}}}\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-edge"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REALTIME_EDGE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let child = Binary(child);
    let serving = wait_for_line(&rx, "realtime-edge serving");
    (child, rx, serving)
}

/// The child process, killed if a test fails before it exited.
struct Binary(std::process::Child);

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line {needle:?}: {e}"),
        }
    }
}

fn signal(child: &Binary, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Binary) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            panic!("the process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_drains_and_exits_0_on_sigterm() {
    let (mut child, rx, _) = spawn_binary(0, 1);
    signal(&child, "-TERM");
    wait_for_line(&rx, "draining");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    // A pre-stop delay far longer than the test's patience: only the second
    // signal can end it in time.
    let (mut child, rx, _) = spawn_binary(600, 600);
    signal(&child, "-INT");
    wait_for_line(&rx, "draining");
    signal(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn post_drain_then_sigterm_is_one_drain_not_two_signals() {
    // The Kubernetes order: the preStop hook posts /drain, then SIGTERM.
    let (mut child, rx, serving) = spawn_binary(600, 600);
    let admin = serving
        .split_whitespace()
        .find_map(|f| f.strip_prefix("admin="))
        .expect("admin address in the serving line")
        .to_string();
    let (status, _, _) = http("POST", &format!("http://{admin}/drain"), None, None).await;
    assert_eq!(status, 202);
    signal(&child, "-TERM");
    wait_for_line(&rx, "signal received");
    // Still draining, not gone: readiness answers 503.
    let (status, _, _) = http("GET", &format!("http://{admin}/readyz"), None, None).await;
    assert_eq!(status, 503);
    // The next signal is the second one.
    signal(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
}
