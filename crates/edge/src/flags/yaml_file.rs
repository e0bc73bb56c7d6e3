//! The flags file's format (CONTRACT 4): a flat YAML mapping of
//! `FLAG: value`. What makes a file unusable as a whole is refused here,
//! before any value is read: an empty document, nesting deeper than
//! [`MAX_NESTING`], a duplicate key. Each value is then parsed by the
//! schema like a JSON value.

use std::collections::BTreeMap;
use std::fmt;

use super::{FlagSchema, FlagValue};

impl FlagSchema {
    /// Parses a flags file (a flat YAML mapping). All problems, or the
    /// layer. An empty document (blank, comments only, `~`), nesting deeper
    /// than `MAX_NESTING` and duplicate keys are refused (CONTRACT 4).
    pub fn parse_yaml_file(&self, text: &str) -> Result<BTreeMap<String, FlagValue>, Vec<String>> {
        if is_empty_document(text) {
            return Err(vec![
                "the file is empty (no flags); write at least one FLAG: value".to_string(),
            ]);
        }
        // Before parsing, so a pathological file costs one linear scan.
        if let Some(line) = nesting_beyond(text, MAX_NESTING) {
            return Err(vec![format!(
                "nested deeper than {MAX_NESTING} levels (line {line}); flags are a flat mapping"
            )]);
        }
        let doc: FlatMapping =
            yaml_serde::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
        self.parse_json_object(&doc.0)
    }
}

/// The deepest nesting a flags file may have; a real one has 2 (a mapping
/// holding lists).
pub const MAX_NESTING: usize = 8;

/// True for a YAML document with nothing in it: blank, comments only,
/// document markers, or a bare null.
pub fn is_empty_document(text: &str) -> bool {
    let mut content = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "---" && *l != "...");
    match (content.next(), content.next()) {
        (None, _) => true,
        (Some(only), None) => {
            let only = only.split(" #").next().unwrap_or(only).trim();
            matches!(only, "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// The 1-based line where flow brackets (`[`, `{`) or block sequence
/// dashes (`- - -`) nest deeper than `max`, if any. Quoted text and
/// comments are skipped.
pub fn nesting_beyond(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        // Block sequences nested on one line: "- - - x".
        let mut dashes = 0;
        let mut rest = line.trim_start();
        while let Some(r) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            dashes += 1;
            rest = r.trim_start();
        }
        if dashes > max {
            return Some(n + 1);
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in line.chars() {
            match quote {
                Some(q) if c == q && !(q == '"' && prev == '\\') => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' if prev.is_whitespace() => break,
                    '[' | '{' => {
                        depth += 1;
                        if depth > max {
                            return Some(n + 1);
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

/// A top-level mapping that refuses duplicate keys (a JSON map would keep
/// the last one silently).
struct FlatMapping(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for FlatMapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FlatMapping;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of FLAG: value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<FlatMapping, A::Error> {
                use serde::de::Error;
                let mut map = serde_json::Map::new();
                while let Some(key) = a.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(A::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value: serde_json::Value = a.next_value()?;
                    map.insert(key, value);
                }
                Ok(FlatMapping(map))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn schema() -> FlagSchema {
        FlagSchema::new(vec!["finance".into(), "guest".into()])
    }

    #[test]
    fn yaml_file_values() {
        let s = schema();
        let layer = s
            .parse_yaml_file("REALTIME_STREAMING_V2: on\nREALTIME_ROLLOUT_PERCENT: 25\nREALTIME_ALLOWLIST_ORGS: [1, \"2\"]\nREALTIME_DENYLIST_ORGS: \"5,6\"\nGUEST_REALTIME_V1: false\n")
            .unwrap();
        let f = s.typed(&layer);
        assert!(f.streaming_v2);
        assert_eq!(f.rollout_percent, 25);
        assert_eq!(f.allowlist, BTreeSet::from([1, 2]));
        assert_eq!(f.denylist, BTreeSet::from([5, 6]));
        assert_eq!(f.service_v1, vec![true, false]);
        let errs = s
            .parse_yaml_file("REALTIME_ROLLOUT_PERCENT: 500\nTYPO: 1\n")
            .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(s.parse_yaml_file("[1, 2]").is_err());
        assert!(s.parse_yaml_file("a: [").is_err());
    }

    #[test]
    fn broken_flag_files_are_refused_with_a_reason() {
        let s = schema();
        for (text, why) in [
            ("", "empty"),
            ("   \n\t\n", "empty"),
            ("# just a comment\n# another\n", "empty"),
            ("~\n", "empty"),
            ("---\nnull # nothing\n", "empty"),
            (
                "REALTIME_ROLLOUT_PERCENT: 5\nREALTIME_ROLLOUT_PERCENT: 6\n",
                "duplicate",
            ),
            (
                &format!("REALTIME_ALLOWLIST_ORGS: {}", "[".repeat(200_000)),
                "nested",
            ),
            (
                &format!("REALTIME_ALLOWLIST_ORGS:\n  {}1\n", "- ".repeat(20)),
                "nested",
            ),
            ("REALTIME_STREAMING_V2: yes\n", "REALTIME_STREAMING_V2"),
        ] {
            let errs = s.parse_yaml_file(text).unwrap_err();
            assert!(errs.join(" ").contains(why), "{text:.40}: {errs:?}");
        }
        // Brackets inside quotes or comments are not nesting.
        assert!(
            s.parse_yaml_file("REALTIME_DENYLIST_ORGS: \"1,2\" # [[[[[[[[[[[[\n")
                .is_ok()
        );
    }
}
