//! Committed PostgreSQL row changes, delivered durably and at least once to async handlers.
//!
//! ```no_run
//! # async fn run() -> Result<(), pgevents::Error> {
//! let listener = pgevents::Listener::builder("postgres://app@localhost/shop")
//!     .on("orders", |event: pgevents::Event| async move {      // table "public.orders"
//!         println!("{} {}", event.action(), event.payload_str());
//!         Ok::<_, std::convert::Infallible>(())                 // Err => retried with backoff
//!     })
//!     .build()
//!     .await?;                                                   // installs triggers + log, idempotently
//! listener.run(tokio::signal::ctrl_c()).await?;                  // returns after a graceful drain
//! # Ok(()) }
//! ```
//!
//! `build` installs, idempotently, the event log (schema `pgevents`) and an AFTER ROW trigger
//! per table, which records every committed change in the writer's own transaction — so
//! changes made while no listener runs are delivered when one starts, and a rolled-back
//! write never produces an event. `run` delivers each event to its handler: an `Err` or a
//! panic is a failed attempt, retried with exponential backoff; events of one row arrive in
//! commit order. Several listeners on one database share the work.

mod error;
mod handler;
mod listener;
mod memory;

pub use error::Error;
pub use handler::{BoxError, Handler};
pub use listener::{Listener, ListenerBuilder, TableOptions};
pub use memory::{release_large_allocations, LARGE_ALLOCATION};
pub use pgevents_delivery::{Delivery, Outcome, Report, RetryPolicy, Sink, Slot};
pub use pgevents_event::{Action, Event, Format};
pub use pgevents_log::backfill::{Backfill, State as BackfillState};
pub use pgevents_log::Ordering;
