//! Where the config comes from: the file named by `-c` (read, hashed and validated in one
//! go, so the hash always names the bytes that were applied) and the watch over it.
//!
//! A Kubernetes ConfigMap volume updates a file by swapping a `..data` symlink in its
//! directory, which inotify on the file itself never sees; the file is therefore looked at
//! (following symlinks: device, inode, modification time, length) once a second, and a
//! change is reported only once it has held for one more look, so a file being written is
//! not read half-way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use outrigger_config::{Checked, ConfigError};

/// A config as read from its file.
pub struct LoadedConfig {
    /// The validated config and its lint warnings.
    pub checked: Checked,
    /// The first 12 hex digits of the SHA-256 of the file's bytes (`outrigger_config_info`).
    pub hash: String,
}

/// Where a running proxy's config came from.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file, when there is one (reloads read it again); `None`: the built-in config.
    pub path: Option<PathBuf>,
    /// The hash of what is running.
    pub hash: String,
}

/// Reads, hashes and validates a config file (`${VAR}` expanded from the environment).
pub fn read_config(path: &Path) -> Result<LoadedConfig, ConfigError> {
    parse(path, read_bytes(path)?)
}

/// The file's bytes.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Read {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Hashes and validates a config file's bytes.
pub(crate) fn parse(path: &Path, bytes: Vec<u8>) -> Result<LoadedConfig, ConfigError> {
    let file = path.display().to_string();
    let hash = hash_of(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Read {
        file: file.clone(),
        reason: format!("it is not UTF-8 text ({e})"),
    })?;
    let checked = outrigger_config::check_yaml(&text, &file, &|name| std::env::var(name).ok())?;
    Ok(LoadedConfig { checked, hash })
}

/// The built-in config, hashed like a file holding its text.
pub fn builtin_config() -> Result<LoadedConfig, ConfigError> {
    Ok(LoadedConfig {
        checked: Checked {
            config: outrigger_config::builtin()?,
            warnings: Vec::new(),
        },
        hash: hash_of(outrigger_config::BUILTIN_YAML.as_bytes()),
    })
}

/// The first 12 hex digits of the SHA-256 of `bytes`: what `sha256sum FILE | cut -c1-12`
/// prints, so an operator can tell which file is live.
pub fn hash_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..6].iter().fold(String::with_capacity(12), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why a reload was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (or an embedding program asking).
    Signal,
    /// The config file changed on disk.
    FileChanged,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::FileChanged => "file_changed",
        }
    }
}

/// What a file looked like, following symlinks; `None` when it cannot be read.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// The watch over the config file, as a task maker for the supervisor: every `period` it
/// looks at the file and sends [`Trigger::FileChanged`] once a change has settled. A file
/// that disappears (a ConfigMap being updated) is waited for, not reported.
pub(crate) fn watch(
    path: PathBuf,
    period: Duration,
    reloads: mpsc::Sender<Trigger>,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    move || {
        let (path, reloads) = (path.clone(), reloads.clone());
        Box::pin(async move {
            let mut applied = stamp(&path);
            let mut last = applied;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&path);
                let settled = now == last;
                last = now;
                if now.is_none() || now == applied || !settled {
                    continue;
                }
                applied = now;
                // A full queue already holds a reload that will read the file.
                let _ = reloads.try_send(Trigger::FileChanged);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_prefix() {
        // printf 'abc' | sha256sum
        assert_eq!(hash_of(b"abc"), "ba7816bf8f01");
    }
}
