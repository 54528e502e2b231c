//! PURE. A pod's log read with `timestamps=true`: each line begins with its RFC 3339 time and
//! a space. The time is split off as the bytes arrive (a line may come in many pieces), and a
//! line stamped at or before a given time is dropped whole: that is how a reconnect, or a
//! runner following a pod a dead process started, skips what the run log already has.

/// Longest time prefix looked for (`2026-12-03T10:56:08.123456789Z ` is 31).
const MAX_STAMP: usize = 40;

/// Splits stamps off a stamped log stream.
#[derive(Debug, Default)]
pub struct Stamps {
    /// Bytes of the current line's stamp, while it is being read.
    head: Vec<u8>,
    /// Inside a line's text (its stamp is done).
    in_text: bool,
    /// The current line is being dropped.
    dropping: bool,
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
                        self.head.clear();
                        self.in_text = true;
                        self.dropping = false;
                    }
                    None => {
                        self.head.extend_from_slice(chunk);
                        if self.head.len() > MAX_STAMP {
                            let text = std::mem::take(&mut self.head);
                            self.in_text = true;
                            self.dropping = false;
                            out(&text);
                        }
                        return;
                    }
                }
                continue;
            }
            let end = chunk.iter().position(|b| *b == b'\n');
            let (text, rest) = match end {
                Some(i) => (&chunk[..=i], &chunk[i + 1..]),
                None => (chunk, &chunk[chunk.len()..]),
            };
            if !self.dropping {
                out(text);
            }
            if end.is_some() {
                self.in_text = false;
                self.dropping = false;
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
            Some(t) => {
                let ns = t.unix_timestamp_nanos();
                self.dropping = self.after.is_some_and(|a| ns <= a);
                self.last = Some(ns);
            }
            None => {
                // Not a stamp: the line's own text.
                self.dropping = false;
                out(&head);
                out(b" ");
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
    fn lines_without_a_stamp_are_kept() {
        let mut s = Stamps::default();
        assert_eq!(
            run(&mut s, &[b"plain text\n\n2026-12-03T10:00:00Z x\n"]),
            "plain text\n\nx\n"
        );
    }
}
