//! Typed reading of the positioned YAML tree, collecting every problem instead of stopping
//! at the first.
//!
//! A section is read with [`Cx::fields`], which reports unknown keys (with a "did you mean")
//! up front; each setting is then read with a small converter (`duration`, `string`, ...)
//! that reports its own problem at the value's position and returns `None`, so the caller
//! falls back to the default and carries on looking for more problems.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Diagnostic;
use crate::yaml::{Key, Node, Pos, Value};

/// The decoding context: the file name and the problems found so far.
pub(crate) struct Cx {
    file: String,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Settings that are valid but contradict each other (`outrigger check` lints).
    pub(crate) warnings: Vec<Diagnostic>,
}

impl Cx {
    pub(crate) fn new(file: &str) -> Self {
        Cx {
            file: file.to_owned(),
            diagnostics: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn warn(&mut self, pos: Pos, path: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.warnings.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_owned(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub(crate) fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_owned(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// Opens a mapping section. `null` (an empty section, `limits:` with nothing under it)
    /// reads as an empty mapping. Unknown keys are reported here.
    pub(crate) fn fields<'a>(&mut self, node: &'a Node, path: &str, known: &[&str]) -> Fields<'a> {
        let entries: &'a [(Key, Node)] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            other => {
                self.error(
                    node.pos,
                    path,
                    format!("expected a mapping (key: value pairs), found {}", kind(other)),
                    format!(
                        "write the settings of `{}` as `key: value` lines indented under it",
                        leaf(path)
                    ),
                );
                &[]
            }
        };
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                let fix = match suggest(&key.name, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? (known fields: {})", known.join(", ")),
                    None => format!("remove it; known fields here: {}", known.join(", ")),
                };
                self.error(key.pos, path, format!("unknown field `{}`", key.name), fix);
            }
        }
        Fields {
            entries,
            pos: node.pos,
            path: path.to_owned(),
        }
    }

    /// Reads a list; a single `null` reads as an empty list.
    pub(crate) fn list<'a>(&mut self, node: &'a Node, path: &str) -> &'a [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            other => {
                self.error(
                    node.pos,
                    path,
                    format!("expected a list, found {}", kind(other)),
                    format!("write `{}` as a list: `[a, b]` or lines starting with `- `", leaf(path)),
                );
                &[]
            }
        }
    }
}

/// An open mapping section.
pub(crate) struct Fields<'a> {
    entries: &'a [(Key, Node)],
    pub(crate) pos: Pos,
    pub(crate) path: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn node(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reads an optional setting with `conv`; `None` when absent or invalid (already reported).
    pub(crate) fn opt<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        conv: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = self.node(key)?;
        if matches!(node.value, Value::Null) {
            return None;
        }
        conv(cx, node, &self.child_path(key))
    }

    /// Reads a setting that has a default.
    pub(crate) fn or<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        default: T,
        conv: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> T {
        self.opt(cx, key, conv).unwrap_or(default)
    }

    /// Reads a required setting, reporting it at the section when missing.
    pub(crate) fn req<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        example: &str,
        conv: impl FnOnce(&mut Cx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        if self.node(key).is_none_or(|n| matches!(n.value, Value::Null)) {
            cx.error(
                self.pos,
                &self.path,
                format!("missing required field `{key}`"),
                format!("add `{key}: {example}`"),
            );
            return None;
        }
        self.opt(cx, key, conv)
    }
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "a whole number",
        Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// The closest known name, when it is close enough to be a likely typo: a swapped,
/// missing or extra letter or two (`timout`, `GTE`), or a close spelling by Jaro-Winkler
/// (`telemetri`).
pub(crate) fn suggest<'k>(word: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let lower = word.to_ascii_lowercase();
    let edits_allowed = (word.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| {
            let edits = strsim::osa_distance(&lower, &k.to_ascii_lowercase());
            let similar = strsim::jaro_winkler(&lower, &k.to_ascii_lowercase());
            (edits, similar, k)
        })
        .filter(|(edits, similar, _)| *edits <= edits_allowed || *similar > 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, k)| k)
}

