//! `realtime-edge flags get|set|evaluate`: a thin client of the admin API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// `--admin` is not a URL.
    #[error("bad admin URL {0:?}")]
    Url(String),
    /// No answer.
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer other than 2xx.
    #[error("admin API answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
}

/// One admin request; returns the pretty-printed JSON answer.
pub async fn request(
    admin: &str,
    token: Option<&str>,
    method: http::Method,
    path: &str,
    form: Option<String>,
) -> Result<String, AdminClientError> {
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let mut builder = http::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if form.is_some() {
        builder = builder.header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let req = builder
        .body(Full::new(Bytes::from(form.unwrap_or_default())))
        .map_err(|_| AdminClientError::Url(admin.to_string()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let unreachable = |message: String| AdminClientError::Unreachable {
        url: url.clone(),
        message,
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if status >= 400 {
        return Err(AdminClientError::Refused { status, body: text });
    }
    Ok(text)
}

/// Encodes `KEY=VALUE` pairs as the form body curl's `-d` sends.
pub fn form_body(pairs: &[String]) -> Result<String, String> {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{p:?} is not KEY=VALUE"))?;
        ser.append_pair(k.trim(), v.trim());
    }
    Ok(ser.finish())
}

/// How often `drain --wait-s` looks whether the sidecar is still up.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// `realtime-edge drain`: starts the shutdown sequence (`POST /drain`) and,
/// with `wait` > 0, waits until the admin listener stops answering (the
/// process exited) or `wait` passes. A Kubernetes `preStop` hook runs it:
/// the kubelet sends SIGTERM only when the hook returns, so waiting keeps
/// that signal from cutting the drain short.
pub async fn drain(
    admin: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<String, AdminClientError> {
    let answer = request(admin, token, http::Method::POST, "/drain", None).await?;
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL.min(deadline - tokio::time::Instant::now())).await;
        if let Err(AdminClientError::Unreachable { .. }) =
            request(admin, None, http::Method::GET, "/healthz", None).await
        {
            break;
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies() {
        assert_eq!(
            form_body(&[
                "REALTIME_ROLLOUT_PERCENT=10".into(),
                "REALTIME_ALLOWLIST_ORGS=1,2".into()
            ])
            .unwrap(),
            "REALTIME_ROLLOUT_PERCENT=10&REALTIME_ALLOWLIST_ORGS=1%2C2"
        );
        assert!(form_body(&["oops".into()]).is_err());
    }
}
