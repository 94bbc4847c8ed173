//! What a configuration that does not load reports: every [`Problem`], each with
//! its file and key. A leaf: every section's validation pushes these, so it
//! imports none of them.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in.
    pub file: PathBuf,
    /// Dotted key path, e.g. `ApiKey.MaxExpirationPeriod`; empty for file-level problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// A configuration that could not be loaded, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Every problem, in file order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}
