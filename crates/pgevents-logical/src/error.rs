//! Errors of logical capture: what failed, and what to do about it.

use pgwire_replication::PgWireError;

/// A logical-capture operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event-log or catalog query failed (or a table does not exist).
    #[error(transparent)]
    Log(#[from] pgevents_log::Error),
    /// The server's `wal_level` is not `logical`.
    #[error(
        "wal_level is {found:?}, but capture.mode = \"logical\" needs wal_level = logical: run \
         `ALTER SYSTEM SET wal_level = logical` as a superuser and restart PostgreSQL (managed \
         services: set rds.logical_replication = 1 on RDS/Aurora, cloudsql.logical_decoding = on \
         on Cloud SQL, azure.replication_support = logical on Azure), or use capture.mode = \"trigger\""
    )]
    WalLevel {
        /// The server's current `wal_level`.
        found: String,
    },
    /// The slot was invalidated: the server removed WAL it still needed.
    #[error(
        "replication slot {slot:?} is lost (wal_status = lost): it lagged further than \
         max_slot_wal_keep_size allows, and the server removed WAL holding changes not yet \
         captured; those changes cannot be recovered from the WAL. To resume capture from now on, \
         stop pgevents and run `pgevents uninstall` then `pgevents install` (or \
         SELECT pg_drop_replication_slot('{slot}') and install again); reconcile the missed \
         changes from the tables themselves, and raise max_slot_wal_keep_size or keep pgevents \
         running so it does not happen again"
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// The slot does not exist.
    #[error(
        "replication slot {slot:?} does not exist: run `pgevents install` (with capture.mode = \
         \"logical\") to create it; changes made while it was missing were not captured"
    )]
    SlotMissing {
        /// The slot.
        slot: String,
    },
    /// A slot or publication of that name exists but is not one pgevents can use.
    #[error("{object} {name:?} exists but {problem}: choose another name in `capture`, or drop it if nothing uses it")]
    Conflict {
        /// `replication slot` or `publication`.
        object: &'static str,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The slot is being consumed by another process.
    #[error("replication slot {slot:?} is in use by server process {pid}: stop the pgevents process that consumes it, then try again")]
    SlotActive {
        /// The slot.
        slot: String,
        /// The walsender's process id.
        pid: i32,
    },
    /// The replication connection failed.
    #[error("logical replication stream ({context}): {source}; {hint}")]
    Replication {
        /// What was being done.
        context: String,
        /// The protocol client's error.
        #[source]
        source: PgWireError,
        /// What to do about it.
        hint: &'static str,
    },
    /// The stream carried something this decoder does not understand.
    #[error("cannot decode the logical replication stream: {0}; this is a pgevents bug or an unsupported server version, please report it")]
    Decode(String),
    /// A name or setting given by the user is not usable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps a driver error with what was being done.
    pub(crate) fn query(context: impl Into<String>, source: tokio_postgres::Error) -> Error {
        Error::Log(pgevents_log::Error::query(context, source))
    }

    /// Wraps a replication-protocol error with what was being done and what to do.
    pub(crate) fn replication(context: impl Into<String>, source: PgWireError) -> Error {
        let hint = match sqlstate(&source) {
            Some("42704") => "a publication or slot is missing: run `pgevents install` (capture.mode = \"logical\")",
            Some("28000" | "28P01" | "42501") => "the user needs the REPLICATION attribute (or superuser), and pg_hba.conf must allow its replication connections",
            Some("53300" | "53400") => "the server has no free connection or WAL sender: raise max_connections / max_wal_senders",
            _ if source.is_auth() => "check the password in the database URL",
            _ if source.is_transient() => "retrying",
            _ => "check that the user has the REPLICATION attribute, that pg_hba.conf allows replication connections, and that max_wal_senders is above 0",
        };
        Error::Replication {
            context: context.into(),
            source,
            hint,
        }
    }

    /// True when trying again later may succeed (the connection broke, the server restarted,
    /// a previous consumer has not released the slot yet).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Log(e) => e.is_connection(),
            Error::Replication { source, .. } => replication_is_transient(source),
            _ => false,
        }
    }
}

/// The SQLSTATE of a server error reported by the replication client, if any.
pub(crate) fn sqlstate(error: &PgWireError) -> Option<&str> {
    let PgWireError::Server(message) = error else {
        return None;
    };
    let start = message.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    message.get(start..start + 5)
}

fn replication_is_transient(error: &PgWireError) -> bool {
    match error {
        PgWireError::Io(_) | PgWireError::Task(_) => true,
        PgWireError::Server(_) => sqlstate(error).is_some_and(|c| {
            // Connection failures, shutdown and crash recovery, too many connections, and
            // "replication slot is active" (the previous consumer is still going away).
            c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "55006"
        }),
        _ => false,
    }
}

impl From<pgevents_postgres::Error> for Error {
    fn from(error: pgevents_postgres::Error) -> Error {
        Error::Log(error.into())
    }
}

impl From<Error> for pgevents_log::Error {
    /// Folds a logical-capture error into the event log's error type (for callers that
    /// report both alike); database errors keep their source, others their message.
    fn from(error: Error) -> pgevents_log::Error {
        match error {
            Error::Log(e) => e,
            other => pgevents_log::Error::Invalid(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_read_from_server_errors() {
        let e = PgWireError::Server(
            "replication slot \"s\" is active for PID 7 (SQLSTATE 55006)".into(),
        );
        assert_eq!(sqlstate(&e), Some("55006"));
        assert!(replication_is_transient(&e));
        let e = PgWireError::Server("publication \"p\" does not exist (SQLSTATE 42704)".into());
        assert!(!replication_is_transient(&e));
        assert_eq!(sqlstate(&PgWireError::Protocol("x".into())), None);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::WalLevel {
            found: "replica".into(),
        };
        assert!(e
            .to_string()
            .contains("ALTER SYSTEM SET wal_level = logical"));
        let e = Error::SlotLost { slot: "s".into() };
        assert!(e.to_string().contains("pgevents install"));
    }
}
