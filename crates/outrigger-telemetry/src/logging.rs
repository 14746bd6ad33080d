//! JSON logs on stdout: one object per line with `ts`, `level`, `kind`, `msg` and the
//! event's fields flattened beside them, so `jq` and log pipelines need no schema.
//!
//! Events name their kind with a `kind` field (`access`, `lifecycle`, `config`, ...); events
//! without one get `kind: "event"`. The `message` of a tracing event becomes `msg`.

use std::fmt;
use std::fmt::Write as _;
use std::io::Write;
use std::time::SystemTime;

use serde_json::{Map, Value};
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// Installs the JSON log layer as the global subscriber, writing events at `level` and more
/// severe. `OUTRIGGER_LOG` (an `EnvFilter` directive such as `debug` or `outrigger_proxy=trace`)
/// overrides the level when set. Calling it twice is harmless (the second call is ignored).
pub fn init(level: &str) {
    let filter = std::env::var("OUTRIGGER_LOG")
        .ok()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| filter_for(level));
    start_flusher();
    let (filter, handle) = reload::Layer::new(filter);
    if tracing_subscriber::registry()
        .with(JsonLines.with_filter(filter))
        .try_init()
        .is_ok()
    {
        let _ = LEVEL.set(Reloadable {
            handle,
            level: Mutex::new(level.to_owned()),
        });
    }
}

/// Our crates at `level`, everything else (hyper, h2, tonic) at `warn`.
fn filter_for(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!(
        "warn,outrigger={level},outrigger_proxy={level},outrigger_config={level},outrigger_telemetry={level}"
    ))
}

/// The installed filter, replaceable at run time (`PUT /debug/log_level` on the admin port).
struct Reloadable {
    handle: reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    level: Mutex<String>,
}

static LEVEL: OnceLock<Reloadable> = OnceLock::new();

/// The levels a person can ask for.
pub const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The current log level of event lines (`None` before [`init`]).
pub fn level() -> Option<String> {
    LEVEL
        .get()
        .map(|r| r.level.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Changes the level of event lines at run time; returns the previous level.
/// Access lines are not affected: `telemetry.logs.access_log` switches those.
pub fn set_level(level: &str) -> Result<String, String> {
    if !LEVELS.contains(&level) {
        return Err(format!("unknown log level `{level}`: use one of {}", LEVELS.join(", ")));
    }
    let r = LEVEL.get().ok_or("logging is not initialised")?;
    let mut current = r.level.lock().unwrap_or_else(|p| p.into_inner());
    r.handle
        .reload(filter_for(level))
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    Ok(std::mem::replace(&mut *current, level.to_owned()))
}

/// The layer that writes one JSON object per event to stdout.
pub struct JsonLines;

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        write_raw(&render(event.metadata().level(), event));
    }
}

/// Below this many microseconds (about 17 years) every `micros / 1000.0` prints as the plain
/// decimal with at most three fractional digits: up to 2^43 ms an `f64`'s spacing is under
/// 0.001, so no other decimal of three or fewer fractional digits reads back as it.
const MILLIS_EXACT: u64 = 1 << 49;

/// Room for a typical access line (about 550 bytes).
const LINE_CAPACITY: usize = 768;

