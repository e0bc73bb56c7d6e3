//! Document uploads (CONTRACT 7) end to end: a real sidecar in front of the
//! simulated backend, clients speaking version 1 (exactly as the seed's
//! browser component) and version 2, and every bad input of issue 13.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::*;
use futures_util::SinkExt;
use realtime_edge::{Sidecar, uploads::UPLOAD_PATH};
use realtime_edge_sim::{Simulator, checksum};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A sidecar with its own spool directory and `extra` upload settings.
async fn upload_rig(uploads: &str) -> (Simulator, Sidecar, PathBuf) {
    let spool = unique_dir("spool");
    let extra = format!(
        "uploads: {{spool_dir: \"{}\"{}{uploads}}}\n",
        spool.display(),
        if uploads.is_empty() { "" } else { ", " }
    );
    let (sim, sc) = rig(&extra).await;
    (sim, sc, spool)
}

fn file_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 + (i as u64 >> 8)) as u8)
        .collect()
}

async fn connect_as(addr: SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{addr}{UPLOAD_PATH}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The seed's handshake for `data`.
fn seed_handshake(data: &[u8]) -> Value {
    json!({"filename": "passport scan.jpg", "filesize": data.len(), "mimetype": "image/jpeg",
        "documentType": "aadhaar", "guestId": 17, "propertyId": 3})
}

/// Sends `data` as the seed's StreamingDocumentUpload does: 64 KiB slices,
/// base64, `final` when `offset + chunkSize >= size`, never waiting.
async fn send_seed_chunks(ws: &mut Ws, data: &[u8]) {
    const CHUNK: usize = 64 * 1024;
    let (mut offset, mut seq) = (0usize, 0u64);
    loop {
        let end = (offset + CHUNK).min(data.len());
        seq += 1;
        let chunk = json!({
            "seq": seq,
            "data": base64::engine::general_purpose::STANDARD.encode(&data[offset..end]),
            "final": offset + CHUNK >= data.len(),
        });
        ws.feed(Message::Text(chunk.to_string().into()))
            .await
            .unwrap();
        offset += CHUNK;
        if offset >= data.len() {
            break;
        }
    }
    ws.flush().await.unwrap();
}

/// The next error message and the close code after it.
async fn error_and_close(ws: &mut Ws) -> (String, String, Option<u16>) {
    let v = next_json(ws).await;
    assert_eq!(v["type"], "error", "{v}");
    let code = close_code(ws).await;
    (
        v["code"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
        code,
    )
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Version 2 client: sends `data[from..until]` honouring the window, reading
/// progress; returns the progress offsets seen.
async fn send_v2(ws: &mut Ws, data: &[u8], from: usize, until: usize, frame: usize) -> Vec<u64> {
    const WINDOW: u64 = 4_194_304;
    let mut acked = from as u64;
    let mut sent = from;
    let mut progress = Vec::new();
    while sent < until {
        while sent as u64 - acked + frame as u64 > WINDOW {
            let v = next_json(ws).await;
            assert_eq!(v["type"], "progress", "{v}");
            acked = v["offset"].as_u64().unwrap();
            progress.push(acked);
        }
        let end = (sent + frame).min(until);
        ws.send(Message::Binary(data[sent..end].to_vec().into()))
            .await
            .unwrap();
        sent = end;
    }
    progress
}

async fn v2_handshake(ws: &mut Ws, hs: Value) -> Value {
    send_json(ws, &hs).await;
    let ready = next_json(ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ready
}

fn v2_hello(data: &[u8]) -> Value {
    json!({"filename": "contract.pdf", "filesize": data.len(), "mimetype": "application/pdf",
        "documentType": "contract", "version": 2})
}

/// Reads progress messages until `complete`; returns (progress offsets, complete).
async fn until_complete(ws: &mut Ws) -> (Vec<u64>, Value) {
    let mut progress = Vec::new();
    loop {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("progress") => progress.push(v["offset"].as_u64().unwrap()),
            Some("complete") => return (progress, v),
            _ => panic!("unexpected {v}"),
        }
    }
}

async fn prometheus(sc: &Sidecar) -> String {
    http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await
    .2
}

#[tokio::test]
async fn version_1_seed_client_is_delivered_as_multipart_once() {
    let (sim, sc, spool) = upload_rig("").await;
    let data = file_of(200_000, 1);
    let tok = token(7);
    let mut ws = connect_as(sc.client_addr, &tok).await;
    send_json(&mut ws, &seed_handshake(&data)).await;
    send_seed_chunks(&mut ws, &data).await;
    let result = next_json(&mut ws).await;
    assert_eq!(close_code(&mut ws).await, Some(1000));
    let file_id = result["fileId"]
        .as_str()
        .expect("the backend's result as is");
    assert_eq!(result["url"], format!("/documents/{file_id}"));
    assert!(result.get("ocrResult").is_some());

    let files = sim.uploads.files();
    assert_eq!(files.len(), 1);
    let f = &files[file_id];
    assert_eq!((f.route, f.org, f.size), ("legacy", 7, data.len() as u64));
    assert_eq!(f.checksum, checksum(&data));
    assert_eq!(f.filename, "passport scan.jpg");
    assert_eq!(f.fields["mimetype"], "image/jpeg");
    assert_eq!(f.fields["documentType"], "aadhaar");
    assert_eq!(f.fields["guestId"], "17");
    assert_eq!(f.fields["propertyId"], "3");
    assert!(
        f.content_length.is_some(),
        "an exact Content-Length, not chunked"
    );
    assert_eq!(
        f.authorization.as_deref(),
        Some(format!("Bearer {tok}").as_str())
    );
    let key = f.idempotency_key.as_deref().unwrap();
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!(spool_files(&spool), 0, "nothing left behind");
    let text = prometheus(&sc).await;
    assert!(
        text.contains("uploads_completed_total{delivery=\"legacy\"}"),
        "{text}"
    );
    assert!(text.contains("uploads_delivery_seconds"), "{text}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_handshakes_are_refused_with_their_codes() {
    let (sim, sc, spool) = upload_rig("allowed_mimetypes: [application/pdf, image/jpeg]").await;
    let ok = json!({"filename": "a.pdf", "filesize": 10, "mimetype": "application/pdf"});
    let with = |k: &str, v: Value| {
        let mut h = ok.clone();
        h[k] = v;
        h.to_string()
    };
    let cases = [
        ("{not json".to_string(), "BAD_HANDSHAKE"),
        ("[1,2]".to_string(), "BAD_HANDSHAKE"),
        (with("filename", json!("../../etc/passwd")), "BAD_HANDSHAKE"),
        (with("filename", json!("a\u{0}.pdf")), "BAD_HANDSHAKE"),
        (with("filename", json!("")), "BAD_HANDSHAKE"),
        (with("filesize", json!(0)), "BAD_HANDSHAKE"),
        (with("filesize", json!(2_147_483_648u64)), "FILE_TOO_LARGE"),
        (with("mimetype", json!("text/html")), "UNSUPPORTED_TYPE"),
        (with("version", json!(7)), "BAD_HANDSHAKE"),
        (
            json!({"version": 2, "uploadId": "0123456789abcdef0123456789abcdef"}).to_string(),
            "UNKNOWN_UPLOAD",
        ),
    ];
    for (hs, want) in cases {
        let mut ws = connect_as(sc.client_addr, &token(1)).await;
        ws.send(Message::Text(hs.clone().into())).await.unwrap();
        let (code, message, close) = error_and_close(&mut ws).await;
        assert_eq!(
            (code.as_str(), close),
            (want, Some(1008)),
            "{hs}: {message}"
        );
        assert!(!message.is_empty());
    }
    // No credentials: 401 before the upgrade.
    let (status, _, body) = http(
        "GET",
        &format!("http://{}{UPLOAD_PATH}", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""));
    assert_eq!(spool_files(&spool), 0);
    assert_eq!(
        sim.uploads
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn version_1_bad_chunks_close_with_their_codes_and_leave_nothing() {
    let (sim, sc, spool) = upload_rig("").await;
    let data = file_of(1000, 2);
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (
            vec![Message::Text(
                json!({"seq": 2, "data": b64(&data), "final": true})
                    .to_string()
                    .into(),
            )],
            "CHUNK_OUT_OF_ORDER",
        ),
        (
            vec![Message::Text(
                json!({"seq": 1, "data": "%%%not base64", "final": true})
                    .to_string()
                    .into(),
            )],
            "BAD_CHUNK",
        ),
        (
            vec![Message::Text(
                json!({"seq": 1, "data": b64(&file_of(1001, 2)), "final": true})
                    .to_string()
                    .into(),
            )],
            "SIZE_MISMATCH",
        ),
        (
            vec![Message::Text(
                json!({"seq": 1, "data": b64(&data[..999]), "final": true})
                    .to_string()
                    .into(),
            )],
            "SIZE_MISMATCH",
        ),
        (vec![Message::Binary(data.clone().into())], "BAD_CHUNK"),
        (vec![Message::Text("chunk?".into())], "BAD_CHUNK"),
    ];
    for (msgs, want) in cases {
        let mut ws = connect_as(sc.client_addr, &token(1)).await;
        send_json(&mut ws, &json!({"filename": "x.bin", "filesize": 1000})).await;
        for m in msgs {
            ws.send(m).await.unwrap();
        }
        let (code, message, close) = error_and_close(&mut ws).await;
        assert_eq!((code.as_str(), close), (want, Some(1008)), "{message}");
    }
    eventually("spool empty", || async { spool_files(&spool) == 0 }).await;
    assert!(sim.uploads.files().is_empty());
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn version_2_acknowledges_durably_and_completes() {
    let (sim, sc, spool) = upload_rig("").await;
    let data = file_of(1_500_000, 3);
    let mut ws = connect_as(sc.client_addr, &token(9)).await;
    let ready = v2_handshake(&mut ws, v2_hello(&data)).await;
    assert_eq!(ready["offset"], 0);
    let id = ready["uploadId"].as_str().unwrap().to_string();
    let mut progress = send_v2(&mut ws, &data, 0, data.len(), 100_000).await;
    let (more, complete) = until_complete(&mut ws).await;
    progress.extend(more);
    assert_eq!(close_code(&mut ws).await, Some(1000));
    assert_eq!(complete["uploadId"], id.as_str());
    // Progress at least every ack_bytes and at the end.
    let mut last = 0;
    for p in &progress {
        assert!(p - last <= 262_144, "{progress:?}");
        last = *p;
    }
    assert_eq!(last, data.len() as u64);
    let file_id = complete["result"]["fileId"].as_str().unwrap();
    let f = &sim.uploads.files()[file_id];
    assert_eq!((f.size, f.checksum), (data.len() as u64, checksum(&data)));
    assert_eq!(f.idempotency_key.as_deref(), Some(id.as_str()));
    assert_eq!(spool_files(&spool), 0);

    // Reconnecting after completion returns the same `complete`.
    let mut again = connect_as(sc.client_addr, &token(9)).await;
    send_json(&mut again, &json!({"version": 2, "uploadId": id})).await;
    assert_eq!(next_json(&mut again).await, complete);
    assert_eq!(close_code(&mut again).await, Some(1000));
    assert_eq!(sim.uploads.files().len(), 1, "delivered once");
    sc.shutdown().await;
    sim.shutdown().await;
}

fn token_of(org: u64, sub: &str) -> String {
    let exp = realtime_edge::clock::unix_millis() as u64 / 1000 + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"orgId": org, "sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn version_2_resumes_after_a_dropped_connection_for_its_owner_only() {
    let (sim, sc, _spool) = upload_rig("").await;
    let data = file_of(3_000_000, 4);
    let owner = token_of(5, "alice");
    let mut ws = connect_as(sc.client_addr, &owner).await;
    let ready = v2_handshake(&mut ws, v2_hello(&data)).await;
    let id = ready["uploadId"].as_str().unwrap().to_string();
    let half = data.len() / 2;
    send_v2(&mut ws, &data, 0, half, 65_536).await;
    // Wait for an acknowledgement past a quarter, then kill the socket.
    loop {
        let v = next_json(&mut ws).await;
        if v["offset"].as_u64().unwrap() >= (half / 2) as u64 {
            break;
        }
    }
    drop(ws);

    for (who, tok) in [
        ("another org", token_of(6, "alice")),
        ("another user", token_of(5, "bob")),
    ] {
        let mut other = connect_as(sc.client_addr, &tok).await;
        send_json(&mut other, &json!({"version": 2, "uploadId": id})).await;
        let (code, _, close) = error_and_close(&mut other).await;
        assert_eq!(
            (code.as_str(), close),
            ("UNKNOWN_UPLOAD", Some(1008)),
            "{who}"
        );
    }

    let mut ws = connect_as(sc.client_addr, &owner).await;
    let ready = v2_handshake(
        &mut ws,
        json!({"version": 2, "uploadId": id, "filesize": data.len(), "filename": "contract.pdf"}),
    )
    .await;
    let offset = ready["offset"].as_u64().unwrap() as usize;
    assert!(offset >= half / 2 && offset <= half, "resume at {offset}");
    assert!(half - offset <= 4_194_304, "re-sent at most one window");
    send_v2(&mut ws, &data, offset, data.len(), 65_536).await;
    let (_, complete) = until_complete(&mut ws).await;
    let f = &sim.uploads.files()[complete["result"]["fileId"].as_str().unwrap()];
    assert_eq!((f.size, f.checksum), (data.len() as u64, checksum(&data)));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn version_2_refuses_text_oversized_frames_excess_bytes_and_a_broken_window() {
    let (sim, sc, spool) = upload_rig("ack_bytes: 8192, window_bytes: 8192").await;
    let data = file_of(20_000, 5);
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (vec![Message::Text("{\"seq\":1}".into())], "BAD_CHUNK"),
        (
            vec![Message::Binary(vec![0u8; (1 << 20) + 1].into())],
            "BAD_CHUNK",
        ),
        (
            vec![
                Message::Binary(data[..8192].to_vec().into()),
                Message::Binary(data[..8192].to_vec().into()),
                Message::Binary(file_of(4000, 1).into()),
            ],
            "SIZE_MISMATCH",
        ),
        // 5000 + 5000 unacknowledged bytes with an 8192-byte window.
        (
            vec![
                Message::Binary(data[..5000].to_vec().into()),
                Message::Binary(data[5000..10_000].to_vec().into()),
            ],
            "WINDOW_EXCEEDED",
        ),
    ];
    for (msgs, want) in cases {
        let mut ws = connect_as(sc.client_addr, &token(1)).await;
        v2_handshake(&mut ws, v2_hello(&data)).await;
        for m in msgs {
            let _ = ws.send(m).await;
        }
        let (code, message, close) = loop {
            let v = next_json(&mut ws).await;
            if v["type"] == "progress" {
                continue;
            }
            assert_eq!(v["type"], "error", "{v}");
            break (
                v["code"].as_str().unwrap().to_string(),
                v["message"].to_string(),
                close_code(&mut ws).await,
            );
        };
        assert_eq!((code.as_str(), close), (want, Some(1008)), "{message}");
    }
    assert!(sim.uploads.files().is_empty());
    // Partial files stay for a resume until their TTL.
    assert!(spool_files(&spool) > 0);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn failing_backend_is_retried_then_reported_and_the_file_kept_for_a_retry() {
    let (sim, sc, spool) = upload_rig("delivery_attempts: 3, delivery_timeout_s: 1").await;
    let data = file_of(50_000, 6);
    let requests = || {
        sim.uploads
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    // 500 forever: three attempts, then UPSTREAM_ERROR and 1011.
    sim.uploads
        .set_fault(realtime_edge_sim::Fault::Status(500), None);
    let mut ws = connect_as(sc.client_addr, &token(2)).await;
    let id = v2_handshake(&mut ws, v2_hello(&data)).await["uploadId"]
        .as_str()
        .unwrap()
        .to_string();
    send_v2(&mut ws, &data, 0, data.len(), 16_384).await;
    let (code, message, close) = loop {
        let v = next_json(&mut ws).await;
        if v["type"] != "progress" {
            assert_eq!(v["type"], "error", "{v}");
            break (
                v["code"].to_string(),
                v["message"].to_string(),
                close_code(&mut ws).await,
            );
        }
    };
    assert_eq!(
        (code.as_str(), close),
        ("\"UPSTREAM_ERROR\"", Some(1011)),
        "{message}"
    );
    assert_eq!(requests(), 3);
    assert_eq!(spool_files(&spool), 1, "kept for a retry");

    // A hanging backend: each attempt times out.
    sim.uploads.set_fault(realtime_edge_sim::Fault::Hang, None);
    let mut ws = connect_as(sc.client_addr, &token(2)).await;
    let ready = v2_handshake(&mut ws, json!({"version": 2, "uploadId": id})).await;
    assert_eq!(ready["offset"], data.len(), "nothing to re-send");
    let (code, _, close) = error_and_close(&mut ws).await;
    assert_eq!((code.as_str(), close), ("UPSTREAM_ERROR", Some(1011)));

    // Garbage once, then healthy: the retry delivers.
    sim.uploads
        .set_fault(realtime_edge_sim::Fault::Garbage, Some(1));
    let mut ws = connect_as(sc.client_addr, &token(2)).await;
    v2_handshake(&mut ws, json!({"version": 2, "uploadId": id})).await;
    let (_, complete) = until_complete(&mut ws).await;
    let f = &sim.uploads.files()[complete["result"]["fileId"].as_str().unwrap()];
    assert_eq!(f.checksum, checksum(&data));
    assert_eq!(spool_files(&spool), 0);

    // A 4xx is final: UPSTREAM_REJECTED with the status, also on a reconnect.
    sim.uploads
        .set_fault(realtime_edge_sim::Fault::Status(422), None);
    let mut ws = connect_as(sc.client_addr, &token(2)).await;
    send_json(&mut ws, &seed_handshake(&data)).await;
    send_seed_chunks(&mut ws, &data).await;
    let (code, message, close) = error_and_close(&mut ws).await;
    assert_eq!((code.as_str(), close), ("UPSTREAM_REJECTED", Some(1008)));
    assert!(
        message.contains("422") && message.contains("injected fault"),
        "{message}"
    );
    let mut ws = connect_as(sc.client_addr, &token(2)).await;
    let id = v2_handshake(&mut ws, v2_hello(&data)).await["uploadId"]
        .as_str()
        .unwrap()
        .to_string();
    send_v2(&mut ws, &data, 0, data.len(), 16_384).await;
    let rejected = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "error" {
            break v;
        }
    };
    let mut again = connect_as(sc.client_addr, &token(2)).await;
    send_json(&mut again, &json!({"version": 2, "uploadId": id})).await;
    assert_eq!(next_json(&mut again).await, rejected);
    assert_eq!(close_code(&mut again).await, Some(1008));
    eventually("spool empty", || async { spool_files(&spool) == 0 }).await;
    let text = prometheus(&sc).await;
    assert!(
        text.contains("uploads_failed_total{reason=\"upstream_error\"}"),
        "{text}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_full_spool_or_too_many_uploads_is_busy_and_others_carry_on() {
    let (sim, sc, _spool) = upload_rig("max_spool_bytes: 100000, max_concurrent: 2").await;
    let data = file_of(60_000, 7);
    let mut first = connect_as(sc.client_addr, &token(3)).await;
    v2_handshake(&mut first, v2_hello(&data)).await;
    send_v2(&mut first, &data, 0, 10_000, 10_000).await;

    // Two connections are open (the first, and one idle): a third is BUSY.
    let idle = connect_as(sc.client_addr, &token(3)).await;
    let mut third = connect_as(sc.client_addr, &token(3)).await;
    let (code, message, close) = error_and_close(&mut third).await;
    assert_eq!((code.as_str(), close), ("BUSY", Some(1013)));
    assert!(message.contains("too many uploads"), "{message}");
    drop(idle);

    // 60000 of 100000 spool bytes are reserved: another 60000 is BUSY
    // (once the idle connection's slot is free again).
    eventually("a spool-full refusal", || async {
        let mut next = connect_as(sc.client_addr, &token(3)).await;
        send_json(&mut next, &v2_hello(&data)).await;
        let (code, message, close) = error_and_close(&mut next).await;
        assert_eq!((code.as_str(), close), ("BUSY", Some(1013)));
        message.contains("spool is full")
    })
    .await;

    send_v2(&mut first, &data, 10_000, data.len(), 10_000).await;
    let (_, complete) = until_complete(&mut first).await;
    assert!(complete["result"]["fileId"].is_string());
    assert_eq!(sim.uploads.files().len(), 1);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn idle_sockets_close_keeping_the_partial_which_expires_after_its_ttl() {
    let (sim, sc, spool) = upload_rig("idle_timeout_s: 1, resume_ttl_s: 2").await;
    let data = file_of(30_000, 8);
    let mut ws = connect_as(sc.client_addr, &token(4)).await;
    let id = v2_handshake(&mut ws, v2_hello(&data)).await["uploadId"]
        .as_str()
        .unwrap()
        .to_string();
    send_v2(&mut ws, &data, 0, 10_000, 10_000).await;
    // Pausing: the idle socket is closed, the partial kept.
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let mut ws = connect_as(sc.client_addr, &token(4)).await;
    let ready = v2_handshake(&mut ws, json!({"version": 2, "uploadId": id})).await;
    assert_eq!(ready["offset"], 10_000);
    drop(ws);
    // Abandoned: removed after resume_ttl_s, and unknown from then on.
    eventually("partial file removed", || async {
        spool_files(&spool) == 0
    })
    .await;
    let mut ws = connect_as(sc.client_addr, &token(4)).await;
    send_json(&mut ws, &json!({"version": 2, "uploadId": id})).await;
    let (code, _, _) = error_and_close(&mut ws).await;
    assert_eq!(code, "UNKNOWN_UPLOAD");
    assert!(sim.uploads.files().is_empty());
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn native_delivery_speaks_version_1_to_the_backend() {
    let (sim, sc, spool) = upload_rig("").await;
    set_flags(&sc, "DOCUMENTS_UPLOAD_NATIVE=true").await;
    let data = file_of(300_000, 9);
    let mut ws = connect_as(sc.client_addr, &token(8)).await;
    v2_handshake(&mut ws, v2_hello(&data)).await;
    send_v2(&mut ws, &data, 0, data.len(), 100_000).await;
    let (_, complete) = until_complete(&mut ws).await;
    let files = sim.uploads.files();
    let f = &files[complete["result"]["fileId"].as_str().unwrap()];
    assert_eq!((f.route, f.org), ("native", 8));
    assert_eq!((f.size, f.checksum), (data.len() as u64, checksum(&data)));
    assert_eq!(f.fields["documentType"], "contract");

    // The seed's client through the native route too.
    let mut ws = connect_as(sc.client_addr, &token(8)).await;
    send_json(&mut ws, &seed_handshake(&data)).await;
    send_seed_chunks(&mut ws, &data).await;
    let result = next_json(&mut ws).await;
    assert_eq!(close_code(&mut ws).await, Some(1000));
    assert_eq!(
        sim.uploads.files()[result["fileId"].as_str().unwrap()].fields["guestId"],
        "17"
    );
    assert_eq!(spool_files(&spool), 0);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn simulator_multipart_endpoint_honours_idempotency_keys() {
    let sim = start_sim(std::time::Duration::from_secs(1)).await;
    let form = realtime_edge::uploads::multipart::MultipartForm::new(
        &[("filename", "a.txt".to_string())],
        "file",
        "a.txt",
        "text/plain",
    );
    let body = [&form.head[..], b"hello", &form.tail[..]].concat();
    let post = || async {
        use http_body_util::{BodyExt, Full};
        let req = http::Request::post(format!("{}/documents/upload", sim.base_url()))
            .header("authorization", format!("Bearer {}", token(1)))
            .header("content-type", form.content_type())
            .header("idempotency-key", "k1")
            .body(Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client.request(req).await.unwrap();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&b).unwrap()
    };
    let a = post().await;
    let b = post().await;
    assert_eq!(a, b);
    assert_eq!(sim.uploads.files().len(), 1);
    assert_eq!(
        sim.uploads
            .repeats
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_takes_the_upload_over_and_browsers_may_use_access_token() {
    let (sim, sc, _spool) = upload_rig("").await;
    let data = file_of(600_000, 10);
    let tok = token(11);
    let mut first = connect_as(sc.client_addr, &tok).await;
    let id = v2_handshake(&mut first, v2_hello(&data)).await["uploadId"]
        .as_str()
        .unwrap()
        .to_string();
    send_v2(&mut first, &data, 0, 300_000, 100_000).await;
    // Acknowledged at 262144, inside the third frame: all three were read.
    let progress = next_json(&mut first).await;
    assert_eq!(progress["offset"], 262_144, "{progress}");

    // A browser cannot set headers on a WebSocket: the token in the query.
    let url = format!("ws://{}{UPLOAD_PATH}?access_token={tok}", sc.client_addr);
    let (mut second, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let ready = v2_handshake(&mut second, json!({"version": 2, "uploadId": id})).await;
    assert_eq!(
        ready["offset"], 300_000,
        "what the first connection wrote is made durable as it lets go"
    );
    assert_eq!(close_code(&mut first).await, Some(1008), "no lock limbo");
    send_v2(&mut second, &data, 300_000, data.len(), 100_000).await;
    let (_, complete) = until_complete(&mut second).await;
    let f = &sim.uploads.files()[complete["result"]["fileId"].as_str().unwrap()];
    assert_eq!(f.checksum, checksum(&data));
    sc.shutdown().await;
    sim.shutdown().await;
}
