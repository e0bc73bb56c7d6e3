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
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use crate::config::PassthroughConfig;
use crate::drain::Drain;
use crate::http_server::{Body, json_error};

mod body;
mod headers;
pub(crate) mod raw;
mod upstream;

use body::{BackendBody, ClientBody, ExchangeState, IdleTimer};
use headers::{append_forwarded, strip_hop_by_hop, upgrade_protocol};
use upstream::{Failure, Upstream, UpstreamPool};

pub(crate) struct Passthrough {
    pool: Arc<UpstreamPool>,
    /// The base URL's path without its trailing slash ("" for none): what
    /// every forwarded request's path is appended to.
    base_path: String,
    /// The Host header for a request that came without one: the backend's
    /// authority.
    backend_host: Option<HeaderValue>,
    config: PassthroughConfig,
    in_flight: Arc<Semaphore>,
    relays: Arc<Semaphore>,
    drain: Arc<Drain>,
    /// Where the byte path connects; `None` for an `https://` backend,
    /// which only hyper's path reaches.
    raw_backend: Option<(String, u16)>,
}

/// How long connecting to the backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Passthrough {
    pub(crate) fn new(
        base: url::Url,
        config: PassthroughConfig,
        drain: Arc<Drain>,
        tls: &tokio_rustls::rustls::ClientConfig,
    ) -> Self {
        let connector = crate::tls::https_connector(tls, CONNECT_TIMEOUT);
        let host = base.host_str().unwrap_or_default();
        let authority = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let origin = format!("{}://{authority}/", base.scheme())
            .parse::<http::Uri>()
            .unwrap_or_default();
        Passthrough {
            // Idle connections are descriptors too: within the budget.
            pool: Arc::new(UpstreamPool::new(
                connector,
                origin,
                config.max_in_flight,
                drain.tracker().clone(),
            )),
            base_path: base.path().trim_end_matches('/').to_string(),
            backend_host: HeaderValue::from_str(&authority).ok(),
            raw_backend: match (base.scheme(), base.port_or_known_default()) {
                // An IPv6 literal without its brackets, as a socket address wants it.
                ("http", Some(port)) => Some((host.trim_matches(['[', ']']).to_string(), port)),
                _ => None,
            },
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            relays: Arc::new(Semaphore::new(config.max_websockets)),
            config,
            drain,
        }
    }

    /// The byte path in front of this pass-through, for a plain `http://`
    /// backend: it forwards what it can and hands the rest to hyper.
    pub(crate) fn raw_front(&self, own_paths: raw::OwnPaths, tls: bool) -> Option<raw::RawFront> {
        let (host, port) = self.raw_backend.clone()?;
        let authority = self
            .backend_host
            .as_ref()
            .map(|h| h.as_bytes().to_vec())
            .unwrap_or_default();
        Some(raw::RawFront::new(
            raw::RawBackend {
                host,
                port,
                authority,
                base_path: self.base_path.clone(),
            },
            own_paths,
            tls,
            self.config.clone(),
            self.in_flight.clone(),
        ))
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
        if original_host.is_none()
            && let Some(host) = &self.backend_host
        {
            parts.headers.insert(header::HOST, host.clone());
        }
        append_forwarded(&mut parts.headers, peer, tls, original_host);
        parts.uri = uri;
        let idle = self.config.idle_timeout;
        // The response timeout runs from the end of the request body: an
        // upload that keeps moving is bounded by the idle timeout instead.
        let state = Arc::new(ExchangeState::new(body.is_end_stream()));
        let body = ClientBody {
            inner: body,
            idle: IdleTimer::new(idle),
            state: state.clone(),
        };
        let outgoing = Request::from_parts(parts, body);

        if let Some(client_upgrade) = client_upgrade {
            return self
                .forward_upgrade(outgoing, &state, client_upgrade, relay_permit)
                .await;
        }
        let (mut up, answer) = match self.exchange_pooled(outgoing, &state).await {
            Ok(exchanged) => exchanged,
            Err(refusal) => return refusal,
        };
        let resp = match answer {
            Ok(resp) => resp,
            Err(failure) => return self.failed(failure, &state),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the backend's now; it is closed with `up`.
            return json_error(
                StatusCode::BAD_GATEWAY,
                "backend switched protocols unasked",
            );
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = BackendBody {
            inner: body,
            idle: IdleTimer::new(idle),
            upstream: up.take(),
            pool: self.pool.clone(),
            _in_flight: in_flight,
        };
        Response::from_parts(parts, body.boxed())
    }

    /// Sends a request on a pooled connection (once more on a new one when
    /// an idle connection turned out closed before the request went out).
    #[allow(clippy::type_complexity)]
    async fn exchange_pooled(
        &self,
        mut outgoing: Request<ClientBody>,
        state: &ExchangeState,
    ) -> Result<
        (
            Option<Box<Upstream<upstream::Plain>>>,
            Result<Response<Incoming>, Failure>,
        ),
        Response<Body>,
    > {
        loop {
            let mut up = match self.pool.checkout().await {
                Ok(up) => up,
                Err(e) => {
                    tracing::warn!(error = %e, "backend unreachable for pass-through");
                    return Err(json_error(StatusCode::BAD_GATEWAY, "backend unavailable"));
                }
            };
            let answer = up
                .exchange(outgoing, state, self.config.response_timeout)
                .await;
            match answer {
                Err(Failure::NotSent(req, e)) if up.reused() => {
                    tracing::debug!(error = %e, "idle backend connection closed; request sent on a new one");
                    outgoing = *req;
                }
                answer => return Ok((Some(up), answer)),
            }
        }
    }

    /// An upgrade request: on a connection of its own, which becomes the
    /// backend's side of the relay when the backend switches protocols.
    async fn forward_upgrade(
        &self,
        outgoing: Request<ClientBody>,
        state: &ExchangeState,
        client_upgrade: hyper::upgrade::OnUpgrade,
        relay_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Response<Body> {
        let mut up = match self.pool.connect_upgradeable().await {
            Ok(up) => up,
            Err(e) => {
                tracing::warn!(error = %e, "backend unreachable for pass-through");
                return json_error(StatusCode::BAD_GATEWAY, "backend unavailable");
            }
        };
        let mut resp = match up
            .exchange(outgoing, state, self.config.response_timeout)
            .await
        {
            Ok(resp) => resp,
            Err(failure) => return self.failed(failure, state),
        };
        // The rest of the connection's work (the hand-over of the socket, or
        // the rest of a refusal's body) runs on its own, owned by the drain's
        // tracker; it ends with the connection.
        let driver = up.into_driver();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            if let Some(driver) = driver {
                self.drain.tracker().spawn(driver);
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Response::from_parts(parts, body.map_err(Into::into).boxed());
        }
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let idle = self.config.idle_timeout;
        let close = self.drain.stream_close();
        self.drain.tracker().spawn(async move {
            let _permit = relay_permit;
            if let Some(driver) = driver {
                let _ = driver.await;
            }
            let (Ok(client), Ok(backend)) = (client_upgrade.await, backend_upgrade.await) else {
                return;
            };
            let end =
                super::relay::run(TokioIo::new(client), TokioIo::new(backend), idle, close).await;
            tracing::debug!(?end, "relayed WebSocket ended");
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, crate::http_server::full(""))
    }

    /// The answer to an exchange that gave no response.
    fn failed(&self, failure: Failure, state: &ExchangeState) -> Response<Body> {
        if let Some(fault) = state.client_fault() {
            tracing::debug!("pass-through request body broken by the client");
            return fault.response();
        }
        match failure {
            Failure::NotSent(_, e) | Failure::Failed(e) => {
                tracing::warn!(error = %e, "backend unreachable for pass-through");
                json_error(StatusCode::BAD_GATEWAY, "backend unavailable")
            }
            Failure::HeadOverdue => {
                let timeout = self.config.response_timeout;
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "backend sent no response head in time"
                );
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("backend did not answer within {} s", timeout.as_secs()),
                )
            }
        }
    }

    /// The backend request target for a request: the base URL's path
    /// followed by the request's path and query, in origin form (the
    /// request's own bytes, shared, when the base URL has no path).
    fn target(&self, requested: &http::Uri) -> Option<http::Uri> {
        let path_and_query = requested.path_and_query();
        if self.base_path.is_empty() {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            return http::Uri::from_parts(parts).ok();
        }
        let target = format!(
            "{}{}",
            self.base_path,
            path_and_query.map(|p| p.as_str()).unwrap_or("/")
        );
        target.parse::<http::Uri>().ok()
    }
}

#[cfg(test)]
mod tests;
