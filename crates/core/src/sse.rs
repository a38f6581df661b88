//! Server-Sent Events framing: an incremental, bounded parser for upstream streams and a writer
//! for downstream ones. Pure: it is fed bytes and yields events.
//!
//! API contract used by the gateway:
//! - `SseParser::new(max_event_bytes)`, `parser.push(&[u8]) -> Result<Vec<SseEvent>, SseError>`,
//!   `parser.finish() -> Result<Option<SseEvent>, SseError>` (flushes a final unterminated event
//!   only if it is complete per the spec: the spec discards it, so this returns None).
//! - `SseEvent { id: Option<String>, event: Option<String>, data: String, retry: Option<u64> }`
//! - `write_event(&SseEvent) -> String`.
//!
//! Parsing follows the WHATWG "event stream interpretation" rules, with these choices for a
//! gateway that relays events rather than consuming them:
//! - Line ends `\n`, `\r\n` and `\r` are all accepted, also when a `\r\n` pair is split across two
//!   chunks. One leading UTF-8 BOM is skipped. Lines starting with `:` are comments (keep-alives)
//!   and are dropped.
//! - An event is dispatched at a blank line when its block had a `data` field (even an empty
//!   one, exactly as the spec does), **or an `id` field, or a valid `retry` field**. The spec
//!   itself would drop the last two (it only updates the last event id / reconnection time), but a
//!   relay must forward them: the 2025-11-25 "priming" event is an `id` with empty data, and SSE
//!   polling sends a bare `retry`. A block with only `event:` or unknown fields is dropped.
//! - [`SseEvent::id`] is the `id` field of that event's own block (`Some("")` for a bare `id:`),
//!   not the spec's sticky "last event ID"; that one is available from
//!   [`SseParser::last_event_id`]. An `id` value containing NUL is ignored (spec).
//! - `retry` is accepted only when it is all ASCII digits (and fits a `u64`); otherwise ignored.
//! - [`SseEvent::event`] is None for the default type (`message`, or an empty `event:` value).
//! - Invalid UTF-8 is an error ([`SseError::NotUtf8`]) rather than replaced: a gateway should not
//!   relay a silently altered event.
//! - Memory is bounded: the event being assembled (pending line plus data, type and id) may not
//!   exceed `max_event_bytes`, comments and unknown fields included. Past an error the parser stays
//!   failed and every call returns the same error.

/// One dispatched event. `event` None means the default type `message`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SseError {
    #[error("SSE event larger than {0} bytes")]
    TooLarge(usize),
    #[error("SSE stream is not valid UTF-8")]
    NotUtf8,
}

