//! Which V1 requests the facade serves: a request is served from the hub
//! only with the facade on, a valid token of an org not denylisted, no
//! query parameter but the cursor, and no cursor or one of ours for the
//! same org and service; everything else is forwarded unchanged (a facade
//! cursor stripped after a rollback).

use http::Request;

use super::{Cursor, Facade, ForwardReason};
use crate::auth::{self, Identity};

/// What to do with one V1 request.
#[derive(Debug)]
pub(super) enum Decision {
    Serve {
        identity: Identity,
        token: String,
        cursor: Option<Cursor>,
    },
    /// Forward; `strip_cursor` drops the (facade) cursor parameter so the
    /// backend treats the request as a first poll.
    Forward {
        reason: Option<ForwardReason>,
        strip_cursor: bool,
    },
}

impl Facade {
    pub(super) fn classify<B>(&self, req: &Request<B>, service: u16) -> Decision {
        let flags = self.flags.current();
        let param = self.config.legacy.cursor_param.as_str();
        let mut cursor_text: Option<String> = None;
        let mut extra = false;
        if let Some(q) = req.uri().query() {
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                if k == param && cursor_text.is_none() {
                    cursor_text = Some(v.into_owned());
                } else {
                    extra = true;
                }
            }
        }
        let ours = cursor_text.as_deref().and_then(|t| self.key.open(t));
        if !flags.flags.v1_facade {
            // After a rollback a facade cursor means nothing to the backend:
            // send it as a first poll, like after a page reload.
            return Decision::Forward {
                reason: ours.map(|_| ForwardReason::FacadeOff),
                strip_cursor: ours.is_some(),
            };
        }
        let forward = |reason| Decision::Forward {
            reason: Some(reason),
            strip_cursor: false,
        };
        let Some(token) = auth::token_from_request(req.headers(), None) else {
            return forward(ForwardReason::NoToken);
        };
        let identity = match self.verifier.verify(&token) {
            Ok(i) => i,
            Err(_) => return forward(ForwardReason::InvalidToken),
        };
        if flags.flags.denylist.contains(&identity.org_id) {
            return forward(ForwardReason::Denylisted);
        }
        if extra {
            return forward(ForwardReason::ExtraParams);
        }
        let cursor = match (&cursor_text, ours) {
            (None, _) => None,
            (Some(_), Some(c)) if c.org == identity.org_id && c.service == service => Some(c),
            (Some(_), _) => return forward(ForwardReason::ForeignCursor),
        };
        Decision::Serve {
            identity,
            token,
            cursor,
        }
    }

    /// Drops the cursor parameter from the request's query.
    pub(super) fn strip_cursor<B>(&self, req: &mut Request<B>) {
        let param = self.config.legacy.cursor_param.as_str();
        let uri = req.uri();
        let Some(q) = uri.query() else { return };
        let rest: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k != param)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut target = uri.path().to_string();
        if !rest.is_empty() {
            target.push('?');
            target.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(rest)
                    .finish(),
            );
        }
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = target.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(new) = http::Uri::from_parts(parts) {
                *req.uri_mut() = new;
            }
        }
    }
}