thread_local! {
    /// The buffer of the thread's last line, reused by its next one.
    static SPARE_LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// One JSON log line written straight into a buffer: the access log's fast path (no map, no
/// per-key allocation). Fields come out in the order they are added, after `ts`, `level`,
/// `kind` and `msg`; [`JsonLine::finish`] hands the line to the buffered writer.
pub struct JsonLine {
    buf: String,
    /// Whether the next member needs a comma (false right after `{` or `[`).
    comma: bool,
    /// Kept in the ring of recent failures too (`/debug/explain`).
    remember: bool,
}

impl JsonLine {
    /// Starts a line with the four fields every line has.
    pub fn new(level: Level, kind: &str, msg: &str) -> Self {
        Self::new_with(level, kind, |buf| buf.push_str(msg))
    }

    /// [`JsonLine::new`] with the message written by `write_msg` straight into the line
    /// (escaped afterwards if it needs it): a message put together per line costs no
    /// buffer of its own.
    pub fn new_with(level: Level, kind: &str, write_msg: impl FnOnce(&mut String)) -> Self {
        // The thread's last line's buffer, emptied: no allocation per line.
        let mut buf = SPARE_LINE.take();
        buf.clear();
        buf.reserve(LINE_CAPACITY);
        let mut line = JsonLine {
            buf,
            comma: true,
            remember: false,
        };
        line.buf.push_str("{\"ts\":\"");
        push_timestamp(&mut line.buf, SystemTime::now());
        line.buf.push('"');
        line.str("level", level_word(&level));
        line.str("kind", kind);
        line.key("msg");
        line.buf.push('"');
        let start = line.buf.len();
        write_msg(&mut line.buf);
        if !is_clean(&line.buf.as_bytes()[start..]) {
            // Rare (a quote or control character in the path): take the message back out,
            // with its opening quote, and write it escaped.
            let raw = line.buf.split_off(start);
            line.buf.pop();
            escape_into(&mut line.buf, &raw);
        } else {
            line.buf.push('"');
        }
        line
    }

    /// `"key":` (or nothing, for an array element), after a comma when one is due.
    // This and the member writers are inlined so that each key is a literal of known length
    // where it is written: its copy becomes a few stores instead of a call to `memcpy`
    // (about 60 instructions a member otherwise, a fifth of the line).
    #[inline(always)]
    fn key(&mut self, key: &str) {
        if self.comma {
            self.buf.push(',');
        }
        if !key.is_empty() {
            // Keys are our own identifiers: nothing to escape.
            self.buf.push('"');
            self.buf.push_str(key);
            self.buf.push_str("\":");
        }
        self.comma = true;
    }

    /// Members already rendered as JSON (`"key":"value"`, comma-separated): by [`rendered`]
    /// for values that repeat line after line (the route, the endpoint), or a literal for
    /// fixed ones. One copy instead of a key and an escape each.
    pub fn members(&mut self, json: &str) -> &mut Self {
        self.key("");
        self.buf.push_str(json);
        self
    }

    /// A string member (escaped).
    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(&mut self.buf, value);
        self
    }

    /// A string member holding `value` as `digits` lowercase hex digits (at most 32).
    #[inline(always)]
    pub fn hex(&mut self, key: &str, value: u128, digits: usize) -> &mut Self {
        self.key(key);
        // The quotes and the digits go in as one piece.
        let digits = digits.min(32);
        let mut tmp = [b'"'; 34];
        lower_hex_into(&mut tmp[1..=digits], value);
        self.buf
            .push_str(std::str::from_utf8(&tmp[..digits + 2]).unwrap_or("\"\""));
        self
    }

    /// An unsigned integer member.
    #[inline(always)]
    pub fn uint(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A number member (`null` when not finite).
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        if value.is_finite() {
            self.buf.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.buf.push_str("null");
        }
        self
    }

    /// A number of milliseconds given in whole microseconds (`4.124`): the same text as
    /// [`JsonLine::num`] with `micros as f64 / 1000.0`, without float formatting.
    #[inline(always)]
    pub fn millis(&mut self, key: &str, micros: u64) -> &mut Self {
        self.key(key);
        if micros < MILLIS_EXACT {
            push_millis(&mut self.buf, micros);
        } else {
            self.buf
                .push_str(zmij::Buffer::new().format_finite(micros as f64 / 1000.0));
        }
        self
    }

    /// A `null` member.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.buf.push_str("null");
        self
    }

    /// Opens an array member; add elements with an empty key, close with [`JsonLine::end_array`].
    pub fn begin_array(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.buf.push('[');
        self.comma = false;
        self
    }

    /// Closes an array.
    pub fn end_array(&mut self) -> &mut Self {
        self.buf.push(']');
        self.comma = true;
        self
    }

    /// Opens an object (an array element when `key` is empty).
    pub fn begin_object(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.buf.push('{');
        self.comma = false;
        self
    }

    /// Closes an object.
    pub fn end_object(&mut self) -> &mut Self {
        self.buf.push('}');
        self.comma = true;
        self
    }

    /// The line so far (for tests).
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Keeps this line in the ring of recent failures as well (`/debug/explain`): for
    /// failures, which are rate-limited, never for every success.
    pub fn remember(&mut self) -> &mut Self {
        self.remember = true;
        self
    }

    /// Ends the line and queues it for output.
    pub fn finish(mut self) {
        self.buf.push('}');
        if self.remember {
            crate::recent::remember(&self.buf);
        }
        match FORMAT.get().copied().unwrap_or(Format::Json) {
            Format::Json => {
                self.buf.push('\n');
                write_buffered(self.buf.as_bytes());
            }
            // Terminals are not a hot path: re-read the line and lay it out for a person.
            Format::Pretty => {
                if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&self.buf) {
                    write_buffered(format_line(obj).as_bytes());
                }
            }
        }
        // Kept for the thread's next line unless a huge one grew it.
        if self.buf.capacity() <= 4 * LINE_CAPACITY {
            SPARE_LINE.set(std::mem::take(&mut self.buf));
        }
    }
}

