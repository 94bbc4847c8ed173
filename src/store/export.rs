//! What a migration between stores reads besides the records themselves (the
//! export methods at the end of [`crate::store::Storage`]).

/// How many records of each kind a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Key records (every state, removed ones included).
    pub keys: u64,
    /// Audit entries.
    pub audit: u64,
    /// Alert jobs (every state).
    pub jobs: u64,
    /// Operator messages.
    pub messages: u64,
    /// Retired secrets.
    pub retired: u64,
}

impl RecordCounts {
    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for RecordCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} keys, {} audit entries, {} alert jobs, {} operator messages, {} retired secrets",
            self.keys, self.audit, self.jobs, self.messages, self.retired
        )
    }
}
