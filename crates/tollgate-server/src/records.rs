//! The trace's CSV records, read with the `csv` crate, and the line each starts on.
//!
//! The dialect is the crate's: fields are separated by `,`; a field that starts with
//! `"` is quoted and may hold `,`, `""` (one quote) and line breaks; empty lines are
//! skipped; a UTF-8 byte order mark at the start is ignored (by the crate, when its
//! first read holds the whole mark; the simulator's header check drops one split over
//! reads); nothing is trimmed. Like the crate, the reader is lenient where a strict
//! one would complain: a character after a closing quote is kept (`"a"b` is `ab`) and
//! a `"` inside an unquoted field is an ordinary character. A quoted field that is
//! never closed is an error.
//!
//! Records end at `\n` only, and the `\r` of a `\r\n` is dropped from the record's
//! last field. The crate's default would also end a record at a lone `\r`, and stop a
//! record ending in `\r\n` before its `\n`, so the count of line breaks read after a
//! record would depend on its line end.
//!
//! # Line numbers
//!
//! The crate's record position names the line where its scan for a record began,
//! before any blank lines, so the line is counted back from the end of the record
//! instead. After a record, [`csv::Reader::position`]'s line is 1 + the number of `\n`
//! read so far, the record's own line break included; so the record starts on that
//! line minus 1 minus the `\n`s inside its (quoted) fields. For this to hold for the
//! last record too, the input gets a final `\n` when it lacks one. Then only a quoted
//! field that is never closed can run to the end of the input, which is how such a
//! field is found; its record has no line break of its own, so it starts on that line
//! minus the `\n`s in its fields.

use std::io::{self, Read};

use csv::ByteRecord;

/// Why a record could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Reading failed.
    Io(io::Error),
    /// The input ended inside a quoted field of the record that starts on `line`.
    UnclosedQuote {
        /// The line where the record starts, counting from 1.
        line: u64,
    },
}

/// Reads CSV records, streaming: memory is proportional to the longest record.
#[derive(Debug)]
pub struct Records<R> {
    csv: csv::Reader<Input<R>>,
    /// Room for a field that is being rewritten.
    scratch: Vec<u8>,
}

impl<R: Read> Records<R> {
    /// A reader of `input`; it buffers, so `input` need not.
    pub fn new(input: R) -> Self {
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(Input {
                inner: input,
                last: None,
                inner_done: false,
                ended: false,
            });
        Records {
            csv,
            scratch: Vec::new(),
        }
    }

    /// Reads the next record into `record` and returns the line (from 1) where it
    /// starts, or `None` at the end of the input.
    pub fn read(&mut self, record: &mut ByteRecord) -> Result<Option<u64>, ReadError> {
        loop {
            if !self
                .csv
                .read_byte_record(record)
                .map_err(|e| ReadError::Io(io_error(e)))?
            {
                return Ok(None);
            }
            let breaks = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
            let after = self.csv.position().line();
            if self.csv.get_ref().ended {
                return Err(ReadError::UnclosedQuote {
                    line: after.saturating_sub(breaks),
                });
            }
            let Some(last) = record.len().checked_sub(1) else {
                continue;
            };
            if let Some(field) = record.get(last).and_then(|f| f.strip_suffix(b"\r")) {
                if last == 0 && field.is_empty() {
                    // A blank `\r\n` line.
                    continue;
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(field);
                record.truncate(last);
                record.push_field(&self.scratch);
            }
            return Ok(Some(after.saturating_sub(breaks + 1)));
        }
    }
}

/// The I/O error inside a `csv` error. Reading byte records with `flexible` and
/// writing records of a fixed length can fail with nothing else; anything else is
/// kept as an error of kind `Other`.
pub fn io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// The input as the CSV reader gets it: with a `\n` added at the end when the input
/// is not empty and does not end with one, and a note of when the reader saw the end.
#[derive(Debug)]
struct Input<R> {
    inner: R,
    /// The last byte handed out.
    last: Option<u8>,
    /// `inner` has reached its end.
    inner_done: bool,
    /// `read` has returned 0 for a buffer with room: the CSV reader has seen the end.
    ended: bool,
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.inner_done {
            let n = loop {
                match self.inner.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    result => break result?,
                }
            };
            if let Some(&b) = buf.get(..n).and_then(<[u8]>::last) {
                self.last = Some(b);
                return Ok(n);
            }
            self.inner_done = true;
            if let (Some(first), Some(b)) = (buf.first_mut(), self.last)
                && b != b'\n'
            {
                *first = b'\n';
                self.last = Some(b'\n');
                return Ok(1);
            }
        }
        self.ended = true;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record as (line, fields), or the error as text.
    fn read_all(input: &[u8]) -> Result<Vec<(u64, Vec<String>)>, String> {
        let mut records = Records::new(input);
        let mut record = ByteRecord::new();
        let mut out = Vec::new();
        loop {
            match records.read(&mut record) {
                Ok(Some(line)) => out.push((
                    line,
                    record
                        .iter()
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect(),
                )),
                Ok(None) => return Ok(out),
                Err(ReadError::UnclosedQuote { line }) => return Err(format!("unclosed {line}")),
                Err(ReadError::Io(e)) => return Err(e.to_string()),
            }
        }
    }

