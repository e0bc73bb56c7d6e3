//! Public verification keys: read from PEM (one or more keys in one file)
//! or from a JWKS document. Each key knows the algorithms it may verify, so
//! a token's `alg` can only ever select a key of its own family.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::metrics as m;

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One public key and what it may verify.
#[derive(Clone)]
pub(crate) struct PublicKey {
    /// The JWKS `kid`; keys from a PEM file have none.
    pub(crate) kid: Option<String>,
    /// The algorithms this key verifies.
    pub(crate) algs: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// Problems with a key file, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.jwt_public_key_file {file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth.jwt_public_key_file {file}: no PEM public key found")]
    Empty { file: String },
    #[error("auth.jwt_public_key_file {file}: key {index}: {problem}")]
    Unusable {
        file: String,
        index: usize,
        problem: String,
    },
    #[error("auth.jwks_url: {0}")]
    JwksClient(#[source] crate::tls::TlsClientError),
}

/// Reads every PEM public key in `path` (RSA, EC P-256/P-384, Ed25519).
pub(crate) fn load_pem_file(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let file = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| KeyError::Read {
        file: file.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    let blocks = pem_blocks(&text);
    if blocks.is_empty() {
        return Err(KeyError::Empty { file });
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, (label, block))| {
            pem_key(&label, &block).map_err(|problem| KeyError::Unusable {
                file: file.clone(),
                index: i + 1,
                problem,
            })
        })
        .collect()
}

/// The `-----BEGIN X-----` … `-----END X-----` blocks of a PEM text, with their labels.
fn pem_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), format!("{line}\n")));
        } else if let Some((label, mut block)) = current.take() {
            block.push_str(line);
            block.push('\n');
            if line == format!("-----END {label}-----") {
                out.push((label, block));
            } else {
                current = Some((label, block));
            }
        }
    }
    out
}

fn pem_key(label: &str, block: &str) -> Result<PublicKey, String> {
    const RSA_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
    ];
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    const P256_OID: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    const P384_OID: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
    const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
    let bad = |e: jsonwebtoken::errors::Error| format!("not a valid public key: {e}");
    let key = |algs: &[Algorithm], key: DecodingKey| PublicKey {
        kid: None,
        algs: algs.to_vec(),
        key,
    };
    match label {
        "RSA PUBLIC KEY" => DecodingKey::from_rsa_pem(block.as_bytes())
            .map(|k| key(RSA_ALGS, k))
            .map_err(bad),
        "PUBLIC KEY" => {
            let spki = match rustls_pemfile::read_one(&mut block.as_bytes()) {
                Ok(Some(rustls_pemfile::Item::SubjectPublicKeyInfo(der))) => der.as_ref().to_vec(),
                _ => return Err("PEM body is not valid base64 DER".into()),
            };
            // The key type is the SubjectPublicKeyInfo's algorithm identifier
            // (and, for EC, its named curve), near the start of the DER.
            let head = &spki[..spki.len().min(32)];
            let has = |oid: &[u8]| head.windows(oid.len()).any(|w| w == oid);
            if has(RSA_OID) {
                DecodingKey::from_rsa_pem(block.as_bytes())
                    .map(|k| key(RSA_ALGS, k))
                    .map_err(bad)
            } else if has(EC_OID) && has(P256_OID) {
                DecodingKey::from_ec_pem(block.as_bytes())
                    .map(|k| key(&[Algorithm::ES256], k))
                    .map_err(bad)
            } else if has(EC_OID) && has(P384_OID) {
                DecodingKey::from_ec_pem(block.as_bytes())
                    .map(|k| key(&[Algorithm::ES384], k))
                    .map_err(bad)
            } else if has(ED25519_OID) {
                DecodingKey::from_ed_pem(block.as_bytes())
                    .map(|k| key(&[Algorithm::EdDSA], k))
                    .map_err(bad)
            } else {
                Err("unsupported key type (RSA, EC P-256/P-384 and Ed25519 are)".into())
            }
        }
        "CERTIFICATE" => Err(
            "a certificate, not a public key (extract it: openssl x509 -pubkey -noout -in cert.pem)"
                .into(),
        ),
        other if other.contains("PRIVATE") => {
            Err(format!("a {other}; give the public key (openssl pkey -pubout)"))
        }
        other => Err(format!("a {other}, not a public key")),
    }
}

