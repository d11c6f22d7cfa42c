//! Where a destination lives: its URL, given inline (`url`) or read from an environment
//! variable (`url_from_env`), checked once, and only ever shown with its secrets masked.
//!
//! Every URL-addressed destination (webhook, NATS, Redis, AMQP) resolves its URL here, so
//! they all report the same mistakes the same way, and all mask the same parts: the
//! password, a token given as the user name, and the query.

use crate::{join_path, Env, SinkConfigError, SinkConfigErrorKind};

/// What a destination accepts as its URL, and how its messages describe it.
pub(crate) struct UrlRules {
    /// The accepted schemes, e.g. `["http", "https"]`.
    pub(crate) schemes: &'static [&'static str],
    /// The accepted schemes as the error message lists them: `http:// or https://`.
    pub(crate) expected: &'static str,
    /// A valid URL, quoted in error messages.
    pub(crate) example: &'static str,
    /// What to do when neither `url` nor `url_from_env` is given.
    pub(crate) missing: &'static str,
}

/// Resolves `url` / `url_from_env` (exactly one must be given) of the settings at `path`,
/// and checks that the URL parses, has a host and uses one of `rules.schemes`.
#[cfg(any(feature = "webhook", feature = "nats", test))]
pub(crate) fn resolve_url(
    path: &str,
    url: Option<&str>,
    url_from_env: Option<&str>,
    env: &Env,
    rules: &UrlRules,
) -> Result<url::Url, SinkConfigError> {
    resolve_url_with(path, url, url_from_env, env, rules, |_| Ok(())).map(|(url, ())| url)
}

/// [`resolve_url`], then `client`: the destination's client library parsing the URL (its
/// own options, without connecting), whose refusal is reported against the same field.
pub(crate) fn resolve_url_with<T>(
    path: &str,
    url: Option<&str>,
    url_from_env: Option<&str>,
    env: &Env,
    rules: &UrlRules,
    client: impl FnOnce(&url::Url) -> Result<T, String>,
) -> Result<(url::Url, T), SinkConfigError> {
    let (field, text) = match (url, url_from_env) {
        (Some(_), Some(_)) => {
            return Err(SinkConfigError::new(
                join_path(path, "url_from_env"),
                SinkConfigErrorKind::Conflict {
                    first: "url",
                    second: "url_from_env",
                },
            ))
        }
        (None, None) => {
            return Err(SinkConfigError::new(
                join_path(path, "url"),
                SinkConfigErrorKind::Missing {
                    advice: rules.missing,
                },
            ))
        }
        (Some(url), None) => ("url", url.to_string()),
        (None, Some(var)) => (
            "url_from_env",
            env.require(var, "use url = \"...\"")
                .map_err(|kind| SinkConfigError::new(join_path(path, "url_from_env"), kind))?,
        ),
    };
    let field_path = join_path(path, field);
    let error = |kind| SinkConfigError::new(field_path.clone(), kind);
    let invalid = |reason: String| {
        error(SinkConfigErrorKind::InvalidUrl {
            reason,
            example: rules.example,
        })
    };
    // The parser's messages name the problem, never the URL, so they are safe to show.
    let url = url::Url::parse(text.trim()).map_err(|e| invalid(e.to_string()))?;
    if !rules.schemes.contains(&url.scheme()) {
        return Err(error(SinkConfigErrorKind::UnsupportedScheme {
            scheme: url.scheme().to_string(),
            expected: rules.expected,
        }));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    // The client's messages may quote the URL: mask its secrets.
    let parsed = client(&url).map_err(|reason| invalid(scrub_url_secrets(&url, &reason)))?;
    Ok((url, parsed))
}

/// `text` with the secrets of `url` masked.
fn scrub_url_secrets(url: &url::Url, text: &str) -> String {
    let mut text = text.replace(url.as_str(), &redact(url));
    for secret in url_secrets(url) {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// The secret parts of `url`: its password, or a lone user name (a token), and its query,
/// each as written and percent-decoded, longest first (so that a secret containing another
/// is masked whole).
fn url_secrets(url: &url::Url) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |text: &str| {
        let decoded = url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        for candidate in [text.to_string(), decoded] {
            if !candidate.is_empty() && !found.contains(&candidate) {
                found.push(candidate);
            }
        }
    };
    match url.password() {
        Some(password) => add(password),
        None => add(url.username()),
    }
    if let Some(query) = url.query() {
        add(query);
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found
}

/// `url` with its password, a token-like user name (one without a password) and its query
/// replaced by `***`: safe to log and to show in errors.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(parsed) => redact(&parsed),
        Err(_) => "<not a valid URL>".to_string(),
    }
}

/// [`redact_url`] of a parsed URL.
pub(crate) fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = shown.set_password(Some("***"));
    } else if !shown.username().is_empty() {
        // `nats://s3cret@host` and the like: a lone user name is a token.
        let _ = shown.set_username("***");
    }
    if shown.query().is_some() {
        shown.set_query(Some("***"));
    }
    shown.to_string()
}

