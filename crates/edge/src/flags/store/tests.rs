//! Tests of the flag store: layers and where each value comes from, a bad
//! file keeping the last good flags, watchers seeing each version, and the
//! cluster state owning the version and the admin history.

use super::*;
use crate::flags::{ROLLOUT_PERCENT, STREAMING_V2};

fn store(overrides: Option<PathBuf>) -> Arc<FlagStore> {
    let schema = FlagSchema::new(vec!["finance".into()]);
    let env = BTreeMap::from([(ROLLOUT_PERCENT.to_string(), FlagValue::Percent(5))]);
    FlagStore::new(schema, env, overrides)
}

#[test]
fn layers_and_sources() {
    let s = store(None);
    assert_eq!(s.current().flags.rollout_percent, 5);
    assert_eq!(s.current().sources[ROLLOUT_PERCENT], Source::Env);
    s.apply_file(
        "f.yaml",
        "REALTIME_ROLLOUT_PERCENT: 20\nREALTIME_STREAMING_V2: true",
    )
    .unwrap();
    assert_eq!(s.current().flags.rollout_percent, 20);
    assert_eq!(s.current().sources[ROLLOUT_PERCENT], Source::File);
    s.set_overrides(
        "admin",
        BTreeMap::from([(ROLLOUT_PERCENT.to_string(), FlagValue::Percent(50))]),
    )
    .unwrap();
    assert_eq!(s.current().flags.rollout_percent, 50);
    assert_eq!(s.current().sources[ROLLOUT_PERCENT], Source::Override);
    assert!(s.delete_override("admin", ROLLOUT_PERCENT).unwrap());
    assert_eq!(s.current().flags.rollout_percent, 20);
    assert!(!s.delete_override("admin", ROLLOUT_PERCENT).unwrap());
    let hist = s.history();
    assert!(
        hist.iter().any(|h| h.key == ROLLOUT_PERCENT
            && h.old == "20"
            && h.new == "50"
            && h.who == "admin")
    );
    assert!(
        hist.iter()
            .any(|h| h.key == STREAMING_V2 && h.who == "file f.yaml")
    );
}

#[test]
fn bad_file_keeps_last_good_flags() {
    let s = store(None);
    s.apply_file("f.yaml", "REALTIME_ROLLOUT_PERCENT: 30")
        .unwrap();
    let v = s.current().version;
    assert!(
        s.apply_file("f.yaml", "REALTIME_ROLLOUT_PERCENT: 300")
            .is_err()
    );
    let snap = s.current();
    assert_eq!(snap.flags.rollout_percent, 30);
    assert!(
        snap.last_error
            .as_deref()
            .unwrap()
            .contains("REALTIME_ROLLOUT_PERCENT")
    );
    assert_eq!(
        snap.version, v,
        "a rejected file changes no flag: same version"
    );
    for empty in ["", "  \n", "# only a comment\n", "~", "---\n"] {
        assert!(s.apply_file("f.yaml", empty).is_err(), "{empty:?}");
        assert_eq!(s.current().flags.rollout_percent, 30);
        assert!(s.current().last_error.as_deref().unwrap().contains("empty"));
    }
    s.apply_file("f.yaml", "REALTIME_ROLLOUT_PERCENT: 40")
        .unwrap();
    assert_eq!(s.current().last_error, None);
}

#[test]
fn watchers_see_each_version() {
    let s = store(None);
    let mut rx = s.subscribe();
    s.set_overrides(
        "t",
        BTreeMap::from([(STREAMING_V2.to_string(), FlagValue::Bool(true))]),
    )
    .unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().flags.streaming_v2);
    // Setting the same value again is not a change.
    let v = s.current().version;
    s.set_overrides(
        "t",
        BTreeMap::from([(STREAMING_V2.to_string(), FlagValue::Bool(true))]),
    )
    .unwrap();
    assert_eq!(s.current().version, v);
}

#[test]
fn cluster_state_owns_version_and_admin_history() {
    let s = store(None);
    s.apply_file("f.yaml", "REALTIME_ROLLOUT_PERCENT: 20")
        .unwrap();
    let entry = HistoryEntry {
        version: 41,
        time: "2026-01-01T00:00:00.000Z".into(),
        who: "api 10.0.0.1:5 via replica r1".into(),
        key: STREAMING_V2.into(),
        old: "false".into(),
        new: "true".into(),
    };
    let snap = s.apply_cluster(ClusterState {
        version: 41,
        overrides: BTreeMap::from([(STREAMING_V2.to_string(), FlagValue::Bool(true))]),
        history: vec![entry.clone()],
    });
    assert_eq!(snap.version, 41);
    assert!(snap.flags.streaming_v2);
    assert_eq!(snap.sources[STREAMING_V2], Source::Override);
    assert_eq!(s.cluster_version(), Some(41));
    assert_eq!(s.base_value(ROLLOUT_PERCENT), Some(FlagValue::Percent(20)));
    assert_eq!(s.base_value(STREAMING_V2), Some(FlagValue::Bool(false)));
    // This replica's file still applies, under the cluster's version.
    s.apply_file("f.yaml", "REALTIME_ROLLOUT_PERCENT: 30")
        .unwrap();
    assert_eq!(s.current().flags.rollout_percent, 30);
    assert_eq!(s.current().version, 41);
    let hist = s.history();
    assert_eq!(
        hist.first().map(|h| h.who.as_str()),
        Some(entry.who.as_str())
    );
    assert!(
        hist.iter()
            .any(|h| h.key == ROLLOUT_PERCENT && h.new == "30")
    );
    // The same state again publishes nothing new.
    let mut rx = s.subscribe();
    rx.borrow_and_update();
    s.apply_cluster(ClusterState {
        version: 41,
        overrides: s.overrides(),
        history: vec![entry],
    });
    assert!(!rx.has_changed().unwrap());
}
