//! `auth`: how client tokens are verified (HS256 secret, public key file,
//! JWKS) and which claims name the org and the user.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{EnvSecrets, Problems};

/// `auth.org_claim`.
const ORG_CLAIM: &str = "orgId";
/// `auth.user_claim`.
const USER_CLAIM: &str = "sub";
/// `auth.name_claim`.
const NAME_CLAIM: &str = "name";
/// `auth.jwks_refresh_s`.
const JWKS_REFRESH_S: u64 = 300;
/// `auth.jwks_timeout_s`.
const JWKS_TIMEOUT_S: u64 = 10;
/// `auth.jwks_max_bytes`.
const JWKS_MAX_BYTES: usize = 1 << 20;
/// `auth.leeway_s`.
const LEEWAY_S: u64 = 5;
/// `auth.require_exp`.
const REQUIRE_EXP: bool = true;

/// How client tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HS256 secret (the file's, else `JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public key (PEM).
    pub jwt_public_key_file: Option<PathBuf>,
    /// The claim naming the org.
    pub org_claim: String,
    /// Bearer token of the admin API (the file's, else `ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// The claim naming the user (chat, CONTRACT 8).
    pub user_claim: String,
    /// The claim with the user's display name; the user id when absent.
    pub name_claim: String,
    /// JWKS document of the identity provider (http or https).
    pub jwks_url: Option<url::Url>,
    /// How often the JWKS is fetched again.
    pub jwks_refresh: Duration,
    /// Time allowed for one JWKS fetch, connect to last byte.
    pub jwks_timeout: Duration,
    /// Largest JWKS body read; a larger one is refused.
    pub jwks_max_bytes: usize,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must match), when not empty.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, for acceptance and for the 4001 close.
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl Default for AuthConfig {
    /// No keys; every other value at its CONTRACT default.
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            org_claim: ORG_CLAIM.into(),
            admin_token: None,
            user_claim: USER_CLAIM.into(),
            name_claim: NAME_CLAIM.into(),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(JWKS_REFRESH_S),
            jwks_timeout: Duration::from_secs(JWKS_TIMEOUT_S),
            jwks_max_bytes: JWKS_MAX_BYTES,
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(LEEWAY_S),
            require_exp: REQUIRE_EXP,
        }
    }
}

/// `auth` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    jwt_secret: Option<String>,
    jwt_public_key_file: Option<String>,
    org_claim: Option<String>,
    admin_token: Option<String>,
    user_claim: Option<String>,
    name_claim: Option<String>,
    jwks_url: Option<String>,
    jwks_refresh_s: Option<u64>,
    jwks_timeout_s: Option<u64>,
    jwks_max_bytes: Option<u64>,
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway_s: Option<u64>,
    require_exp: Option<bool>,
}

