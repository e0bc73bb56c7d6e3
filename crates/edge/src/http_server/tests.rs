//! Unit tests of the parent module.
use super::*;

#[test]
fn accept_failures_back_off_and_log_once_per_spell() {
    let mut b = AcceptBackoff::default();
    assert!(!b.succeeded(), "no spell to end");
    let waits: Vec<(Duration, bool)> = (0..10).map(|_| b.failed()).collect();
    assert_eq!(waits[0], (ACCEPT_BACKOFF_MIN, true));
    assert!(waits[1..].iter().all(|(_, first)| !first), "logged once");
    assert!(waits.windows(2).all(|w| w[1].0 >= w[0].0));
    assert_eq!(waits[9].0, ACCEPT_BACKOFF_MAX);
    assert!(b.succeeded(), "the spell ends: logged once");
    assert!(!b.succeeded());
    assert_eq!(
        b.failed(),
        (ACCEPT_BACKOFF_MIN, true),
        "a new spell starts short"
    );
}
