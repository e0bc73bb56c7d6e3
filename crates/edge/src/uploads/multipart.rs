//! A `multipart/form-data` body (RFC 7578) whose file part is streamed from
//! the spool file, with its exact length known before the first byte is
//! sent (the backend gets a `Content-Length`, not chunked encoding).
//!
//! Written here rather than taken from `common-multipart-rfc7578`: that
//! crate builds a body of unknown length (chunked) for hyper, and all a
//! delivery needs is a head (the text fields and the file part's header), the
//! file, and a tail, whose lengths add up.

use bytes::Bytes;
use rand::Rng;

/// The parts around the file: `head`, then the file's bytes, then `tail`.
#[derive(Debug, Clone)]
pub struct MultipartForm {
    boundary: String,
    /// The form's parts before the file's bytes, up to its part's headers.
    pub head: Bytes,
    /// The end of the file's part and of the form.
    pub tail: Bytes,
}

impl MultipartForm {
    /// Text `fields` in order, then the file part `file_field` with
    /// `filename` and `content_type`. Values must not contain the boundary
    /// (a random 128-bit token, so they do not by chance).
    pub fn new(
        fields: &[(&str, String)],
        file_field: &str,
        filename: &str,
        content_type: &str,
    ) -> MultipartForm {
        let token: u128 = rand::rng().random();
        Self::with_boundary(
            format!("realtime-edge-{token:032x}"),
            fields,
            file_field,
            filename,
            content_type,
        )
    }

    fn with_boundary(
        boundary: String,
        fields: &[(&str, String)],
        file_field: &str,
        filename: &str,
        content_type: &str,
    ) -> MultipartForm {
        let mut head = String::new();
        for (name, value) in fields {
            head.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{value}\r\n",
                quote(name)
            ));
        }
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
            quote(file_field),
            quote(filename),
            content_type.replace(['\r', '\n'], "")
        ));
        let tail = format!("\r\n--{boundary}--\r\n");
        MultipartForm {
            boundary,
            head: Bytes::from(head),
            tail: Bytes::from(tail),
        }
    }

    /// The request's `Content-Type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The whole body's length for a file of `file_len` bytes.
    pub(crate) fn content_length(&self, file_len: u64) -> Option<u64> {
        (self.head.len() as u64)
            .checked_add(file_len)?
            .checked_add(self.tail.len() as u64)
    }
}

/// A quoted-string value as browsers write it in form data: `"`, CR and LF
/// percent-encoded (RFC 7578 section 4.2 / the HTML form encoding).
fn quote(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[test]
    fn exact_layout_and_length() {
        let f = MultipartForm::with_boundary(
            "B".into(),
            &[("filename", "a \"b\".pdf".into()), ("guestId", "7".into())],
            "file",
            "a \"b\".pdf",
            "application/pdf",
        );
        let body = [&f.head[..], b"DATA", &f.tail[..]].concat();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "--B\r\nContent-Disposition: form-data; name=\"filename\"\r\n\r\na \"b\".pdf\r\n\
             --B\r\nContent-Disposition: form-data; name=\"guestId\"\r\n\r\n7\r\n\
             --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a %22b%22.pdf\"\r\nContent-Type: application/pdf\r\n\r\n\
             DATA\r\n--B--\r\n"
        );
        assert_eq!(f.content_length(4), Some(body.len() as u64));
        assert_eq!(f.content_length(u64::MAX), None);
    }

    #[tokio::test]
    async fn a_standard_parser_reads_it_back() {
        let file: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = MultipartForm::new(
            &[
                ("filename", "scan.png".into()),
                ("documentType", "passport".into()),
            ],
            "file",
            "scan.png",
            "image/png",
        );
        let boundary = multer::parse_boundary(f.content_type()).unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(f.head.clone()),
            Ok(Bytes::copy_from_slice(&file[..1000])),
            Ok(Bytes::copy_from_slice(&file[1000..])),
            Ok(f.tail.clone()),
        ];
        let mut m = multer::Multipart::new(stream::iter(chunks), boundary);
        let mut seen = Vec::new();
        while let Some(field) = m.next_field().await.unwrap() {
            let name = field.name().unwrap().to_string();
            let filename = field.file_name().map(str::to_string);
            let ct = field.content_type().map(|c| c.to_string());
            let data = field.bytes().await.unwrap();
            seen.push((name, filename, ct, data));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, "filename");
        assert_eq!(&seen[0].3[..], b"scan.png");
        assert_eq!(&seen[1].3[..], b"passport");
        assert_eq!(seen[2].0, "file");
        assert_eq!(seen[2].1.as_deref(), Some("scan.png"));
        assert_eq!(seen[2].2.as_deref(), Some("image/png"));
        assert_eq!(&seen[2].3[..], &file[..]);
    }
}
