//! Scenario u: a 50 MiB document upload, measured at the client's socket
//! (bytes it writes, time to the backend's result): (a) a direct multipart
//! POST to the simulated backend, (b) version 2 through the sidecar
//! including its delivery, (c) version 1 (the seed's base64 chunks) through
//! the sidecar; and the bytes a version-2 client re-sends after its
//! connection is killed at 50 %. The sidecar and the backend run in this
//! process, so the three share one machine's CPU alike. Then the peak
//! resident memory of a sidecar process receiving 50 such uploads at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{BenchError, Row, SECRET, SidecarProcess, start_sim, step};
use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::uploads::UPLOAD_PATH;
use realtime_edge::uploads::multipart::MultipartForm;
use realtime_edge::{Listeners, Sidecar};

const FILE_BYTES: usize = 50 << 20;
const V2_FRAME: usize = 1 << 20;
const V2_WINDOW: u64 = 4_194_304;
const V1_CHUNK: usize = 64 * 1024;

/// A TCP stream that counts the bytes written to it.
struct Counting {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn counting(addr: std::net::SocketAddr) -> Result<(Counting, Arc<AtomicU64>), BenchError> {
    let inner = TcpStream::connect(addr).await?;
    inner.set_nodelay(true)?;
    let written = Arc::new(AtomicU64::new(0));
    Ok((
        Counting {
            inner,
            written: written.clone(),
        },
        written,
    ))
}

type CountingWs = WebSocketStream<Counting>;

async fn upload_socket(
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<(CountingWs, Arc<AtomicU64>), BenchError> {
    let (stream, written) = counting(addr).await?;
    let mut req = format!("ws://{addr}{UPLOAD_PATH}")
        .into_client_request()
        .map_err(|e| step(e.to_string()))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| step("token header"))?;
    req.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| step(format!("upload connect: {e}")))?;
    Ok((ws, written))
}

async fn next_json(ws: &mut CountingWs) -> Result<Value, BenchError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(&t).map_err(|e| step(e.to_string()));
            }
            Ok(Some(Ok(Message::Close(f)))) => return Err(step(format!("closed: {f:?}"))),
            Ok(Some(Ok(_))) => continue,
            other => return Err(step(format!("upload socket ended: {other:?}"))),
        }
    }
}

fn send_err(e: tokio_tungstenite::tungstenite::Error) -> BenchError {
    step(format!("send: {e}"))
}

/// Sends `data[from..until]` as version-2 frames within the window; returns
/// the last acknowledged offset seen.
async fn send_v2(
    ws: &mut CountingWs,
    data: &Bytes,
    from: usize,
    until: usize,
) -> Result<u64, BenchError> {
    let mut acked = from as u64;
    let mut sent = from;
    while sent < until {
        let end = (sent + V2_FRAME).min(until);
        while (end as u64).saturating_sub(acked) > V2_WINDOW {
            let v = next_json(ws).await?;
            acked = v["offset"]
                .as_u64()
                .ok_or_else(|| step(format!("expected progress, got {v}")))?;
        }
        ws.send(Message::Binary(data.slice(sent..end)))
            .await
            .map_err(send_err)?;
        sent = end;
    }
    Ok(acked)
}

async fn until_complete(ws: &mut CountingWs) -> Result<Value, BenchError> {
    loop {
        let v = next_json(ws).await?;
        match v["type"].as_str() {
            Some("progress") => continue,
            Some("complete") => return Ok(v),
            _ => return Err(step(format!("unexpected {v}"))),
        }
    }
}

