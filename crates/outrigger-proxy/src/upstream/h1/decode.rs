//! The response side of an HTTP/1.1 exchange, on a byte buffer alone.
//!
//! No socket here: the caller reads into a `BytesMut` and asks for the head, then for body
//! frames, and says when the upstream closed. That keeps every framing rule a unit test
//! away, and lets the same bytes, split anywhere, be fed to this decoder and to hyper's
//! client for comparison (the differential tests at the bottom).
//!
//! The rules (RFC 9112), and where they are stricter than hyper's client:
//!
//! - The head ends at the first empty line; it is parsed by httparse only once the bytes
//!   can hold that end (a head trickled a byte at a time is scanned once, not re-parsed
//!   from its start on every read). At most 64 KiB and 100 fields (hyper: 100 fields).
//! - Interim 1xx responses are skipped. `101 Switching Protocols` is an answer only to a
//!   request that asked to upgrade; unasked, it is an error (hyper hands it on).
//! - No body for `HEAD`, 204 and 304; their `Content-Length` must still be a valid length
//!   (hyper ignores it there), because the client is told it.
//! - `Transfer-Encoding` frames the body (chunked when `chunked` is its last coding, else
//!   until the close) and a `Content-Length` beside it is dropped and the connection closed
//!   (hyper keeps it open). An HTTP/1.0 response with `Transfer-Encoding` is an error, as
//!   in hyper.
//! - `Content-Length`: digits only; a list or repeated field must agree. The client gets the
//!   number, written once (`005` or `5, 5` are not passed on as sent).
//! - Chunk-size lines and the trailer section end in CRLF only: a bare LF or CR anywhere in
//!   them is an error (hyper accepts a bare LF inside a trailer line). Whitespace after the
//!   size is allowed before `;` or CR, as in hyper; chunk extensions are skipped and may add
//!   up to 16 KiB per body, and trailers to 16 KiB and 100 fields (hyper's limits).
//! - The connection may carry another request only if the response said so (HTTP/1.1
//!   without `Connection: close`, or HTTP/1.0 with `keep-alive`), its body ended by its
//!   framing (not by the close), and no byte followed it.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};

use super::Error;
use crate::http::headers::{is_named, list_items};

/// A response head larger than this is refused. Envoy's default limit for headers is 60 KiB.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// At most this many fields in a response head or trailer section (hyper's default).
const MAX_HEADERS: usize = 100;
/// A trailer section larger than this is refused (hyper's limit).
const MAX_TRAILERS: usize = 16 * 1024;
/// The chunk extensions of one body may add up to this (hyper's limit); they are skipped.
const MAX_EXTENSIONS: u64 = 16 * 1024;
/// While a body streams the buffer holds at most this much (bytes become frames at once).
pub(super) const READ_BUF_MAX: usize = 64 * 1024;
/// A body chunk at least this long, and at least a quarter of the read buffer, is handed on
/// without a copy; shorter ones are copied so they do not pin the buffer.
const SPLIT_MIN: usize = 1024;

/// How the response body is delimited, and how far it has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    /// The response head has not arrived yet.
    Head,
    /// `Content-Length`: this many bytes still to read.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    /// The body has ended.
    Done,
    /// `101 Switching Protocols`: the connection is no longer HTTP.
    Upgraded,
}

/// Where a chunked body's decoder stands. The chunk-size line is read a byte at a time and
/// consumed as it goes, so a line trickled in pieces is never scanned twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Start,
    /// In the size's hex digits: the value so far.
    Size(u64),
    /// In whitespace after the size.
    SizeSpace(u64),
    /// In a chunk extension (skipped).
    Extension(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// This much chunk data still to read.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers(TrailerScan),
}

/// How far the trailer section has been checked. It stays in the buffer until its empty
/// line has arrived (it becomes one frame), so only the new bytes are scanned on each read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TrailerScan {
    /// Bytes of the section checked so far (at most 16 KiB: small fields keep the
    /// exchange, which lives in every request's future, small).
    scanned: u16,
    /// Bytes on the current line so far (its CR excluded).
    line: u16,
    /// The last byte checked was a CR.
    cr: bool,
    /// Complete field lines so far (at most 100).
    fields: u8,
}

/// What one decoding step over the buffered bytes produced.
pub(super) enum Step {
    Frame(Frame<Bytes>),
    /// Nothing more can be decoded until more bytes arrive.
    More,
    End,
}

/// The response side of one exchange: its head, then its body, from a buffer of bytes.
#[derive(Debug)]
pub(super) struct Decoder {
    recv: Recv,
    head_request: bool,
    /// The request asked to switch protocols: only then is a `101` an answer.
    upgrade_requested: bool,
    /// Whether the response lets the connection carry another request.
    pub(super) keep_alive: bool,
    /// How much of a partial head is known not to hold its end (at most 64 KiB).
    head_scanned: u32,
    /// Chunk-extension bytes seen in this body (at most 16 KiB).
    extension_bytes: u16,
    /// The response had no body by rule or by its length of 0.
    bodiless: bool,
}

impl Decoder {
    /// A decoder for the response to a `HEAD` request (no body) or not, to a request that
    /// asked to switch protocols or not.
    pub(super) fn new(head_request: bool, upgrade_requested: bool) -> Self {
        Decoder {
            recv: Recv::Head,
            head_request,
            upgrade_requested,
            keep_alive: true,
            head_scanned: 0,
            extension_bytes: 0,
            bodiless: false,
        }
    }

    /// The most unconsumed bytes the buffer may hold before the next read: past this the
    /// response is refused (a head, or a trailer section, too large).
    pub(super) fn read_limit(&self) -> usize {
        match self.recv {
            Recv::Head | Recv::Chunked(Chunk::Trailers(_)) => MAX_HEAD,
            _ => READ_BUF_MAX,
        }
    }

