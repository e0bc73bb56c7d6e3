//! Client token verification: JWT HS256 with a shared secret, or RS256/ES256
//! with a public key. The orgId comes from the verified claims only.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

use crate::config::AuthConfig;

/// An organisation id.
pub type OrgId = u64;

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("token has no usable {0:?} claim (a number or numeric string)")]
    NoOrg(String),
    #[error(
        "token verification is not configured (set auth.jwt_secret, JWT_SECRET or auth.jwt_public_key_file)"
    )]
    NotConfigured,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub org_id: OrgId,
    /// Expiry in Unix seconds, when the token has one.
    pub expires_at: Option<u64>,
    /// The `auth.user_claim` (a string or number), when present.
    pub user_id: Option<String>,
    /// The `auth.name_claim`, else the user id.
    pub user_name: Option<String>,
}

/// Problems with the verification key, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{file}: cannot read public key: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not an RSA or EC (P-256) public key in PEM form")]
    Format { file: String },
}

enum Keys {
    Hmac(DecodingKey),
    Rsa(DecodingKey),
    Ec(DecodingKey),
    None,
}

/// Verifies tokens against the configured key.
pub struct Verifier {
    keys: Keys,
    org_claim: String,
    user_claim: String,
    name_claim: String,
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let keys = if let Some(secret) = &cfg.jwt_secret {
            Keys::Hmac(DecodingKey::from_secret(secret.as_bytes()))
        } else if let Some(file) = &cfg.jwt_public_key_file {
            load_public_key(file)?
        } else {
            Keys::None
        };
        Ok(Verifier {
            keys,
            org_claim: cfg.org_claim.clone(),
            user_claim: cfg.user_claim.clone(),
            name_claim: cfg.name_claim.clone(),
        })
    }

    /// Verifies `token` and extracts the org.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        // The algorithm is fixed by the configured key, never chosen by the
        // token: this is what refuses `none` and HS/RS confusion.
        let (key, alg) = match (&self.keys, header.alg) {
            (Keys::Hmac(k), Algorithm::HS256) => (k, Algorithm::HS256),
            (Keys::Rsa(k), Algorithm::RS256) => (k, Algorithm::RS256),
            (Keys::Ec(k), Algorithm::ES256) => (k, Algorithm::ES256),
            (Keys::None, _) => return Err(AuthError::NotConfigured),
            (_, other) => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.leeway = 5;
        validation.validate_aud = false;
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let org_id = match claims.get(&self.org_claim) {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| AuthError::NoOrg(self.org_claim.clone()))?;
        let expires_at = claims.get("exp").and_then(|v| v.as_u64());
        let text_claim = |name: &str| match claims.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let user_id = text_claim(&self.user_claim);
        let user_name = text_claim(&self.name_claim).or_else(|| user_id.clone());
        Ok(Identity {
            org_id,
            expires_at,
            user_id,
            user_name,
        })
    }
}

fn load_public_key(file: &Path) -> Result<Keys, KeyError> {
    let name = file.display().to_string();
    let pem = std::fs::read(file).map_err(|source| KeyError::Read {
        file: name.clone(),
        source,
    })?;
    // The key's type decides the one algorithm accepted (RS256 or ES256),
    // read from the SubjectPublicKeyInfo's algorithm identifier.
    const RSA_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
    ];
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    let format = || KeyError::Format { file: name.clone() };
    let spki = match rustls_pemfile::read_one(&mut pem.as_slice()) {
        Ok(Some(rustls_pemfile::Item::SubjectPublicKeyInfo(der))) => der.as_ref().to_vec(),
        _ if String::from_utf8_lossy(&pem).contains("BEGIN RSA PUBLIC KEY") => {
            return DecodingKey::from_rsa_pem(&pem)
                .map(Keys::Rsa)
                .map_err(|_| format());
        }
        _ => return Err(format()),
    };
    let has = |oid: &[u8]| spki.windows(oid.len()).any(|w| w == oid);
    if has(RSA_OID) {
        DecodingKey::from_rsa_pem(&pem)
            .map(Keys::Rsa)
            .map_err(|_| format())
    } else if has(EC_OID) {
        DecodingKey::from_ec_pem(&pem)
            .map(Keys::Ec)
            .map_err(|_| format())
    } else {
        Err(format())
    }
}

/// Takes the token from `Authorization: Bearer` or the `access_token` query parameter.
pub fn token_from_request(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_string());
        }
    }
    query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    })
}

/// Mints an HS256 token; used by the demo, the simulator's tests and the benchmark.
pub fn mint_hs256(secret: &str, org_claim: &str, org_id: OrgId, ttl_secs: u64) -> String {
    let exp = crate::clock::unix_millis() as u64 / 1000 + ttl_secs;
    let claims =
        serde_json::json!({ org_claim: org_id, "exp": exp, "sub": format!("user-{org_id}") });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs_verifier() -> Verifier {
        Verifier::new(&AuthConfig {
            jwt_secret: Some("secret".into()),
            jwt_public_key_file: None,
            org_claim: "orgId".into(),
            admin_token: None,
            user_claim: "sub".into(),
            name_claim: "name".into(),
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
        let claims =
            serde_json::json!({"orgId": "77", "exp": crate::clock::unix_millis() / 1000 + 60});
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
}
