//! The `webhook = { ... }` settings of a trigger, and their resolution into a [`WebhookSink`].

use std::collections::BTreeMap;
use std::fmt;

use pgevents_event::Format;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::sink::{SigningKey, Target, WebhookSink};
use crate::endpoint::{redact_url, resolve_url, UrlRules};
use crate::error::first_problem;
use crate::{join_path, Env, ResolveSink, SinkConfigError, SinkConfigErrorKind};

/// What a webhook URL may be.
const URL_RULES: UrlRules = UrlRules {
    schemes: &["http", "https"],
    expected: "http:// or https://",
    example: "https://example.com/hooks/orders",
    missing: "set url = \"https://...\" or url_from_env = \"VAR\"",
};

/// Headers that pgevents sets itself and that `headers` may not override.
const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Where a trigger's events are `POST`ed:
/// `webhook = { url_from_env = "ORDERS_HOOK", headers = { "X-Api-Key" = { from_env = "HOOK_KEY" } }, signing_secret_from_env = "HOOK_SECRET" }`.
///
/// Plain data, exactly as written in the config file; [`ResolveSink::resolve`] reads the
/// environment and checks everything. `Debug` never shows header values, and shows URLs with
/// their password and query replaced by `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint, an absolute `http://` or `https://` URL. Exactly one of `url` and
    /// `url_from_env` must be given.
    #[serde(default)]
    pub url: Option<String>,
    /// The name of an environment variable holding the endpoint URL (for URLs that carry a
    /// token). Exactly one of `url` and `url_from_env` must be given.
    #[serde(default)]
    pub url_from_env: Option<String>,
    /// Extra request headers: name → value, given inline (`"X-Team" = "billing"`) or read
    /// from the environment (`"X-Api-Key" = { from_env = "HOOK_KEY" }`).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueConfig>,
    /// The name of an environment variable holding the signing secret. When given, requests
    /// are signed as Standard Webhooks specifies. A secret of the form `whsec_<base64>` (as
    /// Standard Webhooks tools issue them) is used as the base64-decoded key; any other secret
    /// is used as its raw UTF-8 bytes.
    #[serde(default)]
    pub signing_secret_from_env: Option<String>,
}

/// A header's value: given inline, or read from an environment variable.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderValueConfig {
    /// The value itself: `"X-Team" = "billing"`.
    Plain(String),
    /// The name of the environment variable holding the value: `{ from_env = "HOOK_KEY" }`.
    FromEnv(String),
}

impl WebhookConfig {
    /// Checks every setting and reads every variable, collecting all problems.
    fn target(&self, path: &str, env: &Env) -> Result<Target, Vec<SinkConfigError>> {
        let mut problems = Vec::new();
        let url = self.url(path, env).map_err(|e| problems.push(e)).ok();
        let headers = self.headers(path, env, &mut problems);
        let signing_key = self
            .signing_key(path, env)
            .map_err(|e| problems.push(e))
            .ok();
        match (url, signing_key) {
            (Some(url), Some(signing_key)) if problems.is_empty() => Ok(Target {
                url,
                headers,
                signing_key,
            }),
            _ => Err(problems),
        }
    }

    fn url(&self, path: &str, env: &Env) -> Result<url::Url, SinkConfigError> {
        resolve_url(
            path,
            self.url.as_deref(),
            self.url_from_env.as_deref(),
            env,
            &URL_RULES,
        )
    }

    fn headers(&self, path: &str, env: &Env, problems: &mut Vec<SinkConfigError>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header_path = join_path(path, &format!("headers[{name:?}]"));
            let error = |kind| SinkConfigError::new(header_path.clone(), kind);
            let parsed_name = match HeaderName::from_bytes(name.as_bytes()) {
                Ok(parsed) => parsed,
                Err(_) => {
                    problems.push(error(SinkConfigErrorKind::InvalidHeaderName {
                        name: name.clone(),
                    }));
                    continue;
                }
            };
            if RESERVED_HEADERS.contains(&parsed_name.as_str()) {
                problems.push(error(SinkConfigErrorKind::ReservedHeader {
                    name: name.clone(),
                }));
                continue;
            }
            if headers.contains_key(&parsed_name) {
                problems.push(error(SinkConfigErrorKind::DuplicateHeader {
                    name: name.clone(),
                }));
                continue;
            }
            let text = match value {
                HeaderValueConfig::Plain(text) => text.clone(),
                HeaderValueConfig::FromEnv(var) => {
                    let instead = format!("give the value inline: {name:?} = \"...\"");
                    match env.require(var, &instead) {
                        Ok(text) => text,
                        Err(kind) => {
                            problems.push(SinkConfigError::new(
                                join_path(&header_path, "from_env"),
                                kind,
                            ));
                            continue;
                        }
                    }
                }
            };
            match HeaderValue::from_str(&text) {
                Ok(mut parsed) => {
                    parsed.set_sensitive(true);
                    headers.insert(parsed_name, parsed);
                }
                Err(_) => problems.push(error(SinkConfigErrorKind::InvalidHeaderValue)),
            }
        }
        headers
    }

    fn signing_key(&self, path: &str, env: &Env) -> Result<Option<SigningKey>, SinkConfigError> {
        let Some(var) = &self.signing_secret_from_env else {
            return Ok(None);
        };
        let error = |kind| SinkConfigError::new(join_path(path, "signing_secret_from_env"), kind);
        let secret = env
            .require(
                var,
                "remove signing_secret_from_env to send unsigned requests",
            )
            .map_err(error)?;
        SigningKey::from_secret(&secret)
            .map(Some)
            .ok_or_else(|| error(SinkConfigErrorKind::InvalidSigningSecret))
    }
}

impl ResolveSink for WebhookConfig {
    type Sink = WebhookSink;

    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        self.target(path, env).err().unwrap_or_default()
    }

    fn resolve(
        &self,
        path: &str,
        format: Format,
        env: &Env,
    ) -> Result<WebhookSink, SinkConfigError> {
        let target = self
            .target(path, env)
            .map_err(|problems| first_problem(path, problems))?;
        WebhookSink::new(target, format).map_err(|kind| SinkConfigError::new(path, kind))
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_from_env", &self.url_from_env)
            .field("headers", &self.headers)
            .field("signing_secret_from_env", &self.signing_secret_from_env)
            .finish()
    }
}

impl fmt::Debug for HeaderValueConfig {
    /// Inline values print as `"***"`; variable names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValueConfig::Plain(_) => f.write_str("\"***\""),
            HeaderValueConfig::FromEnv(var) => write!(f, "{{ from_env = {var:?} }}"),
        }
    }
}

impl<'de> Deserialize<'de> for HeaderValueConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HeaderValueVisitor)
    }
}

struct HeaderValueVisitor;

impl<'de> Visitor<'de> for HeaderValueVisitor {
    type Value = HeaderValueConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header value string or { from_env = \"VAR\" }")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<HeaderValueConfig, E> {
        Ok(HeaderValueConfig::Plain(value.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderValueConfig, A::Error> {
        let mut var = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "from_env" {
                return Err(de::Error::unknown_field(&key, &["from_env"]));
            }
            if var.is_some() {
                return Err(de::Error::duplicate_field("from_env"));
            }
            var = Some(map.next_value::<String>()?);
        }
        var.map(HeaderValueConfig::FromEnv)
            .ok_or_else(|| de::Error::missing_field("from_env"))
    }
}
