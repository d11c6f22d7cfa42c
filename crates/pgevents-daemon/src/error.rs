//! Daemon errors and the exit codes they map to.

/// Why a daemon command failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid (exit 2).
    #[error("{0}")]
    Config(#[from] pgevents_config::ConfigErrors),
    /// The database is not set up as the configuration needs (exit 2).
    #[error("{0}")]
    Setup(String),
    /// The current role lacks a privilege the command needs (exit 2).
    #[error("{0}")]
    Privilege(String),
    /// Bad input on the command line (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The database could not be reached or the connection broke: trying again later may
    /// succeed (exit 1).
    #[error("{0}")]
    Unavailable(String),
    /// A failure at run time: a statement failed (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    /// The process exit code: 2 for bad usage, configuration or database setup, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Runtime(_) | DaemonError::Unavailable(_) => 1,
            _ => 2,
        }
    }

    /// True when the database was out of reach: a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DaemonError::Unavailable(_))
    }

    /// The same error with `prefix: ` before its message (the config or trigger at fault).
    pub(crate) fn prefixed(self, prefix: &str) -> DaemonError {
        let p = |m: String| format!("{prefix}: {m}");
        match self {
            DaemonError::Setup(m) => DaemonError::Setup(p(m)),
            DaemonError::Privilege(m) => DaemonError::Privilege(p(m)),
            DaemonError::Usage(m) => DaemonError::Usage(p(m)),
            DaemonError::Unavailable(m) => DaemonError::Unavailable(p(m)),
            DaemonError::Runtime(m) => DaemonError::Runtime(p(m)),
            config @ DaemonError::Config(_) => config,
        }
    }
}

impl From<pgevents_postgres::Error> for DaemonError {
    fn from(e: pgevents_postgres::Error) -> DaemonError {
        pgevents_log::Error::from(e).into()
    }
}

impl From<pgevents_log::Error> for DaemonError {
    fn from(e: pgevents_log::Error) -> DaemonError {
        use pgevents_log::Error as E;
        use pgevents_postgres::Error as P;
        if matches!(e, E::NotPermitted(_)) || e.code() == Some("42501") {
            return DaemonError::Privilege(e.to_string());
        }
        if e.is_lock_timeout() {
            return DaemonError::Unavailable(format!(
                "{e}; another transaction (most likely the application's) holds a lock on that table for longer than {} ms: pgevents does not queue its DDL behind it, where every later writer of the table would wait too; try again once it has ended (`pgevents run` retries by itself)",
                pgevents_log::LOCK_TIMEOUT_MS
            ));
        }
        let setup = match &e {
            E::Invalid(_)
            | E::NoSuchTable(_)
            | E::NoSuchColumn { .. }
            | E::BadCondition { .. }
            | E::NoSuchTrigger(_)
            | E::BadBackfillCondition { .. }
            | E::NoPrimaryKey(_)
            | E::Unorderable(_)
            | E::TooNew { .. }
            | E::NotInstalled(_)
            | E::Postgres(P::Tls { .. } | P::Url(_))
            | E::NotPermitted(_) => true,
            E::Postgres(P::ConnectTimeout { .. }) => false,
            // undefined objects, invalid authorization, missing database
            E::Postgres(P::Query { .. } | P::Connect { .. }) => matches!(
                e.code(),
                Some("42P01" | "42703" | "42704" | "28000" | "28P01" | "3D000")
            ),
        };
        if setup {
            DaemonError::Setup(e.to_string())
        } else if e.is_connection() {
            DaemonError::Unavailable(e.to_string())
        } else {
            DaemonError::Runtime(e.to_string())
        }
    }
}