/// String members rendered once as JSON (`"route":"default","upstream":"app"`), to be
/// written into many lines with [`JsonLine::members`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered(Box<str>);

impl From<String> for Rendered {
    /// Members already written as JSON (`"a":"b","c":true`): the caller vouches for it.
    fn from(json: String) -> Self {
        Rendered(json.into_boxed_str())
    }
}

impl std::ops::Deref for Rendered {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Renders string members, in order, the way [`JsonLine::str`] writes them.
pub fn rendered(members: &[(&str, &str)]) -> Rendered {
    let mut line = JsonLine {
        buf: String::new(),
        comma: false,
        remember: false,
    };
    for (key, value) in members {
        line.str(key, value);
    }
    Rendered(line.buf.into_boxed_str())
}

/// Now, as the `ts` of a line.
fn timestamp_now() -> String {
    let mut ts = String::with_capacity(24);
    push_timestamp(&mut ts, SystemTime::now());
    ts
}

/// Appends `t` as RFC 3339 UTC with milliseconds (`2026-11-30T17:36:58.123Z`), the same text
/// as `humantime::format_rfc3339_millis`. The date and time of day change once a second, so
/// they are formatted once a second and kept; only the milliseconds are written per line.
fn push_timestamp(buf: &mut String, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            prefix.clear();
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let _ = write!(prefix, "{}", humantime::format_rfc3339_seconds(whole));
            // "…T17:36:58Z" without the "Z": the milliseconds go between.
            prefix.pop();
            *cached = secs;
        }
        buf.push_str(prefix);
    });
    let millis = since_epoch.subsec_millis();
    let digit = |d: u32| char::from(b'0' + (d % 10) as u8);
    buf.push('.');
    buf.push(digit(millis / 100));
    buf.push(digit(millis / 10));
    buf.push(digit(millis));
    buf.push('Z');
}

/// Whether `b` must be escaped inside a JSON string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether no byte of `s` needs escaping. Checked 16 bytes at a time without an early exit
/// inside a block, which the compiler turns into vector compares: most values (names, paths,
/// ids, sentences) have nothing to escape and are copied whole.
fn is_clean(s: &[u8]) -> bool {
    let mut blocks = s.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |dirty, &b| dirty | needs_escape(b)) {
            return false;
        }
    }
    !blocks.remainder().iter().any(|&b| needs_escape(b))
}

/// Appends `s` as a JSON string literal. Scans bytes, not chars: every byte that needs
/// escaping is ASCII, and an ASCII byte is never part of a multi-byte character, so the
/// slices between them fall on character boundaries.
fn escape_into(buf: &mut String, s: &str) {
    buf.push('"');
    if is_clean(s.as_bytes()) {
        buf.push_str(s);
        buf.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.push_str(esc);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Writes the low `4 × out.len()` bits of `value` into `out` as lowercase hex digits,
/// zero-padded (trace and span ids, without going through `fmt`).
pub fn lower_hex_into(out: &mut [u8], value: u128) {
    // From the last digit back, a byte (two digits) at a time and shifting by a constant: a
    // variable shift of a u128 per digit cost more than the rest of the line's numbers.
    let mut rest = value;
    let mut pairs = out.rchunks_exact_mut(2);
    for pair in &mut pairs {
        pair.copy_from_slice(&HEX_PAIRS[(rest & 0xff) as usize]);
        rest >>= 8;
    }
    if let [digit] = pairs.into_remainder() {
        *digit = HEX_PAIRS[(rest & 0xf) as usize][1];
    }
}

/// Every byte value as its two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let hex = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [hex[i >> 4], hex[i & 0xf]];
        i += 1;
    }
    table
};

