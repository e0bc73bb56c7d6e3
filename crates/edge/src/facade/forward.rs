//! Why a V1 request is forwarded to the backend instead of being served by
//! the facade: the `reason` label of `streaming_facade_forwarded_total`.

/// Why a V1 request went to the backend instead of the facade (the
/// `reason` label of the forwarded counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardReason {
    /// No `Authorization: Bearer` token.
    NoToken,
    /// The token did not verify.
    InvalidToken,
    /// The org is in `REALTIME_DENYLIST_ORGS`.
    Denylisted,
    /// The query has a parameter other than the cursor.
    ExtraParams,
    /// The cursor was not minted by this sidecar in this position space
    /// (the backend's own, an earlier run's, forged or altered).
    ForeignCursor,
    /// Our cursor, but its position left the replay window.
    ExpiredCursor,
    /// The facade is off and the request carried a facade cursor.
    FacadeOff,
    /// The sidecar is draining.
    ShuttingDown,
}

impl ForwardReason {
    pub(crate) const ALL: [ForwardReason; 8] = [
        ForwardReason::NoToken,
        ForwardReason::InvalidToken,
        ForwardReason::Denylisted,
        ForwardReason::ExtraParams,
        ForwardReason::ForeignCursor,
        ForwardReason::ExpiredCursor,
        ForwardReason::FacadeOff,
        ForwardReason::ShuttingDown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ForwardReason::NoToken => "no_token",
            ForwardReason::InvalidToken => "invalid_token",
            ForwardReason::Denylisted => "denylisted",
            ForwardReason::ExtraParams => "extra_params",
            ForwardReason::ForeignCursor => "foreign_cursor",
            ForwardReason::ExpiredCursor => "expired_cursor",
            ForwardReason::FacadeOff => "facade_off",
            ForwardReason::ShuttingDown => "shutting_down",
        }
    }
}
