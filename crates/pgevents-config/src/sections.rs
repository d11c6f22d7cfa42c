//! The file's single-table sections — `[database]`, `[capture]`, `[admin]`, `[retention]` —
//! their defaults, and how each is checked.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use pgevents_sinks::{join_path, Env};
use serde::Deserialize;

use crate::duration::parse_duration;
use crate::error::Problems;
use crate::file;

/// Default `[database] log_schema`: where the event log lives.
pub const DEFAULT_LOG_SCHEMA: &str = "pgevents";
/// Default `[capture] slot` (logical mode).
pub const DEFAULT_SLOT: &str = "pgevents";
/// Default `[capture] publication` (logical mode).
pub const DEFAULT_PUBLICATION: &str = "pgevents";
/// Default `[admin] listen`.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));
/// Default `[retention] delivered`: delivered events are kept 7 days.
pub const DEFAULT_RETENTION_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `[retention] failed`: failed events are kept 30 days.
pub const DEFAULT_RETENTION_FAILED: Duration = Duration::from_secs(30 * 24 * 3600);

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// A resolved secret: `Debug` prints `"***"`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `[database]`: which database to watch, and where the event log lives in it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// The schema holding the event log (default [`DEFAULT_LOG_SCHEMA`]).
    pub log_schema: String,
    url: Secret,
}

impl DatabaseConfig {
    /// The connection URL (`postgres://` or `postgresql://`), resolved from `url` or
    /// `url_from_env`. It may hold a password: never log it; `Debug` shows it redacted.
    pub fn url(&self) -> &str {
        &self.url.0
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("log_schema", &self.log_schema)
            .field("url", &redact_database_url(&self.url.0))
            .finish()
    }
}

/// How row changes are captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Row triggers on the watched tables write to the event log (the default).
    #[default]
    Trigger,
    /// Logical replication: no triggers on user tables; needs `wal_level = logical`.
    Logical,
}

/// `[capture]`: how changes are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureConfig {
    /// Trigger or logical capture (default trigger).
    pub mode: CaptureMode,
    /// The replication slot of logical capture (default [`DEFAULT_SLOT`]).
    pub slot: String,
    /// The publication of logical capture (default [`DEFAULT_PUBLICATION`]).
    pub publication: String,
    /// `notify` (default true): whether writers wake an idle daemon with a `NOTIFY` (sent
    /// only while a daemon sleeps, so a busy system pays nothing). With `false`, writing
    /// transactions never `NOTIFY` (for applications that use `PREPARE TRANSACTION`, which
    /// refuses a transaction that notified) and the daemon looks at the log every second
    /// while idle instead: up to a second more latency after a lull.
    pub notify: bool,
}

/// `[admin]`: the admin HTTP API.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminConfig {
    /// The address the API listens on (default [`DEFAULT_ADMIN_LISTEN`]).
    pub listen: SocketAddr,
    /// `allowed_hosts`: the names (or addresses) the API is reached by, beside `localhost`,
    /// loopback addresses and the listening address, which are always accepted; a request
    /// whose `Host` is none of them is refused, so no web page can read the API by pointing
    /// a name of its own at it (DNS rebinding). Lower-case, without a trailing dot; any port.
    /// Empty by default.
    pub allowed_hosts: Vec<String>,
    token: Option<Secret>,
}

impl AdminConfig {
    /// The bearer token the API requires, resolved from `token_from_env`; `None` when the API
    /// is open. Never log it; `Debug` shows `"***"`.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.0.as_str())
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("token", &self.token)
            .finish()
    }
}

/// `[retention]`: how long finished events are kept in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionConfig {
    /// How long delivered events are kept (default [`DEFAULT_RETENTION_DELIVERED`]).
    pub delivered: Duration,
    /// How long failed events are kept (default [`DEFAULT_RETENTION_FAILED`]).
    pub failed: Duration,
}

/// Checks `[database]`.
pub(crate) fn database(file: file::Database, env: &Env, problems: &mut Problems) -> DatabaseConfig {
    let url = match (file.url, file.url_from_env) {
        (Some(_), Some(_)) => {
            problems.push(
                "database.url_from_env",
                "url and url_from_env are both set; keep only one of them",
            );
            None
        }
        (None, None) => {
            problems.push(
                "database",
                "no database URL; add url_from_env = \"DATABASE_URL\" (or url = \"postgres://user@host/dbname\") under [database]",
            );
            None
        }
        (Some(url), None) => Some(("database.url", url)),
        (None, Some(var)) => problems
            .check(
                "database.url_from_env",
                env.require(&var, "use url = \"postgres://...\""),
            )
            .map(|url| ("database.url_from_env", url)),
    };
    let url =
        url.and_then(|(path, url)| problems.check(path, check_database_url(&url).map(|()| url)));
    let log_schema = file.log_schema.unwrap_or_else(|| DEFAULT_LOG_SCHEMA.into());
    check_identifier("database.log_schema", &log_schema, problems);
    DatabaseConfig {
        log_schema,
        url: Secret(url.unwrap_or_default()),
    }
}

