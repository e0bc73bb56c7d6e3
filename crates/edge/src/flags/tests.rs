//! Tests of the flag schema and values: one key per service, the text forms
//! of values (yes/no are not booleans), and the environment layer.

use super::*;

fn schema() -> FlagSchema {
    FlagSchema::new(vec!["finance".into(), "guest".into()])
}

#[test]
fn keys_include_one_flag_per_service() {
    let keys = schema().keys();
    assert!(keys.contains(&"FINANCE_REALTIME_V1".to_string()));
    assert!(keys.contains(&"GUEST_REALTIME_V1".to_string()));
    assert_eq!(keys.len(), 10);
}

#[test]
fn text_values() {
    let s = schema();
    for (t, b) in [
        ("true", true),
        ("ON", true),
        ("1", true),
        ("off", false),
        ("False", false),
        ("0", false),
    ] {
        assert_eq!(s.parse_text(STREAMING_V2, t), Ok(FlagValue::Bool(b)));
    }
    assert_eq!(
        s.parse_text(ROLLOUT_PERCENT, "10"),
        Ok(FlagValue::Percent(10))
    );
    assert!(s.parse_text(ROLLOUT_PERCENT, "101").is_err());
    assert!(s.parse_text(ROLLOUT_PERCENT, "-1").is_err());
    assert_eq!(
        s.parse_text(ALLOWLIST, "1, 2,3"),
        Ok(FlagValue::Orgs(BTreeSet::from([1, 2, 3])))
    );
    assert_eq!(
        s.parse_text(ALLOWLIST, "[4]"),
        Ok(FlagValue::Orgs(BTreeSet::from([4])))
    );
    assert_eq!(
        s.parse_text(ALLOWLIST, ""),
        Ok(FlagValue::Orgs(BTreeSet::new()))
    );
    assert!(s.parse_text(ALLOWLIST, "1,x").is_err());
    assert_eq!(
        s.parse_text("NOPE", "1"),
        Err(FlagError::UnknownKey("NOPE".into()))
    );
    assert!(
        s.parse_text(STREAMING_V2, "maybe")
            .unwrap_err()
            .to_string()
            .contains(STREAMING_V2)
    );
}

#[test]
fn yes_and_no_are_not_booleans() {
    let s = schema();
    for t in ["yes", "no", "Y", "enabled"] {
        let e = s.parse_text(STREAMING_V2, t).unwrap_err();
        assert!(e.to_string().contains(STREAMING_V2), "{e}");
    }
}

#[test]
fn env_layer() {
    let s = schema();
    let layer = s
        .parse_env(|k| (k == ROLLOUT_PERCENT).then(|| "7".to_string()))
        .unwrap();
    assert_eq!(layer.get(ROLLOUT_PERCENT), Some(&FlagValue::Percent(7)));
    assert!(
        s.parse_env(|k| (k == STREAMING_V2).then(|| "perhaps".to_string()))
            .is_err()
    );
}
