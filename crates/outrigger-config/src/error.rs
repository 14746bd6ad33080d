//! Config errors: every problem found in a file, each with its position and a fix.

use std::fmt;

use crate::yaml::Pos;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in (as the user named it).
    pub file: String,
    /// Where in the file.
    pub pos: Pos,
    /// The setting's path, e.g. `routes[0].timeout` (empty for file-level problems).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// One line that says how to fix it.
    pub fix: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.pos.line, self.pos.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}\n  fix: {}", self.message, self.fix)
    }
}

/// Why a config could not be loaded: every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read at all.
    Read {
        /// The file.
        file: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The file was read and has these problems.
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The problems found (empty when the file could not be read).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, reason } => write!(
                f,
                "error: cannot read config file {file}: {reason}\n  fix: check the path given to -c (it is read relative to the current directory)"
            ),
            ConfigError::Invalid(diags) => {
                for (i, d) in diags.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "error: {d}")?;
                }
                let n = diags.len();
                write!(
                    f,
                    "\n{n} error{} in {}",
                    if n == 1 { "" } else { "s" },
                    diags.first().map_or("the config", |d| d.file.as_str())
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}