/// A string or a list of strings (`auth.audience`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawAuth {
    /// Environment secrets fill the keys the file leaves unset.
    pub(super) fn validate(self, p: &mut Problems, env: &EnvSecrets) -> AuthConfig {
        let jwt_secret = self.jwt_secret.or_else(|| env.jwt_secret.clone());
        if jwt_secret.as_deref() == Some("") {
            p.push("auth.jwt_secret", "must not be empty");
        }
        // A missing file falls back to none, so `check` does not report it twice.
        let jwt_public_key_file = self.jwt_public_key_file.map(PathBuf::from).filter(|f| {
            let readable = f.is_file();
            if !readable {
                p.push(
                    "auth.jwt_public_key_file",
                    format!("{} is not a readable file", f.display()),
                );
            }
            readable
        });
        let org_claim = p.name("auth.org_claim", self.org_claim.as_deref(), ORG_CLAIM);
        let user_claim = p.name("auth.user_claim", self.user_claim.as_deref(), USER_CLAIM);
        let name_claim = p.name("auth.name_claim", self.name_claim.as_deref(), NAME_CLAIM);
        let admin_token = self
            .admin_token
            .or_else(|| env.admin_token.clone())
            .filter(|t| !t.is_empty());
        let jwks_url = self.jwks_url.and_then(|text| match url::Url::parse(&text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                p.push(
                    "auth.jwks_url",
                    format!("{text:?} must be an http:// or https:// URL with a host"),
                );
                None
            }
            Err(e) => {
                p.push("auth.jwks_url", format!("{text:?} is not a URL: {e}"));
                None
            }
        });
        let jwks_refresh = Duration::from_secs(p.range(
            "auth.jwks_refresh_s",
            self.jwks_refresh_s,
            JWKS_REFRESH_S,
            1,
            86_400,
        ));
        let jwks_timeout = Duration::from_secs(p.range(
            "auth.jwks_timeout_s",
            self.jwks_timeout_s,
            JWKS_TIMEOUT_S,
            1,
            300,
        ));
        let jwks_max_bytes = p.range(
            "auth.jwks_max_bytes",
            self.jwks_max_bytes,
            JWKS_MAX_BYTES as u64,
            1024,
            64 << 20,
        ) as usize;
        let issuer = self.issuer;
        if issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            p.push(
                "auth.issuer",
                "must not be empty (leave it unset to skip the check)",
            );
        }
        let audience = match self.audience {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(list)) => list,
        };
        if audience.iter().any(|a| a.trim().is_empty()) {
            p.push("auth.audience", "must not contain an empty value");
        }
        let leeway =
            Duration::from_secs(p.range("auth.leeway_s", self.leeway_s, LEEWAY_S, 0, 3600));
        let require_exp = self.require_exp.unwrap_or(REQUIRE_EXP);
        AuthConfig {
            jwt_secret,
            jwt_public_key_file,
            org_claim,
            admin_token,
            user_claim,
            name_claim,
            jwks_url,
            jwks_refresh,
            jwks_timeout,
            jwks_max_bytes,
            issuer,
            audience,
            leeway,
            require_exp,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, problems};
    use super::super::{Config, EnvSecrets};

    #[test]
    fn auth_keys_have_contract_defaults_and_are_read() {
        let c = parse("").unwrap();
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        assert_eq!(c.auth.jwks_refresh, Duration::from_secs(300));
        assert!(c.auth.require_exp && c.auth.audience.is_empty() && c.auth.issuer.is_none());
        let c = parse(
            "auth: {jwt_secret: s, jwks_url: \"https://idp/keys\", jwks_refresh_s: 60, issuer: idp, audience: edge, leeway_s: 0, require_exp: false}\n",
        )
        .unwrap();
        assert_eq!(c.auth.jwks_url.unwrap().as_str(), "https://idp/keys");
        assert_eq!(c.auth.audience, vec!["edge".to_string()]);
        assert_eq!(c.auth.issuer.as_deref(), Some("idp"));
        assert_eq!(c.auth.leeway, Duration::ZERO);
        assert!(!c.auth.require_exp);
        let c = parse("auth: {audience: [a, b]}\n").unwrap();
        assert_eq!(c.auth.audience, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn bad_auth_keys_are_named() {
        let lines = problems(
            "auth: {jwks_url: \"ftp://idp/keys\", jwks_refresh_s: 0, leeway_s: 99999, audience: [\"\"], issuer: \"\"}\n",
        );
        for key in [
            "auth.jwks_url",
            "auth.jwks_refresh_s",
            "auth.leeway_s",
            "auth.audience",
            "auth.issuer",
        ] {
            assert!(lines.iter().any(|l| l.contains(key)), "{key}: {lines:?}");
        }
    }

    #[test]
    fn missing_public_key_file_is_rejected() {
        let lines = problems("auth: {jwt_public_key_file: /nonexistent/key.pem}\n");
        assert!(lines[0].contains("auth.jwt_public_key_file"), "{lines:?}");
    }

    #[test]
    fn env_secrets_fill_unset_keys() {
        let env = EnvSecrets {
            jwt_secret: Some("from-env".into()),
            admin_token: Some("tok".into()),
        };
        let c = Config::from_yaml("x.yaml", "", &env).unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("from-env"));
        assert_eq!(c.auth.admin_token.as_deref(), Some("tok"));
        let c = Config::from_yaml("x.yaml", "auth: {jwt_secret: file}\n", &env).unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("file"));
    }
}
