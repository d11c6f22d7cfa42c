//! Errors of the event log: what failed, and what to do about it.

/// An event-log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or the connection broke.
    #[error("cannot reach PostgreSQL ({context}): {source}; check the URL, that the server runs and that the network allows the connection")]
    Connect {
        /// What was being attempted.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{context}: {}", describe(source))]
    Query {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A name given by the user is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A table the configuration names does not exist.
    #[error("table {0} does not exist: create it, or fix the trigger's `table`")]
    NoSuchTable(String),
    /// A column the configuration names does not exist.
    #[error("column {column:?} does not exist in table {table}: fix the trigger's `columns`")]
    NoSuchColumn {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
    },
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

impl Error {
    /// Wraps a driver error with what was being done.
    pub fn query(context: impl Into<String>, source: tokio_postgres::Error) -> Error {
        Error::Query {
            context: context.into(),
            source,
        }
    }

    /// True when the connection is gone and a new one may succeed (transient).
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Query { source, .. } => {
                source.is_closed()
                    || source.as_db_error().is_none()
                    || source
                        .code()
                        .map(|c| {
                            let c = c.code();
                            c.starts_with("08") || c.starts_with("57P") || c == "53300"
                        })
                        .unwrap_or(false)
            }
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Query { source, .. } | Error::Connect { source, .. } => {
                source.code().map(|c| c.code())
            }
            _ => None,
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(hint);
            }
            s
        }
        None => e.to_string(),
    }
}
