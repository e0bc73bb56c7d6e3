//! The pass-through's byte path (plain HTTP/1.1 requests forwarded without
//! hyper) on raw sockets: one client connection moving to hyper at a
//! request the byte path does not forward, pipelined requests, response
//! framings (chunked with trailers, 1xx, close-delimited, HEAD), and the
//! in-flight cap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response with a `content-length` body; returns its head
/// (lowercased) and body. Bytes after it stay in `pending`.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if pending.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).into_owned();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes.
async fn read_to_close(s: &mut TcpStream, mut got: Vec<u8>) -> String {
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the sidecar closes the connection")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn one_connection_moves_to_hyper_at_a_request_the_byte_path_does_not_forward() {
    let (sim, sc) = rig("").await;
    let mut s = TcpStream::connect(sc.client_addr).await.unwrap();
    let mut pending = Vec::new();
    // Byte path, twice pipelined in one write: answered in order.
    s.write_all(
        b"GET /_sim/echo?n=1 HTTP/1.1\r\nhost: front\r\n\r\n\
          POST /_sim/echo?n=2 HTTP/1.1\r\nhost: front\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut s, &mut pending).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(r#""query":"n=1""#), "{head}");
    assert!(head.contains(r#""x-forwarded-host":"front""#), "{head}");
    let (head, body) = read_response(&mut s, &mut pending).await;
    assert!(head.contains(r#""query":"n=2""#), "{head}");
    assert_eq!(body, "hello");
    // A chunked body is hyper's: the connection is handed over, and hyper
    // serves this request and the next.
    s.write_all(
        b"POST /_sim/echo?n=3 HTTP/1.1\r\nhost: front\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /_sim/echo?n=4 HTTP/1.1\r\nhost: front\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut s, &mut pending).await;
    assert!(head.contains(r#""query":"n=3""#), "{head}");
    // hyper streams the echo back chunked; the chunked body is in `rest`.
    let rest = read_to_close(&mut s, pending).await;
    assert!(rest.starts_with("3\r\nabc\r\n0\r\n\r\n"), "{rest}");
    assert!(rest.contains(r#""query":"n=4""#), "{rest}");
    sc.shutdown().await;
    sim.shutdown().await;
}

/// A backend that answers each request it reads (by its head; requests
/// here have no body) with the next of `answers`, closing after the last.
async fn scripted_backend(answers: Vec<&'static [u8]>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        for answer in answers {
            while got.windows(4).position(|w| w == b"\r\n\r\n").is_none() {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            got.drain(..end + 4);
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    });
    url
}

#[tokio::test]
async fn chunked_informational_head_and_close_delimited_responses_keep_their_framing() {
    let backend = scripted_backend(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
          4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nx-head: yes\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
    ])
    .await;
    let sc = start_sidecar(config(&backend, "")).await;
    let mut s = TcpStream::connect(sc.client_addr).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The chunked body arrives as the backend framed it, trailer included.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"0\r\nx-sum: 9\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("4\r\nwiki\r\n5;ext=1\r\npedia\r\n"), "{text}");
    // The 100 is not passed on; the final answer is.
    s.write_all(b"GET /continue HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut s, &mut pending).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    // HEAD: the length describes a body that does not come.
    s.write_all(b"HEAD /head HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk[..1]).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&chunk[..1]);
    }
    assert!(String::from_utf8_lossy(&head).contains("x-head: yes"));
    // No length: the body runs until the backend closes, and the client's
    // connection closes after it.
    s.write_all(b"GET /until-close HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let rest = read_to_close(&mut s, Vec::new()).await;
    assert!(
        rest.to_ascii_lowercase().contains("connection: close"),
        "{rest}"
    );
    assert!(rest.ends_with("\r\n\r\nuntil the end"), "{rest}");
    sc.shutdown().await;
}

#[tokio::test]
async fn past_max_in_flight_the_byte_path_answers_503() {
    // A backend that takes requests and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (seen, arrival) = (requests.clone(), arrived.clone());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            if s.read(&mut buf).await.unwrap_or(0) > 0 {
                seen.fetch_add(1, Ordering::SeqCst);
                arrival.notify_one();
            }
            held.push(s);
        }
    });
    let sc = start_sidecar(config(
        &backend,
        "passthrough: {max_in_flight: 1, response_timeout_s: 30}\n",
    ))
    .await;
    let mut first = TcpStream::connect(sc.client_addr).await.unwrap();
    first
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the first request reached the backend", || {
        let requests = requests.clone();
        async move { requests.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let mut second = TcpStream::connect(sc.client_addr).await.unwrap();
    second
        .write_all(b"GET /other HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut second, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("in flight"), "{v}");
    // A client that leaves while its request waits gives its slot back: a
    // later request reaches the backend instead of being refused.
    arrived.notified().await; // the first request's arrival
    drop(first);
    eventually("the first request's slot is free", || {
        let (addr, arrived) = (sc.client_addr, arrived.clone());
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut pending = Vec::new();
            tokio::select! {
                _ = read_response(&mut s, &mut pending) => false,
                () = arrived.notified() => true,
            }
        }
    })
    .await;
    sc.shutdown().await;
    task.abort();
}
