//! What the forwarder reads in header fields: which ones are hop-by-hop
//! or frame the message, what `Connection` lists, `Content-Length` values.

/// Header names one head's `Connection` fields may list.
const MAX_CONNECTION_NAMES: usize = 16;

/// What a header field is to the forwarder.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    EndToEnd,
    Connection,
    /// `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`.
    HopByHop,
    TransferEncoding,
    Trailer,
    Upgrade,
    ContentLength,
    Host,
    Expect,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
}

pub(super) fn role(name: &str) -> Role {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    // By length first: most names are none of these and fail one compare.
    match name.len() {
        2 if is("te") => Role::HopByHop,
        4 if is("host") => Role::Host,
        6 if is("expect") => Role::Expect,
        7 if is("trailer") => Role::Trailer,
        7 if is("upgrade") => Role::Upgrade,
        10 if is("connection") => Role::Connection,
        10 if is("keep-alive") => Role::HopByHop,
        14 if is("content-length") => Role::ContentLength,
        15 if is("x-forwarded-for") => Role::ForwardedFor,
        16 if is("x-forwarded-host") => Role::ForwardedHost,
        17 if is("transfer-encoding") => Role::TransferEncoding,
        17 if is("x-forwarded-proto") => Role::ForwardedProto,
        18 if is("proxy-authenticate") => Role::HopByHop,
        19 if is("proxy-authorization") => Role::HopByHop,
        _ => Role::EndToEnd,
    }
}

/// What the `Connection` fields of a head say.
#[derive(Default)]
pub(super) struct ConnectionTokens<'a> {
    pub(super) close: bool,
    pub(super) upgrade: bool,
    /// Other header names: hop-by-hop for this head.
    named: [&'a str; MAX_CONNECTION_NAMES],
    count: usize,
    /// More names than `named` holds, or one that is not text.
    pub(super) unusable: bool,
}

impl<'a> ConnectionTokens<'a> {
    pub(super) fn add(&mut self, value: &'a [u8]) {
        let Ok(value) = std::str::from_utf8(value) else {
            self.unusable = true;
            return;
        };
        for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])) {
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                self.upgrade = true;
            } else if token.is_empty() || token.eq_ignore_ascii_case("keep-alive") {
            } else if self.count < MAX_CONNECTION_NAMES {
                self.named[self.count] = token;
                self.count += 1;
            } else {
                self.unusable = true;
            }
        }
    }

    pub(super) fn names(&self, name: &str) -> bool {
        self.named[..self.count]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether a listed name is one the message's framing depends on.
    pub(super) fn names_framing(&self) -> bool {
        ["content-length", "transfer-encoding", "host"]
            .iter()
            .any(|f| self.names(f))
    }
}

/// A `Content-Length` value: digits (leading zeros allowed) within u64, or
/// a list of one such value repeated (RFC 9110 8.6), as hyper reads it.
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|b| *b == b',') {
        let digits = part.trim_ascii();
        let significant = match digits.iter().position(|b| *b != b'0') {
            Some(first) => &digits[first..],
            None if !digits.is_empty() => b"0".as_slice(),
            None => return None,
        };
        if significant.len() > 19 {
            return None;
        }
        let n = significant.iter().try_fold(0u64, |n, &b| {
            let digit = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
            n.checked_mul(10)?.checked_add(digit)
        })?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// A byte of an origin-form target as RFC 3986 writes it unescaped
/// (`#`, and bytes `http::Uri` refuses or reads otherwise, are hyper's).
pub(super) fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

pub(super) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
