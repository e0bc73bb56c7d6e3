//! The embedded browser assets over HTTP: the client library on the client
//! listener (ETag, caching, 304, CORS) and the ops page on the admin listener
//! (no token for the HTML, the token still required by the API it calls).

mod common;

use common::*;

#[tokio::test]
async fn client_library_is_served_with_etag_and_revalidates_with_304() {
    let (_sim, sc) = rig("").await;
    let url = format!("http://{}/v2/realtime/client.js", sc.client_addr);
    let (status, headers, body) = http("GET", &url, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(body, realtime_edge::assets::CLIENT_JS);
    let etag = headers["etag"].to_str().unwrap().to_string();

    let (status, headers, body) = http_with("GET", &url, &[("if-none-match", etag.as_str())]).await;
    assert_eq!(status, 304);
    assert_eq!(headers["etag"], etag.as_str());
    assert!(body.is_empty());

    let (status, _, body) = http_with("GET", &url, &[("if-none-match", "\"stale\"")]).await;
    assert_eq!(status, 200);
    assert_eq!(body, realtime_edge::assets::CLIENT_JS);

    let (status, _, body) = http("POST", &url, None, Some(("text/plain", "x".into()))).await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("error"));
}

#[tokio::test]
async fn ops_page_needs_no_token_but_its_api_does() {
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let mut cfg = config(&sim.base_url(), "");
    cfg.auth.admin_token = Some("ops-secret".into());
    let sc = start_sidecar(cfg).await;
    let base = format!("http://{}", sc.admin_addr);
    let (status, headers, body) = http("GET", &format!("{base}/"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    assert!(body.contains("REALTIME_ROLLOUT_PERCENT") && body.contains("sessionStorage"));
    let (status, _, _) = http("GET", &format!("{base}/feature-flags"), None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = http(
        "GET",
        &format!("{base}/feature-flags"),
        Some("ops-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

/// A GET with extra request headers.
async fn http_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::<bytes::Bytes>::new()).unwrap();
    let client: Client<_, Empty<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}
