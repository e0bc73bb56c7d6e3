//! The two browser assets embedded in the binary (CONTRACT section 10): the
//! client library served on the client listener at
//! `GET /v2/realtime/client.js`, and the ops page served on the admin
//! listener at `GET /`. Both are compiled in with `include_str!`, so a
//! deployment is still the one binary, and the library a browser loads always
//! matches the sidecar it talks to.
#![warn(missing_docs)]

use std::sync::OnceLock;

use hyper::{Response, StatusCode};

use crate::http_server::{Body, full, json_error};

/// Where the client library is served on the client listener.
pub(crate) const CLIENT_JS_PATH: &str = "/v2/realtime/client.js";

/// The client library (`clients/js/realtime-client.js`).
pub const CLIENT_JS: &str = include_str!("../../../clients/js/realtime-client.js");

/// The ops page (`assets/ops.html`): self-contained, no external assets.
pub(crate) const OPS_PAGE: &str = include_str!("../../../assets/ops.html");

/// How long a browser may use its copy of the library before revalidating.
/// Short, because the library must follow the sidecar across upgrades; the
/// revalidation itself costs a 304 thanks to the ETag.
const CLIENT_JS_MAX_AGE_S: u32 = 300;

/// A strong ETag of `body`: its 128-bit murmur3 hash, so it changes whenever
/// the content does and is the same on every replica of one build.
fn content_etag(body: &str) -> String {
    let hash = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(body.as_bytes()), 0).unwrap_or(0);
    format!("\"{hash:032x}\"")
}

fn client_js_etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| content_etag(CLIENT_JS))
}

/// True when an `If-None-Match` header value names `etag` (or is `*`).
fn matches_etag(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// `GET`/`HEAD /v2/realtime/client.js`: the ES module, with an ETag and a
/// 304 answer to a matching `If-None-Match`. Any origin may load it (module
/// scripts are fetched with CORS, and the app usually lives on another
/// origin than the API); it holds no data.
pub(crate) fn client_js(method: &http::Method, headers: &http::HeaderMap) -> Response<Body> {
    if method != http::Method::GET && method != http::Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the client library is read with GET",
        );
    }
    let etag = client_js_etag();
    let not_modified = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches_etag(v, etag));
    let builder = Response::builder()
        .header(http::header::ETAG, etag)
        .header(
            http::header::CACHE_CONTROL,
            format!("public, max-age={CLIENT_JS_MAX_AGE_S}"),
        )
        .header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    let response = if not_modified {
        builder.status(StatusCode::NOT_MODIFIED).body(full(""))
    } else {
        let body = if method == http::Method::HEAD {
            ""
        } else {
            CLIENT_JS
        };
        builder
            .header(http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")
            .header(http::header::CONTENT_LENGTH, CLIENT_JS.len())
            .body(full(body))
    };
    response.unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "client.js"))
}

/// `GET /` on the admin listener: the ops page. It holds no data (its
/// scripts call the admin API with the token), so it needs no token itself;
/// it may not be framed by another site, and its scripts talk only to the
/// admin listener.
pub(crate) fn ops_page() -> Response<Body> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'; \
             frame-ancestors 'none'",
        )
        .body(full(OPS_PAGE))
        .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "ops page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_follows_content() {
        assert_eq!(content_etag("a"), content_etag("a"));
        assert_ne!(content_etag("a"), content_etag("b"));
        assert_eq!(client_js_etag().len(), 34);
    }

    #[test]
    fn if_none_match_lists_and_weak_validators() {
        let e = "\"abc\"";
        assert!(matches_etag("\"abc\"", e));
        assert!(matches_etag("\"x\", W/\"abc\"", e));
        assert!(matches_etag("*", e));
        assert!(!matches_etag("\"abd\"", e));
        assert!(!matches_etag("", e));
    }

    #[test]
    fn the_assets_are_self_contained() {
        assert!(CLIENT_JS.contains("export class RealtimeClient"));
        assert!(
            !CLIENT_JS.contains("import "),
            "the library has no dependencies"
        );
        for external in ["http://", "https://", "//cdn"] {
            assert!(
                !OPS_PAGE.contains(&format!("src=\"{external}")),
                "the ops page loads nothing from outside"
            );
            assert!(!OPS_PAGE.contains(&format!("href=\"{external}")));
        }
    }
}
