//! The capture loop: leadership, the replication session, decoding into batches, writing
//! them to the log and only then confirming the slot's position.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgevents_event::Action;
use pgevents_log::inline::DeliverFirst;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::pgoutput::{self, Message, OldKind, Relation, Value};
use crate::slots::slot_health;
use crate::writer::{layout, ordering_code, Batch, Cursor, Projection, Row, Shape, Writer, WHOLE};
use crate::{Error, LogicalCapture, LogicalTable};
use pgevents_postgres::catalog::TableInfo;

/// Shortest and longest wait before retrying after a transient failure.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the loop looks at its leadership connection when the stream is quiet.
const TICK: Duration = Duration::from_secs(1);
/// Replication events buffered between the protocol client and the decoder. Each holds one
/// row change, so this bounds memory together with the batch limits.
const STREAM_BUFFER: usize = 64;
/// How long the loop naps, once the stream has caught up, between takes of the events that
/// came while a batch gathers: the batch is written at its deadline anyway, and beside busy
/// writers a wake-up per replication message (three per row change) cost the process more
/// than decoding it. A backlog is read without naps: a nap lets at most [`STREAM_BUFFER`]
/// messages in (measured: a backlog read in naps drained at 0.29× `pg_recvlogical`).
const GATHER_NAP: Duration = Duration::from_millis(1);
/// How far behind its commits the stream may fall before the loop stops napping: a backlog,
/// or writes faster than naps take them (see [`Lag`]). Below it, naps go on even when each
/// fills the buffer: the protocol client then reads many messages per wake-up (with room in
/// the buffer it woke for each packet, and cost more CPU per event, measured with a buffer
/// of 256), and what the buffer holds back waits in the socket.
const NAP_MAX_LAG_MICROS: i64 = 200_000;
/// How long [`Lag`] keeps the smallest transit time it saw as the clocks' offset (5 to 10 s:
/// this window's and the one before): long enough to see the stream with nothing queued,
/// short enough that the clocks' drift (NTP slews by at most 0.5 ms a second) stays far
/// below [`NAP_MAX_LAG_MICROS`].
const LAG_WINDOW: Duration = Duration::from_secs(5);
/// Session settings of the walsender, so values come out in unambiguous text forms that the
/// log connection reads back exactly (ISO dates, UTC offsets, shortest-exact floats).
const WALSENDER_OPTIONS: &str =
    "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC -c bytea_output=hex";

/// The log writer of a session: idle, or writing a batch on a task of its own. A session
/// that ends with an error leaves a write under way to finish on its own: the next
/// session's first write waits for its lock on the capture position and skips what it
/// wrote (the cursor), so nothing is written twice.
enum Log {
    Idle(Box<Writer>),
    Writing(JoinHandle<Written>),
    /// Its write task ended without handing the writer back (it panicked or was aborted).
    Lost,
}

/// What a write task hands back: the writer, and the end LSN of the last source
/// transaction the batch completed (safe to confirm once written) or the write's error.
type Written = (Box<Writer>, Result<Option<u64>, Error>);

impl Log {
    fn is_writing(&self) -> bool {
        matches!(self, Log::Writing(_))
    }

    /// The end of the write under way (never ready when none is): safe to drop unfinished,
    /// the task goes on.
    async fn written(&mut self) -> Result<Written, tokio::task::JoinError> {
        match self {
            Log::Writing(task) => task.await,
            _ => std::future::pending().await,
        }
    }

    /// Takes the writer back from a finished write; returns the LSN its batch makes safe
    /// to confirm.
    fn settle(
        &mut self,
        written: Result<Written, tokio::task::JoinError>,
    ) -> Result<Option<u64>, Error> {
        match written {
            Ok((writer, result)) => {
                *self = Log::Idle(writer);
                result
            }
            Err(e) => {
                *self = Log::Lost;
                Err(Error::Decode(format!(
                    "the task writing captured rows to the log ended abnormally: {e}"
                )))
            }
        }
    }

    /// Waits for the write under way, if any (see [`Log::settle`]).
    async fn wait(&mut self) -> Result<Option<u64>, Error> {
        if !self.is_writing() {
            return Ok(None);
        }
        let written = self.written().await;
        self.settle(written)
    }

