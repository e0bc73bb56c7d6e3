//! The facade's answer to a V1 long-poll: the backend's own shape
//! (`{"<events_field>": [...], "<cursor_field>": "..."}`, CONTRACT 3.4),
//! with event objects passed through byte for byte.

use http::{HeaderValue, Response, header};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::http_server::{Body, full};

/// The fields of a hub message the facade reads.
#[derive(Deserialize)]
pub(super) struct HubMessage<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: &'a str,
    #[serde(default)]
    pub(crate) seq: u64,
    #[serde(borrow, default)]
    pub(crate) events: Option<&'a RawValue>,
}

/// The events of one answer.
#[derive(Clone, Copy)]
pub(super) enum AnswerEvents<'a> {
    /// Nothing new before the hold ended.
    None,
    /// The `events` array of one live event message, as the hub serialised it.
    Message(&'a RawValue),
    /// Replayed events.
    List(&'a [&'a RawValue]),
}

/// `{"<events_field>": [...], "<cursor_field>": "..."}` with the backend's
/// event objects passed through byte for byte.
pub(super) struct V1Answer<'a> {
    pub(crate) events_field: &'a str,
    pub(crate) events: AnswerEvents<'a>,
    pub(crate) cursor_field: &'a str,
    pub(crate) cursor: &'a str,
}

impl Serialize for V1Answer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        match self.events {
            AnswerEvents::None => map.serialize_entry(self.events_field, &[(); 0])?,
            AnswerEvents::Message(raw) => map.serialize_entry(self.events_field, raw)?,
            AnswerEvents::List(list) => map.serialize_entry(self.events_field, list)?,
        }
        map.serialize_entry(self.cursor_field, self.cursor)?;
        map.end()
    }
}

impl V1Answer<'_> {
    /// The answer as a JSON response the client must not cache.
    pub(crate) fn response(&self) -> Response<Body> {
        let text = serde_json::to_vec(self).unwrap_or_default();
        let mut resp = Response::new(full(text));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
