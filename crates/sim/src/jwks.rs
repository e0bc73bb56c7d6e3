//! The simulated identity provider's key set: `GET /.well-known/jwks.json`
//! serves whatever document the test last set with `POST /_sim/jwks`
//! (a JWK set, or anything else to simulate a broken provider), so key
//! rotation — a new `kid` appearing, an old one removed — is scripted.

use std::sync::Mutex;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use realtime_edge::http_server::{Body, json};

/// Where the simulator serves its key set.
pub(crate) const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The document served at [`JWKS_PATH`]; an empty key set until set.
pub(crate) struct JwksDoc(Mutex<Value>);

impl Default for JwksDoc {
    fn default() -> Self {
        JwksDoc(Mutex::new(json!({"keys": []})))
    }
}

impl JwksDoc {
    /// Replaces the served document.
    pub(crate) fn set(&self, doc: Value) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = doc;
    }

    pub(crate) fn serve(&self) -> Response<Body> {
        let doc = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        json(StatusCode::OK, &doc)
    }
}
