//! Property tests for the parsers that take file or admin input: the flags
//! file (YAML), flag values as text (environment, form bodies) and as JSON,
//! and the configuration file. Whatever the input, they answer with a value
//! or a typed error naming the problem — never a panic.

use proptest::prelude::*;
use realtime_edge::config::{Config, ConfigError, EnvSecrets};
use realtime_edge::flags::{FlagError, FlagSchema};

fn schema() -> FlagSchema {
    FlagSchema::new(vec!["finance".into(), "guest".into()])
}

/// Text that looks like YAML more often than random bytes would.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("REALTIME_ROLLOUT_PERCENT".to_string()),
        Just("REALTIME_STREAMING_V2".to_string()),
        Just("REALTIME_ALLOWLIST_ORGS".to_string()),
        Just("FINANCE_REALTIME_V1".to_string()),
        Just(": ".to_string()),
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("- ".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(", ".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("~".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("---\n".to_string()),
        "[0-9]{1,25}",
        "(true|false|on|off|yes|no|null)",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn flags_file_parsing_never_panics(text in yamlish()) {
        match schema().parse_yaml_file(&text) {
            Ok(layer) => {
                // An accepted layer holds only known keys.
                let keys = schema().keys();
                prop_assert!(layer.keys().all(|k| keys.contains(k)));
            }
            Err(problems) => prop_assert!(!problems.is_empty() && problems.iter().all(|p| !p.is_empty())),
        }
    }

    #[test]
    fn flag_text_values_never_panic(key in "(REALTIME_ROLLOUT_PERCENT|REALTIME_STREAMING_V2|REALTIME_DENYLIST_ORGS|GUEST_REALTIME_V1|[A-Z_]{0,12})", value in any::<String>()) {
        match schema().parse_text(&key, &value) {
            Ok(_) => {}
            Err(FlagError::UnknownKey(k)) => prop_assert_eq!(k, key),
            Err(FlagError::BadValue { key: k, problem }) => {
                prop_assert_eq!(k, key);
                prop_assert!(!problem.is_empty());
            }
        }
    }

    #[test]
    fn flag_json_bodies_never_panic(body in yamlish()) {
        // The admin API's JSON path: any text, parsed, then validated.
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&body) {
            let _ = schema().parse_json_object(&map);
        }
        let value = serde_json::Value::String(body);
        for key in ["REALTIME_ROLLOUT_PERCENT", "REALTIME_STREAMING_V2", "REALTIME_ALLOWLIST_ORGS"] {
            let _ = schema().parse_json(key, &value);
        }
    }

    #[test]
    fn form_bodies_never_panic(body in any::<String>()) {
        for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
            let _ = schema().parse_text(k.trim(), &v);
        }
    }

    #[test]
    fn config_parsing_never_panics(text in yamlish()) {
        match Config::from_yaml("p.yaml", &text, &EnvSecrets::default()) {
            Ok(_) => {}
            Err(ConfigError::Invalid { file, problems }) => {
                prop_assert_eq!(file, "p.yaml");
                prop_assert!(!problems.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
    }

    #[test]
    fn config_sections_with_any_numbers_never_panic(
        section in "(shutdown|passthrough|limits|stream)",
        key in "(prestop_delay_s|drain_s|response_timeout_s|idle_timeout_s|max_in_flight|max_websockets|max_open_files|client_connections|admin_connections|header_timeout_s|admin_body_timeout_s|max_connections)",
        value in prop_oneof![any::<u64>().prop_map(|v| v.to_string()), any::<i64>().prop_map(|v| v.to_string()), "[a-z ]{0,8}"],
    ) {
        let text = format!("{section}: {{{key}: {value}}}\n");
        let _ = Config::from_yaml("p.yaml", &text, &EnvSecrets::default());
    }
}
