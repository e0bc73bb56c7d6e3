//! RS256/ES256 verification with public keys, algorithm confusion, and
//! serving the stream over TLS (rustls). Keys and certificates are made
//! with the machine's openssl at test time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime_edge::auth::Verifier;
use realtime_edge::config::AuthConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn dir() -> PathBuf {
    unique_dir("keys")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keypair(dir: &Path, name: &str, algo: &[&str]) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algo);
    args.extend_from_slice(&["-out", private.to_str().unwrap()]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

fn verifier(public: &Path) -> Verifier {
    Verifier::new(&AuthConfig {
        jwt_public_key_file: Some(public.to_path_buf()),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, org: u64) -> String {
    let claims =
        serde_json::json!({"orgId": org, "exp": realtime_edge::clock::unix_millis() / 1000 + 600});
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

#[test]
fn rs256_and_es256_with_public_keys_and_no_confusion() {
    let d = dir();
    let (rsa_priv, rsa_pub) = keypair(
        &d,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_priv, ec_pub) = keypair(
        &d,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(&rsa_priv).unwrap()).unwrap();
    let ec_key = EncodingKey::from_ec_pem(&std::fs::read(&ec_priv).unwrap()).unwrap();

    let rs = verifier(&rsa_pub);
    assert_eq!(
        rs.verify(&sign(Algorithm::RS256, &rsa_key, 42))
            .unwrap()
            .org_id,
        42
    );
    assert!(
        rs.verify(&sign(Algorithm::ES256, &ec_key, 42)).is_err(),
        "ES256 refused for an RSA key"
    );
    // The classic confusion: HS256 "signed" with the public key as the secret.
    let public_pem = std::fs::read(&rsa_pub).unwrap();
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), 42);
    assert!(
        rs.verify(&forged).is_err(),
        "HS256 with the public key as secret must be refused"
    );

    let es = verifier(&ec_pub);
    assert_eq!(
        es.verify(&sign(Algorithm::ES256, &ec_key, 7))
            .unwrap()
            .org_id,
        7
    );
    assert!(es.verify(&sign(Algorithm::RS256, &rsa_key, 7)).is_err());
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&std::fs::read(&ec_pub).unwrap()),
        7,
    );
    assert!(es.verify(&forged).is_err());

    // Not a public key: refused at start-up with the file named.
    let err = Verifier::new(&AuthConfig {
        jwt_public_key_file: Some(rsa_priv.clone()),
        ..AuthConfig::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("rsa.pem"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn stream_over_tls() {
    let d = dir();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    let (ca, ca_key, csr, ext) = (
        d.join("ca.pem"),
        d.join("ca.key"),
        d.join("leaf.csr"),
        d.join("leaf.ext"),
    );
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    let sim = start_sim(Duration::from_secs(25)).await;
    let extra = format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert.display(),
        key.display()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;

    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(&ca).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(sc.client_addr)
        .await
        .unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!(
        "wss://localhost:{}/v2/realtime/stream",
        sc.client_addr.port()
    )
    .into_client_request()
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(1)).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Text(hello(&["finance"]).to_string().into()))
        .await
        .unwrap();
    let ack = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                break serde_json::from_str::<serde_json::Value>(&t).unwrap();
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ack["type"], "ack");
    // A plain-text client gets nothing useful from a TLS listener.
    assert!(
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(stream_url(sc.client_addr))
        )
        .await
        .map(|r| r.is_err())
        .unwrap_or(true)
    );
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(d);
}

// ---- certificates ---------------------------------------------------------

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A self-signed CA: (certificate, key).
fn make_ca(d: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &s(&key),
        "-out",
        &s(&cert),
    ]);
    (cert, key)
}

/// A leaf for localhost and 127.0.0.1 signed by `ca`: (certificate, key).
fn make_leaf(d: &Path, ca: &(PathBuf, PathBuf), name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
    let (csr, ext) = (d.join(format!("{name}.csr")), d.join(format!("{name}.ext")));
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca.0),
        "-CAkey",
        &s(&ca.1),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (cert, key)
}

fn tls_files(leaf: &(PathBuf, PathBuf)) -> realtime_edge::config::TlsConfig {
    realtime_edge::config::TlsConfig {
        cert_file: leaf.0.clone(),
        key_file: leaf.1.clone(),
        reload_interval: Duration::from_millis(100),
    }
}

/// A TLS terminator in front of `target` (the simulator speaks plain
/// HTTP): the backend seen through it is an `https://` / `wss://` one.
/// Its accept loop ends with the test's runtime.
async fn tls_front(target: std::net::SocketAddr, leaf: &(PathBuf, PathBuf)) -> String {
    let cert = realtime_edge::tls::ServerCert::load(&tls_files(leaf)).unwrap();
    let acceptor = cert.acceptor().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut backend) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    format!("https://127.0.0.1:{}", addr.port())
}

