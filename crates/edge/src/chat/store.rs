//! The backend's chat store (CONTRACT 8, hosted mode): three small HTTP
//! endpoints called with the user's own token. Each call is bounded by
//! `chat.backend_timeout_ms` and `chat.max_response_bytes`; every failure is
//! a typed [`StoreError`] so the room can tell the sender without guessing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

use crate::config::{ChatConfig, Config};
use crate::metrics as m;

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot build the request: {0}")]
    Build(#[source] http::Error),
    #[error("request to the backend failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("the backend answered {status}")]
    Status { status: u16 },
    #[error("cannot read the backend's answer: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the backend's answer is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the backend's answer {0}")]
    Shape(&'static str),
}

/// Which endpoint a request went to (the `endpoint` metric label).
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    History,
    Messages,
    Receipts,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::History => "history",
            Endpoint::Messages => "messages",
            Endpoint::Receipts => "receipts",
        }
    }
}

/// The HTTP client for the three store endpoints.
pub(crate) struct BackendStore {
    http: Client<HttpConnector, Full<Bytes>>,
    base: url::Url,
    cfg: ChatConfig,
}

impl BackendStore {
    pub(crate) fn new(config: &Config) -> BackendStore {
        BackendStore {
            http: Client::builder(TokioExecutor::new()).build_http(),
            base: config.upstream.base_url.clone(),
            cfg: config.chat.clone(),
        }
    }

    fn url(&self, path: &str) -> url::Url {
        let mut u = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{prefix}{path}"));
        u
    }

    /// `GET {history_path}?roomId=R&limit=N` → the `messages` list.
    pub(crate) async fn history(&self, token: &str, room: &str) -> Result<Vec<Value>, StoreError> {
        let mut url = self.url(&self.cfg.history_path);
        url.query_pairs_mut()
            .append_pair("roomId", room)
            .append_pair("limit", &self.cfg.history_limit.to_string());
        let v = self
            .call(Endpoint::History, http::Method::GET, url, token, None, None)
            .await?;
        match v {
            Value::Object(mut o) => match o.remove("messages") {
                Some(Value::Array(list)) => Ok(list),
                _ => Err(StoreError::Shape("has no messages list")),
            },
            _ => Err(StoreError::Shape("is not a JSON object")),
        }
    }

    /// `POST {messages_path}` with `Idempotency-Key: clientMsgId` → the saved message.
    pub(crate) async fn save_message(
        &self,
        token: &str,
        room: &str,
        text: &str,
        client_msg_id: &str,
    ) -> Result<Map<String, Value>, StoreError> {
        let body = json!({"roomId": room, "text": text, "clientMsgId": client_msg_id});
        let v = self
            .call(
                Endpoint::Messages,
                http::Method::POST,
                self.url(&self.cfg.messages_path),
                token,
                Some(body),
                Some(client_msg_id),
            )
            .await?;
        match v {
            Value::Object(o)
                if matches!(o.get("id"), Some(Value::String(_) | Value::Number(_))) =>
            {
                Ok(o)
            }
            _ => Err(StoreError::Shape("is not a saved message with an id")),
        }
    }

    /// `POST {receipts_path}` `{"roomId", "messageId"}`.
    pub(crate) async fn save_receipt(
        &self,
        token: &str,
        room: &str,
        message_id: &Value,
    ) -> Result<(), StoreError> {
        let body = json!({"roomId": room, "messageId": message_id});
        self.call(
            Endpoint::Receipts,
            http::Method::POST,
            self.url(&self.cfg.receipts_path),
            token,
            Some(body),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn call(
        &self,
        endpoint: Endpoint,
        method: http::Method,
        url: url::Url,
        token: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StoreError> {
        let timeout = self.cfg.backend_timeout;
        let result = tokio::time::timeout(
            timeout,
            self.exchange(method, url, token, body, idempotency_key),
        )
        .await
        .unwrap_or(Err(StoreError::Timeout(timeout)));
        let label = match &result {
            Ok(_) => "2xx",
            Err(StoreError::Status { status }) if *status < 500 => "4xx",
            Err(StoreError::Status { .. }) => "5xx",
            Err(StoreError::Timeout(_)) => "timeout",
            Err(StoreError::NotJson(_) | StoreError::Shape(_)) => "garbage",
            Err(_) => "error",
        };
        ::metrics::counter!(m::CHAT_BACKEND_REQUESTS, m::label::ENDPOINT => endpoint.as_str(), m::label::STATUS => label)
            .increment(1);
        result
    }

    async fn exchange(
        &self,
        method: http::Method,
        url: url::Url,
        token: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StoreError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json");
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        let payload = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(StoreError::Build)?;
        let resp = self.http.request(req).await.map_err(StoreError::Request)?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), self.cfg.max_response_bytes)
            .collect()
            .await
            .map_err(StoreError::Body)?
            .to_bytes();
        if !status.is_success() {
            return Err(StoreError::Status {
                status: status.as_u16(),
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(StoreError::NotJson)
    }
}