/// Incremental parser (WHATWG event-stream rules: `\n`, `\r\n` and `\r` line ends, comments,
/// multi-line `data`, BOM at start, `retry` digits only).
#[derive(Debug)]
pub struct SseParser {
    /// Upper bound on the bytes of the event being assembled, pending line included.
    max_event_bytes: usize,
    /// Bytes of the current line, not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    skip_lf: bool,
    /// No line has been completed yet (the BOM may only precede the first line).
    first_line: bool,
    /// Data buffer of the event being assembled (each `data` line plus `\n`).
    data: String,
    /// A `data` field was seen in this block (the spec's "data buffer is not empty").
    has_data: bool,
    event: String,
    id: Option<String>,
    retry: Option<u64>,
    /// The spec's sticky last event ID.
    last_event_id: String,
    /// Set after an error; the stream cannot be resynchronised.
    failed: Option<SseError>,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            skip_lf: false,
            first_line: true,
            data: String::new(),
            has_data: false,
            event: String::new(),
            id: None,
            retry: None,
            last_event_id: String::new(),
            failed: None,
        }
    }

    /// Feeds one chunk; returns the events completed by it, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut events = Vec::new();
        match self.push_inner(chunk, &mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Ends the stream. Per the spec an event that was not terminated by a blank line is
    /// discarded, so this returns `Ok(None)` (or the error the parser failed with). The parser is
    /// reset and may be reused for a new stream.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if let Some(e) = self.failed.take() {
            *self = SseParser::new(self.max_event_bytes);
            return Err(e);
        }
        let last_event_id = std::mem::take(&mut self.last_event_id);
        *self = SseParser::new(self.max_event_bytes);
        self.last_event_id = last_event_id;
        Ok(None)
    }

    /// The spec's last event ID: the value of the most recent valid `id` field of a dispatched
    /// event (what a client would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    fn push_inner(&mut self, mut chunk: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.extend_line(chunk)?;
                    return Ok(());
                }
                Some(end) => {
                    let (head, rest) = chunk.split_at(end);
                    let mut rest = &rest[1..];
                    if chunk[end] == b'\r' {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            None => self.skip_lf = true,
                        }
                    }
                    if self.line.is_empty() {
                        self.check_size(head.len())?;
                        self.process_line(head, events)?;
                    } else {
                        self.extend_line(head)?;
                        let line = std::mem::take(&mut self.line);
                        let result = self.process_line(&line, events);
                        self.line = line;
                        self.line.clear();
                        result?;
                    }
                    chunk = rest;
                }
            }
        }
        Ok(())
    }

    fn pending_bytes(&self) -> usize {
        self.data.len() + self.event.len() + self.id.as_ref().map_or(0, String::len)
    }

    fn check_size(&self, extra: usize) -> Result<(), SseError> {
        if self.pending_bytes() + self.line.len() + extra > self.max_event_bytes {
            return Err(SseError::TooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.check_size(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(
        &mut self,
        mut line: &[u8],
        events: &mut Vec<SseEvent>,
    ) -> Result<(), SseError> {
        if self.first_line {
            self.first_line = false;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        // The line itself is no longer pending; what it added to the event is.
        if self.pending_bytes() > self.max_event_bytes {
            return Err(SseError::TooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        if let Some(id) = &self.id {
            self.last_event_id.clone_from(id);
        }
        let mut data = std::mem::take(&mut self.data);
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let retry = self.retry.take();
        let has_data = std::mem::replace(&mut self.has_data, false);
        if !has_data && id.is_none() && retry.is_none() {
            return;
        }
        if data.ends_with('\n') {
            data.pop();
        }
        events.push(SseEvent {
            id,
            event: (!event.is_empty()).then_some(event),
            data,
            retry,
        });
    }
}

/// Writes one event in wire form, ending with the blank line. Multi-line data becomes several
/// `data:` lines.
///
/// The output always has at least one `data:` line, so every reader dispatches it (a priming
/// event is `id: …` + `data: `). Line breaks inside `id` and `event` are removed so that a value
/// cannot inject fields; `\r\n` and `\r` inside `data` become line breaks (SSE cannot carry a bare
/// `\r` in data).
pub fn write_event(event: &SseEvent) -> String {
    fn single_line(out: &mut String, field: &str, value: &str) {
        out.push_str(field);
        out.push_str(": ");
        out.extend(value.chars().filter(|c| *c != '\r' && *c != '\n'));
        out.push('\n');
    }
    let mut out = String::with_capacity(event.data.len() + 32);
    if let Some(id) = &event.id {
        single_line(&mut out, "id", id);
    }
    if let Some(kind) = event.event.as_deref().filter(|e| !e.is_empty()) {
        single_line(&mut out, "event", kind);
    }
    if let Some(retry) = event.retry {
        out.push_str("retry: ");
        out.push_str(&retry.to_string());
        out.push('\n');
    }
    let mut rest = event.data.as_str();
    loop {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new(1 << 16);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c)?);
        }
        assert_eq!(p.finish()?, None);
        Ok(out)
    }

    fn ev(id: Option<&str>, event: Option<&str>, data: &str, retry: Option<u64>) -> SseEvent {
        SseEvent {
            id: id.map(Into::into),
            event: event.map(Into::into),
            data: data.into(),
            retry,
        }
    }

    #[test]
    fn basic_event_and_line_endings() {
        let expected = vec![
            ev(Some("1"), Some("message"), "a\nb", None),
            ev(None, None, "c", None),
        ];
        for sep in ["\n", "\r\n", "\r"] {
            let text = [
                "id: 1",
                "event: message",
                "data: a",
                "data:b",
                "",
                "data: c",
                "",
                "",
            ]
            .join(sep);
            assert_eq!(parse_all(&[text.as_bytes()]).unwrap(), expected, "{sep:?}");
        }
    }

    #[test]
    fn cr_lf_split_across_chunks() {
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(events, vec![ev(None, None, "a\nb", None)]);
        // A CR at the end of a chunk followed by a non-LF starts a new line.
        let events = parse_all(&[b"data: a\r", b"data: b\r", b"\r"]).unwrap();
        assert_eq!(events, vec![ev(None, None, "a\nb", None)]);
    }

    #[test]
    fn bom_comments_and_unknown_fields() {
        let events =
            parse_all(&[b"\xEF\xBB", b"\xBF: keep-alive\nfoo: bar\ndata\n\n: x\n\n"]).unwrap();
        assert_eq!(events, vec![ev(None, None, "", None)]);
        // A BOM anywhere else is part of the line.
        let events = parse_all(&[b"data: x\n\n\xEF\xBB\xBFdata: y\n\n"]).unwrap();
        assert_eq!(events, vec![ev(None, None, "x", None)]);
    }

    #[test]
    fn priming_event_with_id_and_empty_data_is_dispatched() {
        assert_eq!(
            parse_all(&[b"id: abc\n\n"]).unwrap(),
            vec![ev(Some("abc"), None, "", None)]
        );
        assert_eq!(
            parse_all(&[b"id: abc\ndata:\n\n"]).unwrap(),
            vec![ev(Some("abc"), None, "", None)]
        );
        assert_eq!(
            parse_all(&[b"retry: 500\n\n"]).unwrap(),
            vec![ev(None, None, "", Some(500))]
        );
        // Only an event type: nothing to dispatch.
        assert_eq!(parse_all(&[b"event: x\n\n\n\n"]).unwrap(), vec![]);
    }

    #[test]
    fn id_with_nul_is_ignored_and_retry_needs_digits() {
        let events = parse_all(&[b"id: a\0b\nretry: 12a\nretry: -1\nretry:\ndata: x\n\n"]).unwrap();
        assert_eq!(events, vec![ev(None, None, "x", None)]);
        let events =
            parse_all(&[b"retry: 99999999999999999999999\ndata: x\n\nretry:7\ndata: y\n\n"])
                .unwrap();
        assert_eq!(
            events,
            vec![ev(None, None, "x", None), ev(None, None, "y", Some(7))]
        );
    }

    #[test]
    fn last_event_id_is_sticky() {
        let mut p = SseParser::new(1024);
        let events = p.push(b"id: 7\ndata: a\n\ndata: b\n\n").unwrap();
        assert_eq!(
            events,
            vec![ev(Some("7"), None, "a", None), ev(None, None, "b", None)]
        );
        assert_eq!(p.last_event_id(), "7");
        p.push(b"id\ndata: c\n\n").unwrap();
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn only_one_leading_space_is_stripped() {
        let events = parse_all(&[b"data:  two\nevent:x\n\n"]).unwrap();
        assert_eq!(events, vec![ev(None, Some("x"), " two", None)]);
    }

    #[test]
    fn unterminated_event_is_discarded() {
        let mut p = SseParser::new(1024);
        assert_eq!(p.push(b"data: a\n").unwrap(), vec![]);
        assert_eq!(p.finish(), Ok(None));
        assert_eq!(p.push(b"\n").unwrap(), vec![]);
    }

    #[test]
    fn oversized_event_is_an_error_not_growth() {
        let mut p = SseParser::new(16);
        assert_eq!(p.push(b"data: 0123456789\n"), Ok(vec![]));
        assert_eq!(p.push(b"data: 0123456789\n"), Err(SseError::TooLarge(16)));
        assert_eq!(p.push(b"\n"), Err(SseError::TooLarge(16)));
        // A line that never ends is bounded too, comments included.
        let mut p = SseParser::new(1000);
        let mut result = Ok(vec![]);
        for _ in 0..100 {
            result = p.push(b": aaaaaaaaaaaaaaaaaaaa");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::TooLarge(1000)));
        // The limit is per event.
        let mut p = SseParser::new(16);
        for _ in 0..100 {
            assert_eq!(p.push(b"data: 0123456789\n\n").unwrap().len(), 1);
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = SseParser::new(1024);
        assert_eq!(p.push(b"data: \xff\n\n"), Err(SseError::NotUtf8));
        // Split multi-byte characters are fine.
        let events = parse_all(&[
            "data: é€".as_bytes()[..7].as_ref(),
            &"data: é€\n\n".as_bytes()[7..],
        ])
        .unwrap();
        assert_eq!(events, vec![ev(None, None, "é€", None)]);
    }

    #[test]
    fn write_event_round_trips() {
        let cases = [
            ev(Some("1"), Some("message"), "{\"a\":1}", None),
            ev(None, None, "line1\nline2\n\nline4", Some(3000)),
            ev(Some("p"), None, "", None),
            ev(None, None, " leading space", None),
            ev(None, None, "", None),
        ];
        for e in cases {
            let wire = write_event(&e);
            assert!(wire.ends_with("\n\n"));
            assert_eq!(
                parse_all(&[wire.as_bytes()]).unwrap(),
                vec![e.clone()],
                "{wire:?}"
            );
        }
        assert_eq!(
            write_event(&ev(Some("1"), None, "x", None)),
            "id: 1\ndata: x\n\n"
        );
        assert_eq!(
            write_event(&ev(None, None, "a\r\nb\rc", None)),
            "data: a\ndata: b\ndata: c\n\n"
        );
        assert_eq!(
            write_event(&ev(Some("a\nevent: evil"), None, "x", None)),
            "id: aevent: evil\ndata: x\n\n"
        );
    }

    /// Arbitrary chunking yields the same events as one chunk (the fuzz target's invariant).
    #[test]
    fn chunking_does_not_change_events_generated() {
        let alphabet: &[&[u8]] = &[
            b"\n",
            b"\r",
            b"\r\n",
            b"data",
            b"data:",
            b": ",
            b"id:",
            b"id: 1",
            b"event:",
            b"retry: 12",
            b"x",
            b"\xEF\xBB\xBF",
            b"\0",
            b":",
            b"\xC3\xA9",
            b"\xff",
            b" ",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let mut input = Vec::new();
            for _ in 0..(next() % 40) {
                input.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let cuts: Vec<usize> = (0..(next() % 6))
                .map(|_| (next() as usize) % (input.len() + 1))
                .collect();
            check_chunking(&input, &cuts, 64);
        }
    }

    /// Shared with the fuzz target's logic: one chunk vs the same bytes cut at `cuts`.
    fn check_chunking(input: &[u8], cuts: &[usize], max: usize) {
        let whole = {
            let mut p = SseParser::new(max);
            p.push(input).map(|mut e| {
                e.extend(p.finish().unwrap_or_default());
                e
            })
        };
        let mut sorted = cuts.to_vec();
        sorted.sort_unstable();
        let mut p = SseParser::new(max);
        let mut events = Vec::new();
        let mut start = 0;
        let mut error = None;
        for end in sorted.into_iter().chain([input.len()]) {
            match p.push(&input[start..end]) {
                Ok(e) => events.extend(e),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            start = end;
        }
        match (whole, error) {
            (Ok(all), None) => assert_eq!(all, events, "{input:?} cut at {cuts:?}"),
            (Err(a), Some(b)) => assert_eq!(a, b, "{input:?}"),
            (w, e) => panic!("{input:?} cut at {cuts:?}: whole {w:?}, chunked error {e:?}"),
        }
    }
}