fn hello(len: usize) -> String {
    json!({"filename": "bench.pdf", "filesize": len, "mimetype": "application/pdf",
        "documentType": "bench", "version": 2})
    .to_string()
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Runs scenario u and appends its rows.
pub(crate) async fn run(rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let sim = start_sim(Duration::from_secs(25)).await?;
    let spool = std::env::temp_dir().join(format!(
        "re-bench-spool-{}-{}",
        std::process::id(),
        realtime_edge::clock::unix_millis()
    ));
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nupstream: {{base_url: \"{}\"}}\nauth: {{jwt_secret: \"{SECRET}\"}}\nflags: {{file: null}}\nuploads: {{spool_dir: \"{}\"}}\n",
        sim.base_url(),
        spool.display()
    );
    let config = Config::from_yaml("bench-uploads.yaml", &yaml, &EnvSecrets::default())
        .map_err(|e| step(e.to_string()))?;
    let listeners = Listeners::bind(&config)
        .await
        .map_err(|e| step(e.to_string()))?;
    let sidecar = Sidecar::start(config, listeners)
        .await
        .map_err(|e| step(e.to_string()))?;
    let token = realtime_edge::auth::mint_hs256(SECRET, "orgId", 1, 3600);
    let data: Bytes = (0..FILE_BYTES)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let cond = "50 MiB file, loopback, sidecar and simulated backend in one process";

    // (a) Direct multipart POST to the backend.
    let form = MultipartForm::new(
        &[("filename", "bench.pdf".to_string())],
        "file",
        "bench.pdf",
        "application/pdf",
    );
    let body = Bytes::from([&form.head[..], &data[..], &form.tail[..]].concat());
    let (stream, written) = counting(sim.addr).await?;
    let started = Instant::now();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| step(e.to_string()))?;
    let conn_task = tokio::spawn(conn);
    let req = http::Request::post(format!("{}/documents/upload", sim.base_url()))
        .header("host", sim.addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", form.content_type())
        .header("content-length", body.len())
        .body(Full::new(body))
        .map_err(|e| step(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| step(e.to_string()))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    let direct_time = started.elapsed();
    let direct_bytes = written.load(Ordering::Relaxed);
    conn_task.abort();
    if !status.is_success() {
        return Err(step(format!("direct multipart answered {status}")));
    }
    rows.push(Row(
        "u. upload (a) direct multipart POST: time / wire bytes".into(),
        format!(
            "{:.0} ms ({:.0} MiB/s) / {direct_bytes}",
            direct_time.as_secs_f64() * 1000.0,
            mib_per_s(FILE_BYTES, direct_time)
        ),
        cond.into(),
    ));

    // (b) Version 2 through the sidecar, delivery included.
    let (mut ws, written) = upload_socket(sidecar.client_addr, &token).await?;
    let started = Instant::now();
    ws.send(Message::Text(hello(FILE_BYTES).into()))
        .await
        .map_err(send_err)?;
    next_json(&mut ws).await?;
    send_v2(&mut ws, &data, 0, FILE_BYTES).await?;
    until_complete(&mut ws).await?;
    let v2_time = started.elapsed();
    let v2_bytes = written.load(Ordering::Relaxed);
    rows.push(Row(
        "u. upload (b) version 2 via sidecar: time / wire bytes".into(),
        format!(
            "{:.0} ms ({:+.0} % vs a) / {v2_bytes} ({:+.2} % vs a)",
            v2_time.as_secs_f64() * 1000.0,
            (v2_time.as_secs_f64() / direct_time.as_secs_f64() - 1.0) * 100.0,
            (v2_bytes as f64 / direct_bytes as f64 - 1.0) * 100.0
        ),
        format!("{cond}; 1 MiB frames, 4 MiB window, fsync every 256 KiB, multipart delivery"),
    ));

    // (c) Version 1 (the seed's client) through the sidecar.
    let (mut ws, written) = upload_socket(sidecar.client_addr, &token).await?;
    let started = Instant::now();
    let hs =
        json!({"filename": "bench.pdf", "filesize": FILE_BYTES, "mimetype": "application/pdf"});
    ws.send(Message::Text(hs.to_string().into()))
        .await
        .map_err(send_err)?;
    let (mut offset, mut seq) = (0usize, 0u64);
    while offset < FILE_BYTES {
        let end = (offset + V1_CHUNK).min(FILE_BYTES);
        seq += 1;
        let chunk = json!({"seq": seq,
            "data": base64::engine::general_purpose::STANDARD.encode(&data[offset..end]),
            "final": end == FILE_BYTES});
        ws.feed(Message::Text(chunk.to_string().into()))
            .await
            .map_err(send_err)?;
        offset = end;
    }
    ws.flush().await.map_err(send_err)?;
    next_json(&mut ws).await?;
    let v1_time = started.elapsed();
    let v1_bytes = written.load(Ordering::Relaxed);
    rows.push(Row(
        "u. upload (c) version 1 (base64) via sidecar: time / wire bytes".into(),
        format!(
            "{:.0} ms ({:+.0} % vs a) / {v1_bytes} ({:+.2} % vs a)",
            v1_time.as_secs_f64() * 1000.0,
            (v1_time.as_secs_f64() / direct_time.as_secs_f64() - 1.0) * 100.0,
            (v1_bytes as f64 / direct_bytes as f64 - 1.0) * 100.0
        ),
        format!("{cond}; 64 KiB chunks as the seed sends them"),
    ));

    // (d) Kill a version-2 connection at 50 %, resume.
    let (mut ws, _) = upload_socket(sidecar.client_addr, &token).await?;
    ws.send(Message::Text(hello(FILE_BYTES).into()))
        .await
        .map_err(send_err)?;
    let id = next_json(&mut ws).await?["uploadId"]
        .as_str()
        .ok_or_else(|| step("no uploadId"))?
        .to_string();
    let half = FILE_BYTES / 2;
    send_v2(&mut ws, &data, 0, half).await?;
    drop(ws);
    let (mut ws, _) = upload_socket(sidecar.client_addr, &token).await?;
    let resume = json!({"version": 2, "uploadId": id});
    ws.send(Message::Text(resume.to_string().into()))
        .await
        .map_err(send_err)?;
    let offset = next_json(&mut ws).await?["offset"]
        .as_u64()
        .ok_or_else(|| step("no offset"))? as usize;
    send_v2(&mut ws, &data, offset, FILE_BYTES).await?;
    until_complete(&mut ws).await?;
    rows.push(Row(
        "u. upload killed at 50 %: bytes re-sent after resume".into(),
        format!("{} (window {V2_WINDOW})", half.saturating_sub(offset)),
        format!("{cond}; connection dropped right after the 25 MiB frame was written"),
    ));

    sidecar.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(())
}

/// Concurrent uploads of the memory run.
const CONCURRENT: usize = 50;

/// Peak RSS of a sidecar child process while `CONCURRENT` version-2
/// uploads of 50 MiB run at once (spooled and delivered).
pub(crate) async fn concurrent_memory(
    exe: &std::path::PathBuf,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let sim = start_sim(Duration::from_secs(25)).await?;
    let spool = std::env::temp_dir().join(format!(
        "re-bench-spool-{}-{}",
        std::process::id(),
        realtime_edge::clock::unix_millis()
    ));
    let extra = format!(
        "uploads: {{spool_dir: \"{}\", max_spool_bytes: {}}}\n",
        spool.display(),
        (CONCURRENT as u64 + 1) * FILE_BYTES as u64
    );
    let sidecar = SidecarProcess::spawn_with(exe, &sim.base_url(), &extra).await?;
    let idle_kib = sidecar.rss_kib();
    let token = realtime_edge::auth::mint_hs256(SECRET, "orgId", 1, 3600);
    let data: Bytes = (0..FILE_BYTES)
        .map(|i| (i as u64).wrapping_mul(40_503).rotate_right(7) as u8)
        .collect::<Vec<u8>>()
        .into();
    let addr = sidecar.client_addr;
    let started = Instant::now();
    let uploads: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let data = data.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let (mut ws, _) = upload_socket(addr, &token).await?;
                ws.send(Message::Text(hello(FILE_BYTES).into()))
                    .await
                    .map_err(send_err)?;
                next_json(&mut ws).await?;
                send_v2(&mut ws, &data, 0, FILE_BYTES).await?;
                until_complete(&mut ws).await.map(|_| ())
            })
        })
        .collect();
    let mut peak_kib = idle_kib;
    let mut done = 0;
    let mut failed = 0;
    let mut pending = uploads;
    while !pending.is_empty() {
        peak_kib = peak_kib.max(sidecar.rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (finished, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        pending = rest;
        for h in finished {
            match h.await {
                Ok(Ok(())) => done += 1,
                _ => failed += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    rows.push(Row(
        format!("u. peak sidecar RSS, {CONCURRENT} concurrent 50 MiB uploads"),
        format!(
            "{} MiB (idle {} MiB)",
            peak_kib / 1024,
            idle_kib / 1024
        ),
        format!(
            "version 2, 1 MiB frames, 4 MiB window; {done} delivered, {failed} failed in {:.1} s; sidecar as a child process",
            elapsed.as_secs_f64()
        ),
    ));
    sidecar.stop().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(())
}
