//! PostgreSQL, as every pgevents crate reaches it: connections opened from a libpq-style URL
//! with TLS as `sslmode` means it and time limits that never let a dead server hang a caller
//! ([`connect`]); identifiers and literals quoted in one place, and table names as users
//! write them ([`QualifiedName`]); and what the system catalogs say about a watched table
//! ([`catalog`]), which both capture modes read so that "the same row" means the same thing
//! in each.

pub mod catalog;
mod connect;
mod error;
mod ident;

pub use connect::{
    cancel_query, connect, prepare, tls_connector, ConnectOptions, RootCerts, SslMode, TlsSettings,
    APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT,
};
pub use error::Error;
pub use ident::{quote_ident, quote_literal, QualifiedName, TableNameError, DEFAULT_SCHEMA};
