//! Unit tests of the parent module.
use super::*;
use http::header::{HeaderMap, HeaderName};

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
fn every_hop_by_hop_header_is_removed_and_others_stay() {
    let mut h = HeaderMap::new();
    for name in [
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        h.insert(HeaderName::from_static(name), "x".parse().unwrap());
    }
    h.insert("x-kept", "1".parse().unwrap());
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h.get("x-kept").unwrap(), "1");

    let mut untouched = HeaderMap::new();
    untouched.insert("x-a", "1".parse().unwrap());
    untouched.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
    strip_hop_by_hop(&mut untouched);
    assert_eq!(untouched.len(), 2);
}

#[test]
fn forwarded_for_starts_with_the_peer_when_absent() {
    let mut h = HeaderMap::new();
    append_forwarded(&mut h, "[::1]:5000".parse().unwrap(), true, None);
    assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    assert!(h.get("x-forwarded-host").is_none());
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
