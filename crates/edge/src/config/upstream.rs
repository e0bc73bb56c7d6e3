//! `upstream`: where the backend lives and how long its answers may take.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `upstream.base_url`.
const BASE_URL: &str = "http://127.0.0.1:4000";
/// `upstream.native_stream_path`.
const NATIVE_STREAM_PATH: &str = "/v2/realtime/stream";
/// `upstream.poll_timeout_s`.
const POLL_TIMEOUT_S: u64 = 40;
/// `upstream.native_fallback_s`.
const NATIVE_FALLBACK_S: u64 = 5;

/// Where the backend lives.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL of the backend, without a trailing slash.
    pub base_url: url::Url,
    /// Path of the backend's native stream endpoint.
    pub(crate) native_stream_path: String,
    /// How long a V1 request may take before the poller gives up on it.
    pub(crate) poll_timeout: Duration,
    /// How long the native link may be down before a service falls back to polling.
    pub(crate) native_fallback_after: Duration,
    /// CA certificates (PEM) that verify an `https://` backend instead of the system roots.
    pub(crate) ca_file: Option<PathBuf>,
}

/// `upstream` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    base_url: Option<String>,
    native_stream_path: Option<String>,
    poll_timeout_s: Option<u64>,
    native_fallback_s: Option<u64>,
    ca_file: Option<String>,
}

impl RawUpstream {
    pub(super) fn validate(self, p: &mut Problems) -> UpstreamConfig {
        let default_url = || url::Url::parse(BASE_URL).expect("default URL parses");
        let base_text = self.base_url.unwrap_or_else(|| BASE_URL.to_string());
        let base_url = match url::Url::parse(&base_text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    p.push(
                        "upstream.base_url",
                        format!("{base_text:?} must not have a query or fragment"),
                    );
                }
                u
            }
            Ok(_) => {
                p.push(
                    "upstream.base_url",
                    format!("{base_text:?} must be an http:// or https:// URL with a host"),
                );
                default_url()
            }
            Err(e) => {
                p.push(
                    "upstream.base_url",
                    format!("{base_text:?} is not a URL: {e}"),
                );
                default_url()
            }
        };
        let native_stream_path = p.path(
            "upstream.native_stream_path",
            self.native_stream_path
                .as_deref()
                .unwrap_or(NATIVE_STREAM_PATH),
        );
        let poll_timeout = Duration::from_secs(p.range(
            "upstream.poll_timeout_s",
            self.poll_timeout_s,
            POLL_TIMEOUT_S,
            1,
            3600,
        ));
        let native_fallback_after = Duration::from_secs(p.range(
            "upstream.native_fallback_s",
            self.native_fallback_s,
            NATIVE_FALLBACK_S,
            0,
            3600,
        ));
        // A missing file falls back to none, so `check` does not report it twice.
        let ca_file = self.ca_file.map(PathBuf::from).filter(|f| {
            let readable = f.is_file();
            if !readable {
                p.push(
                    "upstream.ca_file",
                    format!("{} is not a readable file", f.display()),
                );
            }
            readable
        });
        UpstreamConfig {
            base_url,
            native_stream_path,
            poll_timeout,
            native_fallback_after,
            ca_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, problems};

    #[test]
    fn https_upstream_and_its_ca_file_are_read() {
        let c = parse("upstream: {base_url: \"https://backend:443\"}\n").unwrap();
        assert_eq!(c.upstream.base_url.scheme(), "https");
        assert!(c.upstream.ca_file.is_none());
        let lines = problems("upstream: {ca_file: /nonexistent/ca.pem}\n");
        assert!(lines[0].contains("upstream.ca_file"), "{lines:?}");
    }
}
