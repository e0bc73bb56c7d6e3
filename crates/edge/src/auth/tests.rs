//! Tests of token verification: good HS256 tokens with a numeric or string
//! org, refusals (wrong key, expired, alg none, missing org), saturating
//! numeric dates, and where a token is taken from.

use super::*;

fn hs_verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        jwt_secret: Some("secret".into()),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn b64(s: &str) -> String {
    use std::fmt::Write;
    // Minimal base64url without padding, enough to forge test tokens.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=chunk.len() {
            let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn accepts_good_hs256_with_numeric_or_string_org() {
    let v = hs_verifier();
    let t = mint_hs256("secret", "orgId", 42, 60);
    assert_eq!(v.verify(&t).unwrap().org_id, 42);
    let claims = serde_json::json!({"orgId": "77", "exp": crate::clock::unix_millis() / 1000 + 60});
    let t = jsonwebtoken::encode(
        &Default::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_eq!(v.verify(&t).unwrap().org_id, 77);
}

#[test]
fn refuses_wrong_key_expired_none_and_missing_org() {
    let v = hs_verifier();
    assert!(matches!(
        v.verify(&mint_hs256("other", "orgId", 1, 60)),
        Err(AuthError::Invalid(_))
    ));
    let claims = serde_json::json!({"orgId": 1, "exp": 1000});
    let t = jsonwebtoken::encode(
        &Default::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_eq!(v.verify(&t).unwrap_err(), AuthError::Expired);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"orgId":1}"#)
    );
    assert!(v.verify(&none).is_err());
    let t = mint_hs256("secret", "org", 1, 60);
    assert!(matches!(v.verify(&t), Err(AuthError::NoOrg(_))));
    assert!(v.verify("garbage").is_err());
    assert_eq!(v.verify("").unwrap_err(), AuthError::Missing);
}

#[test]
fn numeric_dates_saturate() {
    use serde_json::json;
    assert_eq!(numeric_date(&json!(42)), Some(42));
    assert_eq!(numeric_date(&json!(-5)), Some(0));
    assert_eq!(numeric_date(&json!(1.6)), Some(1));
    assert_eq!(numeric_date(&json!(-1e300)), Some(0));
    assert_eq!(numeric_date(&json!(1e300)), Some(u64::MAX));
    assert_eq!(numeric_date(&json!("42")), None);
}

#[test]
fn token_sources() {
    let mut h = http::HeaderMap::new();
    assert_eq!(
        token_from_request(&h, Some("a=1&access_token=abc")),
        Some("abc".into())
    );
    h.insert(http::header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
    assert_eq!(
        token_from_request(&h, Some("access_token=abc")),
        Some("xyz".into())
    );
    assert_eq!(token_from_request(&http::HeaderMap::new(), None), None);
}