    fn rec(line: u64, fields: &[&str]) -> (u64, Vec<String>) {
        (line, fields.iter().map(|f| (*f).to_owned()).collect())
    }

    #[test]
    fn blank_lines_before_a_record() {
        assert_eq!(
            read_all(b"a,b,c\n\n1,,3\n\n\n4,5,6\n").expect("valid"),
            vec![
                rec(1, &["a", "b", "c"]),
                rec(3, &["1", "", "3"]),
                rec(6, &["4", "5", "6"])
            ]
        );
    }

    #[test]
    fn no_final_line_break() {
        assert_eq!(
            read_all(b"a\n\nb,c").expect("valid"),
            vec![rec(1, &["a"]), rec(3, &["b", "c"])]
        );
        assert_eq!(
            read_all(b"a\n\n\"b\nc\"").expect("valid"),
            vec![rec(1, &["a"]), rec(3, &["b\nc"])]
        );
        assert_eq!(
            read_all(b"a\r\n\r\nb,c\r").expect("valid"),
            vec![rec(1, &["a"]), rec(3, &["b", "c"])]
        );
    }

    #[test]
    fn crlf() {
        assert_eq!(
            read_all(b"a,b\r\n\r\n\r\n1,\"x\r\ny\"\r\n\"q\",\"2\"\r\n").expect("valid"),
            vec![
                rec(1, &["a", "b"]),
                rec(4, &["1", "x\r\ny"]),
                rec(6, &["q", "2"])
            ]
        );
    }

    #[test]
    fn quoted_fields_over_several_lines() {
        assert_eq!(
            read_all(
                b"\"a,b\",\"say \"\"hi\"\"\",\"\"\n\nx,\"multi\n\nline\",y\n\nz,say\"hi,1\n\"\n\"\n"
            )
            .expect("valid"),
            vec![
                rec(1, &["a,b", "say \"hi\"", ""]),
                rec(3, &["x", "multi\n\nline", "y"]),
                rec(7, &["z", "say\"hi", "1"]),
                rec(8, &["\n"]),
            ]
        );
    }

    #[test]
    fn byte_order_mark_and_spaces() {
        assert_eq!(
            read_all("\u{feff}a, b ,c\n\n\u{feff}x\n".as_bytes()).expect("valid"),
            vec![rec(1, &["a", " b ", "c"]), rec(3, &["\u{feff}x"])]
        );
        assert_eq!(
            read_all("\u{feff}\n\na".as_bytes()).expect("valid"),
            vec![rec(3, &["a"])]
        );
    }

    #[test]
    fn an_unclosed_quote_names_the_line_its_record_starts_on() {
        assert_eq!(
            read_all(b"a\n\nb,\"open\nstill open\n"),
            Err("unclosed 3".to_owned())
        );
        assert_eq!(
            read_all(b"a\n\nb,\"open\n\nstill open"),
            Err("unclosed 3".to_owned())
        );
        assert_eq!(
            read_all(b"a\r\n\r\nb,\"open\r\n"),
            Err("unclosed 3".to_owned())
        );
        assert_eq!(
            read_all(b"a\n\"say \"\"hi\"\"\n"),
            Err("unclosed 2".to_owned())
        );
    }

    #[test]
    fn a_character_after_a_closing_quote_is_kept() {
        assert_eq!(
            read_all(b"\"x\"y,1\n").expect("valid"),
            vec![rec(1, &["xy", "1"])]
        );
    }

    #[test]
    fn empty_input() {
        assert_eq!(read_all(b"").expect("valid"), vec![]);
        assert_eq!(read_all(b"\n\r\n\n").expect("valid"), vec![]);
    }

    /// A reader that hands out one byte per read, so records span many buffer fills.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(out)) => {
                    *out = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn reads_of_any_size() {
        let input = b"a,b\r\n\r\n1,\"x\ny\"\r\n\n2,z";
        let mut records = Records::new(OneByte(input));
        let mut record = ByteRecord::new();
        let mut lines = Vec::new();
        while let Some(line) = records.read(&mut record).expect("valid") {
            lines.push((line, record.len()));
        }
        assert_eq!(lines, vec![(1, 2), (3, 2), (6, 2)]);
    }
}