/// The secret parts of a URL, to mask in any text a client library produced: some quote the
/// URL they were given in their errors.
#[cfg(any(feature = "nats", feature = "redis", feature = "amqp"))]
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    url: String,
    shown: String,
    parts: Vec<String>,
}

#[cfg(any(feature = "nats", feature = "redis", feature = "amqp"))]
impl Secrets {
    /// The secrets of `url`: the URL itself, its password, a lone user name (a token) and
    /// its query, both as written and percent-decoded.
    pub(crate) fn of(url: &url::Url) -> Secrets {
        Secrets {
            url: url.as_str().to_string(),
            shown: redact(url),
            parts: url_secrets(url),
        }
    }

    /// `text` with every secret replaced by `***` (the whole URL by its redacted form).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.url, &self.shown);
        for secret in &self.parts {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

#[cfg(any(feature = "nats", feature = "redis", feature = "amqp"))]
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} masked)", self.parts.len())
    }
}

/// The error and its causes on one line (many clients' own text is only the outermost
/// layer, e.g. "error sending request").
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: UrlRules = UrlRules {
        schemes: &["nats", "tls"],
        expected: "nats:// or tls://",
        example: "nats://127.0.0.1:4222",
        missing: "set url = \"nats://...\" or url_from_env = \"VAR\"",
    };

    fn resolve(url: Option<&str>, from_env: Option<&str>, env: &Env) -> Result<String, String> {
        resolve_url("t.nats", url, from_env, env, &RULES)
            .map(|url| url.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn urls_are_checked_and_named_by_field() {
        let env = Env::fixed([("NATS_URL", "nats://user:pw@127.0.0.1:4222")]);
        assert_eq!(
            resolve(None, Some("NATS_URL"), &env),
            Ok("nats://user:pw@127.0.0.1:4222".into())
        );
        assert_eq!(
            resolve(None, None, &env),
            Err("t.nats.url: missing; set url = \"nats://...\" or url_from_env = \"VAR\"".into())
        );
        assert_eq!(
            resolve(Some("redis://x"), None, &env),
            Err("t.nats.url: URL scheme \"redis\" is not supported; use nats:// or tls://".into())
        );
        assert_eq!(
            resolve(Some("127.0.0.1:4222"), None, &env),
            Err("t.nats.url: not a valid URL (relative URL without a base); give an absolute URL like nats://127.0.0.1:4222".into())
        );
        assert_eq!(
            resolve(Some("nats://"), None, &env),
            Err("t.nats.url: not a valid URL (no host); give an absolute URL like nats://127.0.0.1:4222".into())
        );
        assert!(resolve(Some("nats://x"), Some("NATS_URL"), &env)
            .is_err_and(|e| e.starts_with("t.nats.url_from_env: url and url_from_env")));
    }

    #[test]
    fn client_refusals_are_reported_without_secrets() {
        let env = Env::default();
        let refused = resolve_url_with(
            "t.nats",
            Some("nats://user:pa55@127.0.0.1"),
            None,
            &env,
            &RULES,
            |url| Err::<(), _>(format!("cannot use {url} (password pa55)")),
        )
        .map_err(|e| e.to_string());
        assert_eq!(
            refused,
            Err("t.nats.url: not a valid URL (cannot use nats://user:***@127.0.0.1 (password ***)); give an absolute URL like nats://127.0.0.1:4222".into())
        );
    }

    #[test]
    fn secrets_are_masked() {
        let url = url::Url::parse("amqp://guest:p%40ss@host:5672/%2f?token=t0k").expect("url");
        assert_eq!(redact(&url), "amqp://guest:***@host:5672/%2f?***");
        assert_eq!(
            scrub_url_secrets(&url, "failed: p@ss, p%40ss and token=t0k at host"),
            "failed: ***, *** and *** at host"
        );
        let token = url::Url::parse("nats://s3cret@host:4222").expect("url");
        assert_eq!(redact(&token), "nats://***@host:4222");
        assert_eq!(scrub_url_secrets(&token, "auth s3cret"), "auth ***");
        assert_eq!(redact_url("not a url"), "<not a valid URL>");
    }

    #[cfg(any(feature = "nats", feature = "redis", feature = "amqp"))]
    #[test]
    fn secrets_scrub_client_errors() {
        let url = url::Url::parse("redis://:pa55@host:6379/0").expect("url");
        let secrets = Secrets::of(&url);
        assert_eq!(
            secrets.scrub("cannot reach redis://:pa55@host:6379/0 with pa55"),
            "cannot reach redis://:***@host:6379/0 with ***"
        );
        assert!(!format!("{secrets:?}").contains("pa55"));
    }
}
