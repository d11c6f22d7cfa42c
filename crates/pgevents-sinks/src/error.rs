//! What can be wrong with a destination's settings, named by field path, with what to do.
//!
//! Messages never quote a secret: not a header value, not a signing secret, not a URL read
//! from the environment (URLs often carry tokens).

/// One problem with a destination's settings, e.g.
/// `trigger[2].webhook.url_from_env: environment variable ORDERS_HOOK is not set; export it or use url = "..."`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct SinkConfigError {
    /// The field at fault, e.g. `trigger["order_events"].webhook.headers["X-Api-Key"]`.
    pub path: String,
    /// What is wrong with it.
    pub kind: SinkConfigErrorKind,
}

impl SinkConfigError {
    /// A problem `kind` with the field at `path`.
    pub fn new(path: impl Into<String>, kind: SinkConfigErrorKind) -> SinkConfigError {
        SinkConfigError {
            path: path.into(),
            kind,
        }
    }
}

/// The first of `problems`, which a failed check never leaves empty: what
/// [`ResolveSink::resolve`](crate::ResolveSink::resolve) reports when
/// [`ResolveSink::validate`](crate::ResolveSink::validate) would report `problems`.
#[cfg(any(
    feature = "webhook",
    feature = "nats",
    feature = "redis",
    feature = "amqp",
    feature = "kafka"
))]
pub(crate) fn first_problem(path: &str, problems: Vec<SinkConfigError>) -> SinkConfigError {
    // The fallback only avoids a panic path.
    problems.into_iter().next().unwrap_or_else(|| {
        SinkConfigError::new(
            path,
            SinkConfigErrorKind::Missing {
                advice: "check the destination's settings",
            },
        )
    })
}

/// The kinds of [`SinkConfigError`]; each message says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkConfigErrorKind {
    /// A `*_from_env` variable is not set.
    #[error("environment variable {var} is not set; export it or {instead}")]
    EnvNotSet {
        /// The variable's name.
        var: String,
        /// The alternative to exporting it.
        instead: String,
    },
    /// A `*_from_env` variable is set but empty.
    #[error("environment variable {var} is empty; give it a value or {instead}")]
    EnvEmpty {
        /// The variable's name.
        var: String,
        /// The alternative to setting it.
        instead: String,
    },
    /// A `*_from_env` variable's value is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8; export a UTF-8 value")]
    EnvNotUnicode {
        /// The variable's name.
        var: String,
    },
    /// A `*_from_env` setting names no valid variable.
    #[error("{var:?} is not an environment variable name; give a name like ORDERS_HOOK")]
    EnvNameInvalid {
        /// The name as given.
        var: String,
    },
    /// Two settings that exclude each other are both given.
    #[error("{first} and {second} are both set; keep only one of them")]
    Conflict {
        /// The key at fault's companion.
        first: &'static str,
        /// The key at fault.
        second: &'static str,
    },
    /// A required setting is missing.
    #[error("missing; {advice}")]
    Missing {
        /// How to give it.
        advice: &'static str,
    },
    /// A URL does not parse (or its destination's client refuses it).
    #[error("not a valid URL ({reason}); give an absolute URL like {example}")]
    InvalidUrl {
        /// Why it does not parse.
        reason: String,
        /// A valid URL for this destination.
        example: &'static str,
    },
    /// A URL's scheme is not one this destination speaks.
    #[error("URL scheme {scheme:?} is not supported; use {expected}")]
    UnsupportedScheme {
        /// The URL's scheme.
        scheme: String,
        /// The schemes this destination accepts.
        expected: &'static str,
    },
    /// A name the destination addresses (a NATS subject, a Redis stream key, an AMQP
    /// exchange or routing key) that the broker would refuse.
    #[error("{reason}; use {what} like {example}")]
    InvalidName {
        /// What kind of name, with its article, e.g. `a NATS subject`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
        /// A valid one.
        example: &'static str,
    },
    /// A number outside the range the setting allows.
    #[error("{value} is out of range; {advice}")]
    OutOfRange {
        /// The value as given.
        value: String,
        /// The allowed range, and what to do.
        advice: &'static str,
    },
    /// A header name is not a valid HTTP header name.
    #[error(
        "{name:?} is not a valid HTTP header name; use letters, digits and dashes, like X-Api-Key"
    )]
    InvalidHeaderName {
        /// The name as given.
        name: String,
    },
    /// A header value is not valid in HTTP (the value itself is never shown).
    #[error("the header value is not valid in HTTP (control characters such as newlines are not allowed); fix the value")]
    InvalidHeaderValue,
    /// A header is given twice, with names differing only in case.
    #[error("header {name} is given more than once (header names are case-insensitive); keep one")]
    DuplicateHeader {
        /// The header's name.
        name: String,
    },
    /// A header that pgevents sets itself.
    #[error("header {name} is set by pgevents itself; remove it from headers")]
    ReservedHeader {
        /// The header's name.
        name: String,
    },
    /// A `whsec_` signing secret whose key part is not base64.
    #[error("the signing secret starts with whsec_ but the rest is not valid base64; copy the secret exactly as issued, or use one without the whsec_ prefix (its bytes are then the key)")]
    InvalidSigningSecret,
    /// The HTTP client could not be started.
    #[error("the HTTP client could not be started ({reason}); check the machine's TLS root certificates")]
    HttpClient {
        /// Why.
        reason: String,
    },
}
