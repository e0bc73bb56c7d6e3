//! Pass-through: every request that is not the unified stream goes to the
//! backend unchanged — method, path, query, headers (minus hop-by-hop, plus
//! X-Forwarded-*), bodies streamed both ways — and other WebSocket upgrades
//! are relayed byte for byte (so frame for frame) once both sides upgraded.
//!
//! Bounds (CONTRACT 6): at most `passthrough.max_in_flight` requests and
//! `passthrough.max_websockets` relays at once (503 past them); a backend
//! that sends no response head within `passthrough.response_timeout_s` is
//! answered 504; a body (either way) or relayed WebSocket that moves
//! nothing for `passthrough.idle_timeout_s` is cut. A request body the
//! client breaks (malformed chunked encoding, stalls) is the client's
//! fault: 400 or 408, not counted as a backend failure.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::config::PassthroughConfig;
use crate::drain::Drain;
use crate::http_server::{Body, json_error};

mod body;

use body::{BackendBody, ClientBody, IdleTimer};

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

pub(crate) struct Passthrough {
    client: Client<crate::tls::HttpsConnector, ClientBody>,
    base: url::Url,
    /// The backend's scheme and authority, when its base URL has no path:
    /// then a request's URI is built from these and the request's own path
    /// and query (shared bytes, no copy and no parse per request).
    origin: Option<(http::uri::Scheme, http::uri::Authority)>,
    config: PassthroughConfig,
    in_flight: Arc<Semaphore>,
    relays: Arc<Semaphore>,
    drain: Arc<Drain>,
}

impl Passthrough {
    pub(crate) fn new(
        base: url::Url,
        config: PassthroughConfig,
        drain: Arc<Drain>,
        tls: &tokio_rustls::rustls::ClientConfig,
    ) -> Self {
        let connector = crate::tls::https_connector(tls, Duration::from_secs(5));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // Idle pooled connections are descriptors too: within the budget.
            .pool_max_idle_per_host(config.max_in_flight)
            .build(connector);
        let origin = if base.path() == "/" && base.query().is_none() {
            base.as_str()
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| Some((u.scheme()?.clone(), u.authority()?.clone())))
        } else {
            None
        };
        Passthrough {
            client,
            base,
            origin,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            relays: Arc::new(Semaphore::new(config.max_websockets)),
            config,
            drain,
        }
    }

    pub(crate) async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let upgrade = upgrade_protocol(req.headers());
        let Some(uri) = self.target(req.uri()) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "request target cannot be forwarded",
            );
        };
        let Ok(in_flight) = self.in_flight.clone().try_acquire_owned() else {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many pass-through requests in flight; retry shortly",
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
        let idle = self.config.idle_timeout;
        let client_fault = Arc::new(Mutex::new(None));
        // The response timeout runs from the end of the request body: an
        // upload that keeps moving is bounded by the idle timeout instead.
        let (body_sent, mut body_sent_rx) = tokio::sync::watch::channel(body.is_end_stream());
        let body = ClientBody {
            inner: body,
            idle: IdleTimer::new(idle),
            fault: client_fault.clone(),
            sent: body_sent,
        };
        let outgoing = Request::from_parts(parts, body);

        let timeout = self.config.response_timeout;
        let head_overdue = async {
            let _ = body_sent_rx.wait_for(|sent| *sent).await;
            tokio::time::sleep(timeout).await;
        };
        let answer = tokio::select! {
            r = self.client.request(outgoing) => Ok(r),
            _ = head_overdue => Err(()),
        };
        let mut resp = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let fault = client_fault.lock().map(|f| *f).unwrap_or(None);
                if let Some(fault) = fault {
                    tracing::debug!(error = %e, "pass-through request body broken by the client");
                    return fault.response();
                }
                tracing::warn!(error = %e, "backend unreachable for pass-through");
                return json_error(StatusCode::BAD_GATEWAY, "backend unavailable");
            }
            Err(_) => {
                let fault = client_fault.lock().map(|f| *f).unwrap_or(None);
                if let Some(fault) = fault {
                    return fault.response();
                }
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "backend sent no response head in time"
                );
                return json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("backend did not answer within {} s", timeout.as_secs()),
                );
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
            let close = self.drain.stream_close();
            self.drain.tracker().spawn(async move {
                let _permit = relay_permit;
                let (Ok(client), Ok(backend)) = (client_upgrade.await, backend_upgrade.await)
                else {
                    return;
                };
                let end =
                    super::relay::run(TokioIo::new(client), TokioIo::new(backend), idle, close)
                        .await;
                tracing::debug!(?end, "relayed WebSocket ended");
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, crate::http_server::full(""));
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = BackendBody {
            inner: body,
            idle: IdleTimer::new(idle),
            _in_flight: in_flight,
        };
        Response::from_parts(parts, body.boxed())
    }
}

impl Passthrough {
    /// The backend URI for a request: the base URL followed by the
    /// request's path and query.
    fn target(&self, requested: &http::Uri) -> Option<http::Uri> {
        let path_and_query = requested.path_and_query();
        if let Some((scheme, authority)) = &self.origin {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            return http::Uri::from_parts(parts).ok();
        }
        let target = format!(
            "{}{}",
            self.base.as_str().trim_end_matches('/'),
            path_and_query.map(|p| p.as_str()).unwrap_or("/")
        );
        target.parse::<http::Uri>().ok()
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
