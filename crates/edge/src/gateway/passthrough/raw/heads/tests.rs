use super::*;

fn own() -> OwnPaths {
    ["/v2/realtime/stream", "/api/v1/poll"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

fn rewrite(head: &str, base_path: &str) -> (Option<RequestPlan>, String) {
    let own = own();
    let edits = RequestEdits {
        base_path: base_path.as_bytes(),
        backend_host: b"backend:4000",
        peer_ip: b"10.0.0.7",
        proto: b"http",
        own_paths: &own,
        max_body: 64,
    };
    let mut out = Vec::new();
    match rewrite_request(head.as_bytes(), &edits, &mut out) {
        RequestHead::Forward(plan) => (Some(plan), String::from_utf8(out).unwrap()),
        RequestHead::HandOff => (None, "hand-off".into()),
        RequestHead::Partial => (None, "partial".into()),
    }
}

#[test]
fn a_request_head_loses_its_hop_by_hop_fields_and_gains_x_forwarded() {
    let head = "POST /items?x=1 HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Hop\r\n\
                X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: p\r\n\
                X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\n\
                X-Custom: Kept\r\nContent-Length: 5\r\n\r\nhello";
    let (plan, out) = rewrite(head, "/base");
    let plan = plan.expect("forwarded");
    assert_eq!(plan.head_len, head.len() - 5);
    assert_eq!(plan.body_len, 5);
    assert!(!plan.close && !plan.is_head && !plan.idempotent);
    assert_eq!(
        out,
        "POST /base/items?x=1 HTTP/1.1\r\nHost: app.example\r\nX-Custom: Kept\r\nContent-Length: 5\r\n\
         x-forwarded-for: 1.2.3.4, 10.0.0.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: app.example\r\n\r\n"
    );
}

#[test]
fn a_request_without_host_gets_the_backends_and_keeps_its_forwarded_host() {
    let (plan, out) = rewrite(
        "GET / HTTP/1.1\r\nx-forwarded-host: front\r\nconnection: close\r\n\r\n",
        "",
    );
    let plan = plan.expect("forwarded");
    assert!(plan.close && plan.idempotent && plan.body_len == 0);
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nx-forwarded-host: front\r\nhost: backend:4000\r\n\
         x-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n\r\n"
    );
}

#[test]
fn requests_the_byte_path_does_not_forward_go_to_hyper() {
    for head in [
        "GET /v2/realtime/stream HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /api/v1/poll?since=3 HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        "POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST /a HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: -3\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: 65\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: 3\r\nconnection: content-length\r\n\r\n",
        "GET /a HTTP/1.0\r\n\r\n",
        "GET http://elsewhere/a HTTP/1.1\r\n\r\n",
        "GET /a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
        "GET /v2/realtime/stream#frag HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /a<b> HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        assert_eq!(rewrite(head, "").1, "hand-off", "{head}");
    }
    assert_eq!(rewrite("GET /a HTTP/1.1\r\nhost: x\r\n", "").1, "partial");
}

fn response(head: &str, request: &str, close: bool) -> (ResponseHead, String) {
    let (plan, _) = rewrite(request, "");
    let mut out = Vec::new();
    let parsed = rewrite_response(head.as_bytes(), &plan.expect("forwarded"), close, &mut out);
    (parsed, String::from_utf8(out).unwrap())
}

const GET: &str = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[test]
fn a_response_head_is_copied_without_hop_by_hop_fields() {
    let (parsed, out) = response(
        "HTTP/1.1 201 Created\r\nConnection: x-trace\r\nX-Trace: 1\r\nKeep-Alive: 5\r\n\
         Content-Length: 2\r\nX-Kept: yes\r\n\r\nok",
        GET,
        false,
    );
    let ResponseHead::Final(plan) = parsed else {
        panic!("final head expected");
    };
    assert_eq!(plan.framing, Framing::Length(2));
    assert!(plan.backend_keeps && !plan.close);
    assert_eq!(
        out,
        "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n"
    );
}

#[test]
fn response_framing_follows_rfc_9112() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            GET,
            Framing::Chunked,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            GET,
            Framing::UntilClose,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", GET, Framing::UntilClose),
        (
            "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            GET,
            Framing::Empty,
        ),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", GET, Framing::Empty),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            "HEAD / HTTP/1.1\r\n\r\n",
            Framing::Empty,
        ),
    ];
    for (head, request, framing) in cases {
        let (ResponseHead::Final(plan), out) = response(head, request, false) else {
            panic!("{head}");
        };
        assert_eq!(plan.framing, framing, "{head}");
        let close = framing == Framing::UntilClose;
        assert_eq!(plan.close, close, "{head}");
        assert_eq!(out.contains("connection: close"), close, "{head}");
        assert_eq!(
            out.contains("content-length"),
            !head.contains("chunked") && head.contains("content-length"),
            "{head}"
        );
    }
}

#[test]
fn odd_responses_are_recognised() {
    assert!(matches!(
        response(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            GET,
            false
        )
        .0,
        ResponseHead::Informational(25)
    ));
    assert!(matches!(
        response("HTTP/1.1 101 Switching Protocols\r\n\r\n", GET, false).0,
        ResponseHead::SwitchedProtocols
    ));
    assert!(matches!(
        response("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", GET, false).0,
        ResponseHead::Invalid
    ));
    assert!(matches!(
        response("HTTP/1.1 200 OK\r\ncontent-le", GET, false).0,
        ResponseHead::Partial
    ));
    let (ResponseHead::Final(plan), out) = response(
        "HTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        GET,
        true,
    ) else {
        panic!("final head expected");
    };
    assert!(!plan.backend_keeps && plan.close);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn an_x_forwarded_for_named_in_connection_is_not_extended() {
    let (_, out) = rewrite(
        "GET / HTTP/1.1\r\nhost: h\r\nconnection: x-forwarded-for\r\nx-forwarded-for: 6.6.6.6\r\n\r\n",
        "",
    );
    assert!(out.contains("x-forwarded-for: 10.0.0.7\r\n"), "{out}");
    assert!(!out.contains("6.6.6.6"), "{out}");
}

#[test]
fn content_length_values_are_read_as_hyper_reads_them() {
    assert_eq!(content_length(b"42"), Some(42));
    assert_eq!(content_length(b"000000000000000000000042"), Some(42));
    assert_eq!(content_length(b"0"), Some(0));
    assert_eq!(content_length(b"5, 5"), Some(5));
    for bad in [
        &b""[..],
        b"5, 6",
        b"-1",
        b"4 2",
        b"99999999999999999999",
        b",",
        b"0x10",
    ] {
        assert_eq!(content_length(bad), None, "{bad:?}");
    }
}
