//! PURE. A pod's log read with `timestamps=true`: each line begins with its RFC 3339 time and
//! a space. The time is split off as the bytes arrive (a line may come in many pieces), and a
//! line stamped at or before a given time is dropped whole: that is how a reconnect, or a
//! runner following a pod a dead process started, skips what the run log already has.

/// Longest time prefix looked for (`2026-12-03T10:56:08.123456789Z ` is 31).
const MAX_STAMP: usize = 40;
/// A longer line reaches the log in pieces of this size, each with a stamp of its own and
/// no newline between them (Docker's json-file and the CRI runtimes both cut at 16 KiB).
const PIECE: usize = 16 * 1024;

/// Splits stamps off a stamped log stream.
#[derive(Debug, Default)]
pub struct Stamps {
    /// Bytes of the current line's stamp, while it is being read.
    head: Vec<u8>,
    /// Inside a line's text (its stamp is done).
    in_text: bool,
    /// The current line is being dropped.
    dropping: bool,
    /// Bytes of the current piece's text.
    piece: usize,
    /// The stamp being read is a long line's next piece, not a new line's.
    continued: bool,
    /// Lines stamped at or before this (Unix nanoseconds) are dropped.
    after: Option<i128>,
    /// The stamp of the last line that began.
    pub last: Option<i128>,
}

impl Stamps {
    /// Drop lines stamped at or before `after` (Unix nanoseconds).
    pub fn after(after: Option<i128>) -> Self {
        Stamps {
            after,
            ..Stamps::default()
        }
    }

    /// Start over on a new stream of the same log, dropping what was read already.
    pub fn reconnect(&mut self) {
        *self = Stamps {
            after: self.last.or(self.after),
            last: self.last,
            ..Stamps::default()
        };
    }

    /// Feed `chunk`; the bytes of the lines kept, stamps removed, go to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            if !self.in_text {
                // Reading a stamp: up to the first space.
                match chunk.iter().position(|b| *b == b' ' || *b == b'\n') {
                    Some(i) if chunk[i] == b' ' => {
                        self.head.extend_from_slice(&chunk[..i]);
                        chunk = &chunk[i + 1..];
                        self.begin_line(out);
                    }
                    Some(_) => {
                        // A line with no stamp at all: kept as it is.
                        let head = std::mem::take(&mut self.head);
                        self.in_text = true;
                        if !self.continued {
                            self.dropping = false;
                        }
                        if !self.dropping {
                            out(&head);
                        }
                        self.piece = head.len();
                    }
                    None => {
                        self.head.extend_from_slice(chunk);
                        if self.head.len() > MAX_STAMP {
                            let text = std::mem::take(&mut self.head);
                            self.in_text = true;
                            if !self.continued {
                                self.dropping = false;
                            }
                            if !self.dropping {
                                out(&text);
                            }
                            self.piece = text.len();
                        }
                        return;
                    }
                }
                continue;
            }
            let room = PIECE - self.piece;
            let end = chunk[..chunk.len().min(room + 1)]
                .iter()
                .position(|b| *b == b'\n');
            let (text, rest) = match end {
                Some(i) => (&chunk[..=i], &chunk[i + 1..]),
                None if chunk.len() >= room => (&chunk[..room], &chunk[room..]),
                None => (chunk, &chunk[chunk.len()..]),
            };
            if !self.dropping {
                out(text);
            }
            if end.is_some() {
                self.in_text = false;
                self.dropping = false;
                self.continued = false;
                self.piece = 0;
            } else {
                self.piece += text.len();
                if self.piece == PIECE {
                    // A full piece: the next one begins with a stamp of its own.
                    self.in_text = false;
                    self.continued = true;
                    self.piece = 0;
                }
            }
            chunk = rest;
        }
    }

    fn begin_line(&mut self, out: &mut impl FnMut(&[u8])) {
        let head = std::mem::take(&mut self.head);
        self.in_text = true;
        let stamp = std::str::from_utf8(&head).ok().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        match stamp {
            // The next piece of a long line: kept or dropped with its line.
            Some(_) if self.continued => {}
            Some(t) => {
                let ns = t.unix_timestamp_nanos();
                self.dropping = self.after.is_some_and(|a| ns <= a);
                self.last = Some(ns);
            }
            None => {
                // Not a stamp: the line's own text.
                if !self.continued {
                    self.dropping = false;
                }
                if !self.dropping {
                    out(&head);
                    out(b" ");
                }
                self.piece = head.len() + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Stamps, pieces: &[&[u8]]) -> String {
        let mut got = Vec::new();
        for p in pieces {
            s.push(p, &mut |b| got.extend_from_slice(b));
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn stamps_come_off_however_the_bytes_are_cut() {
        let log = b"2026-12-03T10:00:00.000000001Z one\n2026-12-03T10:00:01.5Z two words\n2026-12-03T10:00:02Z three";
        for cut in 1..log.len() {
            let mut s = Stamps::default();
            let (a, b) = log.split_at(cut);
            assert_eq!(
                run(&mut s, &[a, b]),
                "one\ntwo words\nthree",
                "cut at {cut}"
            );
        }
        let mut s = Stamps::default();
        assert_eq!(run(&mut s, &[log]), "one\ntwo words\nthree");
        let last = time::macros::datetime!(2026-12-03 10:00:02 UTC).unix_timestamp_nanos();
        assert_eq!(s.last, Some(last));
    }

    #[test]
    fn lines_up_to_the_given_time_are_dropped() {
        let at = time::macros::datetime!(2026-12-03 10:00:01.5 UTC).unix_timestamp_nanos();
        let mut s = Stamps::after(Some(at));
        let log = b"2026-12-03T10:00:00Z old\n2026-12-03T10:00:01.5Z also old\n2026-12-03T10:00:01.500000001Z new\n";
        assert_eq!(run(&mut s, &[log]), "new\n");
    }

    #[test]
    fn a_long_line_comes_whole_though_each_piece_has_a_stamp() {
        let mut log = Vec::new();
        let line = "x".repeat(40_000);
        for (i, piece) in line.as_bytes().chunks(PIECE).enumerate() {
            log.extend_from_slice(format!("2026-12-03T10:00:0{i}.5Z ").as_bytes());
            log.extend_from_slice(piece);
        }
        log.extend_from_slice(b"\n2026-12-03T10:00:09Z next\n");
        for cut in [1, 100, PIECE, PIECE + 10, 2 * PIECE + 31, log.len() - 3] {
            let mut s = Stamps::default();
            let (a, b) = log.split_at(cut);
            assert_eq!(
                run(&mut s, &[a, b]),
                format!("{line}\nnext\n"),
                "cut at {cut}"
            );
        }
        // Dropped whole, with all its pieces, when it was read before.
        let at = time::macros::datetime!(2026-12-03 10:00:00.5 UTC).unix_timestamp_nanos();
        let mut s = Stamps::after(Some(at));
        assert_eq!(run(&mut s, &[&log]), "next\n");
        // A line of exactly one piece, its newline a piece of its own.
        let mut s = Stamps::default();
        let exact = "y".repeat(PIECE);
        let log = format!("2026-12-03T10:00:00Z {exact}2026-12-03T10:00:00.1Z \n");
        assert_eq!(run(&mut s, &[log.as_bytes()]), format!("{exact}\n"));
    }

    #[test]
    fn lines_without_a_stamp_are_kept() {
        let mut s = Stamps::default();
        assert_eq!(
            run(&mut s, &[b"plain text\n\n2026-12-03T10:00:00Z x\n"]),
            "plain text\n\nx\n"
        );
    }
}
