//! outrigger's configuration.
//!
//! [`load`] reads a YAML file into a [`Config`] with every default filled in, or fails with
//! *every* problem in the file, each with file, line, column and a one-line fix, so one run
//! of `outrigger check` is enough to fix a file. The schema and its defaults are in
//! [`schema`]; `config/outrigger.yaml` documents each field.

pub mod builder;
mod decode;
mod env;
mod error;
mod lint;
mod load;
pub mod schema;
mod yaml;

use std::path::Path;

pub use error::{ConfigError, Diagnostic};
pub use schema::*;
pub use yaml::Pos;

/// The built-in configuration used by `outrigger run` without `-c`: a sidecar for an app on
/// 127.0.0.1:8080, taking traffic on 0.0.0.0:15001, admin on 0.0.0.0:15090.
pub const BUILTIN_YAML: &str = include_str!("builtin.yaml");

/// Reads and validates a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_checked(path).map(|c| c.config)
}

/// A valid config and the lint warnings about it (settings that contradict each other).
pub struct Checked {
    /// The config.
    pub config: Config,
    /// Warnings, in file order; `outrigger check --deny-warnings` treats them as errors.
    pub warnings: Vec<Diagnostic>,
}

/// Like [`load`], keeping the lint warnings.
pub fn load_checked(path: &Path) -> Result<Checked, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    check_yaml(&text, &file, &|name| std::env::var(name).ok())
}

/// The built-in default configuration.
pub fn builtin() -> Result<Config, ConfigError> {
    from_yaml(BUILTIN_YAML, "<built-in config>", &|name| std::env::var(name).ok())
}

/// Parses and validates config text. `file` names it in errors; `env` looks up variables.
pub fn from_yaml(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    check_yaml(text, file, env).map(|c| c.config)
}

/// Like [`from_yaml`], keeping the lint warnings.
pub fn check_yaml(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Checked, ConfigError> {
    let mut cx = decode::Cx::new(file);
    let mut root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let fix = if e.message.contains("duplicate") {
                "remove one of the two entries (YAML keeps no duplicates; outrigger refuses to guess which you meant)"
            } else {
                "fix the YAML syntax at this position (indentation, a missing `:` or a closing bracket)"
            };
            cx.error(e.pos, "", e.message, fix);
            return Err(ConfigError::Invalid(cx.diagnostics));
        }
    };
    env::expand_tree(&mut cx, &mut root, env);
    let config = load::config(&mut cx, &root);
    if cx.diagnostics.is_empty() {
        cx.warnings.sort_by_key(|d| (d.pos.line, d.pos.column));
        Ok(Checked {
            config,
            warnings: cx.warnings,
        })
    } else {
        cx.diagnostics.sort_by_key(|d| (d.pos.line, d.pos.column));
        Err(ConfigError::Invalid(cx.diagnostics))
    }
}
