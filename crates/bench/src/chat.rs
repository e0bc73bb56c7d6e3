//! Scenario f: one chat room of `--chat-members` members (hosted mode),
//! the clients in this process, the sidecar a child process, the simulated
//! backend in this process (it stores the messages).
//!
//! Measured: typing-indicator fan-out latency (a member types, every other
//! member's receipt time), chat round trip including the backend store
//! (sender to its own saved message), sidecar CPU and RSS, backend requests
//! caused by every member typing for `--seconds`, and receipt requests
//! caused by acking 100 messages. The typing storm runs last: it may
//! overload this process's clients, which is itself a result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::histogram::{Histogram, Merged};
use super::{BenchError, BenchOptions, Rig, Row, SECRET, TICKS_PER_SEC, ms, step, wait_for};
use realtime_edge_sim::Simulator;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// What every member's reader records.
#[derive(Default)]
struct Observed {
    typing: Histogram,
    typing_seen: AtomicU64,
    chat_rtt: Histogram,
    chat_fanout: Histogram,
    chat_seen: AtomicU64,
    receipts_seen: AtomicU64,
    presence_seen: AtomicU64,
    errors: AtomicU64,
    closed: AtomicU64,
}

struct Room {
    sinks: Vec<Mutex<Sink>>,
    /// When member i last sent a typing indicator, µs since `epoch`.
    typing_sent: Vec<AtomicU64>,
    epoch: Instant,
    seen: Arc<Observed>,
}

impl Room {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    async fn send(&self, i: usize, v: Value) -> Result<(), BenchError> {
        self.sinks[i]
            .lock()
            .await
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| step(format!("chat send: {e}")))
    }

    async fn typing(&self, i: usize) -> Result<(), BenchError> {
        self.typing_sent[i].store(self.micros(), Ordering::Relaxed);
        self.send(i, json!({"type": "typing"})).await
    }
}

