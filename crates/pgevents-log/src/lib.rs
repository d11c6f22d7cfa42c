//! The durable event log that every pgevents capture writes to and every dispatcher reads.
//!
//! Writers append captured rows to an index-free `capture` table inside their own
//! transaction; [`store::Store::ingest`] moves them, oldest first, into the indexed `event` table,
//! where dispatchers [`store::Store::claim`] due events under a lease, deliver them, and
//! [`store::Store::settle`] the outcomes in batches. Everything lives in one schema (default
//! `pgevents`), installed idempotently by [`install`] and versioned by [`SCHEMA_VERSION`].

pub mod backfill;
pub mod browse;
mod error;
pub mod inline;
mod schema;
pub mod store;

pub use error::Error;
pub use schema::{
    install, salt, uninstall, wake_channel, wake_key, LogSchema, DEFAULT_LOG_SCHEMA,
    LOCK_TIMEOUT_MS, SCHEMA_VERSION,
};
