//! The rollout decision of CONTRACT section 4: which source serves an org
//! and service. The bucket is Unleash's normalised gradual-rollout hash, so
//! a frontend running any Unleash SDK computes the same answer.

use std::io::Cursor;

use crate::auth::OrgId;
use crate::flags::Flags;
use crate::metrics::ServingMode;

/// Where an org's events for a service come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    Poll,
    Native,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Native => "native",
        }
    }
}

impl From<Mode> for ServingMode {
    fn from(mode: Mode) -> ServingMode {
        match mode {
            Mode::Poll => ServingMode::Poll,
            Mode::Native => ServingMode::Native,
        }
    }
}

/// Why an org got its mode; shown by `/feature-flags/evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    V1Disabled,
    MasterSwitchOff,
    Denylisted,
    Allowlisted,
    InRollout,
    OutsideRollout,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::V1Disabled => "service V1 endpoint disabled",
            Reason::MasterSwitchOff => "REALTIME_STREAMING_V2 is off",
            Reason::Denylisted => "org in REALTIME_DENYLIST_ORGS",
            Reason::Allowlisted => "org in REALTIME_ALLOWLIST_ORGS",
            Reason::InRollout => "bucket within REALTIME_ROLLOUT_PERCENT",
            Reason::OutsideRollout => "bucket above REALTIME_ROLLOUT_PERCENT",
        }
    }
}

/// Canonical MurmurHash3 x86 32-bit.
pub(crate) fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    // Reading from an in-memory cursor cannot fail.
    murmur3::murmur3_32(&mut Cursor::new(data), seed).unwrap_or(0)
}

/// Unleash's `normalizedValue(id, groupId)`: 1..=100.
pub(crate) fn normalized_value(id: &str, group: &str) -> u32 {
    murmur3_x86_32(format!("{group}:{id}").as_bytes(), 0) % 100 + 1
}

/// The org's bucket in the rollout group.
pub fn bucket(group: &str, org: OrgId) -> u32 {
    normalized_value(&org.to_string(), group)
}

/// The org-level decision, ignoring per-service V1 flags.
pub(crate) fn decide_org(flags: &Flags, group: &str, org: OrgId) -> (Mode, Reason) {
    if !flags.streaming_v2 {
        (Mode::Poll, Reason::MasterSwitchOff)
    } else if flags.denylist.contains(&org) {
        (Mode::Poll, Reason::Denylisted)
    } else if flags.allowlist.contains(&org) {
        (Mode::Native, Reason::Allowlisted)
    } else if bucket(group, org) <= u32::from(flags.rollout_percent) {
        (Mode::Native, Reason::InRollout)
    } else {
        (Mode::Poll, Reason::OutsideRollout)
    }
}

/// The decision for one service of an org (`service` indexes the configured services).
pub(crate) fn decide(flags: &Flags, group: &str, org: OrgId, service: usize) -> (Mode, Reason) {
    if !flags.service_v1.get(service).copied().unwrap_or(true) {
        return (Mode::Native, Reason::V1Disabled);
    }
    decide_org(flags, group, org)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_murmur3_vectors() {
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_x86_32(b"", 0xffff_ffff), 0x81F1_6F39);
        assert_eq!(murmur3_x86_32(b"\0\0\0\0", 0), 0x2362_F9DE);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 1234), 0xFAF6_CDB3);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2E4F_F723
        );
    }

    #[test]
    fn unleash_client_specification_vectors() {
        // "normalized values are the same across node, java, and go clients"
        assert_eq!(normalized_value("123", "gr1"), 73);
        assert_eq!(normalized_value("999", "groupX"), 25);
    }

    fn flags_with(percent: u8) -> Flags {
        Flags {
            streaming_v2: true,
            rollout_percent: percent,
            service_v1: vec![true, false],
            ..Flags::default()
        }
    }

    #[test]
    fn decision_order() {
        let mut f = flags_with(100);
        assert_eq!(decide(&f, "g", 1, 0).0, Mode::Native);
        assert_eq!(decide(&f, "g", 1, 1), (Mode::Native, Reason::V1Disabled));
        f.denylist.insert(1);
        assert_eq!(decide(&f, "g", 1, 0), (Mode::Poll, Reason::Denylisted));
        f.allowlist.insert(1);
        assert_eq!(decide(&f, "g", 1, 0), (Mode::Poll, Reason::Denylisted));
        f.streaming_v2 = false;
        assert_eq!(decide(&f, "g", 1, 0), (Mode::Poll, Reason::MasterSwitchOff));
        assert_eq!(decide(&f, "g", 1, 1), (Mode::Native, Reason::V1Disabled));
        let mut f = flags_with(0);
        assert_eq!(decide(&f, "g", 2, 0), (Mode::Poll, Reason::OutsideRollout));
        f.allowlist.insert(2);
        assert_eq!(decide(&f, "g", 2, 0), (Mode::Native, Reason::Allowlisted));
    }

    #[test]
    fn bucket_is_in_range_and_spreads() {
        let mut counts = [0u32; 101];
        for org in 0..10_000u64 {
            let b = bucket("realtime", org);
            assert!((1..=100).contains(&b));
            counts[b as usize] += 1;
        }
        // Every bucket gets roughly 100 orgs.
        assert!(
            counts[1..].iter().all(|&c| (40..=180).contains(&c)),
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn raising_the_percentage_never_removes_an_org(org in any::<u64>(), a in 0u8..=100, b in 0u8..=100) {
            let (lo, hi) = (a.min(b), a.max(b));
            if decide_org(&flags_with(lo), "realtime", org).0 == Mode::Native {
                prop_assert_eq!(decide_org(&flags_with(hi), "realtime", org).0, Mode::Native);
            }
        }
    }
}
