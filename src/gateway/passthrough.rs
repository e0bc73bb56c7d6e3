//! Pass-through: every request that is not the unified stream goes to the
//! backend unchanged — method, path, query, headers (minus hop-by-hop, plus
//! X-Forwarded-*), bodies streamed both ways — and other WebSocket upgrades
//! are relayed byte for byte (so frame for frame) once both sides upgraded.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::http_server::{Body, json_error};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Relayed WebSocket upgrades at once. An upgraded connection leaves the
/// listener's connection count, so it is counted here instead.
const MAX_RELAYED_UPGRADES: usize = 4096;

pub struct Passthrough {
    client: Client<crate::tls::HttpsConnector, Incoming>,
    base: url::Url,
    relays: Arc<Semaphore>,
}

impl Passthrough {
    pub fn new(base: url::Url, tls: &tokio_rustls::rustls::ClientConfig) -> Self {
        let connector = crate::tls::https_connector(tls, Duration::from_secs(5));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Passthrough {
            client,
            base,
            relays: Arc::new(Semaphore::new(MAX_RELAYED_UPGRADES)),
        }
    }

    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let upgrade = upgrade_protocol(req.headers());
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let target = format!(
            "{}{}",
            self.base.as_str().trim_end_matches('/'),
            path_and_query
        );
        let Ok(uri) = target.parse::<http::Uri>() else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "request target cannot be forwarded",
            );
        };
        let relay_permit = match &upgrade {
            None => None,
            Some(_) => match self.relays.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many relayed WebSocket connections; retry shortly",
                    );
                }
            },
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        append_forwarded(&mut parts.headers, peer, tls, original_host);
        parts.uri = uri;
        let outgoing = Request::from_parts(parts, body);

        let mut resp = match self.client.request(outgoing).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "backend unreachable for pass-through");
                return json_error(StatusCode::BAD_GATEWAY, "backend unavailable");
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    "backend switched protocols unasked",
                );
            };
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _permit = relay_permit;
                let (Ok(client), Ok(backend)) = (client_upgrade.await, backend_upgrade.await)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, crate::http_server::full(""));
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.map_err(Into::into).boxed())
    }
}

fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn append_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(h) = host {
        headers.insert("x-forwarded-host", h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        append_forwarded(
            &mut h,
            "127.0.0.2:5000".parse().unwrap(),
            false,
            Some("app.example".parse().unwrap()),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.2");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "app.example");
    }
}