/// Appends `micros / 1000` as the shortest decimal that reads back as the same `f64`, the
/// way a float formatter would print the millisecond figures of an access line
/// (`4.124`, `0.2`, `12.0`), from integers only.
fn push_millis(buf: &mut String, micros: u64) {
    let mut digits = itoa::Buffer::new();
    buf.push_str(digits.format(micros / 1000));
    let frac = micros % 1000;
    buf.push('.');
    if frac == 0 {
        buf.push('0');
        return;
    }
    // Digit by digit: `from_utf8` on three bytes cost more than the rest of the number.
    let digit = |d: u64| char::from(b'0' + (d % 10) as u8);
    buf.push(digit(frac / 100));
    if !frac.is_multiple_of(100) {
        buf.push(digit(frac / 10));
        if !frac.is_multiple_of(10) {
            buf.push(digit(frac));
        }
    }
}

/// Lines waiting to be written. Access lines gather here and go out in batches (when 64 KiB
/// have gathered, and at least every 100 ms from a background thread), so a busy proxy makes
/// one `write` per batch instead of one per request. Event lines are rare: they write the
/// batch and themselves at once, in order.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const BATCH_BYTES: usize = 64 * 1024;

/// Where lines go instead of stdout (`outrigger demo` keeps the terminal for its view).
static OUTPUT: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Sends every line to `file` instead of stdout, from now on (once per process).
pub fn set_output(file: std::fs::File) {
    let _ = OUTPUT.set(Mutex::new(file));
}

/// Writes to the output: the file of [`set_output`], else stdout.
fn with_output(write: impl FnOnce(&mut dyn Write)) {
    match OUTPUT.get() {
        Some(file) => write(&mut *file.lock().unwrap_or_else(|p| p.into_inner())),
        None => write(&mut std::io::stdout().lock()),
    }
}

fn write_buffered(line: &[u8]) {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    pending.extend_from_slice(line);
    if pending.len() >= BATCH_BYTES {
        with_output(|out| {
            let _ = out.write_all(&pending);
        });
        pending.clear();
    }
}

/// Writes every pending line now (at exit, on a panic, and every 100 ms).
pub fn flush() {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    if !pending.is_empty() {
        with_output(|out| {
            let _ = out.write_all(&pending);
            let _ = out.flush();
        });
        pending.clear();
    }
}

/// Starts the thread that writes pending lines at least every 100 ms (once per process).
fn start_flusher() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new().name("log-flush".into()).spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                flush();
            }
        });
    });
}

/// Writes one log line built by the caller: `ts`, `level`, `kind` and `msg` first, then
/// `fields` in their order. Used for access logs, which have many optional fields and are
/// written on every request, so they skip tracing's machinery.
pub fn write_line(level: Level, kind: &str, msg: &str, fields: Map<String, Value>) {
    let mut obj = Map::with_capacity(fields.len() + 4);
    obj.insert("ts".into(), Value::String(timestamp_now()));
    obj.insert("level".into(), Value::String(level_word(&level).into()));
    obj.insert("kind".into(), Value::String(kind.into()));
    obj.insert("msg".into(), Value::String(msg.into()));
    obj.extend(fields);
    write_buffered(format_line(obj).as_bytes());
}

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the contract; the default).
    Json,
    /// `ts LEVEL kind msg key=value ...` for a person at a terminal (`--log-format pretty`).
    Pretty,
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Chooses the line format once, at start-up (JSON if never called).
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

fn format_line(obj: Map<String, Value>) -> String {
    let mut line = match FORMAT.get().copied().unwrap_or(Format::Json) {
        Format::Json => Value::Object(obj).to_string(),
        Format::Pretty => pretty(obj),
    };
    line.push('\n');
    line
}

fn pretty(mut obj: Map<String, Value>) -> String {
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let ts = text(obj.shift_remove("ts"));
    let level = text(obj.shift_remove("level")).to_ascii_uppercase();
    let kind = text(obj.shift_remove("kind"));
    let msg = text(obj.shift_remove("msg"));
    let mut line = format!("{ts} {level:<5} {kind:<9} {msg}");
    for (k, v) in obj {
        let v = match v {
            Value::String(s) if !s.contains(' ') => s,
            other => other.to_string(),
        };
        line.push_str(&format!("  {k}={v}"));
    }
    line
}

/// Writes an event line at once, after any pending access lines (so the order holds). One
/// write per line: lines from concurrent tasks never interleave. A closed stdout is not ours.
fn write_raw(line: &str) {
    crate::recent::offer_event(line);
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    with_output(|out| {
        if !pending.is_empty() {
            let _ = out.write_all(&pending);
        }
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    });
    pending.clear();
}

fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn render(level: &Level, event: &Event<'_>) -> String {
    let mut fields = FieldMap(Map::new());
    event.record(&mut fields);
    let mut obj = Map::with_capacity(fields.0.len() + 4);
    obj.insert("ts".into(), Value::String(timestamp_now()));
    obj.insert("level".into(), Value::String(level_word(level).into()));
    let kind = fields
        .0
        .shift_remove("kind")
        .unwrap_or_else(|| Value::String("event".into()));
    obj.insert("kind".into(), kind);
    let msg = fields.0.shift_remove("message").unwrap_or(Value::String(String::new()));
    obj.insert("msg".into(), msg);
    obj.extend(fields.0);
    format_line(obj)
}

struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_lines_are_valid_json_with_escapes_and_nesting() {
        let mut l = JsonLine::new(Level::WARN, "access", "say \"hi\"\n\u{1}");
        l.str("path", "/a\\b").uint("status", 503).num("ms", 1.5).null("none");
        l.begin_array("attempts");
        l.begin_object("").uint("n", 1).str("code", "x").end_object();
        l.begin_object("").uint("n", 2).end_object();
        l.end_array();
        let text = format!("{}}}", l.as_str());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["msg"], "say \"hi\"\n\u{1}");
        assert_eq!(v["path"], "/a\\b");
        assert_eq!(v["status"], 503);
        assert_eq!(v["ms"], 1.5);
        assert!(v["none"].is_null());
        assert_eq!(v["attempts"][1]["n"], 2);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[..4], ["ts", "level", "kind", "msg"]);
    }

    #[test]
    fn cached_timestamps_read_like_humantime_across_seconds_and_millisecond_edges() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_060_218);
        // Out of order on purpose: the cache must notice every change of second.
        for offset_ms in [0, 999, 1_000, 1_001, 59_999, 5, 86_400_000 + 7, 3] {
            let t = base + Duration::from_millis(offset_ms);
            let mut ours = String::new();
            push_timestamp(&mut ours, t);
            assert_eq!(
                ours,
                humantime::format_rfc3339_millis(t).to_string(),
                "at +{offset_ms} ms"
            );
        }
    }

    #[test]
    fn millis_read_exactly_like_the_float_formatter() {
        let float = |micros: u64| zmij::Buffer::new().format_finite(micros as f64 / 1000.0).to_owned();
        let ours = |micros: u64| {
            let mut line = JsonLine {
                buf: String::new(),
                comma: false,
                remember: false,
            };
            line.millis("", micros);
            line.buf
        };
        for micros in (0..200_000).chain([999_999, 1_000_000, 4_124_000, 86_400_000_000]) {
            assert_eq!(ours(micros), float(micros), "{micros} µs");
        }
        // Spread over the whole range, up to and past the integer-only limit.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200_000 {
            let shift = rng.u32(0..40);
            let micros = rng.u64(..MILLIS_EXACT >> shift);
            assert_eq!(ours(micros), float(micros), "{micros} µs");
        }
        for micros in [MILLIS_EXACT - 1, MILLIS_EXACT, MILLIS_EXACT + 1, u64::MAX] {
            assert_eq!(ours(micros), float(micros), "{micros} µs");
        }
    }

    #[test]
    fn hex_ids_are_zero_padded_lower_case() {
        for (value, digits) in [
            (0u128, 32),
            (1, 16),
            (u128::MAX, 32),
            (0xabc, 3),
            (u128::from(u64::MAX), 16),
        ] {
            let mut out = vec![0u8; digits];
            lower_hex_into(&mut out, value);
            let want = format!("{value:0digits$x}");
            assert_eq!(std::str::from_utf8(&out).unwrap(), &want[want.len() - digits..]);
        }
        let mut rng = fastrand::Rng::with_seed(3);
        let value = rng.u128(..);
        for digits in 0..=32 {
            let mut out = vec![0u8; digits];
            lower_hex_into(&mut out, value);
            let want = format!("{value:032x}");
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                &want[32 - digits..],
                "{digits} digits"
            );
        }
        for _ in 0..10_000 {
            let value = rng.u128(..);
            let mut out = [0u8; 32];
            lower_hex_into(&mut out, value);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{value:032x}"));
        }
    }

    #[test]
    fn written_messages_and_rendered_members_read_like_escaped_strings() {
        let msg = "GET /quote\"back\\slash\n answered 200";
        for text in [msg, "GET / answered 200 by app in 4µs.", ""] {
            let built = JsonLine::new(Level::INFO, "access", text);
            let written = JsonLine::new_with(Level::INFO, "access", |buf| buf.push_str(text));
            // Same line but for the timestamp's milliseconds.
            let msg_of = |l: &JsonLine| l.as_str()[l.as_str().find("\"level\"").unwrap()..].to_owned();
            assert_eq!(msg_of(&written), msg_of(&built), "{text:?}");
        }
        let members = rendered(&[("route", "a\"b"), ("upstream", "app")]);
        let mut by_members = JsonLine::new(Level::INFO, "access", "m");
        by_members.members(&members).end_object();
        let mut by_str = JsonLine::new(Level::INFO, "access", "m");
        by_str.str("route", "a\"b").str("upstream", "app").end_object();
        let tail = |l: &JsonLine| l.as_str()[l.as_str().find("\"route\"").unwrap()..].to_owned();
        assert_eq!(tail(&by_members), tail(&by_str));
        let mut nested = JsonLine::new(Level::INFO, "access", "m");
        nested
            .begin_array("a")
            .begin_object("")
            .members(r#""x":1"#)
            .members(r#""y":2"#)
            .end_object();
        nested.end_array();
        assert!(
            nested.as_str().ends_with(r#""a":[{"x":1,"y":2}]"#),
            "{}",
            nested.as_str()
        );
    }

    #[test]
    fn strings_with_and_without_escapes_around_every_block_edge() {
        for len in 0..40 {
            for at in 0..=len {
                for special in ["\"", "\\", "\n", "\u{1}", "é"] {
                    let s: String = "a".repeat(at) + special + &"b".repeat(len - at);
                    let mut ours = String::new();
                    escape_into(&mut ours, &s);
                    assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
                }
                let plain = "x".repeat(len);
                let mut ours = String::new();
                escape_into(&mut ours, &plain);
                assert_eq!(ours, format!("\"{plain}\""));
            }
        }
    }

    #[test]
    fn numbers_are_json_numbers() {
        let mut l = JsonLine::new(Level::INFO, "access", "m");
        l.uint("max", u64::MAX)
            .uint("zero", 0)
            .num("ms", 0.412)
            .num("whole", 2.0)
            .num("tiny", 0.001);
        let v: Value = serde_json::from_str(&format!("{}}}", l.as_str())).unwrap();
        assert_eq!(v["max"], u64::MAX);
        assert_eq!(v["zero"], 0);
        assert_eq!(v["ms"], 0.412);
        assert_eq!(v["whole"], 2.0);
        assert_eq!(v["tiny"], 0.001);
    }

    #[test]
    fn multibyte_text_and_every_control_character_survive_escaping() {
        let tricky: String = "é ü 中文 🚀 \"q\" \\ end"
            .chars()
            .chain((0u8..0x20).map(char::from))
            .chain("tail ✓".chars())
            .collect();
        let mut l = JsonLine::new(Level::INFO, "access", &tricky);
        l.hex("trace_id", 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 32)
            .hex("span_id", 0x00f0_67aa_0ba9_02b7, 16);
        let text = format!("{}}}", l.as_str());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["msg"], tricky.as_str());
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
    }

    use std::sync::{Arc, Mutex};

    use super::*;
    use std::time::Duration;

    /// Captures rendered lines instead of writing them, to check the shape.
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(render(event.metadata().level(), event));
        }
    }

    #[test]
    fn pretty_lines_put_the_sentence_first() {
        let mut obj = Map::new();
        obj.insert("ts".into(), "2026-11-29T00:00:00.000Z".into());
        obj.insert("level".into(), "warn".into());
        obj.insert("kind".into(), "access".into());
        obj.insert("msg".into(), "The service failed.".into());
        obj.insert("status".into(), 503.into());
        obj.insert("cause".into(), "attempt 1 failed".into());
        assert_eq!(
            pretty(obj),
            "2026-11-29T00:00:00.000Z WARN  access    The service failed.  status=503  cause=\"attempt 1 failed\""
        );
    }

    #[test]
    fn lines_are_one_json_object_with_ts_level_kind_msg_and_fields() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                kind = "access",
                status = 503u64,
                route = "checkout",
                "The request failed."
            );
            tracing::info!("plain");
        });
        let lines = lines.lock().unwrap();
        assert!(lines[0].ends_with('\n') && !lines[0].trim_end().contains('\n'));
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["kind"], "access");
        assert_eq!(v["msg"], "The request failed.");
        assert_eq!(v["status"], 503);
        assert_eq!(v["route"], "checkout");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let v: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(v["kind"], "event");
    }
}
