//! Retention (PRODUCT.md §4): delivered and failed events, with their attempt logs, are
//! removed once older than `[retention]` allows — in small batches, while traffic flows —
//! so the log stays bounded; pending events are never removed, however old.

use std::time::{Duration, Instant};

use crate::support::{config, wait_until, write_config, Daemon, Receiver, Reply, Writer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_steady_traffic() {
    // A cluster of its own whose autovacuum looks every second, as a busy production
    // server's would within its naptime: the space retention frees is reused.
    let mut options = pgevents_tempdb::Options::default();
    options
        .settings
        .push(("autovacuum_naptime".into(), "1".into()));
    let cluster =
        tokio::task::spawn_blocking(move || pgevents_tempdb::TempCluster::start(&options))
            .await
            .expect("spawn")
            .expect("cluster");
    let url = cluster.url("postgres");
    let client = crate::support::connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE steady (id int8 PRIMARY KEY);
             CREATE TABLE refused (id int8 PRIMARY KEY);
             CREATE TABLE stuck (id int8 PRIMARY KEY);",
        )
        .await
        .expect("tables");
    let receiver = Receiver::start().await;
    // `refused` answers 400 (failed after one attempt, which is logged); `stuck` answers
    // 503 until the end of the test (its events stay pending, retrying).
    receiver.answer(|name, _, _| match name {
        "refused" => Reply::Status(400),
        "stuck" => Reply::Status(503),
        _ => Reply::Status(200),
    });
    let addr = receiver.addr;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = write_config(
        &dir,
        &config(
            &url,
            &format!(
                r#"[retention]
delivered = "1s"
failed = "2s"

[[trigger]]
name = "steady"
table = "steady"
webhook = {{ url = "http://{addr}/steady" }}

[[trigger]]
name = "refused"
table = "refused"
webhook = {{ url = "http://{addr}/refused" }}

[[trigger]]
name = "stuck"
table = "stuck"
retry = {{ max_retries = 1000, initial_interval = "100ms", max_interval = "500ms", timeout = "5s" }}
webhook = {{ url = "http://{addr}/stuck" }}
"#
            ),
        ),
    );
    let daemon = Daemon::start(&cfg, &[]);
    daemon.wait_log("pgevents running").await;
    client
        .batch_execute("INSERT INTO stuck SELECT generate_series(1, 10)")
        .await
        .expect("stuck rows");
    // About 500 events a second, and 25 failing ones.
    let steady = Writer::start(&url, "steady", 1, 10, Duration::from_millis(20));
    let refused = Writer::start(&url, "refused", 1, 1, Duration::from_millis(40));
    let started = Instant::now();
    let run_for = Duration::from_secs(30);
    let count = |sql: &'static str| {
        let c = &client;
        async move { c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    let mut samples = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push((
            started.elapsed(),
            count("SELECT count(*) FROM pgevents.event").await,
            // Attempts of finished events (those of the pending `stuck` ones are kept).
            count(
                "SELECT count(*) FROM pgevents.attempt a
                   JOIN pgevents.event e ON e.seq = a.event_seq WHERE e.status <> 'p'",
            )
            .await,
            count(
                "SELECT (pg_total_relation_size('pgevents.event')
                       + pg_total_relation_size('pgevents.attempt'))::int8",
            )
            .await,
        ));
    }
    let written = steady.next_id() + refused.next_id();
    steady.stop().await;
    refused.stop().await;
    let after_warmup: Vec<_> = samples
        .iter()
        .filter(|(at, ..)| *at > Duration::from_secs(5))
        .collect();
    let max_events = after_warmup.iter().map(|s| s.1).max().unwrap_or(0);
    let max_attempts = after_warmup.iter().map(|s| s.2).max().unwrap_or(0);
    // ~500 events/s kept at most 1 s after delivery (2 s when failed), looked at every
    // 0.5 s: about 1,500 rows; 4,000 leaves room for a slow machine. Without retention the
    // log would hold every one of the ~15,000 written.
    assert!(
        max_events < 4000,
        "the event log stays bounded: at most {max_events} rows of {written} written; {samples:?}"
    );
    assert!(
        max_attempts < 500,
        "the attempt log of finished events stays bounded: {max_attempts}"
    );
    // The space is reused: the log's size levels off instead of growing with the traffic.
    let third = after_warmup.len() / 3;
    let size_early = after_warmup[..third].iter().map(|s| s.3).max().unwrap_or(0);
    let size_late = after_warmup[2 * third..]
        .iter()
        .map(|s| s.3)
        .max()
        .unwrap_or(0);
    assert!(
        size_late <= size_early * 2,
        "the log's size levels off: {size_early} bytes early, {size_late} bytes late"
    );
    // Delivered and failed events go entirely, with their attempts...
    wait_until(WAIT, "every finished event removed", || async {
        count("SELECT count(*) FROM pgevents.event WHERE status <> 'p'").await == 0
            && count("SELECT count(*) FROM pgevents.attempt a JOIN pgevents.event e ON e.seq = a.event_seq WHERE e.status <> 'p'").await == 0
    })
    .await;
    // ... but pending ones stay, however old: the ten `stuck` events, retrying for 30 s.
    assert_eq!(
        count("SELECT count(*) FROM pgevents.event WHERE status = 'p'").await,
        10,
        "pending events are never removed"
    );
    receiver.answer(|_, _, _| Reply::Status(200));
    let stuck = (1..=10).collect();
    receiver.wait_rows("stuck", &stuck, WAIT).await;
    let delivered = receiver.delivered_rows("steady").len();
    eprintln!(
        "retention: {written} events written in {:.0}s; at most {max_events} events and {max_attempts} attempts in the log; size {size_early} -> {size_late} bytes; {delivered} steady rows delivered",
        run_for.as_secs_f64()
    );
    daemon.stop().await;
    drop(cluster);
}
