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
    /// Bad input on the command line (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A failure at run time: the database went away, a statement failed (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    /// The process exit code: 2 for bad usage, configuration or database setup, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Runtime(_) => 1,
            _ => 2,
        }
    }
}

impl From<pgevents_log::Error> for DaemonError {
    fn from(e: pgevents_log::Error) -> DaemonError {
        use pgevents_log::Error as E;
        let setup = match &e {
            E::Invalid(_)
            | E::NoSuchTable(_)
            | E::NoSuchColumn { .. }
            | E::TooNew { .. }
            | E::NotInstalled(_) => true,
            // insufficient_privilege, undefined objects, invalid authorization, missing database
            E::Query { .. } | E::Connect { .. } => matches!(
                e.code(),
                Some("42501" | "42P01" | "42703" | "42704" | "28000" | "28P01" | "3D000")
            ),
        };
        if setup {
            DaemonError::Setup(e.to_string())
        } else {
            DaemonError::Runtime(e.to_string())
        }
    }
}
