//! Tests of the stream entries' decoding: entries decode or are refused, and
//! stored source positions are read by service name.

use super::*;

fn entry(fields: &[(&str, &str)]) -> StreamId {
    StreamId {
        id: "1-0".into(),
        map: fields
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    redis::Value::BulkString(v.as_bytes().to_vec()),
                )
            })
            .collect(),
        ..StreamId::default()
    }
}

#[test]
fn entries_decode_or_are_refused() {
    let names = vec!["finance".to_string(), "staff".to_string()];
    let good = [
        ("n", "5"),
        ("g", "3"),
        ("i", "e1"),
        ("s", "staff"),
        ("p", "12"),
        ("o", "77"),
        ("l", "1"),
        ("d", r#"{"eventId":"e1"}"#),
    ];
    let e = parse_entry(&entry(&good), &names).unwrap();
    assert_eq!((e.seq, e.generation, e.service), (5, 3, 1));
    assert_eq!(e.after, None);
    let mut with_cursor = good.to_vec();
    with_cursor.push(("c", "c:abc"));
    let e = parse_entry(&entry(&with_cursor), &names).unwrap();
    assert_eq!(e.after, Some(SourceAfter::Cursor("abc".into())));
    with_cursor.pop();
    with_cursor.push(("c", "n:17"));
    let e = parse_entry(&entry(&with_cursor), &names).unwrap();
    assert_eq!(e.after, Some(SourceAfter::Native(17)));
    assert_eq!(e.property, Some(PropertyKey("12".into())));
    assert!(e.live);
    let mut bad = good;
    bad[7] = ("d", "{not json");
    assert!(matches!(
        parse_entry(&entry(&bad), &names),
        Err(EntryError::Field { field: "d", .. })
    ));
    let mut bad = good;
    bad[3] = ("s", "chat");
    assert!(matches!(
        parse_entry(&entry(&bad), &names),
        Err(EntryError::UnknownService { .. })
    ));
    assert!(parse_entry(&entry(&good[1..]), &names).is_err());
}

#[test]
fn stored_positions_are_read_by_service_name() {
    let names = vec!["finance".to_string(), "staff".to_string()];
    let fields: HashMap<String, String> = [
        ("cursor:staff", "c9"),
        ("cursor:gone", "x"),
        ("native", "41"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = source_positions(&fields, &names);
    assert_eq!(p.cursors, vec![(1, "c9".to_string())]);
    assert_eq!(p.native, Some(41));
}