// ----- converters: each reports its own problem and returns None -----

pub(crate) fn string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            cx.error(
                node.pos,
                path,
                format!("expected a string, found {}", kind(other)),
                "write a single value, quoted if it contains `:` or `#`",
            );
            None
        }
    }
}

pub(crate) fn non_empty_string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    if s.trim().is_empty() {
        cx.error(
            node.pos,
            path,
            "must not be empty",
            "write a value or remove the field to get its default",
        );
        return None;
    }
    Some(s)
}

pub(crate) fn boolean(cx: &mut Cx, node: &Node, path: &str) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) if s == "true" => Some(true),
        Value::Str(s) if s == "false" => Some(false),
        other => {
            cx.error(
                node.pos,
                path,
                format!("expected true or false, found {}", kind(other)),
                "write `true` or `false`",
            );
            None
        }
    }
}

fn integer(cx: &mut Cx, node: &Node, path: &str) -> Option<i128> {
    let parsed = match &node.value {
        Value::Int(i) => Some(i128::from(*i)),
        // Strings appear where an env var was expanded (`${PORT}`), or for huge numbers.
        Value::Str(s) => s.trim().replace('_', "").parse::<i128>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        let found = match &node.value {
            Value::Str(s) => format!("`{s}`"),
            other => kind(other).to_owned(),
        };
        cx.error(
            node.pos,
            path,
            format!("expected a whole number, found {found}"),
            "write digits only, e.g. `65536`",
        );
    }
    parsed
}

/// A whole number within `[min, max]`.
pub(crate) fn int_in<T: TryFrom<i128>>(
    min: i128,
    max: i128,
    unit: &'static str,
) -> impl FnOnce(&mut Cx, &Node, &str) -> Option<T> {
    move |cx, node, path| {
        let v = integer(cx, node, path)?;
        if v < min || v > max {
            cx.error(
                node.pos,
                path,
                format!("{v} is out of range"),
                format!("use a value from {min} to {max}{unit}"),
            );
            return None;
        }
        T::try_from(v).ok()
    }
}

fn number(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let parsed = match &node.value {
        Value::Float(f) => Some(*f),
        #[allow(clippy::cast_precision_loss, reason = "config numbers are small")]
        Value::Int(i) => Some(*i as f64),
        Value::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        Some(f) if f.is_finite() => Some(f),
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected a number, found {}", kind(&node.value)),
                "write a number such as `0.5`",
            );
            None
        }
    }
}

/// A share between 0 and 1 inclusive (`failure_rate`, `sample_ratio`, ...).
pub(crate) fn ratio(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path)?;
    if !(0.0..=1.0).contains(&v) {
        cx.error(
            node.pos,
            path,
            format!("{v} is not a ratio"),
            "use a value from 0.0 to 1.0 (0.5 means half)",
        );
        return None;
    }
    Some(v)
}

/// A non-negative number (rates per second).
pub(crate) fn non_negative(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path)?;
    if v < 0.0 {
        cx.error(node.pos, path, format!("{v} is negative"), "use a value of 0 or more");
        return None;
    }
    Some(v)
}

/// A percentage from 0 to 100 inclusive (fault injection).
pub(crate) fn percent(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path)?;
    if !(0.0..=100.0).contains(&v) {
        cx.error(
            node.pos,
            path,
            format!("{v} is not a percentage"),
            "use a value from 0 to 100 (a percent, not a ratio)",
        );
        return None;
    }
    Some(v)
}

