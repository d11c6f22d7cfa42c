//! What happened to a row: the `action` of a payload.

use std::fmt;

/// The kind of change an event records; displayed in upper case, as in payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
    /// An event created by hand (`invoke`), not by a row change.
    Manual,
    /// A row as it was when a backfill read it (`backfill`), not a change.
    Read,
}

/// A string or code that names no [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAction(pub String);

impl fmt::Display for UnknownAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown action {:?}: expected INSERT, UPDATE, DELETE, TRUNCATE, MANUAL or READ",
            self.0
        )
    }
}

impl std::error::Error for UnknownAction {}

impl Action {
    /// Every action: the four that capture records, then MANUAL and READ.
    pub const ALL: [Action; 6] = [
        Action::Insert,
        Action::Update,
        Action::Delete,
        Action::Truncate,
        Action::Manual,
        Action::Read,
    ];

    /// The upper-case name used in payloads and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::Truncate => "TRUNCATE",
            Action::Manual => "MANUAL",
            Action::Read => "READ",
        }
    }

    /// The one-letter code stored in the event log.
    pub fn code(self) -> i8 {
        (match self {
            Action::Insert => b'I',
            Action::Update => b'U',
            Action::Delete => b'D',
            Action::Truncate => b'T',
            Action::Manual => b'M',
            Action::Read => b'R',
        }) as i8
    }

    /// True for the row changes capture records (INSERT, UPDATE, DELETE, TRUNCATE); false
    /// for the events pgevents makes itself (MANUAL by `invoke`, READ by `backfill`), which
    /// a trigger's `operations` cannot name.
    pub fn is_captured(self) -> bool {
        !matches!(self, Action::Manual | Action::Read)
    }

    /// The action for a one-letter log code.
    pub fn from_code(code: i8) -> Result<Action, UnknownAction> {
        match code as u8 {
            b'I' => Ok(Action::Insert),
            b'U' => Ok(Action::Update),
            b'D' => Ok(Action::Delete),
            b'T' => Ok(Action::Truncate),
            b'M' => Ok(Action::Manual),
            b'R' => Ok(Action::Read),
            other => Err(UnknownAction(char::from(other).to_string())),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Action, UnknownAction> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_code(a.code()), Ok(a));
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
            assert_eq!(a.is_captured(), !matches!(a, Action::Manual | Action::Read));
        }
        assert!(Action::from_code(b'x' as i8).is_err());
        assert!("upsert".parse::<Action>().is_err());
    }
}
