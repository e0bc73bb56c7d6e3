//! The V1 long-poll endpoints (CONTRACT 3.1): `GET {v1_path}?since=cursor`
//! held until there are events after the cursor or the hold time passes.

use super::*;

fn cursor_value(c: u64) -> String {
    format!("c{c:x}")
}

fn parse_cursor(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix('c')?, 16).ok()
}

struct PollGuard<'a>(&'a SimState, &'a str);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.poll_started(self.1, -1);
    }
}

/// `GET {v1_path}?since=cursor`: hold until events after the cursor exist
/// or the hold time passes.
pub(crate) async fn serve(ctx: &Ctx, req: Request<Incoming>, service: &str) -> Response<Body> {
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    let org = authorize(ctx, &req);
    ctx.state.count_request(service, org.as_ref().ok().copied());
    let org = match org {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let since = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned())
    });
    let state = &ctx.state;
    let _guard = {
        state.poll_started(service, 1);
        PollGuard(state, service)
    };
    // The request is registered when it arrives (a request without a cursor
    // sees what is published after that), however late it is answered.
    let (mut after, mut changed) = state.with_org(org, |log| (log.last, log.changed.subscribe()));
    match state.fault(service) {
        Fault::None => {}
        Fault::StaleCursor if since.is_some() => {
            state.set_fault(service, Fault::None);
            return json_error(StatusCode::GONE, "cursor no longer honoured");
        }
        Fault::StaleCursor => {}
        Fault::Status(code) => {
            return json_error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            );
        }
        Fault::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Fault::Garbage => {
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_server::full("<html>502 Bad Gateway</html>"))
                .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "x"));
        }
        Fault::Drop => {
            let failing = stream::once(async {
                Err::<Frame<Bytes>, BoxError>("connection dropped by fault".into())
            });
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(BodyExt::boxed(StreamBody::new(failing)))
                .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "x"));
        }
        Fault::Hang => {
            let mut shutdown = ctx.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = shutdown.changed() => {}
            }
            return json_error(StatusCode::GATEWAY_TIMEOUT, "hung");
        }
    }
    if let Some(s) = since {
        match parse_cursor(&s) {
            Some(c) => after = c,
            None => return json_error(StatusCode::BAD_REQUEST, "invalid cursor"),
        }
    }
    let deadline = tokio::time::Instant::now() + ctx.cfg.hold;
    let services = [service.to_string()];
    let mut shutdown = ctx.shutdown.clone();
    loop {
        changed.borrow_and_update();
        let (events, last) =
            state.with_org(org, |log| (log.after(after, Some(&services)), log.last));
        if !events.is_empty() {
            let body: Vec<&serde_json::value::RawValue> = events.iter().map(|e| &*e.json).collect();
            return json(
                StatusCode::OK,
                &json!({"events": body, "cursor": cursor_value(last)}),
            );
        }
        // Nothing for this service up to `last`: the cursor may move past it.
        after = after.max(last);
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.changed() => break,
        }
    }
    json(
        StatusCode::OK,
        &json!({"events": [], "cursor": cursor_value(after)}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(&cursor_value(0)), Some(0));
        assert_eq!(parse_cursor(&cursor_value(12345)), Some(12345));
        assert_eq!(parse_cursor("12"), None);
        assert_eq!(parse_cursor("cZZ"), None);
    }
}