    /// Parses a complete response head from `buf`, if there is one; interim 1xx responses
    /// are consumed and skipped.
    pub(super) fn head(&mut self, buf: &mut BytesMut) -> Result<Option<http::response::Parts>, Error> {
        loop {
            if buf.is_empty() || !self.head_may_end(buf) {
                return Ok(None);
            }
            let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                buf,
                &mut slots,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => {
                    // No end of head in what is here: only bytes after it need a look.
                    self.head_scanned = buf.len() as u32;
                    return Ok(None);
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(Error::Protocol("the response head has more than 100 header fields"));
                }
                Err(_) => return Err(Error::Protocol("the response head does not parse")),
            };
            let code = parsed.code.unwrap_or(0);
            let status = StatusCode::from_u16(code).map_err(|_| Error::Protocol("the status code is not valid"))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                buf.advance(len);
                self.head_scanned = 0;
                continue;
            }
            let version = if parsed.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // One copy of the head; every header value is a slice of it.
            let base = buf.as_ptr() as usize;
            let head = crate::sys::arena::copy(&buf[..len]);
            let slice = |value: &[u8]| {
                let at = value.as_ptr() as usize - base;
                HeaderValue::from_maybe_shared(head.slice(at..at + value.len()))
                    .map_err(|_| Error::Protocol("a header value is not valid"))
            };
            let mut headers = crate::http::headers::spare_map(parsed.headers.len());
            let mut facts = HeadFacts::default();
            for h in parsed.headers.iter() {
                // The fields that decide the framing are read here, from the bytes; the
                // hop-by-hop ones that carry nothing else (`Connection: keep-alive`,
                // `Keep-Alive`) stay out of the map, which would only drop them again.
                let raw = h.name.as_bytes();
                let name = match raw.len() {
                    10 if is_named(raw, b"connection") => {
                        if facts.connection(h.value) {
                            continue;
                        }
                        http::header::CONNECTION
                    }
                    10 if is_named(raw, b"keep-alive") => continue,
                    14 if is_named(raw, b"content-length") => {
                        // Written back once, as the number (below).
                        if facts.content_length(h.value) {
                            facts.length_value = Some(slice(h.value)?);
                        }
                        continue;
                    }
                    17 if is_named(raw, b"transfer-encoding") => {
                        facts.transfer_encoding = true;
                        TRANSFER_ENCODING
                    }
                    // The fields nearly every response carries, named without
                    // `HeaderName::from_bytes` (about 115 instructions a field).
                    4 if is_named(raw, b"date") => http::header::DATE,
                    6 if is_named(raw, b"server") => http::header::SERVER,
                    12 if is_named(raw, b"content-type") => http::header::CONTENT_TYPE,
                    13 if is_named(raw, b"cache-control") => http::header::CACHE_CONTROL,
                    _ => HeaderName::from_bytes(raw).map_err(|_| Error::Protocol("a header name is not valid"))?,
                };
                headers.append(name, slice(h.value)?);
            }
            buf.advance(len);
            self.head_scanned = 0;
            self.recv = self.framing_of(status, version, &mut facts, &mut headers)?;
            self.bodiless = self.recv == Recv::Done;
            let mut parts = Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = version;
            parts.headers = headers;
            return Ok(Some(parts));
        }
    }

    /// Whether the buffer may hold the end of a head: always on the first look (a head
    /// usually arrives whole, and httparse finds out fastest); after that, only when the
    /// bytes that came since hold an empty line (`\n\n` or `\n\r\n`).
    fn head_may_end(&mut self, buf: &[u8]) -> bool {
        if self.head_scanned == 0 {
            return true;
        }
        // A line end just before the old end may complete with the new bytes.
        let from = (self.head_scanned as usize).saturating_sub(2);
        let ends = buf[from..]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && matches!(&buf[from + i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]));
        if !ends {
            self.head_scanned = buf.len() as u32;
        }
        ends
    }

    /// How the response's body is delimited (RFC 9112 §6.3), and whether the connection can
    /// carry another request afterwards.
    fn framing_of(
        &mut self,
        status: StatusCode,
        version: Version,
        facts: &mut HeadFacts,
        headers: &mut HeaderMap,
    ) -> Result<Recv, Error> {
        self.keep_alive &= !facts.close && (version == Version::HTTP_11 || facts.keep_alive);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if !self.upgrade_requested {
                return Err(Error::Protocol(
                    "the upstream switched protocols (101) although the request did not ask to",
                ));
            }
            self.keep_alive = false;
            return Ok(Recv::Upgraded);
        }
        if facts.transfer_encoding && version == Version::HTTP_10 {
            return Err(Error::Protocol("an HTTP/1.0 response cannot use Transfer-Encoding"));
        }
        if facts.transfer_encoding && facts.length_seen {
            // Both: the length is wrong by definition and the connection is suspect.
            self.keep_alive = false;
        } else {
            if let Some(problem) = facts.length_problem {
                return Err(Error::Protocol(problem));
            }
            if let Some(n) = facts.length {
                // The client is told the number, once: `005` or `5, 5` are not passed on.
                let value = match facts.length_value.take() {
                    Some(v) if facts.canonical => v,
                    _ => HeaderValue::from(n),
                };
                // Every `Content-Length` field was left out of the map above.
                headers.append(CONTENT_LENGTH, value);
            }
        }
        if self.head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Recv::Done);
        }
        if facts.transfer_encoding {
            let chunked_last = headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .next_back()
                .filter(|v| v.to_str().is_ok())
                .and_then(|v| list_items(v.as_bytes()).next_back())
                .is_some_and(|c| is_named(c, b"chunked"));
            if chunked_last {
                return Ok(Recv::Chunked(Chunk::Start));
            }
            self.keep_alive = false;
            return Ok(Recv::UntilClose);
        }
        Ok(match facts.length {
            Some(0) => Recv::Done,
            Some(n) => Recv::Length(n),
            None => {
                self.keep_alive = false;
                Recv::UntilClose
            }
        })
    }

    /// One step of the body's decoder over the buffered bytes.
    pub(super) fn body(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            let available = buf.len();
            match &mut self.recv {
                Recv::Head | Recv::Done | Recv::Upgraded => return Ok(Step::End),
                Recv::Length(left) => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(available as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.recv = Recv::Done;
                    }
                    return Ok(Step::Frame(Frame::data(take(buf, n))));
                }
                Recv::UntilClose => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Frame(Frame::data(take(buf, available))));
                }
                Recv::Chunked(Chunk::Data(left)) => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(available as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.recv = Recv::Chunked(Chunk::DataCr);
                    }
                    return Ok(Step::Frame(Frame::data(take(buf, n))));
                }
                Recv::Chunked(Chunk::Trailers(scan)) => {
                    let mut scan = *scan;
                    let step = trailers(buf, &mut scan)?;
                    self.recv = match step {
                        Step::More => Recv::Chunked(Chunk::Trailers(scan)),
                        Step::Frame(_) | Step::End => Recv::Done,
                    };
                    return Ok(step);
                }
                Recv::Chunked(state) => {
                    let mut state = *state;
                    let mut used = 0;
                    for &byte in buf.iter() {
                        used += 1;
                        state = self.chunk_line(state, byte)?;
                        if matches!(state, Chunk::Data(_) | Chunk::Trailers(_)) {
                            break;
                        }
                    }
                    buf.advance(used);
                    self.recv = Recv::Chunked(state);
                    if !matches!(state, Chunk::Data(_) | Chunk::Trailers(_)) {
                        return Ok(Step::More);
                    }
                }
            }
        }
    }

    /// The chunk-size line (and the CRLF after a chunk's data), one byte at a time.
    fn chunk_line(&mut self, state: Chunk, byte: u8) -> Result<Chunk, Error> {
        let hex = |size: u64| -> Result<Chunk, Error> {
            let digit = (byte as char).to_digit(16).map(u64::from);
            let size = digit
                .and_then(|d| size.checked_mul(16)?.checked_add(d))
                .ok_or(Error::Protocol("a chunk size is larger than 2^64"))?;
            Ok(Chunk::Size(size))
        };
        Ok(match (state, byte) {
            (Chunk::Start, b) if b.is_ascii_hexdigit() => hex(0)?,
            (Chunk::Start, _) => return Err(Error::Protocol("a chunk does not start with its size")),
            (Chunk::Size(n), b) if b.is_ascii_hexdigit() => hex(n)?,
            (Chunk::Size(n) | Chunk::SizeSpace(n), b' ' | b'\t') => Chunk::SizeSpace(n),
            (Chunk::Size(n) | Chunk::SizeSpace(n), b';') => Chunk::Extension(n),
            (Chunk::Size(n) | Chunk::SizeSpace(n) | Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Size(_) | Chunk::SizeSpace(_), _) => {
                return Err(Error::Protocol("a chunk-size line does not parse"));
            }
            (Chunk::Extension(_), b'\n') => {
                return Err(Error::Protocol("a chunk extension holds a bare LF"));
            }
            (Chunk::Extension(n), _) => {
                self.extension_bytes += 1;
                if u64::from(self.extension_bytes) >= MAX_EXTENSIONS {
                    return Err(Error::Protocol("the chunk extensions of the body are over 16 KiB"));
                }
                Chunk::Extension(n)
            }
            (Chunk::SizeLf(0), b'\n') => Chunk::Trailers(TrailerScan::default()),
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::SizeLf(_), _) => return Err(Error::Protocol("a chunk-size line ends in a bare CR")),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataCr, _) => return Err(Error::Protocol("a chunk is longer than its size")),
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::DataLf, _) => return Err(Error::Protocol("a chunk's data ends in a bare CR")),
            (Chunk::Data(_) | Chunk::Trailers(_), _) => state,
        })
    }

    /// The upstream closed the connection: the end of a close-delimited body, an error
    /// anywhere else.
    pub(super) fn eof(&mut self) -> Result<(), Error> {
        match self.recv {
            Recv::UntilClose => {
                self.recv = Recv::Done;
                Ok(())
            }
            Recv::Done | Recv::Upgraded => Ok(()),
            Recv::Head => Err(Error::Closed("before sending a response")),
            Recv::Length(_) | Recv::Chunked(_) => {
                self.recv = Recv::Done;
                self.keep_alive = false;
                Err(Error::Closed("before the end of the response body"))
            }
        }
    }

    /// Stops decoding after an error: the connection is done with.
    pub(super) fn abandon(&mut self) {
        self.recv = Recv::Done;
        self.keep_alive = false;
    }

    /// Whether the response body has ended (or never had one).
    pub(super) fn finished(&self) -> bool {
        self.recv == Recv::Done
    }

    /// Whether the response had no body, by rule (`HEAD`, 204, 304) or by its length of 0.
    pub(super) fn bodiless(&self) -> bool {
        self.bodiless
    }

    /// Whether the response switched protocols.
    pub(super) fn is_upgrade(&self) -> bool {
        self.recv == Recv::Upgraded
    }

    /// Whether nothing more of the body will come.
    pub(super) fn is_end_stream(&self) -> bool {
        matches!(self.recv, Recv::Done | Recv::Upgraded)
    }

    /// Whether the rest of a body of known length is in `buffered` bytes already.
    pub(super) fn body_buffered(&self, buffered: usize) -> bool {
        match self.recv {
            Recv::Length(n) => n <= buffered as u64,
            Recv::Done => true,
            _ => false,
        }
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.recv {
            Recv::Length(n) => SizeHint::with_exact(n),
            Recv::Done | Recv::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Takes `n` buffered bytes as a body chunk. A chunk that is a good part of the buffer is
/// split off it, not copied (a 16 KiB body costs no `memcpy`; the next read gets the buffer
/// back if the chunk is gone by then, else a fresh one). A short chunk is copied, carved
/// from a shared one, so it neither pins the buffer nor makes the next read allocate.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n >= SPLIT_MIN && n * 4 >= buf.capacity() {
        return buf.split_to(n).freeze();
    }
    let chunk = crate::sys::arena::copy(&buf[..n]);
    buf.advance(n);
    chunk
}