/// The longest duration a config may give. Longer ones are a way of writing "never", and
/// added to the clock they could overflow it; every setting has a real bound far below this.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration written as a string with a unit: `250ms`, `2s`, `1m`.
pub(crate) fn duration(cx: &mut Cx, node: &Node, path: &str) -> Option<Duration> {
    const FIX: &str = "write a duration with a unit, such as `250ms`, `2s` or `1m`";
    match &node.value {
        Value::Str(s) => match humantime::parse_duration(s.trim()) {
            Ok(d) if d > MAX_DURATION => {
                cx.error(
                    node.pos,
                    path,
                    format!("duration `{s}` is longer than 10 years"),
                    "give a real bound (a route timeout of `30s` or `5m`, say); a wait this long is never reached",
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(node.pos, path, format!("invalid duration `{s}`: {e}"), FIX);
                None
            }
        },
        Value::Int(i) => {
            cx.error(
                node.pos,
                path,
                format!("duration `{i}` has no unit"),
                format!("write `{i}s` or `{i}ms`"),
            );
            None
        }
        other => {
            cx.error(
                node.pos,
                path,
                format!("expected a duration, found {}", kind(other)),
                FIX,
            );
            None
        }
    }
}

/// A duration that must be more than zero.
pub(crate) fn positive_duration(cx: &mut Cx, node: &Node, path: &str) -> Option<Duration> {
    let d = duration(cx, node, path)?;
    if d.is_zero() {
        cx.error(
            node.pos,
            path,
            "must be more than zero",
            "write a duration such as `1s`",
        );
        return None;
    }
    Some(d)
}

/// A size in bytes within `[min, max]`: a whole number, or a string with a unit (`16MiB`,
/// `512KiB`, `2MB`).
pub(crate) fn byte_size(min: u64, max: u64) -> impl FnOnce(&mut Cx, &Node, &str) -> Option<u64> {
    move |cx, node, path| {
        let parsed = match &node.value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => s.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
            _ => None,
        };
        let Some(v) = parsed else {
            let found = match &node.value {
                Value::Str(s) => format!("`{s}` is not a size in bytes"),
                other => format!("expected a size in bytes, found {}", kind(other)),
            };
            cx.error(
                node.pos,
                path,
                found,
                "write a size such as `16MiB`, `512KiB` or `1048576`",
            );
            return None;
        };
        if v < min || v > max {
            cx.error(
                node.pos,
                path,
                format!("{v} bytes is out of range"),
                format!(
                    "use a size from {} to {}",
                    bytesize::ByteSize(min).display().iec(),
                    bytesize::ByteSize(max).display().iec()
                ),
            );
            return None;
        }
        Some(v)
    }
}

/// A listening address: `IP:port`.
pub(crate) fn socket_addr(cx: &mut Cx, node: &Node, path: &str) -> Option<SocketAddr> {
    let s = string(cx, node, path)?;
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let fix = if s.starts_with(':') {
                format!("write the IP too: `0.0.0.0{s}` for every interface or `127.0.0.1{s}` for loopback")
            } else {
                "write an IP address and a port: `0.0.0.0:15001`, `127.0.0.1:15002` or `[::]:15001`".to_owned()
            };
            cx.error(node.pos, path, format!("invalid address `{s}`"), fix);
            None
        }
    }
}

/// One of a closed set of words, with a "did you mean" for typos.
pub(crate) fn one_of<'w>(words: &'w [&'w str]) -> impl Fn(&mut Cx, &Node, &str) -> Option<&'w str> {
    move |cx, node, path| {
        let s = string(cx, node, path)?;
        if let Some(w) = words.iter().find(|w| **w == s) {
            return Some(w);
        }
        let fix = match suggest(&s, words.iter().copied()) {
            Some(w) => format!("did you mean `{w}`? (one of: {})", words.join(", ")),
            None => format!("use one of: {}", words.join(", ")),
        };
        cx.error(node.pos, path, format!("unknown value `{s}`"), fix);
        None
    }
}

/// A list whose items are each read by `conv`; bad items are reported and left out.
pub(crate) fn list_of<T>(
    conv: impl Fn(&mut Cx, &Node, &str) -> Option<T>,
) -> impl FnOnce(&mut Cx, &Node, &str) -> Option<Vec<T>> {
    move |cx, node, path| {
        let items = cx.list(node, path);
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| conv(cx, item, &format!("{path}[{i}]")))
                .collect(),
        )
    }
}
