//! Request and response heads, parsed by httparse into borrowed slices and
//! written again as bytes with the pass-through's edits: hop-by-hop headers
//! (and those `Connection` names) dropped, X-Forwarded-* added, the base
//! URL's path put in front of the target. Everything else is copied as it
//! came, names' case included.
//!
//! A request this path does not forward itself is handed to hyper
//! ([`RequestHead::HandOff`]): HTTP/1.0, upgrades, `Expect`, chunked
//! request bodies, targets that are not origin-form, the gateway's own
//! paths, and anything httparse refuses (hyper answers it with its error).

use std::collections::HashSet;

use httparse::Status;

/// The largest request or response head (hyper's buffer limit on the
/// client listener: a longer request head is hyper's to refuse, with 431).
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields in one head (hyper's default).
const MAX_HEADERS: usize = 100;

mod fields;

use fields::{ConnectionTokens, Role, content_length, plain_target_byte, put_field, role};

/// The paths the gateway answers itself (compared with the target's path,
/// the part before `?`).
pub(crate) type OwnPaths = HashSet<Vec<u8>>;

/// What every forwarded request of one client connection gets.
pub(super) struct RequestEdits<'a> {
    /// The base URL's path, without its trailing slash.
    pub(super) base_path: &'a [u8],
    /// `Host` for a request that came without one.
    pub(super) backend_host: &'a [u8],
    /// The client's address, appended to X-Forwarded-For.
    pub(super) peer_ip: &'a [u8],
    /// X-Forwarded-Proto: "http" or "https".
    pub(super) proto: &'a [u8],
    pub(super) own_paths: &'a OwnPaths,
    /// `passthrough.buffered_body_bytes`: a longer body is hyper's.
    pub(super) max_body: usize,
}

/// A request head this path forwards.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestPlan {
    pub(super) head_len: usize,
    /// At most `RequestEdits::max_body`.
    pub(super) body_len: usize,
    /// The client asked to close the connection after this exchange.
    pub(super) close: bool,
    /// HEAD: the response has no body whatever its headers say.
    pub(super) is_head: bool,
    /// May be sent again on another connection if the backend closed the
    /// first without answering (RFC 9110 9.2.2).
    pub(super) idempotent: bool,
}

pub(super) enum RequestHead {
    /// Not all of the head has arrived.
    Partial,
    /// For hyper to serve.
    HandOff,
    /// Forward it: the backend's head is in `out`.
    Forward(RequestPlan),
}