/// The leaf certificate a TLS client trusting `ca` is served at `addr`.
async fn served_cert(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let tls = tls_client(addr, ca).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = realtime_edge::tls::client_config(Some(ca)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        WAIT,
        connector.connect("localhost".try_into().unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

fn leaf_der(cert: &Path) -> Vec<u8> {
    rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A counter's value in the admin's Prometheus text (0 when absent).
async fn prometheus_counter(sc: &realtime_edge::Sidecar, series: &str) -> f64 {
    let (_, _, body) = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await;
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn https_upstream_verified_with_ca_file_serves_poll_native_and_passthrough() {
    let d = dir();
    let ca = make_ca(&d, "backend-ca");
    let leaf = make_leaf(&d, &ca, "backend");
    let sim = start_sim(Duration::from_secs(25)).await;
    let https = tls_front(sim.addr, &leaf).await;
    let extra = format!(
        "upstream: {{base_url: \"{https}\", ca_file: \"{}\", native_fallback_s: 2}}\n",
        ca.0.display()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;

    // Pass-through over https.
    let (status, headers, body) = http(
        "POST",
        &format!("http://{}/_sim/echo?x=1", sc.client_addr),
        None,
        Some(("text/plain", "over https".into())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "over https");
    let meta = headers["x-echo-meta"].to_str().unwrap();
    assert!(meta.contains("\"query\":\"x=1\""), "{meta}");

    // V1 polls over https.
    let (mut ws, ack) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "poll");
    pollers(&sim, 1).await;
    let ids = sim
        .state
        .publish(1, "finance", vec![serde_json::json!({"n": 1})]);
    collect_ids(&mut ws, &ids.into_iter().collect()).await;

    // The native stream over wss.
    set_flags(&sc, "REALTIME_STREAMING_V2=true&REALTIME_ALLOWLIST_ORGS=7").await;
    let (mut native, ack) = subscribe(sc.client_addr, 7, hello(&["finance"])).await;
    assert_eq!(ack["mode"], "native");
    eventually("a native link over wss", || async {
        sim.state.native_active() == 1
    })
    .await;
    // The link subscribes for new events only once its handshake is in,
    // which the test cannot see: publish until one arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids = sim
            .state
            .publish(7, "finance", vec![serde_json::json!({"n": 2})]);
        let got = drain_ids(&mut native, Duration::from_millis(300)).await;
        if got.iter().any(|id| ids.contains(id)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no event over wss");
    }

    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn untrusted_https_upstream_is_refused() {
    let d = dir();
    let ca = make_ca(&d, "real-ca");
    let other_ca = make_ca(&d, "other-ca");
    let leaf = make_leaf(&d, &ca, "backend");
    let sim = start_sim(Duration::from_secs(25)).await;
    let https = tls_front(sim.addr, &leaf).await;
    // Trusting another CA only: the backend's certificate must not verify.
    let extra = format!(
        "upstream: {{base_url: \"{https}\", ca_file: \"{}\"}}\n",
        other_ca.0.display()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    let (status, _, body) = http(
        "GET",
        &format!("http://{}/_sim/echo", sc.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let err = next_non_ping(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "UPSTREAM_ERROR", "{err}");
    assert_eq!(
        sim.state.stats_json()["requestsByService"]["finance"],
        serde_json::Value::Null,
        "no request reached the backend"
    );
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn server_certificate_is_reloaded_and_a_bad_pair_keeps_the_old_one() {
    let d = dir();
    let ca = make_ca(&d, "edge-ca");
    let first = make_leaf(&d, &ca, "first");
    let second = make_leaf(&d, &ca, "second");
    let third = make_leaf(&d, &ca, "third");
    let live = (d.join("live.pem"), d.join("live.key"));
    std::fs::copy(&first.0, &live.0).unwrap();
    std::fs::copy(&first.1, &live.1).unwrap();
    let sim = start_sim(Duration::from_secs(25)).await;
    let extra = format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\", reload_interval_ms: 50}}\n",
        live.0.display(),
        live.1.display()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    assert_eq!(served_cert(sc.client_addr, &ca.0).await, leaf_der(&first.0));
    // A connection opened before the rotation stays usable after it.
    let mut open = tls_client(sc.client_addr, &ca.0).await;

    std::fs::copy(&second.0, &live.0).unwrap();
    std::fs::copy(&second.1, &live.1).unwrap();
    eventually("the second certificate is served", || async {
        served_cert(sc.client_addr, &ca.0).await == leaf_der(&second.0)
    })
    .await;

    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        open.write_all(b"GET /_sim/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, open.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    // Half-written: the new certificate without its key yet. Refused,
    // counted, and the second pair is still served.
    let errors = "streaming_tls_cert_reloads_total{result=\"error\"}";
    let before = prometheus_counter(&sc, errors).await;
    std::fs::copy(&third.0, &live.0).unwrap();
    eventually("the half-written pair is refused", || async {
        prometheus_counter(&sc, errors).await > before
    })
    .await;
    assert_eq!(
        served_cert(sc.client_addr, &ca.0).await,
        leaf_der(&second.0)
    );
    // Garbage is refused the same way.
    let before = prometheus_counter(&sc, errors).await;
    std::fs::write(&live.1, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    eventually("the garbage key is refused", || async {
        prometheus_counter(&sc, errors).await > before
    })
    .await;
    assert_eq!(
        served_cert(sc.client_addr, &ca.0).await,
        leaf_der(&second.0)
    );
    // The key completes the pair: the third certificate goes live.
    std::fs::copy(&third.1, &live.1).unwrap();
    eventually("the third certificate is served", || async {
        served_cert(sc.client_addr, &ca.0).await == leaf_der(&third.0)
    })
    .await;

    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(d);
}
