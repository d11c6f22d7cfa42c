//! Errors of PostgreSQL connections and statements: what failed, and what to do about it.

/// Connecting to PostgreSQL, or a statement, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or the connection broke.
    #[error("{}", connect_message(context, source))]
    Connect {
        /// What was being attempted.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be made within the connect timeout.
    #[error("cannot reach PostgreSQL: no connection within {after:?}; check the URL, that the server runs and that the network allows the connection (connect_timeout in the URL sets the limit)")]
    ConnectTimeout {
        /// The limit that passed.
        after: std::time::Duration,
    },
    /// TLS could not be set up as the URL's `sslmode` asks: a certificate not trusted, a
    /// server without TLS, an unreadable certificate file.
    #[error("TLS to PostgreSQL failed ({context}): {detail}")]
    Tls {
        /// What was being attempted, with the `sslmode`.
        context: String,
        /// What went wrong and what to do.
        detail: String,
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
    /// The database URL is not usable (the message says what to fix).
    #[error("{0}")]
    Url(String),
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
            Error::Connect { .. } | Error::ConnectTimeout { .. } => true,
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

fn connect_message(context: &str, e: &tokio_postgres::Error) -> String {
    if e.as_db_error().is_some() {
        return format!(
            "PostgreSQL refused the connection ({context}): {}; check the user, password and database name in the URL, and that pg_hba.conf lets this user in",
            describe(e)
        );
    }
    let detail = with_causes(e.to_string(), e);
    format!(
        "cannot reach PostgreSQL ({context}): {detail}; check the URL, that the server runs and that the network allows the connection"
    )
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

/// `text` followed by every cause of `error` it does not already say, `: `-separated.
pub(crate) fn with_causes(mut text: String, error: &dyn std::error::Error) -> String {
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}
