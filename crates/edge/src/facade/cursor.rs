//! The V1 facade's cursors: opaque to clients, authenticated, and tied to
//! one position space.
//!
//! A cursor names a position in an org's event stream for one service. It
//! is `base64url(version | epoch | org | service | position | mac)`, where
//! `mac` is HMAC-SHA256 over everything before it, truncated to 128 bits.
//! The key is drawn at start-up, so a cursor from an earlier run of the
//! sidecar (or one a client made up or altered) does not verify and is
//! simply "not ours": the request is then forwarded to the backend. The
//! epoch names the position space the position belongs to, so a holder of
//! a longer-lived key (a cluster) still never mistakes one space for another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::OrgId;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 1 + 8 + 8 + 2 + 8;
/// Longest text a cursor can be; anything longer is not ours without decoding.
const MAX_TEXT_LEN: usize = (BODY_LEN + MAC_LEN).div_ceil(3) * 4;

/// A verified facade cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) org: OrgId,
    pub(crate) service: u16,
    pub(crate) position: u64,
}

/// Mints and verifies cursors for one position space.
pub(crate) struct CursorKey {
    key: [u8; 32],
    epoch: u64,
}

impl CursorKey {
    /// A key for this run: random, never written anywhere.
    pub(crate) fn random(epoch: u64) -> CursorKey {
        CursorKey {
            key: rand::random(),
            epoch,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// The cursor text for a position.
    pub(crate) fn mint(&self, cursor: Cursor) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.epoch.to_be_bytes());
        bytes.extend_from_slice(&cursor.org.to_be_bytes());
        bytes.extend_from_slice(&cursor.service.to_be_bytes());
        bytes.extend_from_slice(&cursor.position.to_be_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor a text names, when this key minted it in this epoch.
    pub(crate) fn open(&self, text: &str) -> Option<Cursor> {
        if text.len() > MAX_TEXT_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() != BODY_LEN + MAC_LEN || bytes[0] != VERSION {
            return None;
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).ok()?;
        let u64_at = |at: usize| {
            body.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        if u64_at(1)? != self.epoch {
            return None;
        }
        Some(Cursor {
            org: u64_at(9)?,
            service: u16::from_be_bytes(body.get(17..19)?.try_into().ok()?),
            position: u64_at(19)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Cursor = Cursor {
        org: 42,
        service: 3,
        position: 1_700_000_000_000_123,
    };

    #[test]
    fn round_trip() {
        let k = CursorKey::random(7);
        let text = k.mint(C);
        assert!(text.len() <= MAX_TEXT_LEN);
        assert_eq!(k.open(&text), Some(C));
    }

    #[test]
    fn another_run_or_epoch_is_not_ours() {
        let k = CursorKey::random(7);
        let text = k.mint(C);
        assert_eq!(CursorKey::random(7).open(&text), None);
        let same_key_other_epoch = CursorKey {
            key: k.key,
            epoch: 8,
        };
        assert_eq!(same_key_other_epoch.open(&text), None);
    }

    #[test]
    fn altered_or_garbage_is_not_ours() {
        let k = CursorKey::random(1);
        let text = k.mint(C);
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[20] ^= 1; // a different position, same MAC
        assert_eq!(k.open(&URL_SAFE_NO_PAD.encode(&bytes)), None);
        for bad in ["", "abc", "%%%", &"A".repeat(10_000), "12345"] {
            assert_eq!(k.open(bad), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = CursorKey::random(1).open(&s);
        }
    }
}