/// Parses the request head at the start of `buf` and, when this path
/// forwards it, writes the head to send to the backend into `out`.
pub(super) fn rewrite_request(buf: &[u8], edits: &RequestEdits, out: &mut Vec<u8>) -> RequestHead {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() < MAX_HEAD_BYTES => return RequestHead::Partial,
        Ok(Status::Partial) | Err(_) => return RequestHead::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return RequestHead::HandOff;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !target.starts_with('/')
        || !target.bytes().all(plain_target_byte)
        || edits.own_paths.contains(path.as_bytes())
    {
        return RequestHead::HandOff;
    }
    let mut tokens = ConnectionTokens::default();
    let (mut host, mut body_len, mut forwarded_for) = (None, None, None);
    for field in req.headers.iter() {
        match role(field.name) {
            Role::Connection => tokens.add(field.value),
            Role::TransferEncoding | Role::Upgrade | Role::Expect => return RequestHead::HandOff,
            // A list is forwarded as it came: hyper's to normalise.
            Role::ContentLength if field.value.contains(&b',') => return RequestHead::HandOff,
            Role::ContentLength => match content_length(field.value)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= edits.max_body)
            {
                Some(n) if body_len.is_none_or(|b| b == n) => body_len = Some(n),
                _ => return RequestHead::HandOff,
            },
            Role::Host if host.is_some() => return RequestHead::HandOff,
            Role::Host => host = Some(field.value),
            Role::ForwardedFor if forwarded_for.is_none() => forwarded_for = Some(field.value),
            _ => {}
        }
    }
    if tokens.upgrade || tokens.unusable || tokens.names_framing() {
        return RequestHead::HandOff;
    }
    // Named in `Connection`: this hop's, dropped before X-Forwarded-For is set.
    let forwarded_for = forwarded_for.filter(|_| !tokens.names("x-forwarded-for"));

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(edits.base_path);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in req.headers.iter() {
        let dropped = match role(field.name) {
            Role::EndToEnd | Role::ContentLength | Role::Host => tokens.names(field.name),
            Role::ForwardedHost => host.is_some() || tokens.names(field.name),
            _ => true,
        };
        if !dropped {
            put_field(out, field.name.as_bytes(), field.value);
        }
    }
    if host.is_none() {
        put_field(out, b"host", edits.backend_host);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(earlier) = forwarded_for.filter(|v| !v.is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(edits.peer_ip);
    out.extend_from_slice(b"\r\n");
    put_field(out, b"x-forwarded-proto", edits.proto);
    if let Some(host) = host {
        put_field(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
    RequestHead::Forward(RequestPlan {
        head_len,
        body_len: body_len.unwrap_or(0),
        close: tokens.close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
    })
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    /// Copied with its chunked framing as it came.
    Chunked,
    /// Until the backend closes: the client's connection closes after it.
    UntilClose,
}

/// A final response head, rewritten into `out`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResponsePlan {
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    /// The backend connection can carry another request after this body.
    pub(super) backend_keeps: bool,
    /// The client's connection closes after this response (`out` says so).
    pub(super) close: bool,
}

pub(super) enum ResponseHead {
    Partial,
    /// A 1xx other than 101 of this many bytes: skipped, the final head follows.
    Informational(usize),
    /// 101: the backend switched protocols though nobody asked it to.
    SwitchedProtocols,
    /// Not a response head a client could be given.
    Invalid,
    Final(ResponsePlan),
}

/// Parses the response head at the start of `buf`; for a final one, writes
/// the head to send to the client into `out`.
pub(super) fn rewrite_response(
    buf: &[u8],
    request: &RequestPlan,
    close: bool,
    out: &mut Vec<u8>,
) -> ResponseHead {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let head_len = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() < MAX_HEAD_BYTES => return ResponseHead::Partial,
        Ok(Status::Partial) | Err(_) => return ResponseHead::Invalid,
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return ResponseHead::Invalid;
    };
    match code {
        101 => return ResponseHead::SwitchedProtocols,
        100..=199 => return ResponseHead::Informational(head_len),
        _ => {}
    }
    let mut tokens = ConnectionTokens::default();
    let (mut chunked, mut length, mut bad_length) = (None, None, false);
    for field in resp.headers.iter() {
        match role(field.name) {
            Role::Connection => tokens.add(field.value),
            // The last coding decides whether it is chunked.
            Role::TransferEncoding => {
                chunked = Some(
                    field
                        .value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked")),
                );
            }
            Role::ContentLength => match content_length(field.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad_length = true,
            },
            _ => {}
        }
    }
    // With Transfer-Encoding, Content-Length is ignored (RFC 9112 6.3).
    if bad_length && chunked.is_none() {
        return ResponseHead::Invalid;
    }
    let framing = if request.is_head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close = close || framing == Framing::UntilClose;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in resp.headers.iter() {
        let kept = match role(field.name) {
            // The chunked framing is copied as it came: its headers with it.
            Role::TransferEncoding | Role::Trailer => framing == Framing::Chunked,
            Role::ContentLength => chunked.is_none(),
            Role::Connection | Role::HopByHop | Role::Upgrade => false,
            _ => !tokens.names(field.name),
        };
        if kept {
            put_field(out, field.name.as_bytes(), field.value);
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponseHead::Final(ResponsePlan {
        head_len,
        framing,
        backend_keeps: version == 1 && !tokens.close && framing != Framing::UntilClose,
        close,
    })
}

#[cfg(test)]
mod tests;