/// Checks the trailer section's new bytes (CRLF line ends only, within the limits); once its
/// empty line is here, parses it into a trailers frame (`End` when it has no fields).
fn trailers(buf: &mut BytesMut, scan: &mut TrailerScan) -> Result<Step, Error> {
    let mut end = None;
    for (i, &byte) in buf.iter().enumerate().skip(usize::from(scan.scanned)) {
        if scan.cr {
            if byte != b'\n' {
                return Err(Error::Protocol("a trailer line holds a bare CR"));
            }
            scan.cr = false;
            if scan.line == 0 {
                end = Some(i + 1);
                break;
            }
            scan.fields += 1;
            if usize::from(scan.fields) > MAX_HEADERS {
                return Err(Error::Protocol("the trailer section has more than 100 fields"));
            }
            scan.line = 0;
        } else {
            match byte {
                b'\r' => scan.cr = true,
                b'\n' => return Err(Error::Protocol("a trailer line ends in a bare LF")),
                _ => scan.line += 1,
            }
        }
        if i + 1 >= MAX_TRAILERS {
            return Err(Error::Protocol("the trailer section is larger than 16 KiB"));
        }
    }
    let Some(end) = end else {
        // Within the limit checked above, so it fits.
        scan.scanned = buf.len() as u16;
        return Ok(Step::More);
    };
    if scan.fields == 0 {
        buf.advance(end);
        return Ok(Step::End);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(&buf[..end], &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) if used == end => fields,
        _ => return Err(Error::Protocol("the trailer section does not parse")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return Err(Error::Protocol("a trailer field is not valid"));
        };
        map.append(name, value);
    }
    buf.advance(end);
    Ok(Step::Frame(Frame::trailers(map)))
}