fn token(org: u64, user: usize) -> String {
    let exp = realtime_edge::clock::unix_millis() / 1000 + 3600;
    let claims = json!({"orgId": org, "sub": format!("u{user}"), "name": format!("Member {user}"), "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// The fields a member's reader looks at; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a str>,
    #[serde(rename = "clientMsgId", borrow, default)]
    client_msg_id: Option<&'a str>,
}

fn user_index(user_id: Option<&str>) -> Option<usize> {
    user_id?.strip_prefix('u')?.parse().ok()
}

/// Connects `members` clients to room `room` of org 1 and starts their readers.
async fn join_room(addr: SocketAddr, members: usize, room: &str) -> Result<Arc<Room>, BenchError> {
    let seen = Arc::new(Observed::default());
    let epoch = Instant::now();
    let mut sinks = Vec::with_capacity(members);
    let mut readers = Vec::with_capacity(members);
    for i in 0..members {
        let mut req = format!("ws://{addr}{}", realtime_edge::chat::CHAT_PATH)
            .into_client_request()
            .map_err(|e| step(e.to_string()))?;
        if let Ok(v) = format!("Bearer {}", token(1, i)).parse() {
            req.headers_mut().insert("authorization", v);
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| step(format!("chat connect {i}: {e}")))?;
        ws.send(Message::Text(json!({"roomId": room}).to_string().into()))
            .await
            .map_err(|e| step(e.to_string()))?;
        // history, then the presence snapshot
        for _ in 0..2 {
            ws.next().await;
        }
        let (sink, stream) = ws.split();
        sinks.push(Mutex::new(sink));
        readers.push(stream);
    }
    let room = Arc::new(Room {
        typing_sent: (0..members).map(|_| AtomicU64::new(0)).collect(),
        sinks,
        epoch,
        seen,
    });
    for (me, mut stream) in readers.into_iter().enumerate() {
        let room = room.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Seen<'_>>(&t) else {
                    continue;
                };
                let now = room.micros();
                let seen = &room.seen;
                match v.kind {
                    "typing" => {
                        if let Some(from) = user_index(v.user_id) {
                            let sent = room.typing_sent[from].load(Ordering::Relaxed);
                            seen.typing.record(now.saturating_sub(sent));
                            seen.typing_seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    "chat" => {
                        // clientMsgId = "c<sender>-<µs sent>"
                        let sent = v
                            .client_msg_id
                            .and_then(|c| c.rsplit_once('-'))
                            .and_then(|(_, t)| t.parse::<u64>().ok())
                            .unwrap_or(now);
                        let lat = now.saturating_sub(sent);
                        if user_index(v.user_id) == Some(me) {
                            seen.chat_rtt.record(lat);
                        }
                        seen.chat_fanout.record(lat);
                        seen.chat_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    "receipt" => {
                        seen.receipts_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    "presence" => {
                        seen.presence_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    "error" => {
                        seen.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            room.seen.closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    Ok(room)
}

fn merged(h: &Histogram) -> Merged {
    let mut m = Merged::default();
    m.add(&h.snapshot());
    m
}

fn backend_requests(sim: &Simulator) -> u64 {
    let c = &sim.chat.counters;
    sim.state.total_requests()
        + c.history.load(Ordering::Relaxed)
        + c.messages.load(Ordering::Relaxed)
        + c.receipts.load(Ordering::Relaxed)
}

/// Scenario f.
pub(super) async fn chat_room(
    exe: &std::path::PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let n = o.chat_members;
    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let room = join_room(sidecar.client_addr, n, "bench-room").await?;
    let seen = room.seen.clone();
    let limit = Duration::from_secs(60);
    // Member i hears of the n-1-i members who joined after it: wait for
    // those presence messages so the measurements start on quiet sockets.
    let joins = (n as u64) * (n as u64 - 1) / 2;
    wait_for("presence of every join", limit, || {
        seen.presence_seen.load(Ordering::Relaxed) >= joins
    })
    .await?;
    let rss_joined = sidecar.rss_kib();

    // Typing fan-out: 20 members type one after the other.
    let rounds = 20.min(n);
    for r in 0..rounds {
        let before = seen.typing_seen.load(Ordering::Relaxed);
        room.typing(r).await?;
        let want = before + (n as u64 - 1);
        wait_for("typing fan-out", limit, || {
            seen.typing_seen.load(Ordering::Relaxed) >= want
        })
        .await?;
    }
    let t = merged(&seen.typing);
    rows.push(Row(
        "r. chat typing fan-out p50 / p99".into(),
        format!("{} / {}", ms(t.quantile_ms(0.5)), ms(t.quantile_ms(0.99))),
        format!("room of {n}; {rounds} indicators, {} deliveries", t.total()),
    ));

    // Chat round trip including the backend store: 200 messages, one at a time.
    let messages = 200.min(n);
    for k in 0..messages {
        let sender = k % n;
        let before = seen.chat_seen.load(Ordering::Relaxed);
        let id = format!("c{sender}-{}", room.micros());
        room.send(
            sender,
            json!({"type": "chat", "text": format!("message {k}"), "clientMsgId": id}),
        )
        .await?;
        let want = before + n as u64;
        wait_for("chat fan-out", limit, || {
            seen.chat_seen.load(Ordering::Relaxed) >= want
        })
        .await?;
    }
    let rtt = merged(&seen.chat_rtt);
    let fan = merged(&seen.chat_fanout);
    rows.push(Row(
        "r. chat round trip incl. backend store p50 / p99".into(),
        format!(
            "{} / {}",
            ms(rtt.quantile_ms(0.5)),
            ms(rtt.quantile_ms(0.99))
        ),
        format!(
            "room of {n}; {messages} messages one at a time; delivery to all members p99 {}",
            ms(fan.quantile_ms(0.99))
        ),
    ));

    // Acks: `ackers` members each ack 100 messages as fast as they can
    // (every ack is also a receipt to every member, so the number of
    // ackers keeps that at about two million frames).
    let ackers = (20_000 / n).clamp(1, 100).min(n);
    let receipts_before = sim.chat.counters.receipts.load(Ordering::Relaxed);
    let seen_before = seen.receipts_seen.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for m in 1..=100u64 {
        for i in 0..ackers {
            room.send(i, json!({"type": "ack", "messageId": format!("m{m}")}))
                .await?;
        }
    }
    let want = seen_before + 100 * ackers as u64 * n as u64;
    wait_for("receipts delivered", limit, || {
        seen.receipts_seen.load(Ordering::Relaxed) >= want
    })
    .await?;
    wait_for("latest receipts stored", limit, || {
        (0..ackers)
            .all(|i| sim.chat.receipt(1, "bench-room", &format!("u{i}")) == Some(json!("m100")))
    })
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let posts = sim.chat.counters.receipts.load(Ordering::Relaxed) - receipts_before;
    rows.push(Row(
        format!("r. receipt requests for {ackers} members acking 100 messages"),
        format!("{posts}"),
        format!(
            "goal <= 1 per member per second: {:.2} per member per second over {secs:.1} s; {} receipts broadcast to a room of {n}",
            posts as f64 / ackers as f64 / secs.max(1.0),
            100 * ackers * n
        ),
    ));
    // Every member types once a second for the measurement time (after a
    // second's pause, so the throttle does not drop the first round).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before_requests = backend_requests(sim);
    let before_typing = seen.typing_seen.load(Ordering::Relaxed);
    let cpu0 = sidecar.cpu_ticks();
    let t0 = Instant::now();
    let seconds = o.measure.as_secs().max(1);
    let spacing = Duration::from_secs(1) / n as u32;
    for _ in 0..seconds {
        let tick = Instant::now();
        for i in 0..n {
            room.typing(i).await?;
            tokio::time::sleep_until((tick + spacing * (i as u32 + 1)).into()).await;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sidecar.cpu_ticks() - cpu0) as f64 / TICKS_PER_SEC / secs * 100.0;
    let delivered_live = seen.typing_seen.load(Ordering::Relaxed) - before_typing;
    let want = before_typing + seconds * n as u64 * (n as u64 - 1);
    let _ = wait_for("typing storm delivered", Duration::from_secs(30), || {
        seen.typing_seen.load(Ordering::Relaxed) >= want
    })
    .await;
    let delivered = seen.typing_seen.load(Ordering::Relaxed) - before_typing;
    rows.push(Row(
        format!("r. backend requests while {n} members type for {seconds} s"),
        format!("{}", backend_requests(sim) - before_requests),
        format!(
            "goal 0; {delivered} of {want_d} indicators delivered ({delivered_live} while typing); sidecar CPU {cpu:.0}% of one core, RSS {} MiB ({} MiB after joining); {} clients closed",
            sidecar.rss_kib() / 1024,
            rss_joined / 1024,
            seen.closed.load(Ordering::Relaxed),
            want_d = want - before_typing,
        ),
    ));

    if seen.errors.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "bench: chat: {} error messages received",
            seen.errors.load(Ordering::Relaxed)
        );
    }
    drop(room);
    rig.finish(Vec::new()).await;
    Ok(())
}
