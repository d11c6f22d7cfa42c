//! Errors of the event log: what failed, and what to do about it.

/// An event-log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to PostgreSQL, or a statement, failed.
    #[error(transparent)]
    Postgres(#[from] pgevents_postgres::Error),
    /// The current role lacks a privilege the operation needs.
    #[error("{0}")]
    NotPermitted(String),
    /// A name given by the user is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A table the configuration names does not exist.
    #[error("table {0} does not exist: create it, or fix the trigger's `table`")]
    NoSuchTable(String),
    /// A column the configuration names does not exist.
    #[error("column {column:?} does not exist in table {table}: fix the trigger's `{field}`")]
    NoSuchColumn {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The trigger setting that names it (`columns`, `payload_columns`, ...).
        field: &'static str,
    },
    /// A trigger's `where` condition is not a valid condition on its table's rows.
    #[error("the condition {condition:?} on table {table} cannot filter its rows: {detail}; fix the trigger's `where` (an SQL condition on the row's columns, without subqueries)")]
    BadCondition {
        /// The table.
        table: String,
        /// The condition as written.
        condition: String,
        /// What PostgreSQL (or pgevents) said about it.
        detail: String,
    },
    /// No trigger of that name is registered in the log (or its capture was removed).
    #[error("no trigger named {0:?} is installed: name one of the config's triggers and run `pgevents install` if it is new")]
    NoSuchTrigger(String),
    /// A backfill's condition is not a valid condition on its table's rows.
    #[error("the backfill condition {condition:?} on table {table} cannot select its rows: {detail}; give an SQL condition on the table's columns (without subqueries), e.g. \"status = 'paid'\"")]
    BadBackfillCondition {
        /// The table.
        table: String,
        /// The condition as written.
        condition: String,
        /// What PostgreSQL (or pgevents) said about it.
        detail: String,
    },
    /// A backfill was asked of a table without a primary key.
    #[error("table {0} has no primary key (nor a replica identity index): a backfill reads rows in key order, chunk after chunk; add a primary key to backfill it")]
    NoPrimaryKey(String),
    /// Per-row ordering was asked of a table that cannot tell its rows apart.
    #[error("table {0} has neither a primary key nor a replica identity index, so its events cannot be ordered per row: add a primary key, or set the trigger's ordering = \"table\" (all its events in commit order) or ordering = \"none\" (no order)")]
    Unorderable(String),
    /// The log schema is newer than this build understands.
    #[error("the event log in schema {schema} has version {found}, newer than this pgevents ({supported}); upgrade pgevents")]
    TooNew {
        /// The log schema.
        schema: String,
        /// The installed version.
        found: i32,
        /// The version this build installs.
        supported: i32,
    },
    /// The event log is not installed.
    #[error("the event log is not installed in schema {0}: run `pgevents install`")]
    NotInstalled(String),
}

impl From<pgevents_trigger::ConditionError> for Error {
    fn from(error: pgevents_trigger::ConditionError) -> Error {
        match error {
            pgevents_trigger::ConditionError::Bad {
                table,
                condition,
                detail,
            } => Error::BadCondition {
                table,
                condition,
                detail,
            },
            pgevents_trigger::ConditionError::Postgres(e) => Error::Postgres(e),
        }
    }
}

impl Error {
    /// Wraps a driver error with what was being done.
    pub fn query(context: impl Into<String>, source: tokio_postgres::Error) -> Error {
        Error::Postgres(pgevents_postgres::Error::query(context, source))
    }

    /// True when the connection is gone and a new one may succeed (transient).
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Postgres(e) if e.is_connection())
    }

    /// True when a statement gave up waiting for a lock (`lock_timeout`): the object is busy
    /// and a later attempt may succeed.
    pub fn is_lock_timeout(&self) -> bool {
        self.code() == Some("55P03")
    }

    /// True when a statement gave way to another transaction's lock: a lock timeout, or
    /// the deadlock detector chose it. A later attempt may succeed.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self.code(), Some("55P03" | "40P01"))
    }

    /// The SQLSTATE of a database error, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code(),
            Error::NotPermitted(_) => Some("42501"),
            _ => None,
        }
    }
}
