//! The listener: per-table handlers over one event log, built and run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgevents_delivery::{DynSink, RetryPolicy, Sink};
use pgevents_dispatch::{Dispatcher, Options, Route};
use pgevents_log::backfill::Backfill;
use pgevents_log::LogSchema;
use pgevents_postgres::QualifiedName;
use pgevents_trigger::Trigger;

use crate::handler::HandlerSink;
use crate::{Error, Handler};

/// A trigger to install, or why its table name was refused (reported by `build`).
type Entry = Result<Trigger<Arc<dyn DynSink>>, String>;

/// Builds a [`Listener`]: which tables, which handlers, which policies.
pub struct ListenerBuilder {
    url: String,
    log_schema: String,
    retry: RetryPolicy,
    options: Options,
    entries: Vec<Entry>,
    /// Logical capture: (slot, publication); `None` for trigger capture.
    logical: Option<(String, String)>,
}

impl std::fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("log_schema", &self.log_schema)
            .field(
                "tables",
                &self
                    .entries
                    .iter()
                    .map(|e| match e {
                        Ok(trigger) => trigger.table.to_string(),
                        Err(refused) => refused.clone(),
                    })
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Handlers bound to an installed event log, ready to [`run`](Listener::run).
pub struct Listener {
    url: String,
    schema: LogSchema,
    /// The registered tables' trigger names (`schema.table`).
    triggers: Vec<String>,
    dispatcher: Dispatcher,
    /// The WAL reader, in logical capture mode.
    capture: Option<pgevents_logical::LogicalCapture>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// Starts building a listener on the database at `url` (`sslmode` in the URL selects TLS).
    pub fn builder(url: impl Into<String>) -> ListenerBuilder {
        ListenerBuilder {
            url: url.into(),
            log_schema: pgevents_log::DEFAULT_LOG_SCHEMA.into(),
            retry: RetryPolicy::default(),
            options: Options::default(),
            entries: Vec::new(),
            logical: None,
        }
    }

    /// Starts a backfill of `table` (as given to [`on`](ListenerBuilder::on)): an event with
    /// action [`Action::Read`](crate::Action::Read) (`new` = the row) for every row of the table, or every row
    /// matching `condition` (SQL on the table's columns), delivered to the table's handler in
    /// primary-key order, woven into its live events so that each row's last event carries
    /// its current state. Returns the backfill's id ([`backfills`](Self::backfills) shows its
    /// progress). The chunks are written by [`run`](Self::run) — by any listener or daemon on
    /// this log — in short transactions, and a backfill interrupted by a restart continues
    /// where it was.
    ///
    /// Fails, starting nothing, with an error for which [`Error::is_usage`] holds when the
    /// table is not one of this listener's, has no primary key, or `condition` is not a valid
    /// condition on its rows.
    pub async fn backfill(&self, table: &str, condition: Option<&str>) -> Result<i64, Error> {
        let name = QualifiedName::parse(table)
            .map_err(|e| Error::usage(e.to_string()))?
            .to_string();
        if !self.triggers.contains(&name) {
            return Err(Error::usage(format!(
                "table {name} has no handler on this listener: backfill one of {:?}",
                self.triggers
            )));
        }
        let client = pgevents_postgres::connect(&self.url, None).await?;
        Ok(pgevents_capture::backfill::start(&client, &self.schema, &name, condition).await?)
    }

    /// Every backfill of this event log with its progress, newest first.
    pub async fn backfills(&self) -> Result<Vec<Backfill>, Error> {
        let client = pgevents_postgres::connect(&self.url, None).await?;
        Ok(pgevents_log::backfill::list(&client, &self.schema, i64::MAX).await?)
    }

    /// Delivers events until `shutdown` completes, then drains: in-flight deliveries finish
    /// (up to the drain timeout) and unfinished claims are released for others.
    pub async fn run<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future + Send,
    {
        let Some(capture) = self.capture else {
            return self
                .dispatcher
                .run(async move {
                    shutdown.await;
                })
                .await
                .map_err(Error::from);
        };
        let (captured, dispatched) =
            crate::compose::run_beside(capture, self.dispatcher, async move {
                shutdown.await;
            })
            .await;
        captured.map_err(pgevents_log::Error::from)?;
        dispatched.map_err(Error::from)
    }
}

impl ListenerBuilder {
    /// Delivers the changes of `table` (`"orders"` means `public.orders`) to `handler`.
    pub fn on<H: Handler>(mut self, table: &str, handler: H) -> ListenerBuilder {
        let sink: Arc<dyn DynSink> = Arc::new(HandlerSink(Arc::new(handler)));
        self.entries
            .push(Trigger::for_table(table, sink).map_err(|e| e.to_string()));
        self
    }

    /// Delivers the changes `trigger` describes to its handler: [`on`](Self::on) with the
    /// trigger's operations, `columns`, ordering, filter, payload columns and retry policy.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pgevents::Error> {
    /// use pgevents::{Event, Ordering, Trigger};
    /// let handler = |event: Event| async move { Ok::<_, std::convert::Infallible>(()) };
    /// let orders = Trigger::for_table("orders", handler)?
    ///     .ordering(Ordering::Columns(vec!["account_id".into()]))
    ///     .condition("status <> 'draft'");
    /// let listener = pgevents::Listener::builder("postgres://app@localhost/shop")
    ///     .trigger(orders)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn trigger<H: Handler>(self, trigger: Trigger<H>) -> ListenerBuilder {
        self.sink(trigger.map_destination(|handler| HandlerSink(Arc::new(handler))))
    }

    /// Delivers the changes `trigger` describes to any [`Sink`] (a webhook, a broker, your
    /// own). The payload format is the sink's own, chosen when it was built; the trigger's
    /// `format` is what the config file builds its sinks with.
    pub fn sink<S: Sink>(mut self, trigger: Trigger<S>) -> ListenerBuilder {
        self.entries.push(Ok(trigger.map_destination(|sink| {
            let sink: Arc<dyn DynSink> = Arc::new(sink);
            sink
        })));
        self
    }

    /// The retry policy of every table without its own (default: 5 retries from 1 s,
    /// doubling up to 5 min, 30 s per attempt).
    pub fn retry(mut self, policy: RetryPolicy) -> ListenerBuilder {
        self.retry = policy;
        self
    }

    /// The schema holding the event log (default `pgevents`).
    pub fn log_schema(mut self, schema: impl Into<String>) -> ListenerBuilder {
        self.log_schema = schema.into();
        self
    }

    /// At most this many events in flight at once (default 1000): memory stays bounded
    /// whatever the backlog.
    pub fn max_in_flight(mut self, n: usize) -> ListenerBuilder {
        self.options.max_in_flight = n.max(1);
        self.options.batch_size = self.options.batch_size.min(self.options.max_in_flight);
        self
    }

    /// At most this many bytes of row text in flight at once (default 4 MiB): a claim stops
    /// once it reaches what is left, so a backlog of big rows is delivered a few at a time
    /// and memory stays bounded by bytes as well as by count. An event bigger than this is
    /// delivered alone.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> ListenerBuilder {
        self.options.max_in_flight_bytes = bytes.max(1);
        self
    }

    /// How long a claim on an event lasts without renewal (default 10 s): if this process
    /// dies, other listeners take its events over after this long.
    pub fn lease(mut self, lease: Duration) -> ListenerBuilder {
        self.options.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How long [`Listener::run`] waits for in-flight deliveries at shutdown (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> ListenerBuilder {
        self.options.drain_timeout = timeout;
        self
    }

    /// Whether writers wake an idle listener with a `NOTIFY` (default true; sent only while a
    /// listener sleeps, so busy writers pay nothing). With `false` no writing transaction
    /// ever notifies — for applications that use `PREPARE TRANSACTION`, which refuses a
    /// transaction that did — and an idle listener looks at the log every second instead.
    pub fn notify(mut self, notify: bool) -> ListenerBuilder {
        self.options.notify = notify;
        self
    }

    /// Captures changes from the WAL through replication slot `slot` and publication
    /// `publication` instead of triggers (`capture.mode = "logical"`; needs
    /// `wal_level = logical`). [`build`](Self::build) then installs the publication, the
    /// slot and `REPLICA IDENTITY FULL` on the tables, and removes capture triggers an
    /// earlier trigger-mode build left; [`Listener::run`] streams the slot beside delivery.
    /// Payloads are the same as in trigger mode.
    pub fn capture_logical(
        mut self,
        slot: impl Into<String>,
        publication: impl Into<String>,
    ) -> ListenerBuilder {
        self.logical = Some((slot.into(), publication.into()));
        self
    }

    /// Connects, installs the event log and the capture triggers (idempotently), and
    /// returns the listener. Every table is checked first: when a table or a `columns`
    /// entry does not exist, a name cannot be parsed or a table is registered twice, it
    /// fails with an error for which [`Error::is_usage`] is true, having changed nothing.
    pub async fn build(self) -> Result<Listener, Error> {
        let schema = LogSchema::new(&self.log_schema)?;
        let mut triggers: Vec<Trigger<Arc<dyn DynSink>>> = Vec::with_capacity(self.entries.len());
        for entry in self.entries {
            let mut trigger = entry.map_err(Error::usage)?;
            let name = &trigger.name;
            if triggers.iter().any(|t| t.name == *name) {
                return Err(Error::usage(format!(
                    "table {name} is registered twice: give it one handler"
                )));
            }
            if let Some(bad) = trigger.operations.iter().find(|a| !a.is_captured()) {
                return Err(Error::usage(format!(
                    "table {name}: {bad} is not a capturable operation; use INSERT, UPDATE, DELETE or TRUNCATE"
                )));
            }
            trigger.retry = trigger.retry.or(Some(self.retry));
            triggers.push(trigger);
        }
        let mut client = pgevents_postgres::connect(&self.url, None).await?;
        // Every table first: a mistake in one leaves nothing half-installed.
        for trigger in &triggers {
            pgevents_capture::validate_trigger(&client, trigger, self.logical.is_none()).await?;
        }
        let salt = pgevents_log::install(&mut client, &schema).await?;
        let mut routes = Vec::with_capacity(triggers.len());
        let mut logical_tables = Vec::new();
        if self.logical.is_some() {
            // Before any trigger is replaced: a server without wal_level = logical keeps them.
            pgevents_logical::check_wal_level(&client)
                .await
                .map_err(pgevents_log::Error::from)?;
        }
        let names = triggers.iter().map(|t| t.name.clone()).collect();
        for trigger in triggers {
            let id = if self.logical.is_some() {
                let table = pgevents_logical::register_table(&client, &schema, &trigger)
                    .await
                    .map_err(pgevents_log::Error::from)?;
                let id = table.trigger_id;
                logical_tables.push(table);
                id
            } else {
                pgevents_capture::install_trigger(
                    &mut client,
                    &schema,
                    &trigger,
                    self.options.notify,
                )
                .await?
            };
            routes.push(Route::new(id, trigger));
        }
        tracing::info!(
            tables = routes.len(),
            schema = schema.name(),
            "pgevents installed"
        );
        let capture = match self.logical {
            Some((slot, publication)) => {
                let capture = pgevents_logical::LogicalCapture::new(
                    self.url.clone(),
                    schema.clone(),
                    slot,
                    publication,
                    logical_tables,
                )
                .map_err(pgevents_log::Error::from)?;
                capture.install().await.map_err(pgevents_log::Error::from)?;
                Some(capture)
            }
            None => None,
        };
        Ok(Listener {
            triggers: names,
            dispatcher: Dispatcher::new(
                self.url.clone(),
                schema.clone(),
                salt,
                routes,
                self.options,
            )
            .with_wal_capture(capture.is_some()),
            url: self.url,
            schema,
            capture,
        })
    }
}
