//! Tests of the upload handshake: the seed client's handshake is version 1,
//! bad handshakes get their codes, and a resume names the upload.

use super::*;
use crate::config::{Config, EnvSecrets};
use serde_json::json;

fn cfg(extra: &str) -> UploadsConfig {
    Config::from_yaml("t.yaml", extra, &EnvSecrets::default())
        .unwrap()
        .uploads
}

fn code(v: Value, c: &UploadsConfig) -> UploadCode {
    parse(&v.to_string(), c).unwrap_err().code
}

#[test]
fn the_seed_clients_handshake_is_version_1() {
    // Exactly what the seed's StreamingDocumentUpload sends.
    let hs = json!({"filename": "passport.jpg", "filesize": 70000, "mimetype": "image/jpeg",
        "documentType": "aadhaar", "guestId": 17, "propertyId": "p-1"});
    let Handshake::New { version, meta } = parse(&hs.to_string(), &cfg("")).unwrap() else {
        panic!("not a new upload");
    };
    assert_eq!(version, 1);
    assert_eq!(meta.filesize, 70000);
    assert_eq!(
        meta.text_fields(),
        vec![
            ("filename", "passport.jpg".to_string()),
            ("mimetype", "image/jpeg".to_string()),
            ("documentType", "aadhaar".to_string()),
            ("guestId", "17".to_string()),
            ("propertyId", "p-1".to_string()),
        ]
    );
    // A browser's empty `file.type` and undefined fields are accepted.
    let hs = json!({"filename": "x", "filesize": 1, "mimetype": ""});
    assert!(parse(&hs.to_string(), &cfg("")).is_ok());
}

#[test]
fn bad_handshakes_get_their_codes() {
    let c = cfg("uploads: {allowed_mimetypes: [application/pdf]}\n");
    let ok = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut m = json!({"filename": "a.pdf", "filesize": 10, "mimetype": "application/pdf"})
            .as_object()
            .unwrap()
            .clone();
        f(&mut m);
        Value::Object(m)
    };
    assert!(parse(&ok(&|_| {}).to_string(), &c).is_ok());
    let cases: Vec<(Value, UploadCode)> = vec![
        (json!("not an object"), UploadCode::BadHandshake),
        (
            ok(&|m| {
                m.insert("filename".into(), json!(""));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filename".into(), json!("../etc/passwd"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filename".into(), json!("a\\b"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filename".into(), json!("a\u{0}b"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filename".into(), json!("x".repeat(256)));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filesize".into(), json!(0));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filesize".into(), json!(-5));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filesize".into(), json!("10"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("filesize".into(), json!(2_147_483_648u64));
            }),
            UploadCode::FileTooLarge,
        ),
        (
            ok(&|m| {
                m.insert("mimetype".into(), json!("text/html"));
            }),
            UploadCode::UnsupportedType,
        ),
        (
            ok(&|m| {
                m.remove("mimetype");
            }),
            UploadCode::UnsupportedType,
        ),
        (
            ok(&|m| {
                m.insert("mimetype".into(), json!("a\r\nb"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("version".into(), json!(3));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("uploadId".into(), json!("abc"));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("guestId".into(), json!({"a": 1}));
            }),
            UploadCode::BadHandshake,
        ),
        (
            ok(&|m| {
                m.insert("version".into(), json!(2));
                m.insert("uploadId".into(), json!("../x"));
            }),
            UploadCode::UnknownUpload,
        ),
    ];
    for (hs, want) in cases {
        assert_eq!(code(hs.clone(), &c), want, "{hs}");
    }
    assert!(parse("{not json", &c).is_err());
}

#[test]
fn resume_names_the_upload() {
    let hs = json!({"version": 2, "uploadId": "abc123", "filesize": 5});
    assert_eq!(
        parse(&hs.to_string(), &cfg("")).unwrap(),
        Handshake::Resume {
            upload_id: "abc123".into(),
            filesize: Some(5)
        }
    );
}
