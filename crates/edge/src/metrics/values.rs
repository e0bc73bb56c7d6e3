//! The closed sets of label values: one enum per label whose values are
//! fixed, with every value (to register series at zero) and the text that
//! dashboards, alerts and the JSON show.

/// A closed set of label values: the enum, every value (to register series
/// at zero) and the text of each.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The label value (and, where it is shown, the JSON text).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

label_values! {
    /// How events are served: the `mode` of the `ack` and of
    /// `connectionsByMode`, and (poll or native, for one service) the `mode`
    /// label of [`DELIVERY_LATENCY_SECONDS`](super::DELIVERY_LATENCY_SECONDS), [`UPSTREAM_REQUESTS`](super::UPSTREAM_REQUESTS) and the
    /// `to` label of [`MODE_SWITCHES`](super::MODE_SWITCHES).
    ServingMode {
        /// By V1 long-pollers.
        Poll => "poll",
        /// By the backend's native stream.
        Native => "native",
        /// A connection some of whose services are polled and some native.
        Mixed => "mixed",
    }
}

label_values! {
    /// The `kind` label of [`ERRORS`](super::ERRORS).
    ErrorKind {
        /// An upstream event over `stream.max_event_bytes` (dropped).
        EventTooLarge => "event_too_large",
        /// A client silent for `stream.client_timeout_s` (dropped).
        Timeout => "timeout",
        /// The backend failed a poll or the native link.
        Upstream => "upstream",
        /// The backend refused the token a source used.
        UpstreamAuth => "upstream_auth",
        /// A client's token was refused or expired.
        Auth => "auth",
        /// A client's handshake was refused.
        Handshake => "handshake",
        /// A client fell past its send queue (closed with 1013).
        SlowClient => "slow_client",
        /// Writing to a client failed.
        Send => "send",
        /// An event of another org was dropped.
        CrossOrg => "cross_org",
        /// A connection limit was reached.
        Overload => "overload",
    }
}

label_values! {
    /// The `result` label of [`FLAG_RELOADS`](super::FLAG_RELOADS), [`TLS_CERT_RELOADS`](super::TLS_CERT_RELOADS) and
    /// [`JWKS_REFRESHES`](super::JWKS_REFRESHES).
    Outcome {
        /// Done.
        Ok => "ok",
        /// The last good state was kept.
        Error => "error",
    }
}

label_values! {
    /// The `status` label of [`UPSTREAM_REQUESTS`](super::UPSTREAM_REQUESTS): a backend answer's class.
    StatusClass {
        /// 2xx.
        Success => "2xx",
        /// 401 or 403.
        Auth => "auth",
        /// 429.
        TooManyRequests => "429",
        /// Any other 4xx.
        ClientError => "4xx",
        /// 5xx.
        ServerError => "5xx",
        /// 1xx or 3xx.
        Other => "other",
        /// No answer (connection, timeout, or a broken body).
        Error => "error",
    }
}

impl StatusClass {
    /// The class of an HTTP status.
    pub(crate) fn of(status: u16) -> StatusClass {
        match status {
            200..=299 => StatusClass::Success,
            401 | 403 => StatusClass::Auth,
            429 => StatusClass::TooManyRequests,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Other,
        }
    }
}

label_values! {
    /// The `delivery` label of the upload series: the backend endpoint a
    /// file went to.
    UploadRoute {
        /// The V1 multipart endpoint.
        Legacy => "legacy",
        /// The native upload endpoint.
        Native => "native",
    }
}

label_values! {
    /// The `mode` label of [`CHAT_ACTIVE_CONNECTIONS`](super::CHAT_ACTIVE_CONNECTIONS).
    ChatMode {
        /// Rooms hosted by the sidecar over the backend's store endpoints.
        Hosted => "hosted",
        /// Relayed to the backend's native chat stream.
        Native => "native",
    }
}

label_values! {
    /// The `result` label of [`CHAT_MESSAGES`](super::CHAT_MESSAGES).
    ChatMessageResult {
        /// Stored by the backend.
        Saved => "saved",
        /// The backend did not store it.
        Failed => "failed",
        /// Over `chat.max_messages_per_s`.
        RateLimited => "rate_limited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label texts are what dashboards, alerts and the JSON show.
    #[test]
    fn label_texts() {
        let texts = |all: &[ServingMode]| all.iter().map(|m| m.as_str()).collect::<Vec<_>>();
        assert_eq!(texts(ServingMode::ALL), ["poll", "native", "mixed"]);
        let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "event_too_large",
                "timeout",
                "upstream",
                "upstream_auth",
                "auth",
                "handshake",
                "slow_client",
                "send",
                "cross_org",
                "overload"
            ]
        );
        assert_eq!(StatusClass::of(204).as_str(), "2xx");
        assert_eq!(StatusClass::of(403).as_str(), "auth");
        assert_eq!(StatusClass::of(429).as_str(), "429");
        assert_eq!(StatusClass::of(404).as_str(), "4xx");
        assert_eq!(StatusClass::of(502).as_str(), "5xx");
        assert_eq!(StatusClass::of(302).as_str(), "other");
    }
}