/// Why one JWKS entry was skipped (the `reason` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwkRefusal {
    /// Not a JWK this library reads (unknown `kty`, missing fields).
    Malformed,
    /// A key type or curve that cannot verify tokens here (`oct`, P-521, X25519, …).
    Unsupported,
    /// Marked for encryption, or an algorithm that contradicts its type.
    NotForSigning,
}

impl JwkRefusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            JwkRefusal::Malformed => "malformed",
            JwkRefusal::Unsupported => "unsupported",
            JwkRefusal::NotForSigning => "not_for_signing",
        }
    }
}

/// Reads one JWKS entry into a verification key.
pub(crate) fn jwk_key(value: &serde_json::Value) -> Result<PublicKey, JwkRefusal> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| JwkRefusal::Malformed)?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return Err(JwkRefusal::NotForSigning);
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(JwkRefusal::Unsupported),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Shared secrets never come from a key set: HS tokens are checked
        // against auth.jwt_secret only.
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => {
            return Err(JwkRefusal::Unsupported);
        }
    };
    // A declared `alg` narrows the key to that one algorithm.
    let algs = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = signing_alg(declared).ok_or(JwkRefusal::NotForSigning)?;
            if !by_type.contains(&declared) {
                return Err(JwkRefusal::NotForSigning);
            }
            vec![declared]
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| JwkRefusal::Malformed)?;
    Ok(PublicKey {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Reads a JWKS document: every usable key; each unusable one is logged
/// and counted. `Err` when the document itself is not a key set or holds
/// no usable key, so the caller keeps its previous set.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<PublicKey>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWK set (no \"keys\" list)".into());
    };
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match jwk_key(entry) {
            Ok(k) => keys.push(k),
            Err(why) => {
                let kid = entry.get("kid").and_then(|v| v.as_str()).unwrap_or("");
                let kty = entry.get("kty").and_then(|v| v.as_str()).unwrap_or("");
                tracing::warn!(
                    index = i,
                    kid,
                    kty,
                    reason = why.label(),
                    "JWKS key skipped"
                );
                ::metrics::counter!(m::JWKS_KEYS_REFUSED, m::label::REASON => why.label())
                    .increment(1);
            }
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "none of its {} keys is usable for verifying tokens",
            entries.len()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_split_with_their_labels() {
        let text = "junk\n-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n\n-----BEGIN RSA PUBLIC KEY-----\nBBB\n-----END RSA PUBLIC KEY-----\n-----BEGIN PUBLIC KEY-----\nunterminated\n";
        let blocks = pem_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, "PUBLIC KEY");
        assert_eq!(blocks[1].0, "RSA PUBLIC KEY");
        assert!(blocks[1].1.contains("BBB"));
    }

    #[test]
    fn jwks_garbage_and_unusable_keys_are_refused() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{\"nokeys\": 1}").is_err());
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        let unusable = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x"},
            {"kty": "weird", "kid": "w"},
            {"kty": "RSA", "kid": "no-modulus"},
        ]});
        let err = parse_jwks(unusable.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("none of its 4 keys"), "{err}");
    }

    #[test]
    fn a_declared_alg_narrows_and_must_match_the_type() {
        let ec = |alg: &str| {
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e", "alg": alg,
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
        };
        assert_eq!(jwk_key(&ec("ES256")).unwrap().algs, vec![Algorithm::ES256]);
        assert_eq!(
            jwk_key(&ec("RS256")).unwrap_err(),
            JwkRefusal::NotForSigning
        );
    }
}
