//! Failures explained to people: reads outrigger's JSON log lines (files, gzip, stdin, or
//! the live process's recent events) and tells what failed, since when, for whom, why,
//! what outrigger did about it, and what to do first.
//!
//! Reading is streamed: each line is parsed, folded into per-second counts and dropped
//! ([`collect`]), so memory depends on the time span and the number of routes, not on the
//! size of the logs. [`incident`] then turns the counts into incidents told as stories;
//! [`render`] prints them as text, JSON (the digest schema) or a Markdown brief.

#![allow(missing_docs)] // The report's fields are documented in docs/explain.md, its schema.

pub mod actions;
pub mod collect;
pub mod incident;
pub mod journey;
pub mod line;
pub mod render;
pub mod report;

use std::io::{self, BufRead, Read};
use std::path::Path;

use collect::{Collected, Id};
use line::Skip;

/// The longest pause in failures inside one incident, unless told otherwise.
pub const DEFAULT_GAP_MS: i64 = 60_000;

/// A line longer than this is not ours (ours are a few KiB): it is skipped as junk without
/// being held in memory.
const MAX_LINE: usize = 1 << 20;

/// Reads lines and builds the explanation.
pub struct Explainer {
    collected: Collected,
    finder: Option<journey::Finder>,
    gap_ms: i64,
}

impl Explainer {
    /// `trace`: also follow this trace or request id (`--trace`).
    pub fn new(trace: Option<&str>, gap_ms: i64) -> Self {
        Explainer {
            collected: Collected::default(),
            finder: trace.map(journey::Finder::new),
            gap_ms,
        }
    }

    /// Starts a new source (a file name, `stdin`, `live`).
    pub fn source(&mut self, name: &str) -> Id {
        self.collected.add_source(name)
    }

    /// One line of `source`, without its newline.
    pub fn line(&mut self, source: Id, bytes: &[u8]) {
        match line::parse(bytes) {
            Ok((l, ms)) => {
                if let Some(f) = &mut self.finder {
                    let name = self
                        .collected
                        .sources
                        .get(source as usize)
                        .map_or("?", |s| s.name.as_str());
                    f.offer(name, &l, ms);
                }
                self.collected.add(source, &l, ms);
            }
            Err(why) => {
                if !bytes.iter().all(u8::is_ascii_whitespace) {
                    self.collected.skip(source, why);
                }
            }
        }
    }

    /// Counts a line that was cut off (the end of a truncated file).
    pub fn truncated(&mut self, source: Id) {
        self.collected.skip(source, Skip::Truncated);
    }

    /// Counts a line too long to be ours.
    pub fn overlong(&mut self, source: Id) {
        self.collected.skip(source, Skip::NotJson);
    }

    /// Reads a whole stream of lines (`name` for the report). A stream that breaks off
    /// (a truncated gzip file) ends what is read from it; its last partial line is counted
    /// as truncated.
    pub fn read(&mut self, name: &str, input: impl Read) {
        let source = self.source(name);
        let mut reader = io::BufReader::with_capacity(256 * 1024, input);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut overlong = false;
        loop {
            let chunk = match reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Corrupt or cut-off compressed data: what was read counts, and the
                    // loss is counted as one truncated line.
                    self.truncated(source);
                    return;
                }
            };
            if chunk.is_empty() {
                break;
            }
            match memchr(chunk) {
                Some(i) => {
                    if overlong {
                        self.overlong(source);
                    } else if buf.is_empty() {
                        self.line(source, &chunk[..i]);
                    } else {
                        buf.extend_from_slice(&chunk[..i]);
                        self.line(source, &buf);
                    }
                    buf.clear();
                    overlong = false;
                    reader.consume(i + 1);
                }
                None => {
                    let n = chunk.len();
                    if !overlong {
                        if buf.len() + n > MAX_LINE {
                            overlong = true;
                            buf.clear();
                        } else {
                            buf.extend_from_slice(chunk);
                        }
                    }
                    reader.consume(n);
                }
            }
        }
        if overlong {
            self.overlong(source);
        } else if !buf.is_empty() {
            // No final newline: a whole line is used, a cut-off one counted.
            match line::parse(&buf) {
                Ok(_) => self.line(source, &buf),
                Err(_) => self.truncated(source),
            }
        }
    }

    /// Reads a file (`-`: standard input; `*.gz`: gzip).
    pub fn read_path(&mut self, path: &str) -> io::Result<()> {
        if path == "-" {
            self.read("stdin", io::stdin().lock());
            return Ok(());
        }
        let file =
            std::fs::File::open(path).map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
        let name = Path::new(path)
            .file_name()
            .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
        if path.ends_with(".gz") {
            self.read(&name, flate2::read::MultiGzDecoder::new(io::BufReader::new(file)));
        } else {
            self.read(&name, file);
        }
        Ok(())
    }

    /// The explanation of everything read.
    pub fn finish(self) -> (report::Report, Option<journey::Journey>) {
        let journey = self.finder.map(journey::Finder::finish);
        (incident::report(self.collected, self.gap_ms), journey)
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Explains lines already in memory (the live process's recent events).
pub fn explain_lines<'a>(source: &str, lines: impl IntoIterator<Item = &'a [u8]>) -> report::Report {
    let mut ex = Explainer::new(None, DEFAULT_GAP_MS);
    let id = ex.source(source);
    for l in lines {
        ex.line(id, l);
    }
    ex.finish().0
}
