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
        jwt_secret: None,
        jwt_public_key_file: Some(public.to_path_buf()),
        org_claim: "orgId".into(),
        admin_token: None,
        user_claim: "sub".into(),
        name_claim: "name".into(),
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
        jwt_secret: None,
        jwt_public_key_file: Some(rsa_priv.clone()),
        org_claim: "orgId".into(),
        admin_token: None,
        user_claim: "sub".into(),
        name_claim: "name".into(),
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
