//! Capture: how committed row changes get into the event log.
//!
//! [`trigger`] installs, for each watched table, AFTER ROW triggers (and a statement-level
//! TRUNCATE trigger when asked) whose function appends the change to the log's `capture`
//! table inside the writer's own transaction: a rolled-back write leaves no event, and a
//! committed one cannot be lost, whatever the dispatcher is doing. [`backfill`] starts
//! backfills: a `READ` event for every existing row, with the same keys and images.

pub mod backfill;
pub mod trigger;

pub use trigger::{
    check_trigger, install_trigger, installed_trigger, missing_columns, trigger_problems,
    uninstall_trigger, validate_trigger,
};
