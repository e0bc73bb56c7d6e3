//! Standard output for the command line. `realtime-edge flags history |
//! head -1` closes the pipe early; `println!` would then panic (exit 101).
//! Every command prints through [`line`] instead, which treats a closed
//! pipe as the reader having seen enough: the process exits 0.

use std::io::Write;

/// What to do after a failed write to standard output.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    Written,
    /// The reader went away (EPIPE): a normal end.
    ReaderGone,
    /// Any other failure (disk full, ...).
    Failed(String),
}

/// Writes `text` and a newline to `out` and flushes it.
pub(crate) fn write_line(out: &mut impl Write, text: &str) -> WriteOutcome {
    let result = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match result {
        Ok(()) => WriteOutcome::Written,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => WriteOutcome::ReaderGone,
        Err(e) => WriteOutcome::Failed(e.to_string()),
    }
}

/// Prints a line on standard output. A closed pipe ends the process with
/// exit code 0; any other write failure with 1 and a message on stderr.
pub fn line(text: &str) {
    match write_line(&mut std::io::stdout().lock(), text) {
        WriteOutcome::Written => {}
        WriteOutcome::ReaderGone => std::process::exit(0),
        WriteOutcome::Failed(e) => {
            eprintln!("cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(std::io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_a_normal_end() {
        let mut buf = Vec::new();
        assert_eq!(write_line(&mut buf, "a"), WriteOutcome::Written);
        assert_eq!(buf, b"a\n");
        assert_eq!(
            write_line(&mut Failing(std::io::ErrorKind::BrokenPipe), "a"),
            WriteOutcome::ReaderGone
        );
        assert!(matches!(
            write_line(&mut Failing(std::io::ErrorKind::StorageFull), "a"),
            WriteOutcome::Failed(_)
        ));
    }
}