/// A decimal made of digits only (RFC 9110's `1*DIGIT`: no sign, no spaces inside), as
/// `u64`; `None` for anything else or an overflow.
pub(super) fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// What a response head says about its own framing, gathered while its fields are read.
#[derive(Default)]
struct HeadFacts {
    /// `Connection` lists `close`.
    close: bool,
    /// `Connection` lists `keep-alive` (what keeps an HTTP/1.0 connection open).
    keep_alive: bool,
    transfer_encoding: bool,
    /// A `Content-Length` field was there.
    length_seen: bool,
    /// The `Content-Length`, if every value agrees.
    length: Option<u64>,
    /// The first `Content-Length` field's value, and whether it was the only one and is
    /// written as the number is (then it is passed on as it came, without a new value).
    length_value: Option<HeaderValue>,
    canonical: bool,
    /// Why the `Content-Length` cannot be used.
    length_problem: Option<&'static str>,
}

impl HeadFacts {
    /// Notes the tokens of one `Connection` value; true when it lists nothing but `close`
    /// and `keep-alive`, so it names no other field to remove and can be left out.
    fn connection(&mut self, value: &[u8]) -> bool {
        let mut only_framing = true;
        for token in list_items(value) {
            if is_named(token, b"close") {
                self.close = true;
            } else if is_named(token, b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                only_framing = false;
            }
        }
        only_framing
    }

    /// Notes one `Content-Length` value (a comma-separated list is allowed if all agree);
    /// true for the first such field.
    fn content_length(&mut self, value: &[u8]) -> bool {
        let first = !self.length_seen;
        self.length_seen = true;
        self.canonical = first && value.first().is_some_and(|&b| b != b'0' || value.len() == 1);
        if self.length_problem.is_some() {
            return first;
        }
        for part in list_items(value) {
            let Some(n) = digits(part) else {
                self.length_problem = Some("the Content-Length is not a number");
                return first;
            };
            if self.length.is_some_and(|l| l != n) {
                self.length_problem = Some("the response has two different Content-Lengths");
                return first;
            }
            self.length = Some(n);
        }
        // Only digits, no list and no leading zero: the field says the number as it is.
        self.canonical &= value.iter().all(u8::is_ascii_digit);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What became of a response: the comparable facts, or where it failed.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Answered {
            status: u16,
            /// Fields other than the framing and hop-by-hop ones (which each side treats in
            /// its own way), lower-cased names, in order.
            headers: Vec<(String, Vec<u8>)>,
            body: Vec<u8>,
            trailers: Option<Vec<(String, Vec<u8>)>>,
            reusable: bool,
        },
        /// `101` to a request that asked for it.
        Upgraded,
        HeadError(String),
        BodyError(u16, String),
    }

    fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        map.iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "connection" | "keep-alive" | "content-length" | "transfer-encoding"
                )
            })
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The wire in pieces of the given sizes (cycled; 0 counts as 1).
    fn pieces<'a>(wire: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut at = 0;
        let mut i = 0;
        std::iter::from_fn(move || {
            if at >= wire.len() {
                return None;
            }
            let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(usize::MAX).max(1);
            i += 1;
            let piece = &wire[at..(at + n).min(wire.len())];
            at += piece.len();
            Some(piece)
        })
    }

    /// Our decoder over `wire` arriving in pieces, the upstream closing after the last one.
    fn ours(wire: &[u8], sizes: &[usize], head_request: bool, upgrade: bool) -> Outcome {
        let mut dec = Decoder::new(head_request, upgrade);
        let mut buf = BytesMut::new();
        let mut feed = pieces(wire, sizes);
        let parts = loop {
            match dec.head(&mut buf) {
                Err(e) => return Outcome::HeadError(e.to_string()),
                Ok(Some(parts)) => break parts,
                Ok(None) if buf.len() >= dec.read_limit() => return Outcome::HeadError("too large".into()),
                Ok(None) => match feed.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Outcome::HeadError("closed".into()),
                },
            }
        };
        if dec.is_upgrade() {
            return Outcome::Upgraded;
        }
        let status = parts.status.as_u16();
        let mut body = Vec::new();
        let mut trailers = None;
        loop {
            match dec.body(&mut buf) {
                Err(e) => return Outcome::BodyError(status, e.to_string()),
                Ok(Step::End) => break,
                Ok(Step::Frame(frame)) => match frame.into_data() {
                    Ok(data) => body.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok().map(|t| fields(&t)),
                },
                Ok(Step::More) if buf.len() >= dec.read_limit() => {
                    return Outcome::BodyError(status, "too large".into());
                }
                Ok(Step::More) => match feed.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => match dec.eof() {
                        Ok(()) => break,
                        Err(e) => return Outcome::BodyError(status, e.to_string()),
                    },
                },
            }
        }
        // A byte the upstream sent after the response (buffered or still to come) would be
        // read as the next request's response: the connection is not reused.
        let reusable = dec.keep_alive && dec.finished() && buf.is_empty() && feed.next().is_none();
        Outcome::Answered {
            status,
            headers: fields(&parts.headers),
            body,
            trailers,
            reusable,
        }
    }

    /// hyper's HTTP/1.1 client over an in-memory pipe, fed the same pieces. The upstream
    /// closes only once hyper waits for more and every piece is out (a close-delimited body),
    /// so "may this connection carry another request" can be asked of hyper too.
    fn hypers(wire: &[u8], sizes: &[usize], head_request: bool, upgrade: bool) -> Outcome {
        use http_body_util::BodyExt;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::AsyncWriteExt;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let chunks: Vec<Vec<u8>> = pieces(wire, sizes).map(<[u8]>::to_vec).collect();
        rt.block_on(async move {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
            let conn = tokio::spawn(conn.with_upgrades());
            let written = Arc::new(AtomicBool::new(false));
            let close = Arc::new(tokio::sync::Notify::new());
            let writer = {
                let (written, close) = (written.clone(), close.clone());
                tokio::spawn(async move {
                    for chunk in chunks {
                        if server.write_all(&chunk).await.is_err() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    written.store(true, Ordering::SeqCst);
                    close.notified().await;
                    let _ = server.shutdown().await;
                    server
                })
            };
            // Runs `fut` until it finishes; once everything is written and it has made no
            // progress for a while, the upstream closes (hyper waits for the end of a
            // close-delimited body, or for bytes that will never come).
            async fn settle<F: Future>(fut: F, written: &AtomicBool, close: &tokio::sync::Notify) -> F::Output {
                let mut fut = std::pin::pin!(fut);
                let mut idle = 0;
                loop {
                    tokio::select! {
                        biased;
                        out = &mut fut => return out,
                        () = tokio::task::yield_now() => {
                            if written.load(Ordering::SeqCst) {
                                idle += 1;
                                if idle == 64 {
                                    close.notify_one();
                                }
                            }
                        }
                    }
                }
            }
            let mut req = http::Request::new(http_body_util::Empty::new());
            *req.method_mut() = if head_request {
                http::Method::HEAD
            } else {
                http::Method::GET
            };
            req.headers_mut().insert("host", HeaderValue::from_static("up"));
            if upgrade {
                req.headers_mut()
                    .insert("connection", HeaderValue::from_static("upgrade"));
                req.headers_mut()
                    .insert("upgrade", HeaderValue::from_static("websocket"));
            }
            let resp = match settle(sender.send_request(req), &written, &close).await {
                Ok(resp) => resp,
                Err(e) => return Outcome::HeadError(e.to_string()),
            };
            let status = resp.status().as_u16();
            if status == 101 {
                return Outcome::Upgraded;
            }
            let headers = fields(resp.headers());
            let mut stream = resp.into_body();
            let mut body = Vec::new();
            let mut trailers = None;
            loop {
                match settle(stream.frame(), &written, &close).await {
                    None => break,
                    Some(Err(e)) => return Outcome::BodyError(status, e.to_string()),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => body.extend_from_slice(&data),
                        Err(frame) => trailers = frame.into_trailers().ok().map(|t| fields(&t)),
                    },
                }
            }
            // Everything is written by now or the upstream closed; let hyper take in what
            // is left, then ask whether it would send another request on the connection.
            settle(
                std::future::poll_fn(|_| {
                    if written.load(Ordering::SeqCst) {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                }),
                &written,
                &close,
            )
            .await;
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            let reusable = !conn.is_finished() && sender.is_ready();
            close.notify_one();
            drop(writer);
            Outcome::Answered {
                status,
                headers,
                body,
                trailers,
                reusable,
            }
        })
    }

    /// Where our decoder is deliberately stricter than hyper's (the module doc says why).
    const DELIBERATE: [&str; 6] = [
        "a trailer line ends in a bare LF",
        "a trailer line holds a bare CR",
        "although the request did not ask to",
        "cannot use Transfer-Encoding",
        "the Content-Length is not a number",
        "two different Content-Lengths",
    ];

    /// Compares the two; a difference must be one of the deliberate ones, in the stricter
    /// direction.
    fn agree(wire: &[u8], sizes: &[usize], head_request: bool, upgrade: bool) {
        let ours = ours(wire, sizes, head_request, upgrade);
        let theirs = hypers(wire, sizes, head_request, upgrade);
        if ours == theirs {
            return;
        }
        let shown = String::from_utf8_lossy(wire);
        match (&ours, &theirs) {
            // Stricter: we refuse what hyper took.
            (Outcome::HeadError(why) | Outcome::BodyError(_, why), _) if DELIBERATE.iter().any(|d| why.contains(d)) => {
            }
            // Both failed, each in its own words (or at its own point of the body).
            (Outcome::HeadError(_), Outcome::HeadError(_)) | (Outcome::BodyError(..), Outcome::BodyError(..)) => {}
            // Stricter: `Content-Length` beside `Transfer-Encoding` closes the connection.
            (Outcome::Answered { reusable: false, .. }, Outcome::Answered { reusable: true, .. })
                if {
                    let lower = shown.to_ascii_lowercase();
                    lower.contains("content-length") && lower.contains("transfer-encoding")
                } =>
            {
                let (
                    Outcome::Answered {
                        body: a, trailers: ta, ..
                    },
                    Outcome::Answered {
                        body: b, trailers: tb, ..
                    },
                ) = (&ours, &theirs)
                else {
                    unreachable!()
                };
                assert_eq!((a, ta), (b, tb), "{shown:?}");
            }
            _ => panic!(
                "our decoder and hyper's disagree on {shown:?} in pieces {sizes:?} (HEAD: {head_request}, upgrade: {upgrade}):\n ours: {ours:?}\nhyper: {theirs:?}"
            ),
        }
    }

    #[test]
    fn a_long_chunk_is_split_off_the_read_buffer_and_a_short_one_is_copied() {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        buf.extend_from_slice(&[7; 6000]);
        let start = buf.as_ptr();
        let short = take(&mut buf, 100);
        assert_ne!(short.as_ptr(), start, "a short chunk must not pin the read buffer");
        let rest = buf.as_ptr();
        let long = take(&mut buf, 5000);
        assert_eq!(
            long.as_ptr(),
            rest,
            "a long chunk is the buffer's own bytes, not a copy"
        );
        assert!(short.iter().chain(long.iter()).all(|b| *b == 7));
        assert_eq!(buf.len(), 900);

        // A chunk of 1.5 KiB in a 64 KiB buffer would pin 40 times its size: copied.
        let mut buf = BytesMut::with_capacity(READ_BUF_MAX);
        buf.extend_from_slice(&[9; 1536]);
        let start = buf.as_ptr();
        let chunk = take(&mut buf, 1536);
        assert_ne!(chunk.as_ptr(), start);
        assert_eq!(&chunk[..], &[9; 1536][..]);
    }

    /// Chunked bodies after a valid head: the framing tricks of the "funky chunks" and HTTP
    /// Garden corpora, each with what must come of it.
    #[test]
    fn chunk_lines_and_trailers_take_crlf_only() {
        let ok = |body: &str, trailers: Option<&[(&str, &str)]>| Outcome::Answered {
            status: 200,
            headers: vec![],
            body: body.as_bytes().to_vec(),
            trailers: trailers.map(|t| {
                t.iter()
                    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                    .collect()
            }),
            reusable: true,
        };
        let cases: &[(&str, Option<Outcome>)] = &[
            ("5\r\nhello\r\n0\r\n\r\n", Some(ok("hello", None))),
            ("5;a=b;c\r\nhello\r\n0;last\r\n\r\n", Some(ok("hello", None))),
            ("5 \t;a\r\nhello\r\n0\r\n\r\n", Some(ok("hello", None))),
            ("A\r\n0123456789\r\n0\r\n\r\n", Some(ok("0123456789", None))),
            ("000005\r\nhello\r\n0\r\n\r\n", Some(ok("hello", None))),
            (
                "5\r\nhello\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n",
                Some(ok("hello", Some(&[("x-sum", "1"), ("x-b", "2")]))),
            ),
            // A bare LF inside an extension: the desync of the "funky chunks" write-up.
            ("5;a\nXXXX\r\nhello\r\n0\r\n\r\n", None),
            ("5\nhello\r\n0\r\n\r\n", None),
            ("5\r\rhello\r\n0\r\n\r\n", None),
            ("5\r\nhello\n0\r\n\r\n", None),
            ("5\r\nhello\r0\r\n\r\n", None),
            ("5\r\nhelloX\r\n0\r\n\r\n", None),
            ("5\r\nhello\r\n0\n\n", None),
            ("5\r\nhello\r\n0\r\n\n", None),
            ("5\r\nhello\r\n0\r\nx: 1\n\r\n", None),
            ("5\r\nhello\r\n0\r\nx: 1\r\n\n", None),
            ("5\r\nhello\r\n0\r\nx: 1\ry\r\n\r\n", None),
            ("5\r\nhello\r\n0\r\n x: 1\r\n\r\n", None),
            (" 5\r\nhello\r\n0\r\n\r\n", None),
            ("+5\r\nhello\r\n0\r\n\r\n", None),
            ("0x5\r\nhello\r\n0\r\n\r\n", None),
            ("5 5\r\nhello\r\n0\r\n\r\n", None),
            ("5_\r\nhello\r\n0\r\n\r\n", None),
            ("\r\n5\r\nhello\r\n0\r\n\r\n", None),
            ("10000000000000000\r\n", None),
            ("fffffffffffffffff\r\n", None),
        ];
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        for (body, want) in cases {
            let wire = format!("{head}{body}");
            for sizes in [&[usize::MAX][..], &[1], &[3, 7]] {
                let got = ours(wire.as_bytes(), sizes, false, false);
                match want {
                    Some(want) => assert_eq!(&got, want, "{body:?} in pieces {sizes:?}"),
                    None => assert!(
                        matches!(got, Outcome::BodyError(200, _)),
                        "{body:?} in pieces {sizes:?} must be refused, got {got:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_capped_per_body() {
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        // 16 KiB of extensions over several chunks, as hyper counts them.
        let ext = ";".to_owned() + &"e".repeat(6000);
        let wire = format!("{head}1{ext}\r\na\r\n1{ext}\r\nb\r\n1{ext}\r\nc\r\n0\r\n\r\n");
        assert!(
            matches!(ours(wire.as_bytes(), &[4096], false, false), Outcome::BodyError(_, ref e) if e.contains("16 KiB"))
        );
        let wire = format!("{head}1{ext}\r\na\r\n1{ext}\r\nb\r\n0\r\n\r\n");
        assert!(matches!(
            ours(wire.as_bytes(), &[4096], false, false),
            Outcome::Answered { .. }
        ));
        let wire = format!("{head}0\r\nx-big: {}\r\n\r\n", "v".repeat(17_000));
        assert!(
            matches!(ours(wire.as_bytes(), &[1000], false, false), Outcome::BodyError(_, ref e) if e.contains("16 KiB"))
        );
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let wire = format!("{head}0\r\n{many}\r\n");
        assert!(
            matches!(ours(wire.as_bytes(), &[usize::MAX], false, false), Outcome::BodyError(_, ref e) if e.contains("100 fields"))
        );
    }

    #[test]
    fn content_length_reaches_the_client_as_the_number() {
        for (value, n) in [("5", "5"), ("005", "5"), ("5, 5", "5"), ("5,5", "5")] {
            let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nhello");
            let mut dec = Decoder::new(false, false);
            let mut buf = BytesMut::from(wire.as_bytes());
            let parts = dec.head(&mut buf).unwrap().unwrap();
            let lengths: Vec<_> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, [n], "{value}");
        }
        let wire = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        let parts = Decoder::new(false, false)
            .head(&mut BytesMut::from(wire))
            .unwrap()
            .unwrap();
        assert_eq!(parts.headers.get_all(CONTENT_LENGTH).iter().count(), 1);
        // HEAD, 204 and 304 have no body, but the client is still told the length.
        for (status, head_request) in [(200, true), (204, false), (304, false)] {
            for value in ["abc", "5, 6", "-1", ""] {
                let wire = format!("HTTP/1.1 {status} X\r\nContent-Length: {value}\r\n\r\n");
                let got = Decoder::new(head_request, false).head(&mut BytesMut::from(wire.as_str()));
                assert!(got.is_err(), "{wire:?}");
            }
            let wire = format!("HTTP/1.1 {status} X\r\nContent-Length: 0012\r\n\r\n");
            let parts = Decoder::new(head_request, false)
                .head(&mut BytesMut::from(wire.as_str()))
                .unwrap()
                .unwrap();
            assert_eq!(parts.headers[CONTENT_LENGTH], "12");
        }
    }

    #[test]
    fn framing_faults_in_the_head_are_refused_or_end_the_connection() {
        let refused = |wire: &str, head_request: bool, upgrade: bool| {
            matches!(
                ours(wire.as_bytes(), &[usize::MAX], head_request, upgrade),
                Outcome::HeadError(_)
            )
        };
        // RFC 9112 §6.1: chunked is HTTP/1.1's; an HTTP/1.0 response using it is faulty.
        assert!(refused(
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
            false
        ));
        assert!(refused(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
            false
        ));
        // A 101 nobody asked for.
        assert!(refused(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            false,
            false
        ));
        assert_eq!(
            ours(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                &[1],
                false,
                true
            ),
            Outcome::Upgraded
        );
        // Both framings: Transfer-Encoding wins and the connection is not kept.
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert!(
            matches!(ours(both.as_bytes(), &[2], false, false), Outcome::Answered { reusable: false, ref body, .. } if body == b"hello")
        );
        // HTTP/1.0 keeps a connection only when it says keep-alive.
        assert!(matches!(
            ours(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", &[5], false, false),
            Outcome::Answered { reusable: false, .. }
        ));
        assert!(matches!(
            ours(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
                &[5],
                false,
                false
            ),
            Outcome::Answered { reusable: true, .. }
        ));
        // Bytes behind a complete response (a body after a 204, a stale answer): never reused.
        assert!(matches!(
            ours(
                b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                &[usize::MAX],
                false,
                false
            ),
            Outcome::Answered { reusable: false, .. }
        ));
    }

    /// A head trickled in small pieces is searched for its end once, not parsed from its
    /// start on every read: httparse runs again only when a new piece can end the head.
    #[test]
    fn a_trickled_head_is_scanned_once() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            head.extend_from_slice(format!("x-field-{i}: {}\r\n", "v".repeat(10)).as_bytes());
        }
        let mut dec = Decoder::new(false, false);
        let mut buf = BytesMut::new();
        let mut parses = 0;
        for piece in head.chunks(7) {
            buf.extend_from_slice(piece);
            let before = dec.head_scanned;
            // Once a look found no end, only a line end after `head_scanned - 2` can end it.
            assert!(dec.head(&mut buf).is_ok_and(|p| p.is_none()));
            if before == 0 || dec.head_scanned == 0 {
                parses += 1;
            }
        }
        assert!(parses <= 2, "the head was parsed {parses} times");
        buf.extend_from_slice(b"\r\n");
        // Too many fields for a response: the one parse that can end it says so.
        assert!(dec.head(&mut buf).is_err());

        // Split anywhere, even inside the final CRLFCRLF, the head is found.
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
        for at in 1..wire.len() {
            let got = ours(wire, &[at, 1], false, false);
            assert!(
                matches!(got, Outcome::Answered { ref body, .. } if body == b"hi"),
                "{at}: {got:?}"
            );
        }
        let lf = b"HTTP/1.1 200 OK\ncontent-length: 2\n\nhi";
        for at in 1..lf.len() {
            assert!(
                matches!(ours(lf, &[at, 1], false, false), Outcome::Answered { .. }),
                "{at}"
            );
        }
    }

    /// Responses from the corpora (hyper's client decoder cases, funky chunks, HTTP
    /// Garden's response-side findings), each checked against hyper itself.
    #[test]
    fn corpus_cases_agree_with_hyper() {
        let cases: &[&str] = &[
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\n\r\nuntil the close",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nraw until close",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nraw",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: 2 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\n content-length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\nx\x00y: 1\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\nx: a\x00b\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiEXTRA",
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 999 Odd\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 99 Low\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 2000 Long\r\ncontent-length: 0\r\n\r\n",
            "HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1  200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\ncontent-length: 2\n\nhi",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\n\r\nhi",
            "\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx: 1\nz: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 2\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nEXTRA",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\n",
            "",
            "garbage",
        ];
        // hyper's own chunk-size line cases (proto/h1/decode.rs tests), each as a whole body.
        let size_lines: &[(&str, Option<usize>)] = &[
            ("1\r\n", Some(1)),
            ("01\r\n", Some(1)),
            ("A\r\n", Some(10)),
            ("a\r\n", Some(10)),
            ("Ff\r\n", Some(255)),
            ("Ff   \r\n", Some(255)),
            ("1;extension\r\n", Some(1)),
            ("a;ext name=value\r\n", Some(10)),
            ("1;extension;extension2\r\n", Some(1)),
            ("1;;;  ;\r\n", Some(1)),
            ("2; extension...\r\n", Some(2)),
            ("3   ; extension=123\r\n", Some(3)),
            ("3   ;\r\n", Some(3)),
            ("3   ;   \r\n", Some(3)),
            ("F\rF", None),
            ("F", None),
            ("\r\n\r\n", None),
            ("\r\n", None),
            ("X\r\n", None),
            ("1X\r\n", None),
            ("-\r\n", None),
            ("-1\r\n", None),
            ("1 invalid extension\r\n", None),
            ("1 A\r\n", None),
            ("1;no CRLF", None),
            ("1;reject\nnewlines\r\n", None),
            ("f0000000000000003\r\n", None),
        ];
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut generated: Vec<String> = size_lines
            .iter()
            .map(|(line, size)| match size {
                Some(n) => format!("{head}{line}{}\r\n0\r\n\r\n", "x".repeat(*n)),
                None => format!("{head}{line}"),
            })
            .collect();
        for ((line, size), wire) in size_lines.iter().zip(&generated) {
            // Our decoder alone, as hyper's tests state it.
            let got = ours(wire.as_bytes(), &[usize::MAX], false, false);
            match size {
                Some(n) => assert!(
                    matches!(&got, Outcome::Answered { body, .. } if body.len() == *n),
                    "{line:?}: {got:?}"
                ),
                None => assert!(matches!(got, Outcome::BodyError(..)), "{line:?}: {got:?}"),
            }
        }
        generated.extend([
            format!("{head}10\r\n1234567890abcdef\r\n0\r\nbad\r\r\n"),
            format!("{head}1\r\nZ\r\n\r\n\r\n"),
            format!("{head}10\r\n1234567890abcdef\r\n0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Stream-Error: failed to decode\r\n\r\n"),
            format!("{head}3\r\nfoo\r\n3\r\nbar\r\n0\r\nx: first\r\nx: second\r\n\r\n"),
        ]);
        for wire in cases.iter().copied().chain(generated.iter().map(String::as_str)) {
            for sizes in [&[usize::MAX][..], &[1], &[5, 2]] {
                for head_request in [false, true] {
                    agree(wire.as_bytes(), sizes, head_request, false);
                }
                agree(wire.as_bytes(), sizes, false, true);
            }
        }
    }

    /// Pieces of a response that the property test puts together.
    fn response_from(choices: &[u8], body: &[u8]) -> Vec<u8> {
        let pick = |i: usize, options: &[&str]| {
            options[choices.get(i).copied().unwrap_or(0) as usize % options.len()].to_owned()
        };
        let mut wire = pick(
            0,
            &[
                "HTTP/1.1 200 OK\r\n",
                "HTTP/1.0 200 OK\r\n",
                "HTTP/1.1 204 No Content\r\n",
                "HTTP/1.1 304 Not Modified\r\n",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                "HTTP/1.1 101 Switching Protocols\r\n",
                "HTTP/1.1 500 Oops\r\n",
            ],
        );
        wire += &pick(
            1,
            &[
                "",
                "connection: close\r\n",
                "connection: keep-alive\r\n",
                "keep-alive: timeout=5\r\n",
            ],
        );
        let length = pick(
            2,
            &[
                "",
                "content-length: {n}\r\n",
                "content-length: {n}, {n}\r\n",
                "content-length: 0{n}\r\n",
                "content-length: {n}\r\ncontent-length: {n}\r\n",
                "content-length: {m}\r\n",
                "content-length: x\r\n",
            ],
        );
        wire += &length
            .replace("{n}", &body.len().to_string())
            .replace("{m}", &(body.len() + 1).to_string());
        let te = pick(
            3,
            &[
                "",
                "",
                "transfer-encoding: chunked\r\n",
                "transfer-encoding: gzip\r\n",
                "transfer-encoding: gzip, chunked\r\n",
            ],
        );
        let chunked = te.contains("chunked");
        wire += &te;
        wire += &pick(4, &["", "x-a: 1\r\n", "server: up\r\nx-b: two words\r\n"]);
        wire += "\r\n";
        let mut wire = wire.into_bytes();
        if chunked {
            let ext = pick(5, &["", ";a=b", " ", ";x\ny", ";q=\"s\""]);
            let line_end = pick(6, &["\r\n", "\r\n", "\r\n", "\n", "\r"]);
            let cut = choices.get(7).copied().unwrap_or(0) as usize % (body.len() + 1);
            for piece in [&body[..cut], &body[cut..]] {
                if piece.is_empty() {
                    continue;
                }
                wire.extend_from_slice(format!("{:x}{ext}{line_end}", piece.len()).as_bytes());
                wire.extend_from_slice(piece);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            wire.extend_from_slice(pick(8, &["", "x-t: 1\r\n", "x-t: 1\n", "x-t: 1\r\ny: 2\r\n"]).as_bytes());
            wire.extend_from_slice(pick(9, &["\r\n", "\r\n", "\n"]).as_bytes());
        } else {
            wire.extend_from_slice(body);
        }
        wire.extend_from_slice(pick(10, &["", "", "", "X", "HTTP/1.1 200 OK\r\n\r\n"]).as_bytes());
        wire
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("OUTRIGGER_DIFF_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
        ))]

        /// The differential harness: the same upstream bytes, split at random points, give
        /// the same status, fields, body, trailers, error and reusability from our decoder
        /// and from hyper's client, or differ in one of the deliberate ways.
        #[test]
        fn our_decoder_and_hypers_agree_on_any_response(
            choices in proptest::collection::vec(proptest::num::u8::ANY, 11),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            sizes in proptest::collection::vec(1usize..40, 1..4),
            flip in proptest::option::of((proptest::num::usize::ANY, proptest::num::u8::ANY)),
            head_request in proptest::bool::ANY,
            upgrade in proptest::bool::ANY,
        ) {
            let mut wire = response_from(&choices, &body);
            // Sometimes one byte anywhere is replaced, to reach what the grammar does not.
            if let Some((at, byte)) = flip {
                let n = wire.len();
                wire[at % n] = byte;
            }
            agree(&wire, &sizes, head_request, upgrade);
        }
    }
}
