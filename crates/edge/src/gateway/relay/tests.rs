use super::*;

fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
    let mut f = vec![0x82];
    let m = if masked { 0x80 } else { 0 };
    match payload_len {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend([1, 2, 3, 4]);
    }
    f.extend(std::iter::repeat_n(7u8, payload_len));
    f
}

#[test]
fn boundaries_are_found_whatever_the_chunking() {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for (len, masked) in [
        (0, false),
        (5, true),
        (200, false),
        (70_000, true),
        (125, false),
    ] {
        stream.extend(frame(len, masked));
        ends.push(stream.len());
    }
    for chunk in [1, 3, 7, 1000, stream.len()] {
        let mut c = FrameCursor::default();
        let mut at = 0;
        let mut boundaries = Vec::new();
        for piece in stream.chunks(chunk) {
            for (i, b) in piece.iter().enumerate() {
                c.feed(std::slice::from_ref(b));
                if c.at_boundary() {
                    boundaries.push(at + i + 1);
                }
            }
            at += piece.len();
        }
        assert_eq!(boundaries, ends, "chunk {chunk}");
    }
}

proptest::proptest! {
    /// Peer bytes of any shape, cut anywhere: no panic, and the cursor
    /// ends in the same state however the bytes were chunked.
    #[test]
    fn any_bytes_any_chunking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400), cut in 1usize..50) {
        let mut whole = FrameCursor::default();
        whole.feed(&bytes);
        let mut chunked = FrameCursor::default();
        for piece in bytes.chunks(cut) {
            chunked.feed(piece);
        }
        proptest::prop_assert_eq!(whole.at_boundary(), chunked.at_boundary());
        proptest::prop_assert_eq!(whole.remaining, chunked.remaining);
        proptest::prop_assert_eq!(whole.have, chunked.have);
    }
}

#[test]
fn close_frames_follow_rfc_6455() {
    let f = close_frame(1001, "bye", false);
    assert_eq!(f, vec![0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
    let m = close_frame(1001, "bye", true);
    assert_eq!(m[0], 0x88);
    assert_eq!(m[1], 0x80 | 5);
    let key = &m[2..6];
    let payload: Vec<u8> = m[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(payload, vec![0x03, 0xe9, b'b', b'y', b'e']);
    let long = close_frame(1001, &"x".repeat(500), false);
    assert_eq!(long[1] as usize, 125);
}

#[tokio::test(start_paused = true)]
async fn an_idle_relay_is_closed_with_1001_both_ways() {
    let (client, mut client_peer) = tokio::io::duplex(1024);
    let (backend, mut backend_peer) = tokio::io::duplex(1024);
    let drain = crate::drain::Drain::new(crate::config::ShutdownConfig {
        prestop_delay: Duration::ZERO,
        drain: Duration::ZERO,
    });
    let relay = tokio::spawn(run(
        client,
        backend,
        Duration::from_secs(30),
        drain.stream_close(),
    ));
    // A frame passes, then nothing.
    client_peer.write_all(&frame(3, true)).await.unwrap();
    let mut got = vec![0u8; 9];
    backend_peer.read_exact(&mut got).await.unwrap();
    assert_eq!(relay.await.unwrap(), RelayEnd::Idle);
    let mut to_client = Vec::new();
    client_peer.read_to_end(&mut to_client).await.unwrap();
    assert_eq!(&to_client[..4], &[0x88, 14, 0x03, 0xe9]);
    let mut to_backend = Vec::new();
    backend_peer.read_to_end(&mut to_backend).await.unwrap();
    assert_eq!(&to_backend[..2], &[0x88, 0x80 | 14]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_the_frame_in_progress() {
    let (client, mut client_peer) = tokio::io::duplex(1 << 16);
    let (backend, mut backend_peer) = tokio::io::duplex(1 << 16);
    let drain = crate::drain::Drain::new(crate::config::ShutdownConfig {
        prestop_delay: Duration::ZERO,
        drain: Duration::ZERO,
    });
    let relay = tokio::spawn(run(
        client,
        backend,
        Duration::from_secs(300),
        drain.stream_close(),
    ));
    // The backend sends half a frame, the drain starts, then the rest.
    let f = frame(1000, false);
    backend_peer.write_all(&f[..500]).await.unwrap();
    let mut first = vec![0u8; 500];
    client_peer.read_exact(&mut first).await.unwrap();
    drain.begin_now();
    tokio::task::yield_now().await;
    backend_peer.write_all(&f[500..]).await.unwrap();
    assert_eq!(relay.await.unwrap(), RelayEnd::Drain);
    let mut rest = Vec::new();
    client_peer.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        &rest[..f.len() - 500],
        &f[500..],
        "the frame is completed first"
    );
    assert_eq!(
        &rest[f.len() - 500..f.len() - 500 + 4],
        &[0x88, 23, 0x03, 0xe9]
    );
}
