//! Client token verification (CONTRACT 2.3). A token is checked only
//! against keys of its algorithm's family: HS256/384/512 against
//! `auth.jwt_secret`; RS*/PS*/ES*/EdDSA against the public keys of
//! `auth.jwt_public_key_file` and `auth.jwks_url`, chosen by `kid` when the
//! token names one. `alg: none` never parses. Time claims (`exp`, `nbf`) are
//! checked here with `auth.leeway_s`, saturating, so any `exp` however far
//! away is served; `iss`/`aud` when configured. The orgId comes from the
//! verified claims only.
//!
//! [`keys`] reads PEM and JWK keys; [`jwks`] keeps the remote key set fresh.
#![warn(missing_docs)]

pub(crate) mod jwks;
pub(crate) mod keys;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::AuthConfig;
use jwks::Jwks;
pub(crate) use keys::KeyError;
use keys::PublicKey;

/// An organisation id.
pub type OrgId = u64;

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header or `token` parameter.
    #[error("missing bearer token")]
    Missing,
    /// Malformed, badly signed, or refused by a claim check.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its `exp` (with the leeway).
    #[error("token has expired")]
    Expired,
    /// Before its `nbf` (with the leeway).
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// No `exp` while `auth.require_exp` is set.
    #[error("token has no exp claim (auth.require_exp)")]
    NoExpiry,
    /// No key for its `kid` (or algorithm).
    #[error("no verification key for this token ({0})")]
    UnknownKey(String),
    /// The org claim is missing or not a number.
    #[error("token has no usable {0:?} claim (a number or numeric string)")]
    NoOrg(String),
    /// No secret, key file or JWKS is configured.
    #[error(
        "token verification is not configured (set auth.jwt_secret, JWT_SECRET, auth.jwt_public_key_file or auth.jwks_url)"
    )]
    NotConfigured,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The organisation of the `auth.org_claim`.
    pub org_id: OrgId,
    /// Expiry in Unix seconds, when the token has one (saturated at `u64::MAX`).
    pub expires_at: Option<u64>,
    /// The `auth.user_claim` (a string or number), when present.
    pub user_id: Option<String>,
    /// The `auth.name_claim`, else the user id.
    pub user_name: Option<String>,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    secret: Option<DecodingKey>,
    file_keys: Vec<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    org_claim: String,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway_s: u64,
    require_exp: bool,
    user_claim: String,
    name_claim: String,
}

impl Verifier {
    /// Reads the secret and key file; a JWKS is only prepared (fetched by [`Verifier::start`]).
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let file_keys = match &cfg.jwt_public_key_file {
            Some(file) => keys::load_pem_file(file)?,
            None => Vec::new(),
        };
        let jwks = match &cfg.jwks_url {
            Some(url) => Some(Arc::new(
                Jwks::new(url.clone(), cfg).map_err(KeyError::JwksClient)?,
            )),
            None => None,
        };
        Ok(Verifier {
            secret: cfg
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            file_keys,
            jwks,
            org_claim: cfg.org_claim.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_s: cfg.leeway.as_secs(),
            require_exp: cfg.require_exp,
            user_claim: cfg.user_claim.clone(),
            name_claim: cfg.name_claim.clone(),
        })
    }

    /// Starts the JWKS task, if a key set URL is configured; it stops with `shutdown`.
    pub fn start(&self, shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        self.jwks
            .as_ref()
            .map(|j| tokio::spawn(j.clone().run(shutdown)))
    }

    /// False while a configured key set has not loaded yet (`/readyz` is 503 then).
    pub fn is_ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|j| j.is_loaded())
    }

    /// Whether any key is configured at all.
    pub(crate) fn has_keys(&self) -> bool {
        self.secret.is_some() || !self.file_keys.is_empty() || self.jwks.is_some()
    }

    /// Like [`Verifier::verify`], but a token naming a `kid` the key set
    /// lacks first refreshes the set (rate-limited) and is checked again.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Identity, AuthError> {
        let first = self.verify(token);
        if let (Err(AuthError::UnknownKey(_)), Some(jwks)) = (&first, &self.jwks)
            && jwks.refresh_for_unknown_kid().await
        {
            return self.verify(token);
        }
        first
    }

    /// Verifies `token` and extracts the org.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if !self.has_keys() {
            return Err(AuthError::NotConfigured);
        }
        // `alg: none` is no `Algorithm` and fails here.
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let alg = header.alg;
        let claims = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let Some(secret) = &self.secret else {
                return Err(AuthError::Invalid(format!(
                    "{alg:?} tokens need auth.jwt_secret, which is not set"
                )));
            };
            self.decode(token, alg, secret)?
        } else {
            self.decode_public(token, alg, header.kid.as_deref())?
        };
        self.identity(&claims)
    }

    fn decode_public(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let remote = self.jwks.as_ref().and_then(|j| j.keys());
        let remote = remote.as_deref().map(Vec::as_slice).unwrap_or_default();
        // With a kid: the keys of that kid, and keys that have none (the
        // file's, a set's unnamed ones). Without: every key of the algorithm.
        let candidates: Vec<&PublicKey> = remote
            .iter()
            .chain(self.file_keys.iter())
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.algs.contains(&alg))
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey(match kid {
                Some(kid) => format!("alg {alg:?}, kid {kid:?}"),
                None => format!("alg {alg:?}"),
            }));
        }
        let mut last = None;
        for key in candidates {
            match self.decode(token, alg, &key.key) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| AuthError::Invalid("no key matched".into())))
    }

    /// Signature, `iss` and `aud`; time claims are checked in [`Verifier::identity`].
    fn decode(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    fn identity(&self, claims: &Claims) -> Result<Identity, AuthError> {
        let now = (crate::clock::unix_millis() / 1000) as u64;
        let expires_at = match claims.get("exp") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                numeric_date(v)
                    .ok_or_else(|| AuthError::Invalid("exp is not a number of seconds".into()))?,
            ),
        };
        match expires_at {
            None if self.require_exp => return Err(AuthError::NoExpiry),
            Some(exp) if exp.saturating_add(self.leeway_s) <= now => {
                return Err(AuthError::Expired);
            }
            _ => {}
        }
        if let Some(v) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = numeric_date(v)
                .ok_or_else(|| AuthError::Invalid("nbf is not a number of seconds".into()))?;
            if nbf > now.saturating_add(self.leeway_s) {
                return Err(AuthError::NotYetValid);
            }
        }
        let org_id = match claims.get(&self.org_claim) {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| AuthError::NoOrg(self.org_claim.clone()))?;
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

type Claims = serde_json::Map<String, serde_json::Value>;

/// A JWT NumericDate as whole seconds: negatives are 0, values beyond
/// `u64` saturate (a far `exp` means "does not expire in practice").
fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    if n.as_i64().is_some() {
        return Some(0);
    }
    let f = n.as_f64()?;
    if !f.is_finite() {
        return None;
    }
    // `as` saturates float-to-int conversions.
    Some(f.max(0.0) as u64)
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
mod tests;
