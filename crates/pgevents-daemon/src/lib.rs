//! The pgevents daemon: everything `pgevents run`, `check`, `install`, `uninstall`, `status`,
//! `events`, `invoke` and `backfill` do, driven by a [`pgevents_config::Config`], and the starter config
//! `pgevents init` writes for a database. The binary only parses arguments and prints.

mod backfill;
mod commands;
mod error;
mod run;
mod starter;

pub use backfill::{backfill, backfills, cancel_backfill, Progress};
pub use commands::{
    check, install, invoke, list_events, redeliver, redeliver_failed, remove_unconfigured,
    show_event, status, uninstall, Installed, Status,
};
pub use error::DaemonError;
pub use run::run;
pub use starter::{starter_config, DATABASE_URL_ENV};
