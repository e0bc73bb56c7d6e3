//! RS256/ES256 verification with public keys, algorithm confusion, and
//! serving the stream over TLS (rustls). Keys and certificates are made
//! with the machine's openssl at test time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

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
    // Pass-through over TLS (the byte path): two pipelined requests, the
    // second closing the connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(sc.client_addr)
            .await
            .unwrap();
        let mut tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(
            b"POST /_sim/echo?n=1 HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\r\nhello\
              GET /_sim/echo?n=2 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
            .await
            .expect("the sidecar answers both and closes");
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert_eq!(answer.matches("http/1.1 200").count(), 2, "{answer}");
        assert!(
            answer.contains(r#""x-forwarded-proto":"https""#),
            "{answer}"
        );
        assert!(answer.contains("\r\n\r\nhello"), "{answer}");
        assert!(answer.contains(r#""query":"n=2""#), "{answer}");
    }
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

/// Publishes a finance event for `org` until one reaches `ws`: for sources
/// that take only new events once subscribed, which a test cannot observe.
async fn publish_until_delivered(sim: &realtime_edge_sim::Simulator, ws: &mut Ws, org: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids = sim
            .state
            .publish(org, "finance", vec![serde_json::json!({"n": 1})]);
        let got = drain_ids(ws, Duration::from_millis(300)).await;
        if got.iter().any(|id| ids.contains(id)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event for org {org}"
        );
    }
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
    // which the test cannot see.
    publish_until_delivered(&sim, &mut native, 7).await;

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

// ---- credentials ----------------------------------------------------------

fn now_s() -> u64 {
    realtime_edge::clock::unix_millis() as u64 / 1000
}

fn hs(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, org: u64) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let claims = serde_json::json!({"orgId": org, "exp": now_s() + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn private_key(path: &Path, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(path).unwrap();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

#[test]
fn secret_and_several_public_keys_each_family_against_its_own_keys() {
    let d = dir();
    let rsa = keypair(
        &d,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let ec = keypair(
        &d,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let ed = keypair(&d, "ed", &["-algorithm", "ED25519"]);
    let stranger = keypair(
        &d,
        "stranger",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    // Three keys in one file.
    let bundle = d.join("bundle.pem");
    let mut text = String::new();
    for (_, public) in [&rsa, &ec, &ed] {
        text.push_str(&std::fs::read_to_string(public).unwrap());
    }
    std::fs::write(&bundle, text).unwrap();
    let v = Verifier::new(&AuthConfig {
        jwt_secret: Some("s3cret".into()),
        jwt_public_key_file: Some(bundle),
        ..AuthConfig::default()
    })
    .unwrap();
    let ok = |t: &str| v.verify(t).map(|i| i.org_id);
    assert_eq!(
        ok(&hs(
            "s3cret",
            serde_json::json!({"orgId": 1, "exp": now_s() + 60})
        )),
        Ok(1)
    );
    for (alg, key) in [
        (Algorithm::RS256, &rsa.0),
        (Algorithm::RS512, &rsa.0),
        (Algorithm::PS256, &rsa.0),
        (Algorithm::ES256, &ec.0),
        (Algorithm::EdDSA, &ed.0),
    ] {
        let t = signed(alg, &private_key(key, alg), None, 5);
        assert_eq!(ok(&t), Ok(5), "{alg:?}");
        // A kid the file's keys do not have still finds them.
        let t = signed(alg, &private_key(key, alg), Some("from-idp"), 6);
        assert_eq!(ok(&t), Ok(6), "{alg:?} with kid");
    }
    // HS only against the secret: a public key used as an HMAC secret is refused.
    for (_, public) in [&rsa, &ec, &ed] {
        let pem = std::fs::read(public).unwrap();
        let forged = signed(Algorithm::HS256, &EncodingKey::from_secret(&pem), None, 5);
        assert!(v.verify(&forged).is_err());
    }
    // An unknown signer is refused.
    let t = signed(
        Algorithm::ES256,
        &private_key(&stranger.0, Algorithm::ES256),
        None,
        5,
    );
    assert!(v.verify(&t).is_err());
    // The secret alone cannot verify RS tokens, and public keys alone cannot verify HS ones.
    let only_secret = Verifier::new(&AuthConfig {
        jwt_secret: Some("s3cret".into()),
        ..AuthConfig::default()
    })
    .unwrap();
    let t = signed(
        Algorithm::RS256,
        &private_key(&rsa.0, Algorithm::RS256),
        None,
        5,
    );
    assert!(matches!(
        only_secret.verify(&t),
        Err(realtime_edge::auth::AuthError::UnknownKey(_))
    ));
    let only_keys = verifier(&rsa.1);
    let t = hs(
        "s3cret",
        serde_json::json!({"orgId": 1, "exp": now_s() + 60}),
    );
    assert!(
        only_keys
            .verify(&t)
            .unwrap_err()
            .to_string()
            .contains("jwt_secret")
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn key_file_problems_stop_start_up_naming_file_and_key() {
    let d = dir();
    let (ca, _) = make_ca(&d, "ca");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a key at all\n").unwrap();
    for (file, expect) in [
        (garbage.clone(), "no PEM public key"),
        (ca.clone(), "certificate"),
    ] {
        let yaml = format!(
            "auth: {{jwt_secret: s, jwt_public_key_file: \"{}\"}}\n",
            file.display()
        );
        let cfg = realtime_edge::Config::from_yaml(
            "edge.yaml",
            &yaml,
            &realtime_edge::config::EnvSecrets::default(),
        )
        .unwrap();
        let err = realtime_edge::Sidecar::preflight(&cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.jwt_public_key_file")
                && err.contains(file.to_str().unwrap())
                && err.contains(expect),
            "{err}"
        );
    }
    // Secret and an unreadable key file: the config names the key.
    let err = realtime_edge::Config::from_yaml(
        "edge.yaml",
        "auth: {jwt_secret: s, jwt_public_key_file: /nonexistent/keys.pem}\n",
        &realtime_edge::config::EnvSecrets::default(),
    )
    .unwrap_err();
    let lines = err.lines();
    assert!(
        lines[0].contains("edge.yaml") && lines[0].contains("auth.jwt_public_key_file"),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn issuer_audience_leeway_exp_and_nbf() {
    use realtime_edge::auth::AuthError;
    let cfg = AuthConfig {
        jwt_secret: Some("k".into()),
        issuer: Some("https://idp.example".into()),
        audience: vec!["edge".into(), "other".into()],
        leeway: Duration::from_secs(5),
        ..AuthConfig::default()
    };
    let v = Verifier::new(&cfg).unwrap();
    let now = now_s();
    let base = || serde_json::json!({"orgId": 3, "iss": "https://idp.example", "aud": "edge", "exp": now + 60});
    let with = |k: &str, val: serde_json::Value| {
        let mut c = base();
        c[k] = val;
        hs("k", c)
    };
    let without = |k: &str| {
        let mut c = base();
        c.as_object_mut().unwrap().remove(k);
        hs("k", c)
    };
    assert_eq!(v.verify(&hs("k", base())).unwrap().org_id, 3);
    assert!(v.verify(&with("iss", "https://evil".into())).is_err());
    assert!(v.verify(&without("iss")).is_err());
    assert!(v.verify(&with("aud", "nope".into())).is_err());
    assert!(v.verify(&without("aud")).is_err());
    assert!(
        v.verify(&with("aud", serde_json::json!(["x", "other"])))
            .is_ok()
    );
    // Leeway on exp and nbf.
    assert!(v.verify(&with("exp", (now - 2).into())).is_ok());
    assert_eq!(
        v.verify(&with("exp", (now - 30).into())).unwrap_err(),
        AuthError::Expired
    );
    assert!(v.verify(&with("nbf", (now + 3).into())).is_ok());
    assert_eq!(
        v.verify(&with("nbf", (now + 3600).into())).unwrap_err(),
        AuthError::NotYetValid
    );
    // exp required by default; optional when asked.
    assert_eq!(v.verify(&without("exp")).unwrap_err(), AuthError::NoExpiry);
    let lax = Verifier::new(&AuthConfig {
        require_exp: false,
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(lax.verify(&without("exp")).unwrap().expires_at, None);
    // Any exp however far away is served.
    let far = v.verify(&with("exp", u64::MAX.into())).unwrap();
    assert_eq!(far.expires_at, Some(u64::MAX));
    let farther = v.verify(&with("exp", serde_json::json!(1e300))).unwrap();
    assert_eq!(farther.expires_at, Some(u64::MAX));
    assert!(v.verify(&with("exp", "tomorrow".into())).is_err());
    // alg none, whatever the claims.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(base().to_string().as_bytes())
    );
    assert!(lax.verify(&none).is_err());
}

#[tokio::test]
async fn leeway_applies_to_the_4001_close_and_a_far_exp_is_served() {
    let (sim, sc) = rig("").await;
    // Expired two seconds ago, inside the 5 s leeway: served (its token
    // polls for it too), not closed at once.
    let late = hs(SECRET, serde_json::json!({"orgId": 1, "exp": now_s() - 2}));
    let mut late_ws = connect(sc.client_addr, &late).await;
    handshake(&mut late_ws, &hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let ids: HashSet<String> = sim
        .state
        .publish(1, "finance", vec![serde_json::json!({"n": 1})])
        .into_iter()
        .collect();
    collect_ids(&mut late_ws, &ids).await;
    // Then it is closed with 4001 once the leeway is over.
    assert_eq!(close_code(&mut late_ws).await, Some(4001));

    // An exp beyond any clock (or beyond u64 once the leeway is added) is
    // served like any other.
    for exp in [u64::MAX, 1_000_000_000_000_000] {
        let far = hs(SECRET, serde_json::json!({"orgId": 2, "exp": exp}));
        let mut far_ws = connect(sc.client_addr, &far).await;
        handshake(&mut far_ws, &hello(&["finance"])).await;
        // Org 1's poller may still linger, so `pollers` cannot tell when org 2's is parked.
        publish_until_delivered(&sim, &mut far_ws, 2).await;
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

// ---- JWKS -----------------------------------------------------------------

/// Base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A JWK (with `kid`) for the public half of `private`.
fn jwk(private: &Path, alg: Algorithm, kid: &str) -> serde_json::Value {
    if alg == Algorithm::EdDSA {
        // The raw Ed25519 key is the last 32 bytes of its SubjectPublicKeyInfo.
        let public = private.with_extension("pub.pem");
        let pem = std::fs::read(public).unwrap();
        let Some(rustls_pemfile::Item::SubjectPublicKeyInfo(spki)) =
            rustls_pemfile::read_one(&mut pem.as_slice()).unwrap()
        else {
            panic!("not a public key");
        };
        let raw = &spki.as_ref()[spki.as_ref().len() - 32..];
        return serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": kid, "use": "sig"});
    }
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&private_key(private, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn jwks_yaml(backend: &str, jwks_url: &str, refresh_s: u64) -> realtime_edge::Config {
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n\
         auth: {{jwt_secret: \"{SECRET}\", jwks_url: \"{jwks_url}\", jwks_refresh_s: {refresh_s}}}\n\
         upstream: {{base_url: \"{backend}\"}}\nflags: {{file: null}}\n"
    );
    realtime_edge::Config::from_yaml(
        "test.yaml",
        &yaml,
        &realtime_edge::config::EnvSecrets::default(),
    )
    .unwrap()
}

/// The status of a stream upgrade with `token` (101 when accepted).
async fn upgrade_status(addr: std::net::SocketAddr, token: &str) -> u16 {
    let mut req = stream_url(addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
    {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn jwks_from_the_simulator_gates_readiness_and_follows_rotation() {
    let d = dir();
    let a = keypair(
        &d,
        "a",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let b = keypair(
        &d,
        "b",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let sim = start_sim(Duration::from_secs(25)).await;
    let url = format!("{}/.well-known/jwks.json", sim.base_url());
    // The simulator serves an empty set until told otherwise: no key set, not ready.
    let sc = start_sidecar(jwks_yaml(&sim.base_url(), &url, 300)).await;
    let readyz = format!("http://{}/readyz", sc.admin_addr);
    assert_eq!(http("GET", &readyz, None, None).await.0, 503);
    // HS tokens work meanwhile.
    assert_eq!(upgrade_status(sc.client_addr, &token(1)).await, 101);

    // Through the control API, as a compose user would.
    let set_jwks = |doc: serde_json::Value| {
        let url = format!("{}/_sim/jwks", sim.base_url());
        async move {
            let (status, _, body) = http(
                "POST",
                &url,
                None,
                Some(("application/json", doc.to_string())),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    set_jwks(serde_json::json!({"keys": [jwk(&a.0, Algorithm::RS256, "a")]})).await;
    eventually("the key set loads and /readyz turns 200", || async {
        http("GET", &readyz, None, None).await.0 == 200
    })
    .await;
    let token_a = signed(
        Algorithm::RS256,
        &private_key(&a.0, Algorithm::RS256),
        Some("a"),
        2,
    );
    let token_b = signed(
        Algorithm::ES256,
        &private_key(&b.0, Algorithm::ES256),
        Some("b"),
        2,
    );
    assert_eq!(upgrade_status(sc.client_addr, &token_a).await, 101);

    // Rotation: a new kid appears; the first token naming it refreshes the
    // set (the scheduled refresh is 300 s away) and is accepted.
    set_jwks(serde_json::json!({"keys": [
        jwk(&a.0, Algorithm::RS256, "a"),
        jwk(&b.0, Algorithm::ES256, "b"),
    ]}))
    .await;
    let mut ws = connect(sc.client_addr, &token_b).await;
    let ack = handshake(&mut ws, &hello(&["finance"])).await;
    assert_eq!(ack["type"], "ack");
    // A token whose kid is nowhere is refused with 401 and a reason.
    let stranger = signed(
        Algorithm::RS256,
        &private_key(&a.0, Algorithm::RS256),
        Some("zz"),
        2,
    );
    assert_eq!(upgrade_status(sc.client_addr, &stranger).await, 401);
    sc.shutdown().await;

    // The old kid removed: a sidecar refreshing every second drops it.
    let sc = start_sidecar(jwks_yaml(&sim.base_url(), &url, 1)).await;
    assert_eq!(upgrade_status(sc.client_addr, &token_a).await, 101);
    set_jwks(serde_json::json!({"keys": [jwk(&b.0, Algorithm::ES256, "b")]})).await;
    eventually("a's tokens are refused once a is gone", || async {
        upgrade_status(sc.client_addr, &token_a).await == 401
    })
    .await;
    assert_eq!(upgrade_status(sc.client_addr, &token_b).await, 101);
    sc.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(d);
}

/// How the scripted key-set server answers.
#[derive(Clone)]
enum JwksMode {
    Serve(String),
    Hang,
}

/// A scripted JWKS server: answers per `mode`, counts requests.
async fn fake_jwks(
    mode: Arc<std::sync::Mutex<JwksMode>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mode = mode.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mode = mode.lock().unwrap().clone();
                match mode {
                    JwksMode::Serve(body) => {
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tcp.write_all(resp.as_bytes()).await;
                    }
                    // Holds the connection without answering; the test's
                    // runtime ends it.
                    JwksMode::Hang => std::future::pending::<()>().await,
                }
            });
        }
    });
    format!("http://{addr}/jwks")
}

#[tokio::test]
async fn jwks_refresh_keeps_the_last_good_set_through_bad_answers_and_rate_limits_unknown_kids() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let d = dir();
    let a = keypair(
        &d,
        "a",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let b = keypair(&d, "b", &["-algorithm", "ED25519"]);
    let set_a = serde_json::json!({"keys": [jwk(&a.0, Algorithm::ES256, "a")]}).to_string();
    let mode = Arc::new(std::sync::Mutex::new(JwksMode::Serve(set_a)));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = fake_jwks(mode.clone(), hits.clone()).await;
    let v = Arc::new(
        Verifier::new(&AuthConfig {
            jwks_url: Some(url.parse().unwrap()),
            jwks_refresh: Duration::from_secs(1),
            jwks_timeout: Duration::from_secs(1),
            jwks_max_bytes: 4096,
            ..AuthConfig::default()
        })
        .unwrap(),
    );
    assert!(!v.is_ready());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = v.start(shutdown).unwrap();
    eventually("the key set loads", || async { v.is_ready() }).await;
    let token_a = signed(
        Algorithm::ES256,
        &private_key(&a.0, Algorithm::ES256),
        Some("a"),
        4,
    );
    let token_b = signed(
        Algorithm::EdDSA,
        &private_key(&b.0, Algorithm::EdDSA),
        Some("b"),
        4,
    );
    assert_eq!(v.verify_refreshing(&token_a).await.unwrap().org_id, 4);

    // Bad answers, each seen through at least one whole refresh: the last
    // good set stays in force.
    let huge = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(10_000));
    let unsupported = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
    ]})
    .to_string();
    for bad in [
        JwksMode::Serve("<html>oops</html>".into()),
        JwksMode::Serve(huge),
        JwksMode::Serve(unsupported),
        JwksMode::Hang,
    ] {
        *mode.lock().unwrap() = bad;
        let seen = hits.load(Ordering::SeqCst);
        // Two more requests: the first bad one has then finished.
        eventually("a refresh with the bad answer", || async {
            hits.load(Ordering::SeqCst) >= seen + 2
        })
        .await;
        assert!(v.is_ready());
        assert_eq!(v.verify(&token_a).unwrap().org_id, 4);
    }

    // Unknown kids refresh at most once per 10 s: four unknown-kid tokens
    // in a row cause one fetch (a scheduled one may fall in between).
    *mode.lock().unwrap() = JwksMode::Serve("{}".into());
    let stranger = signed(
        Algorithm::ES256,
        &private_key(&a.0, Algorithm::ES256),
        Some("zz"),
        4,
    );
    let seen = hits.load(Ordering::SeqCst);
    for _ in 0..4 {
        assert!(matches!(
            v.verify_refreshing(&stranger).await,
            Err(realtime_edge::auth::AuthError::UnknownKey(_))
        ));
    }
    let after = hits.load(Ordering::SeqCst);
    assert!(
        after > seen && after <= seen + 2,
        "one unknown-kid fetch (plus at most one scheduled): {seen} -> {after}"
    );

    // Rotation by schedule: b appears, a is removed.
    let set_b = serde_json::json!({"keys": [jwk(&b.0, Algorithm::EdDSA, "b")]}).to_string();
    *mode.lock().unwrap() = JwksMode::Serve(set_b);
    eventually("b is accepted and a refused", || async {
        v.verify(&token_b).is_ok() && v.verify(&token_a).is_err()
    })
    .await;
    let _ = stop.send(true);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(d);
}
