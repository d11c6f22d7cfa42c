//! The pgevents config file (TOML): parsed, checked as a whole, and turned into ready sinks.
//!
//! [`Config::load`] reads a file, and [`Config::from_toml_str`] a string; both check
//! everything before returning — unknown keys, malformed durations and table names, URL
//! schemes, unset `*_from_env` variables, duplicate trigger names, a trigger without exactly
//! one destination — and report **every** problem, one per line, each naming the field at
//! fault (`trigger["order_events"].retry.timeout`) and saying what to do. The file's path
//! may also come from the `PGEVENTS_CONFIG` environment variable ([`CONFIG_PATH_ENV`]); the
//! CLI reads it and passes the path here.
//!
//! ```
//! use pgevents_config::{Config, Env};
//!
//! let text = r#"
//!     [database]
//!     url_from_env = "DATABASE_URL"
//!
//!     [[trigger]]
//!     name = "order_events"
//!     table = "orders"
//!     stdout = {}
//! "#;
//! let env = Env::fixed([("DATABASE_URL", "postgres://app:secret@localhost/shop")]);
//! let config = Config::from_toml_str_with_env(text, "pgevents.toml", &env)?;
//! assert_eq!(config.database_url(), "postgres://app:secret@localhost/shop");
//! assert_eq!(config.triggers[0].table.to_string(), "public.orders");
//! assert!(!format!("{config:?}").contains("secret"));
//! let trigger = &config.triggers[0];
//! let sink = trigger.destination.build_sink(&trigger.path(), trigger.format)?;
//!
//! let errors = Config::from_toml_str_with_env(text, "pgevents.toml", &Env::fixed::<_, &str, &str>([]))
//!     .unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "pgevents.toml: database.url_from_env: environment variable DATABASE_URL is not set; \
//!      export it or use url = \"postgres://...\""
//! );
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod config;
mod duration;
mod error;
mod file;
mod sections;
mod table;
mod trigger;

pub use config::{Config, CONFIG_PATH_ENV};
pub use duration::{parse_duration, DurationError};
pub use error::{ConfigError, ConfigErrors};
pub use pgevents_sinks::Env;
pub use pgevents_trigger::{Ordering, Trigger};
pub use sections::{
    AdminConfig, CaptureConfig, CaptureMode, DatabaseConfig, RetentionConfig, DEFAULT_ADMIN_LISTEN,
    DEFAULT_LOG_SCHEMA, DEFAULT_PUBLICATION, DEFAULT_RETENTION_DELIVERED, DEFAULT_RETENTION_FAILED,
    DEFAULT_SLOT,
};
pub use table::{TableName, TableNameError, DEFAULT_SCHEMA};
pub use trigger::{Destination, SinkConfig, TriggerConfig, DEFAULT_OPERATIONS};
