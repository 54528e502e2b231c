//! Output as lines: a container's byte chunks, per stream, split at newlines, long lines in
//! pieces, and the cap on what is kept.

use super::{OutputEvent, Stream};

/// Longest line kept in one piece.
const MAX_LINE: usize = 64 * 1024;

/// Splits chunks into lines per stream and enforces the output cap.
pub(super) struct LineSplitter {
    cap: u64,
    /// Bytes seen, including dropped ones.
    pub(super) seen: u64,
    kept: u64,
    /// Output passed the cap.
    pub(super) truncated: bool,
    buffers: [Vec<u8>; 2],
}

impl LineSplitter {
    pub(super) fn new(cap: u64) -> Self {
        LineSplitter {
            cap,
            seen: 0,
            kept: 0,
            truncated: false,
            buffers: [Vec::new(), Vec::new()],
        }
    }

    pub(super) fn push(&mut self, stream: Stream, bytes: &[u8], out: &mut impl FnMut(OutputEvent)) {
        self.seen += bytes.len() as u64;
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.kept);
        let take = (bytes.len() as u64).min(room) as usize;
        self.kept += take as u64;
        let i = stream as usize;
        self.buffers[i].extend_from_slice(&bytes[..take]);
        while let Some(pos) = self.buffers[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffers[i].drain(..=pos).collect();
            out(OutputEvent::Line(
                stream,
                String::from_utf8_lossy(&line[..pos]).into_owned(),
            ));
        }
        // A piece is cut only once enough follows it to know the cut splits no secret.
        let look = crate::secrets::longest();
        while self.buffers[i].len() >= MAX_LINE + look {
            let cut = crate::secrets::safe_cut(&self.buffers[i], MAX_LINE).max(1);
            let piece: Vec<u8> = self.buffers[i].drain(..cut).collect();
            out(OutputEvent::Line(
                stream,
                String::from_utf8_lossy(&piece).into_owned(),
            ));
        }
        if take < bytes.len() {
            // The cap may fall inside a secret: what of it was kept goes unwritten.
            let keep = crate::secrets::before_partial(&self.buffers[i]);
            self.buffers[i].truncate(keep);
            self.flush(out);
            self.truncated = true;
            out(OutputEvent::Truncated { cap: self.cap });
        }
    }

    pub(super) fn flush(&mut self, out: &mut impl FnMut(OutputEvent)) {
        for (i, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if !self.buffers[i].is_empty() {
                let rest = std::mem::take(&mut self.buffers[i]);
                out(OutputEvent::Line(
                    stream,
                    String::from_utf8_lossy(&rest).into_owned(),
                ));
            }
        }
    }

    pub(super) fn finish(&mut self, out: &mut impl FnMut(OutputEvent)) {
        if !self.truncated {
            self.flush(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_per_stream_and_caps() {
        let mut got = Vec::new();
        let mut s = LineSplitter::new(20);
        s.push(Stream::Stdout, b"one\ntw", &mut |e| got.push(e));
        s.push(Stream::Stderr, b"err\n", &mut |e| got.push(e));
        s.push(Stream::Stdout, b"o\nthree and more text\n", &mut |e| {
            got.push(e)
        });
        s.push(Stream::Stdout, b"dropped\n", &mut |e| got.push(e));
        s.finish(&mut |e| got.push(e));
        assert_eq!(
            got,
            vec![
                OutputEvent::Line(Stream::Stdout, "one".into()),
                OutputEvent::Line(Stream::Stderr, "err".into()),
                OutputEvent::Line(Stream::Stdout, "two".into()),
                OutputEvent::Line(Stream::Stdout, "three an".into()),
                OutputEvent::Truncated { cap: 20 },
            ]
        );
        assert_eq!(s.seen, 40);
    }

    #[test]
    fn long_lines_come_in_pieces() {
        let mut got = Vec::new();
        let mut s = LineSplitter::new(1 << 20);
        s.push(Stream::Stdout, &vec![b'x'; MAX_LINE + 10], &mut |e| {
            got.push(e)
        });
        s.finish(&mut |e| got.push(e));
        assert_eq!(got.len(), 2);
    }
}