/// Checks `[capture]`; notes settings that the chosen mode ignores.
pub(crate) fn capture(
    file: file::Capture,
    problems: &mut Problems,
    notes: &mut Problems,
) -> CaptureConfig {
    let mode = file.mode.unwrap_or_default();
    if mode == CaptureMode::Trigger {
        for (key, value) in [("slot", &file.slot), ("publication", &file.publication)] {
            if value.is_some() {
                notes.push(
                    join_path("capture", key),
                    "is only used by logical capture; remove it, or set mode = \"logical\"",
                );
            }
        }
    }
    let slot = file.slot.unwrap_or_else(|| DEFAULT_SLOT.into());
    let slot_ok = !slot.is_empty()
        && slot.len() <= MAX_IDENTIFIER_BYTES
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !slot_ok {
        problems.push(
            "capture.slot",
            format!("{slot:?} is not a replication slot name; use 1 to 63 lower-case letters, digits and _, e.g. \"pgevents\""),
        );
    }
    let publication = file
        .publication
        .unwrap_or_else(|| DEFAULT_PUBLICATION.into());
    check_identifier("capture.publication", &publication, problems);
    CaptureConfig {
        mode,
        slot,
        publication,
        notify: file.notify.unwrap_or(true),
    }
}

/// Checks `[admin]`.
pub(crate) fn admin(file: file::Admin, env: &Env, problems: &mut Problems) -> AdminConfig {
    let listen = match file.listen {
        None => DEFAULT_ADMIN_LISTEN,
        Some(text) => problems
            .check(
                "admin.listen",
                text.trim().parse::<SocketAddr>().map_err(|_| {
                    format!("{text:?} is not an IP address and port; write e.g. \"127.0.0.1:8080\" (or \"0.0.0.0:8080\" for every interface)")
                }),
            )
            .unwrap_or(DEFAULT_ADMIN_LISTEN),
    };
    let token = file.token_from_env.and_then(|var| {
        problems.check(
            "admin.token_from_env",
            env.require(
                &var,
                "remove token_from_env to run the admin API without a token",
            )
            .map(Secret),
        )
    });
    let allowed_hosts = file
        .allowed_hosts
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            problems.check(format!("admin.allowed_hosts[{i}]"), check_host_name(name))
        })
        .collect();
    AdminConfig {
        listen,
        allowed_hosts,
        token,
    }
}

/// A bare host name or IP address, lower-case and without a trailing dot.
fn check_host_name(name: &str) -> Result<String, String> {
    let bare = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let is_name = bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if is_name || bare.parse::<std::net::IpAddr>().is_ok() {
        Ok(bare)
    } else {
        Err(format!(
            "{name:?} is not a host name or IP address; write the bare name the admin API is reached by, e.g. \"pgevents.internal\" (no scheme, port, path or wildcard: any port is accepted)"
        ))
    }
}

/// Checks `[retention]`.
pub(crate) fn retention(file: file::Retention, problems: &mut Problems) -> RetentionConfig {
    RetentionConfig {
        delivered: duration(
            "retention.delivered",
            file.delivered,
            DEFAULT_RETENTION_DELIVERED,
            problems,
        ),
        failed: duration(
            "retention.failed",
            file.failed,
            DEFAULT_RETENTION_FAILED,
            problems,
        ),
    }
}

/// The duration at `path`, or `default` when it is not given (or wrong, after noting why).
pub(crate) fn duration(
    path: impl Into<String>,
    text: Option<file::DurationText>,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    match text {
        None => default,
        Some(text) => problems
            .check(path, parse_duration(&text.0))
            .unwrap_or(default),
    }
}

/// Checks a PostgreSQL name that pgevents always quotes: 1 to 63 bytes, no NUL.
fn check_identifier(path: &str, name: &str, problems: &mut Problems) {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        problems.push(
            path,
            format!("{name:?} is not a PostgreSQL name; use 1 to {MAX_IDENTIFIER_BYTES} bytes, e.g. \"pgevents\""),
        );
    }
}

/// Checks a database URL without ever quoting it (it may hold a password).
fn check_database_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        format!("not a valid URL ({e}); write e.g. postgres://user:password@localhost:5432/dbname")
    })?;
    match parsed.scheme() {
        "postgres" | "postgresql" => Ok(()),
        other => Err(format!(
            "URL scheme {other:?} is not supported; use postgres:// or postgresql://"
        )),
    }
}

/// `url` with its password (in the user info or a `password=` parameter) replaced by `***`.
fn redact_database_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url.trim()) else {
        return "<not a valid URL>".into();
    };
    if parsed.password().is_some() {
        // Cannot fail: the URL already has a password.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_redacted() {
        assert_eq!(
            redact_database_url(
                "postgres://app:s3cret@db:5432/shop?sslmode=require&password=s3cret"
            ),
            "postgres://app:***@db:5432/shop?sslmode=require&password=***"
        );
        assert_eq!(
            redact_database_url("postgres://app@localhost/shop"),
            "postgres://app@localhost/shop"
        );
        assert_eq!(redact_database_url("s3cret"), "<not a valid URL>");
    }

    #[test]
    fn allowed_hosts_are_bare_names_or_addresses() {
        assert_eq!(
            check_host_name(" PGEvents.Internal. "),
            Ok("pgevents.internal".into())
        );
        assert_eq!(check_host_name("10.0.0.5"), Ok("10.0.0.5".into()));
        assert_eq!(check_host_name("fe80::1"), Ok("fe80::1".into()));
        for bad in [
            "",
            "http://pgevents.internal",
            "pgevents.internal:8080",
            "*.example.com",
            "a..b",
            "[::1]",
            "admin/api",
        ] {
            let error = check_host_name(bad).expect_err(bad);
            assert!(error.contains("pgevents.internal"), "{error}");
        }
    }

    #[test]
    fn database_url_schemes() {
        assert!(check_database_url("postgres://app@localhost/shop").is_ok());
        assert!(check_database_url("postgresql:///shop?host=/var/run/postgresql").is_ok());
        assert!(check_database_url("mysql://localhost/shop")
            .expect_err("scheme")
            .contains("postgres://"));
        assert!(check_database_url("host=localhost dbname=shop").is_err());
    }
}
