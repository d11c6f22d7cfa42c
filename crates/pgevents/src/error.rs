//! The library's error type.

/// Why building or running a [`Listener`](crate::Listener) failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] Kind);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Kind {
    #[error(transparent)]
    Log(#[from] pgevents_log::Error),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error(Kind::Usage(message.into()))
    }

    /// True when the database could not be reached (a retry later may succeed).
    pub fn is_connection(&self) -> bool {
        matches!(&self.0, Kind::Log(e) if e.is_connection())
    }

    /// The SQLSTATE of the database error behind this one, if any.
    pub fn code(&self) -> Option<&str> {
        match &self.0 {
            Kind::Log(e) => e.code(),
            Kind::Usage(_) => None,
        }
    }

    /// True when the error is about the caller's input (a table or column that does not
    /// exist, a bad name, a table registered twice, per-row order asked of a table without a
    /// key, a backfill of an unknown table or with a bad condition, an unusable database URL) rather than the database.
    pub fn is_usage(&self) -> bool {
        matches!(
            &self.0,
            Kind::Usage(_)
                | Kind::Log(
                    pgevents_log::Error::Invalid(_)
                        | pgevents_log::Error::NoSuchTable(_)
                        | pgevents_log::Error::NoSuchColumn { .. }
                        | pgevents_log::Error::BadCondition { .. }
                        | pgevents_log::Error::Unorderable(_)
                        | pgevents_log::Error::NoSuchTrigger(_)
                        | pgevents_log::Error::BadBackfillCondition { .. }
                        | pgevents_log::Error::NoPrimaryKey(_)
                        | pgevents_log::Error::Postgres(pgevents_postgres::Error::Url(_))
                )
        )
    }
}

impl From<pgevents_log::Error> for Error {
    fn from(e: pgevents_log::Error) -> Error {
        Error(Kind::Log(e))
    }
}

impl From<pgevents_postgres::Error> for Error {
    fn from(e: pgevents_postgres::Error) -> Error {
        Error(Kind::Log(e.into()))
    }
}

impl From<pgevents_postgres::TableNameError> for Error {
    fn from(e: pgevents_postgres::TableNameError) -> Error {
        Error::usage(e.to_string())
    }
}