    /// Starts writing `batch` on a task of its own (the writer must be idle).
    fn start(
        &mut self,
        batch: Batch,
        delivery: Option<Arc<dyn DeliverFirst>>,
    ) -> Result<(), Error> {
        let Log::Idle(mut writer) = std::mem::replace(self, Log::Lost) else {
            return Err(Error::Decode(
                "a batch was to be written while the writer was busy or lost".into(),
            ));
        };
        *self = Log::Writing(tokio::spawn(async move {
            let rows = batch.len();
            let started = Instant::now();
            let result = writer.write(&batch, delivery).await.map(|_| batch.end_lsn);
            if result.is_ok() {
                tracing::debug!(
                    rows,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "captured rows written to the event log"
                );
            }
            (writer, result)
        }));
        Ok(())
    }
}

/// What the slot may be confirmed up to: a stream position that nothing before it waits to
/// be written, held back while a write is under way until that write has committed.
#[derive(Default)]
struct Confirm {
    /// A position passed while a write was under way.
    held: Option<u64>,
}

impl Confirm {
    /// The stream passed `lsn` with nothing decoded left unwritten before it.
    fn passed(&mut self, lsn: u64, log: &Log, stream: &ReplicationClient) {
        if log.is_writing() {
            self.held = Some(self.held.map_or(lsn, |h| h.max(lsn)));
        } else {
            stream.update_applied_lsn(Lsn(lsn));
        }
    }

    /// A write committed, through `end` (the end of the last source transaction its batch
    /// completed): confirms that, or a later position passed meanwhile.
    fn written(&mut self, end: Option<u64>, stream: &ReplicationClient) {
        if let Some(lsn) = self.held.take().max(end) {
            stream.update_applied_lsn(Lsn(lsn));
        }
    }

    /// Waits for the write under way, if any, and confirms what it committed.
    async fn after_write(
        &mut self,
        log: &mut Log,
        stream: &ReplicationClient,
    ) -> Result<(), Error> {
        let end = log.wait().await?;
        self.written(end, stream);
        Ok(())
    }
}

/// Why a session ended without an error.
enum Stop {
    /// Shutdown was asked for.
    Shutdown,
    /// The leadership connection broke: another process may be taking over.
    LostLead,
}

type Shutdown<'a, F> = Pin<&'a mut F>;

