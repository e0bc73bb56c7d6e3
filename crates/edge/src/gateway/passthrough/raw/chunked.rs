//! Where a chunked body ends (RFC 9112 7.1), found while its bytes pass
//! through unchanged: the forwarder copies a backend's chunked response as
//! it came and needs only to know where it stops, and whether the framing
//! is broken.

/// How far into a chunked body the bytes seen so far reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// At the start of a chunk-size line: a hex digit must come.
    SizeStart,
    /// In a chunk-size line: the size so far.
    Size(u64),
    /// After the size, in whitespace before an extension or the line's end.
    SizeSpace(u64),
    /// In a chunk extension, up to the line's CR.
    Extension(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// In a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CR.
    DataCr,
    /// After a chunk's data: its LF.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field line, up to its LF.
    Trailer,
    /// After the final CR.
    FinalLf,
    /// The body is complete.
    Done,
}

/// The chunked framing is not valid (or a size does not fit in 64 bits).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BrokenChunks;

impl Chunked {
    pub(super) fn new() -> Self {
        Chunked::SizeStart
    }

    pub(super) fn is_done(self) -> bool {
        self == Chunked::Done
    }

    /// Moves over `bytes`; returns how many belong to the body (all of
    /// them unless the body ends within them).
    pub(super) fn advance(&mut self, bytes: &[u8]) -> Result<usize, BrokenChunks> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunked::SizeStart => Chunked::Size(hex_digit(b)?),
                Chunked::Size(size) => match b {
                    b';' => Chunked::Extension(size),
                    b' ' | b'\t' => Chunked::SizeSpace(size),
                    b'\r' => Chunked::SizeLf(size),
                    _ => {
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(hex_digit(b).ok()?))
                            .ok_or(BrokenChunks)?;
                        Chunked::Size(size)
                    }
                },
                Chunked::SizeSpace(size) => match b {
                    b' ' | b'\t' => Chunked::SizeSpace(size),
                    b';' => Chunked::Extension(size),
                    b'\r' => Chunked::SizeLf(size),
                    _ => return Err(BrokenChunks),
                },
                Chunked::Extension(size) => match b {
                    b'\r' => Chunked::SizeLf(size),
                    b'\n' => return Err(BrokenChunks),
                    _ => Chunked::Extension(size),
                },
                Chunked::SizeLf(size) => match (b, size) {
                    (b'\n', 0) => Chunked::TrailerStart,
                    (b'\n', size) => Chunked::Data(size),
                    _ => return Err(BrokenChunks),
                },
                Chunked::Data(left) => {
                    // Skip the data in one step, not byte by byte.
                    let available = (bytes.len() - i) as u64;
                    let take = left.min(available);
                    // `take` is at most what is left of `bytes`: it fits in usize.
                    i += usize::try_from(take).map_err(|_| BrokenChunks)?;
                    *self = if take == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - take)
                    };
                    continue;
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataLf if b == b'\n' => Chunked::SizeStart,
                Chunked::DataCr | Chunked::DataLf => return Err(BrokenChunks),
                Chunked::TrailerStart if b == b'\r' => Chunked::FinalLf,
                Chunked::TrailerStart | Chunked::Trailer if b == b'\n' => Chunked::TrailerStart,
                Chunked::TrailerStart | Chunked::Trailer => Chunked::Trailer,
                Chunked::FinalLf if b == b'\n' => Chunked::Done,
                Chunked::FinalLf => return Err(BrokenChunks),
                Chunked::Done => return Ok(i),
            };
            i += 1;
            if self.is_done() {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

fn hex_digit(b: u8) -> Result<u64, BrokenChunks> {
    (b as char).to_digit(16).map(u64::from).ok_or(BrokenChunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> (Chunked, usize) {
        let mut state = Chunked::new();
        let mut used = 0;
        for part in body.chunks(piece) {
            used += state.advance(part).unwrap();
            if state.is_done() {
                break;
            }
        }
        (state, used)
    }

    #[test]
    fn finds_the_end_of_a_body_split_anywhere() {
        let body = b"5\r\nhello\r\n1A \t;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (state, used) = scan_in_pieces(body, piece);
            assert_eq!(state, Chunked::Done, "pieces of {piece}");
            assert_eq!(used, body.len() - 4, "pieces of {piece}");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (state, used) = scan_in_pieces(b"5\r\nhel", 2);
        assert_eq!(state, Chunked::Data(2));
        assert_eq!(used, 6);
    }

    #[test]
    fn broken_framing_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello",
            b"0\r\n\rX",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
            b";ext\r\n",
            b"5 6\r\n",
        ] {
            assert_eq!(Chunked::new().advance(bad), Err(BrokenChunks), "{bad:?}");
        }
    }
}