impl LogicalCapture {
    /// Streams changes into the event log until `shutdown` completes.
    ///
    /// Only one process streams from a slot: this one first waits for the slot's leadership
    /// (a session advisory lock), so a second process started on the same slot waits and
    /// takes over within moments when the first dies. Transient failures (connections,
    /// server restarts, a previous consumer still releasing the slot) are retried with
    /// backoff; a lost or missing slot, a wrong `wal_level` or an undecodable stream end the
    /// run with an error that says what to do.
    pub async fn run<F: Future>(self, shutdown: F) -> Result<(), Error> {
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown: Shutdown<'_, F> = shutdown;
        let mut delay = RETRY_MIN;
        loop {
            let lead = match self.lead(shutdown.as_mut()).await {
                Ok(Some(lead)) => lead,
                Ok(None) => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, slot = %self.slot, "cannot reach the database for capture leadership; retrying");
                    if !pause(&mut delay, shutdown.as_mut()).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(slot = %self.slot, "capturing from the replication slot");
            loop {
                let started = Instant::now();
                match self.session(&lead, shutdown.as_mut()).await {
                    Ok(Stop::Shutdown) => return Ok(()),
                    Ok(Stop::LostLead) => {
                        tracing::warn!(slot = %self.slot, "lost the capture leadership connection; waiting to lead again");
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        if started.elapsed() > RETRY_MAX {
                            delay = RETRY_MIN;
                        }
                        tracing::warn!(error = %e, slot = %self.slot, retry_in_ms = delay.as_millis() as u64, "capture interrupted; resuming from the last written position");
                        if !pause(&mut delay, shutdown.as_mut()).await {
                            return Ok(());
                        }
                        if lead.is_closed() {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Takes the slot's leadership, waiting for it while another process holds it; `None`
    /// when shutdown came first.
    async fn lead<F: Future>(&self, shutdown: Shutdown<'_, F>) -> Result<Option<Client>, Error> {
        let client = pgevents_postgres::connect(&self.url, None).await?;
        let key = self.lead_key();
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| Error::query("taking the capture leadership", e))?
            .get(0);
        if got {
            return Ok(Some(client));
        }
        tracing::info!(slot = %self.slot, "another process captures from this slot; standing by to take over");
        let cancel = client.cancel_token();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let waited = tokio::select! {
            biased;
            _ = shutdown => None,
            r = client.execute("SELECT pg_advisory_lock($1)", &params) => Some(r),
        };
        match waited {
            None => {
                pgevents_postgres::cancel_query(&cancel, &self.url).await;
                Ok(None)
            }
            Some(r) => {
                r.map_err(|e| Error::query("waiting for the capture leadership", e))?;
                Ok(Some(client))
            }
        }
    }

    fn lead_key(&self) -> i64 {
        self.schema.key(&format!("logical-slot:{}", self.slot))
    }

    /// One replication session: from the last written position until shutdown or an error.
    ///
    /// A full batch is written on a task of its own while the stream goes on into the next
    /// one (decoding and writing overlap: a backlog); the next write waits for it, so
    /// batches reach the log one after the other, in stream order. A batch cut by the
    /// linger is written before the stream is read on, as before. The slot is confirmed only behind
    /// what a finished write committed. Catalog reads (new relations, slot health) go over
    /// the leadership connection, the writer's being busy.
    async fn session<F: Future>(
        &self,
        lead: &Client,
        mut shutdown: Shutdown<'_, F>,
    ) -> Result<Stop, Error> {
        let writer = Writer::open(&self.url, &self.schema, &self.slot).await?;
        self.check_slot(lead).await?;
        let progress = writer.progress().await?;
        let mut log = Log::Idle(Box::new(writer));
        let mut decoder = Decoder {
            tables: self.watched(lead).await?,
            relations: HashMap::new(),
            txn: None,
            batch: Batch::at(progress.cursor),
            warned: HashSet::new(),
        };
        let config = replication_config(
            &self.url,
            &self.slot,
            &self.publication,
            progress.end_lsn,
            &self.options,
        )?;
        let mut stream = ReplicationClient::connect(config)
            .await
            .map_err(|source| Error::replication("connecting", source))?;
        let mut confirm = Confirm::default();
        let mut deadline: Option<Instant> = None;
        let mut next_check = Instant::now() + self.options.health_interval;
        let mut next_tick = Instant::now() + TICK;
        // Whether the loop naps while a batch gathers (see GATHER_NAP): only once the stream
        // has caught up (the last batch was cut by the linger, not full), and while it is not
        // lagging (see NAP_MAX_LAG_MICROS).
        let mut nap = false;
        // The events taken without waiting since the last nap.
        let mut taken = 0usize;
        // How far behind its commits the stream is, and whether by more than
        // NAP_MAX_LAG_MICROS at the last change.
        let mut lag = Lag::default();
        let mut lagging = false;
        loop {
            let wake = deadline.map_or(next_tick, |d| d.min(next_tick));
            let gathering = nap && !lagging && deadline.is_some();
            let ready = if gathering {
                tokio::select! {
                    biased;
                    r = stream.recv() => Some(r),
                    _ = std::future::ready(()) => None,
                }
            } else {
                None
            };
            let from_ready = ready.is_some();
            if from_ready {
                taken += 1;
            } else if gathering {
                taken = 0;
            }
            let received = match ready {
                Some(r) => Some(Some(r)),
                None => tokio::select! {
                    biased;
                    _ = shutdown.as_mut() => None,
                    written = log.written(), if log.is_writing() => {
                        let end = log.settle(written)?;
                        confirm.written(end, &stream);
                        continue;
                    }
                    r = tokio::time::timeout_at(wake, stream.recv()), if !gathering => {
                        Some(r.ok())
                    }
                    _ = tokio::time::sleep_until(wake.min(Instant::now() + GATHER_NAP)),
                        if gathering => Some(None),
                },
            };
            let Some(received) = received else {
                self.finish(&mut log, &mut decoder, &mut stream, &mut confirm)
                    .await;
                return Ok(Stop::Shutdown);
            };
            match received {
                None => {}
                Some(Ok(Some(event))) => match event {
                    ReplicationEvent::Begin {
                        final_lsn,
                        commit_time_micros,
                        ..
                    } => decoder.begin(final_lsn.0, commit_time_micros),
                    ReplicationEvent::XLogData {
                        data,
                        server_time_micros,
                        ..
                    } => {
                        lagging = decoder.commit_micros().is_some_and(|commit| {
                            lag.behind(commit, server_time_micros, now_micros(), Instant::now())
                                > NAP_MAX_LAG_MICROS
                        });
                        let message = pgoutput::decode(&data)?;
                        decoder.change(message, lead).await?;
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => {
                        decoder.commit(end_lsn.0)?;
                        if decoder.batch.is_empty() {
                            // Nothing of it waits to be written: confirm once what came
                            // before it is written.
                            decoder.batch.end_lsn = None;
                            confirm.passed(end_lsn.0, &log, &stream);
                        }
                    }
                    // Between transactions with nothing unwritten: every transaction before this
                    // point was sent and is in the log (or in the write under way).
                    ReplicationEvent::KeepAlive { wal_end, .. }
                        if decoder.txn.is_none() && decoder.batch.is_empty() =>
                    {
                        confirm.passed(wal_end.0, &log, &stream);
                    }
                    _ => {}
                },
                Some(Ok(None)) => {
                    return Err(Error::replication(
                        "streaming",
                        PgWireError::Io(Arc::new(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server ended the replication stream",
                        ))),
                    ))
                }
                Some(Err(source)) => return Err(self.stream_error(source, lead).await),
            }
            let now = Instant::now();
            if decoder.batch.is_empty() {
                deadline = None;
            } else {
                let due = *deadline.get_or_insert(now + self.options.linger);
                let full = decoder.batch.len() >= self.options.batch_rows
                    || decoder.batch.bytes() >= self.options.batch_bytes;
                // Past the deadline, events that came in the last nap (a buffer's worth at
                // most) still join the batch: it is cut once a take finds nothing more.
                if full || (due <= now && !(from_ready && taken < STREAM_BUFFER)) {
                    self.flush(&mut log, &mut decoder, &stream, &mut confirm)
                        .await?;
                    if !full {
                        // A batch cut by the linger: the stream has caught up, nothing
                        // to overlap; written before reading on, as a trickle's latency
                        // and the writers beside it fare best that way.
                        confirm.after_write(&mut log, &stream).await?;
                    }
                    nap = !full;
                    deadline = None;
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                if lead.is_closed() {
                    return Ok(Stop::LostLead);
                }
                if now >= next_check {
                    next_check = now + self.options.health_interval;
                    self.check_slot(lead).await?;
                }
            }
        }
    }

    /// Waits for the write under way, then starts writing the decoded batch on its own task.
    async fn flush(
        &self,
        log: &mut Log,
        decoder: &mut Decoder,
        stream: &ReplicationClient,
        confirm: &mut Confirm,
    ) -> Result<(), Error> {
        confirm.after_write(log, stream).await?;
        let next = Batch::at(decoder.batch.cursor);
        let batch = std::mem::replace(&mut decoder.batch, next);
        log.start(batch, self.delivery.current())
    }

    /// At shutdown: waits for the write under way and writes what is decoded (best effort;
    /// the slot re-sends anything not written), confirms it, and ends the stream.
    async fn finish(
        &self,
        log: &mut Log,
        decoder: &mut Decoder,
        stream: &mut ReplicationClient,
        confirm: &mut Confirm,
    ) {
        let flushed = tokio::time::timeout(Duration::from_secs(10), async {
            if !decoder.batch.is_empty() {
                self.flush(log, decoder, stream, confirm).await?;
            }
            confirm.after_write(log, stream).await
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(slot = %self.slot, "could not write the last decoded rows at shutdown; they will be captured again on the next start");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    }

    /// Fails when the slot is missing or lost; logs a warning when it holds back too much WAL.
    async fn check_slot(&self, client: &Client) -> Result<(), Error> {
        let Some(health) = slot_health(client, &self.slot).await? else {
            return Err(Error::SlotMissing {
                slot: self.slot.clone(),
            });
        };
        if health.is_lost() {
            return Err(Error::SlotLost {
                slot: self.slot.clone(),
            });
        }
        if let Some(warning) = health.warning(self.options.lag_warning_bytes) {
            tracing::warn!(slot = %self.slot, retained_bytes = health.retained_bytes, "{warning}");
        }
        Ok(())
    }

    /// Turns a replication error into the clearest error: a lost or missing slot if that is
    /// what the catalog now shows, else the protocol error itself.
    async fn stream_error(&self, source: PgWireError, client: &Client) -> Error {
        if let Err(e) = self.check_slot(client).await {
            if matches!(e, Error::SlotLost { .. } | Error::SlotMissing { .. }) {
                return e;
            }
        }
        Error::replication("streaming", source)
    }

    /// The watched tables by OID, with their key columns.
    async fn watched(&self, client: &Client) -> Result<HashMap<u32, Watched>, Error> {
        let mut watched: HashMap<u32, Watched> = HashMap::new();
        for t in &self.tables {
            let Some(info) =
                pgevents_postgres::catalog::describe_table(client, &t.trigger.table).await?
            else {
                tracing::warn!(table = %t.trigger.table, "watched table does not exist; its changes are not captured");
                continue;
            };
            if info.replica_identity != b'f' {
                tracing::warn!(table = %t.trigger.table, "REPLICA IDENTITY is not FULL: data.old of UPDATE and DELETE events is incomplete; run `pgevents install` again");
            }
            watched
                .entry(info.oid)
                .or_insert_with(|| Watched { specs: Vec::new() })
                .specs
                .push((t.clone(), Projection::of(t)));
        }
        Ok(watched)
    }
}

/// How far the replication stream is behind the commits it carries: the server's clock when
/// it sent a change less its transaction's commit time (a backlog the walsender decodes),
/// plus the time the change waited on its way here (in socket buffers and the protocol
/// client's). That wait is the change's transit time (this clock at arrival less the
/// server's at sending) less the smallest transit time seen in the last [`LAG_WINDOW`] or
/// two: the clocks' offset plus the network's delay, which is never a backlog. After two
/// windows without a change (an idle stream), it starts afresh from the next one.
#[derive(Debug, Default)]
struct Lag {
    /// The smallest transit time of this window and of the one before, and when this one
    /// started.
    window: Option<(i64, i64, Instant)>,
}

impl Lag {
    /// Microseconds the change sent at `sent` (the server's clock, µs since 2000) of a
    /// transaction committed at `commit` (same clock) is behind, having arrived at `arrived`
    /// (this clock, same unit) and `at`.
    fn behind(&mut self, commit: i64, sent: i64, arrived: i64, at: Instant) -> i64 {
        let transit = arrived.saturating_sub(sent);
        let (current, previous, started) = self.window.get_or_insert((transit, transit, at));
        let elapsed = at.duration_since(*started);
        if elapsed >= LAG_WINDOW * 2 {
            (*previous, *current, *started) = (transit, transit, at);
        } else if elapsed >= LAG_WINDOW {
            (*previous, *current, *started) = (*current, transit, at);
        }
        *current = (*current).min(transit);
        let base = (*current).min(*previous);
        sent.saturating_sub(commit)
            .max(0)
            .saturating_add(transit.saturating_sub(base))
    }
}

/// This clock's time in µs since 2000-01-01, as the server's replication messages count it.
fn now_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    since_unix.saturating_sub(PG_EPOCH_MICROS)
}

/// Waits `delay` (doubling it for next time) unless shutdown comes first; false on shutdown.
async fn pause<F: Future>(delay: &mut Duration, shutdown: Shutdown<'_, F>) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(RETRY_MAX);
    tokio::select! {
        biased;
        _ = shutdown => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The replication client's settings for the database at `url`.
fn replication_config(
    url: &str,
    slot: &str,
    publication: &str,
    ack_lsn: u64,
    options: &crate::Options,
) -> Result<ReplicationConfig, Error> {
    let connect = pgevents_postgres::ConnectOptions::parse(url)?;
    let config = &connect.config;
    let user = config.get_user().ok_or_else(|| {
        Error::Invalid(
            "the database URL names no user: add one, as in postgres://user@host/db".into(),
        )
    })?;
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let replication = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            ReplicationConfig::new(host.as_str(), user, password, database, slot, publication)
                .with_port(port)
                .with_tls(replication_tls(&connect.tls))
        }
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.display().to_string(),
            port,
            user,
            password,
            database,
            slot,
            publication,
        ),
        None => {
            return Err(Error::Invalid(
                "the database URL names no host: add one, as in postgres://user@host/db".into(),
            ))
        }
    };
    Ok(replication
        .with_start_lsn(Lsn::ZERO)
        .with_ack_lsn(Lsn(ack_lsn))
        .with_status_interval(options.status_interval)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_buffer_size(STREAM_BUFFER)
        .with_options(WALSENDER_OPTIONS)
        .with_application_name(
            config
                .get_application_name()
                .unwrap_or(pgevents_postgres::APPLICATION_NAME),
        ))
}

/// The replication connection's TLS: the same `sslmode`, roots and client certificate as
/// the log connections (with libpq's rule that trusted roots, when given, are checked in
/// every TLS mode). `sslrootcert=system` uses the Mozilla roots the replication client
/// ships with.
fn replication_tls(tls: &pgevents_postgres::TlsSettings) -> TlsConfig {
    use pgevents_postgres::SslMode as Mode;
    let mode = match tls.mode {
        Mode::Disable => SslMode::Disable,
        Mode::VerifyFull => SslMode::VerifyFull,
        _ if tls.verifies_chain() => SslMode::VerifyCa,
        Mode::Allow | Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa => SslMode::Require,
    };
    TlsConfig {
        mode,
        ca_pem_path: match &tls.root_certs {
            Some(pgevents_postgres::RootCerts::File(path)) => Some(path.clone()),
            _ => None,
        },
        client_cert_pem_path: tls.client_cert.clone(),
        client_key_pem_path: tls.client_key.clone(),
        ..TlsConfig::default()
    }
}

/// A watched table: who captures it, and what identifies its rows.
struct Watched {
    /// Each trigger on the table, with what its events take from the row.
    specs: Vec<(LogicalTable, Option<Arc<Projection>>)>,
}

/// The source transaction being decoded.
struct Txn {
    lsn: u64,
    commit_time: DateTime<Utc>,
    /// The number of the next change.
    next: i64,
    /// Changes numbered below this are already in the log (a replay).
    skip_below: i64,
}

/// A relation as last described by the stream, with its row shape.
struct Known {
    relation: Relation,
    shape: Arc<Shape>,
}

/// Turns decoded messages into rows of a batch.
struct Decoder {
    tables: HashMap<u32, Watched>,
    relations: HashMap<u32, Known>,
    txn: Option<Txn>,
    batch: Batch,
    /// Relations already warned about (incomplete old rows).
    warned: HashSet<u32>,
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Decoder {
    fn begin(&mut self, lsn: u64, commit_time_micros: i64) {
        let cursor = self.batch.cursor;
        let skip_below = if lsn < cursor.txn_lsn {
            WHOLE
        } else if lsn == cursor.txn_lsn {
            cursor.next_change
        } else {
            0
        };
        let commit_time =
            DateTime::from_timestamp_micros(commit_time_micros.saturating_add(PG_EPOCH_MICROS))
                .unwrap_or_else(Utc::now);
        self.txn = Some(Txn {
            lsn,
            commit_time,
            next: 0,
            skip_below,
        });
    }

    /// The commit time of the transaction being decoded, in µs since 2000-01-01 (as the
    /// server's replication messages count it).
    fn commit_micros(&self) -> Option<i64> {
        let txn = self.txn.as_ref()?;
        Some(
            txn.commit_time
                .timestamp_micros()
                .saturating_sub(PG_EPOCH_MICROS),
        )
    }

    fn commit(&mut self, end_lsn: u64) -> Result<(), Error> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| Error::Decode("a commit without a transaction".into()))?;
        self.batch.cursor = self.batch.cursor.max(Cursor {
            txn_lsn: txn.lsn,
            next_change: WHOLE,
        });
        self.batch.end_lsn = Some(end_lsn);
        Ok(())
    }

    async fn change(&mut self, message: Message, catalog: &Client) -> Result<(), Error> {
        let relation = match &message {
            Message::Relation(relation) => {
                // Keys and generated columns may have changed with the schema: read them again.
                let info = if self.tables.contains_key(&relation.oid) {
                    table_info(catalog, relation.oid).await?
                } else {
                    None
                };
                let key = info
                    .iter()
                    .flat_map(|i| &i.key_columns)
                    .map(|k| relation.columns.iter().position(|c| &c.name == k))
                    .collect::<Option<Vec<usize>>>()
                    .unwrap_or_default();
                let layout = info
                    .as_ref()
                    .and_then(|i| layout(&relation.columns, &i.columns, &i.generated));
                let shape = Arc::new(Shape {
                    columns: relation.columns.clone(),
                    key,
                    layout,
                });
                if relation.replica_identity != b'f' && self.tables.contains_key(&relation.oid) {
                    self.warn_once(relation.oid, &relation.name);
                }
                self.relations.insert(
                    relation.oid,
                    Known {
                        relation: relation.clone(),
                        shape,
                    },
                );
                return Ok(());
            }
            Message::Other => return Ok(()),
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => Some(*relation),
            Message::Truncate { .. } => None,
        };
        let txn = self
            .txn
            .as_mut()
            .ok_or_else(|| Error::Decode("a change outside a transaction".into()))?;
        let index = txn.next;
        txn.next += 1;
        self.batch.cursor = self.batch.cursor.max(Cursor {
            txn_lsn: txn.lsn,
            next_change: index + 1,
        });
        if index < txn.skip_below {
            return Ok(());
        }
        let at = (txn.lsn, index);
        let created_at = txn.commit_time;
        if let Message::Truncate { relations } = message {
            for oid in relations {
                for (spec, _) in self.tables.get(&oid).map_or(&[][..], |w| &w.specs[..]) {
                    if spec.trigger.operations.contains(&Action::Truncate) {
                        self.batch.push(Row {
                            at,
                            trigger_id: spec.trigger_id,
                            op: Action::Truncate.code(),
                            ordering: ordering_code(&pgevents_trigger::Ordering::None),
                            shape: None,
                            projection: None,
                            old: None,
                            new: None,
                            created_at,
                        });
                    }
                }
            }
            return Ok(());
        }
        let Some(oid) = relation else { return Ok(()) };
        if !self.tables.contains_key(&oid) {
            return Ok(()); // published, but not watched by this configuration
        }
        let known = self.relations.get(&oid).ok_or_else(|| {
            Error::Decode(format!("a change of relation {oid} before its description"))
        })?;
        let shape = known.shape.clone();
        let width = known.relation.columns.len();
        let (action, old, new) = match message {
            Message::Insert { new, .. } => (Action::Insert, None, Some(new)),
            Message::Update { old, new, .. } => (Action::Update, old, Some(new)),
            Message::Delete { old, .. } => (Action::Delete, Some(old), None),
            _ => return Ok(()),
        };
        let mut incomplete =
            matches!(&old, Some((OldKind::Key, _))) || (action == Action::Update && old.is_none());
        let old: Option<Vec<Option<String>>> = old.map(|(_, values)| {
            values
                .into_iter()
                .map(|v| match v {
                    Value::Text(s) => Some(s),
                    _ => None,
                })
                .collect()
        });
        let new: Option<Vec<Option<String>>> = match new {
            None => None,
            Some(values) => {
                let mut out = Vec::with_capacity(values.len());
                for (i, v) in values.into_iter().enumerate() {
                    out.push(match v {
                        Value::Text(s) => Some(s),
                        Value::Null => None,
                        // An untouched TOASTed value: the whole old row has it.
                        Value::Unchanged => match old.as_ref().and_then(|o| o.get(i)) {
                            Some(Some(s)) => Some(s.clone()),
                            _ => {
                                incomplete = true;
                                None
                            }
                        },
                    });
                }
                Some(out)
            }
        };
        if old.as_ref().is_some_and(|o| o.len() != width)
            || new.as_ref().is_some_and(|n| n.len() != width)
        {
            return Err(Error::Decode(format!(
                "a row of relation {oid} does not have the {width} columns of its description"
            )));
        }
        if incomplete {
            let name = known.relation.name.clone();
            self.warn_once(oid, &name);
        }
        let Some(watched) = self.tables.get(&oid) else {
            return Ok(());
        };
        for (spec, projection) in &watched.specs {
            if !spec.trigger.operations.contains(&action) {
                continue;
            }
            if action == Action::Update {
                if let (Some(columns), Some(old), Some(new)) = (&spec.trigger.columns, &old, &new) {
                    let changed = shape
                        .columns
                        .iter()
                        .enumerate()
                        .any(|(i, c)| columns.contains(&c.name) && old.get(i) != new.get(i));
                    if !changed {
                        continue;
                    }
                }
            }
            self.batch.push(Row {
                at,
                trigger_id: spec.trigger_id,
                op: action.code(),
                ordering: ordering_code(&spec.trigger.ordering),
                shape: Some(shape.clone()),
                projection: projection.clone(),
                old: old.clone(),
                new: new.clone(),
                created_at,
            });
        }
        Ok(())
    }

    fn warn_once(&mut self, oid: u32, name: &str) {
        if self.warned.insert(oid) {
            tracing::warn!(
                table = name,
                "REPLICA IDENTITY of a watched table is not FULL: old rows (and unchanged TOASTed values) are incomplete in its events; run `pgevents install` again to set it"
            );
        }
    }
}

/// The catalog's description of the table with OID `oid`, `None` when it is gone.
async fn table_info(client: &Client, oid: u32) -> Result<Option<TableInfo>, Error> {
    let name = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| Error::query("looking up a watched table", e))?;
    let Some(name) = name else {
        return Ok(None);
    };
    let table = pgevents_postgres::QualifiedName {
        schema: name.get(0),
        name: name.get(1),
    };
    Ok(pgevents_postgres::catalog::describe_table(client, &table).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_the_servers_backlog_and_the_wait_on_the_way_not_the_clocks_offset() {
        let mut lag = Lag::default();
        let t0 = Instant::now();
        // This clock runs 7 s ahead of the server's; the network takes 1 ms.
        let offset = 7_000_000 + 1_000;
        // Sent as committed, nothing queued.
        assert_eq!(lag.behind(100, 100, 100 + offset, t0), 0);
        // The walsender decoding a backlog: sent 3 s after the commit.
        assert_eq!(
            lag.behind(100, 3_000_100, 3_000_100 + offset, t0),
            3_000_000
        );
        // Queued 250 ms on the way: behind by that much, though sent at once.
        let queued = lag.behind(5_000, 5_000, 5_000 + offset + 250_000, t0);
        assert_eq!(queued, 250_000);
        assert!(queued > NAP_MAX_LAG_MICROS);
        // A server clock that stepped back is no backlog.
        assert_eq!(lag.behind(9_000, 8_000, 8_000 + offset, t0), 0);
    }

    #[test]
    fn lag_forgets_a_transit_time_older_than_two_windows() {
        let mut lag = Lag::default();
        let t0 = Instant::now();
        assert_eq!(lag.behind(0, 0, 1_000, t0), 0);
        // This clock drifted 2 ms ahead: within a window, that counts as a wait.
        assert_eq!(lag.behind(0, 0, 3_000, t0 + LAG_WINDOW / 2), 2_000);
        // The next window still remembers the first one's transit.
        assert_eq!(lag.behind(0, 0, 3_000, t0 + LAG_WINDOW), 2_000);
        // Two windows on, the drift is the new offset.
        assert_eq!(lag.behind(0, 0, 3_000, t0 + LAG_WINDOW * 2), 0);
        // After an idle stream, the first change sets the offset afresh: a clock that
        // stepped 1 s meanwhile is no lag.
        assert_eq!(lag.behind(0, 0, 1_003_000, t0 + LAG_WINDOW * 5), 0);
    }
}
