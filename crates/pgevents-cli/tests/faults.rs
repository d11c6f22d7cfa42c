//! The fault suite: the real `pgevents run` against a real PostgreSQL the test controls,
//! with faults injected mid-stream. The writers insert rows and update them (each UPDATE
//! raises the row's version). For each fault: every committed event is delivered at least
//! once, an event is delivered twice only when it was in flight at the fault, no row's events
//! are delivered out of commit order, and the daemon never exits — it logs, backs off and
//! recovers. RELIABILITY.md describes each case.
//!
//! Each test has its own time limit; the suite fits in about three minutes on two cores.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{
    assert_delivered_in_order, assert_duplicates_only_across, config, counts, events, hook, http,
    insert_ids, run, status, text, wait_until, within, write_config, Daemon, Db, Proxy, Receiver,
    Reply, Writer, PATIENT, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_during_bursts() {
    within(Duration::from_secs(150), async {
        let db = Db::fresh("faults_kill").await;
        db.versioned_tables(&["burst"]).await;
        let receiver = Receiver::start().await;
        receiver.answer(|_, _, _| Reply::Slow(200, Duration::from_millis(2)));
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(
            &dir,
            &config(&db.url, &hook("burst", receiver.addr, PATIENT)),
        );
        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        let mut kills = Vec::new();
        for round in 0..5i64 {
            // A burst of 1000 new rows in one transaction, then an UPDATE of the last burst's
            // second half and this one's first half, and the daemon killed mid-delivery.
            let from = round * 1000 + 1;
            insert_ids(&db.client, "burst", from..=from + 999).await;
            db.client
                .batch_execute(&format!(
                    "UPDATE burst SET v = v + 1 WHERE id BETWEEN {} AND {}",
                    from - 500,
                    from + 499
                ))
                .await
                .expect("burst updates");
            let before = receiver.hits("burst").len();
            wait_until(
                WAIT,
                format!("deliveries under way in round {round}"),
                || {
                    let n = receiver.hits("burst").len();
                    async move { n >= before + 150 }
                },
            )
            .await;
            daemon.assert_running("before the kill");
            daemon.kill().await;
            kills.push(Instant::now());
            daemon = Daemon::start(&cfg, &[]);
            daemon.wait_log("pgevents running").await;
        }
        let committed = db.ids("burst").await;
        assert_eq!(committed.len(), 5000);
        receiver.wait_rows("burst", &committed, WAIT).await;
        let windows: Vec<_> = kills.iter().map(|k| (*k, *k)).collect();
        assert_delivered_in_order(&db, &receiver, "burst", &windows).await;
        let duplicated = assert_duplicates_only_across(&receiver, "burst", &windows);
        assert!(
            duplicated <= 5 * 1000,
            "at most the events in flight at the five kills come twice: {duplicated}"
        );
        eprintln!("sigkill x5: 5000 rows delivered, {duplicated} events delivered twice");
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_immediately_mid_stream() {
    within(Duration::from_secs(150), async {
        let mut db = Db::dedicated().await;
        db.versioned_tables(&["stream"]).await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(
            &dir,
            &config(&db.url, &hook("stream", receiver.addr, PATIENT)),
        );
        // Started while the server is down: it waits and retries instead of exiting.
        let cluster = db.cluster.take().expect("dedicated cluster");
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.stop_server("fast").expect("stop");
            cluster
        })
        .await
        .expect("spawn");
        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("cannot install yet; retrying").await;
        daemon.assert_running("while the server is down at start");
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.start_server().expect("start");
            cluster
        })
        .await
        .expect("spawn");
        db.reconnect().await;
        daemon.wait_log("pgevents running").await;

        let writer = Writer::versioned(&db.url, "stream", 1, 5, Duration::from_millis(20));
        wait_until(WAIT, "deliveries under way", || {
            let n = receiver.hits("stream").len();
            async move { n >= 500 }
        })
        .await;
        // `pg_ctl restart -m immediate`: every backend dies without a checkpoint; crash
        // recovery replays the WAL. The server is back within a second or so.
        let start = Instant::now();
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.restart_server("immediate").expect("restart");
            cluster
        })
        .await
        .expect("spawn");
        let end = Instant::now();
        let delivered_at_restart = receiver.hits("stream").len();
        db.reconnect().await;
        let resumed = writer.next_id();
        wait_until(WAIT, "deliveries resumed after the restart", || {
            let rows = receiver.delivered_rows("stream");
            async move { rows.iter().filter(|r| **r > resumed).count() > 200 }
        })
        .await;
        daemon.assert_running("after the restart");
        // Then a longer outage, so the daemon surely runs into it: an immediate stop, 5 s
        // without a server, and a start.
        let down = Instant::now();
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.stop_server("immediate").expect("stop");
            cluster
        })
        .await
        .expect("spawn");
        tokio::time::sleep(Duration::from_secs(5)).await;
        daemon.assert_running("while the server is down");
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.start_server().expect("start");
            cluster
        })
        .await
        .expect("spawn");
        let up = Instant::now();
        db.reconnect().await;
        let resumed = writer.next_id();
        wait_until(WAIT, "deliveries resumed after the outage", || {
            let rows = receiver.delivered_rows("stream");
            async move { rows.iter().filter(|r| **r > resumed).count() > 200 }
        })
        .await;
        writer.stop().await;
        let committed = db.ids("stream").await;
        receiver.wait_rows("stream", &committed, WAIT).await;
        daemon.assert_running("after the outage");
        assert!(
            daemon.log().contains("event log unavailable; retrying"),
            "the outage was logged:\n{}",
            daemon.tail(30)
        );
        let windows = [(start, end), (down, up)];
        assert_delivered_in_order(&db, &receiver, "stream", &windows).await;
        let duplicated = assert_duplicates_only_across(&receiver, "stream", &windows);
        eprintln!(
            "pg restart: {} rows delivered ({delivered_at_restart} before the restart), restart took {:.1}s, outage {:.1}s, {duplicated} events delivered twice",
            committed.len(),
            (end - start).as_secs_f64(),
            (up - down).as_secs_f64()
        );
        daemon.stop().await;
        drop(cluster);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_to_postgres_cut_and_restored() {
    within(Duration::from_secs(150), async {
        let db = Db::fresh("faults_net").await;
        db.versioned_tables(&["net"]).await;
        let proxy = Proxy::start(([127, 0, 0, 1], db.port()).into()).await;
        let via_proxy = db.url_as("postgres", None, proxy.addr.port());
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(
            &dir,
            &config(&via_proxy, &hook("net", receiver.addr, PATIENT)),
        );
        let mut daemon = Daemon::start(&cfg, &[]);
        let admin = daemon.admin_addr().await;
        daemon.wait_log("pgevents running").await;
        // The writer reaches the database directly: only the daemon's network is cut.
        let writer = Writer::versioned(&db.url, "net", 1, 5, Duration::from_millis(20));
        wait_until(WAIT, "deliveries under way", || {
            let n = receiver.hits("net").len();
            async move { n >= 300 }
        })
        .await;
        let start = Instant::now();
        proxy.cut();
        // The health check notices; the daemon keeps running.
        wait_until(
            Duration::from_secs(30),
            "/healthz to answer 503 during the cut",
            || async { http(admin, "GET", "/healthz", None, None).await.status == 503 },
        )
        .await;
        // Long enough for a connection attempt into the void to hit the connect timeout.
        tokio::time::sleep(Duration::from_secs(15)).await;
        daemon.assert_running("during the cut");
        proxy.restore();
        let end = Instant::now();
        wait_until(WAIT, "/healthz to answer 200 after the restore", || async {
            http(admin, "GET", "/healthz", None, None).await.status == 200
        })
        .await;
        let resumed = writer.next_id();
        wait_until(WAIT, "new rows delivered after the restore", || {
            let rows = receiver.delivered_rows("net");
            async move { rows.iter().any(|r| *r > resumed) }
        })
        .await;
        writer.stop().await;
        let committed = db.ids("net").await;
        receiver.wait_rows("net", &committed, WAIT).await;
        daemon.assert_running("after the restore");
        let log = daemon.log();
        assert!(
            log.contains("event log unavailable; retrying"),
            "the cut was logged:\n{}",
            daemon.tail(30)
        );
        assert!(
            log.contains("no connection within 10s"),
            "a connection swallowed by the network gave up after the connect timeout:\n{}",
            daemon.tail(30)
        );
        assert_delivered_in_order(&db, &receiver, "net", &[(start, end)]).await;
        let duplicated = assert_duplicates_only_across(&receiver, "net", &[(start, end)]);
        eprintln!(
            "network cut: {} rows delivered, cut {:.1}s, {duplicated} events delivered twice",
            committed.len(),
            (end - start).as_secs_f64()
        );
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_for_a_minute() {
    within(Duration::from_secs(180), async {
        let db = Db::fresh("faults_hook").await;
        db.versioned_tables(&["hooked"]).await;
        let receiver = Receiver::start().await;
        let proxy = Proxy::start(receiver.addr).await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(&dir, &config(&db.url, &hook("hooked", proxy.addr, PATIENT)));
        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        let writer = Writer::versioned(&db.url, "hooked", 1, 2, Duration::from_millis(50));
        wait_until(WAIT, "deliveries under way", || {
            let n = receiver.hits("hooked").len();
            async move { n >= 100 }
        })
        .await;
        // The webhook goes away for a whole minute: connections refused.
        let start = Instant::now();
        proxy.refuse();
        let down = Duration::from_secs(60);
        while start.elapsed() < down {
            tokio::time::sleep(Duration::from_secs(1)).await;
            daemon.assert_running("while the webhook is down");
        }
        // Meanwhile every event waits, pending: none has run out of retries.
        let status = status(&cfg).await;
        let failed = counts(&status, "hooked").map(|(_, _, failed)| failed);
        assert_eq!(failed, Some(0), "no event failed: {status}");
        proxy.restore();
        let end = Instant::now();
        let resumed = writer.next_id();
        wait_until(WAIT, "new rows delivered after the webhook is back", || {
            let rows = receiver.delivered_rows("hooked");
            async move { rows.iter().any(|r| *r > resumed) }
        })
        .await;
        writer.stop().await;
        let committed = db.ids("hooked").await;
        receiver.wait_rows("hooked", &committed, WAIT).await;
        daemon.assert_running("after the webhook is back");
        assert_delivered_in_order(&db, &receiver, "hooked", &[(start, end)]).await;
        let duplicated = assert_duplicates_only_across(&receiver, "hooked", &[(start, end)]);
        // The failed attempts are in the log, with the connection error.
        let attempts = db
            .count("SELECT count(*) FROM pgevents.attempt WHERE error LIKE '%connect%'")
            .await;
        assert!(attempts > 0, "failed attempts are logged");
        eprintln!(
            "webhook down {:.0}s: {} rows delivered, {attempts} failed attempts logged, {duplicated} events delivered twice",
            (end - start).as_secs_f64(),
            committed.len()
        );
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_table_unwritable_for_a_while() {
    within(Duration::from_secs(150), async {
        let db = Db::fresh("faults_acl").await;
        db.versioned_tables(&["acl"]).await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        // Installed by the owner; run by a role holding only the documented grants.
        let owner_cfg = write_config(&dir, &config(&db.url, &hook("acl", receiver.addr, PATIENT)));
        let out = run(&["install", "--config", &owner_cfg.display().to_string()], &[]).await;
        assert!(out.status.success(), "install: {}", text(&out).1);
        let role = format!("pgevents_acl_{}", std::process::id());
        db.runner_role(&role, "runner-pw", "pgevents").await;
        let runner_dir = tempfile::tempdir().expect("dir");
        let runner_url = db.url_as(&role, Some("runner-pw"), db.port());
        let cfg = write_config(
            &runner_dir,
            &config(&runner_url, &hook("acl", receiver.addr, PATIENT)),
        );
        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        let writer = Writer::versioned(&db.url, "acl", 1, 5, Duration::from_millis(30));
        wait_until(WAIT, "deliveries under way", || {
            let n = receiver.hits("acl").len();
            async move { n >= 200 }
        })
        .await;

        // 1. The log becomes unwritable for the daemon's role for 10 s.
        let revoked = Instant::now();
        db.client
            .batch_execute(&format!(
                "REVOKE INSERT, UPDATE ON pgevents.event FROM {role}"
            ))
            .await
            .expect("revoke");
        daemon
            .wait_log("permission denied for table event")
            .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        daemon.assert_running("while the log is unwritable");
        db.client
            .batch_execute(&format!("GRANT INSERT, UPDATE ON pgevents.event TO {role}"))
            .await
            .expect("grant");
        let granted = Instant::now();

        // 2. Then locked for 5 s by another transaction.
        let resumed = writer.next_id();
        wait_until(WAIT, "deliveries after the grant", || {
            let rows = receiver.delivered_rows("acl");
            async move { rows.iter().any(|r| *r > resumed) }
        })
        .await;
        let mut locker = crate::support::connect(&db.url).await;
        let locked = Instant::now();
        let tx = locker.transaction().await.expect("begin");
        tx.batch_execute("LOCK TABLE pgevents.event IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        tokio::time::sleep(Duration::from_secs(5)).await;
        daemon.assert_running("while the log is locked");
        tx.commit().await.expect("unlock");
        let unlocked = Instant::now();

        let resumed = writer.next_id();
        wait_until(WAIT, "deliveries after the lock", || {
            let rows = receiver.delivered_rows("acl");
            async move { rows.iter().any(|r| *r > resumed) }
        })
        .await;
        writer.stop().await;
        let committed = db.ids("acl").await;
        receiver.wait_rows("acl", &committed, WAIT).await;
        daemon.assert_running("after the faults");
        let windows = [(revoked, granted), (locked, unlocked)];
        assert_delivered_in_order(&db, &receiver, "acl", &windows).await;
        let duplicated = assert_duplicates_only_across(&receiver, "acl", &windows);
        eprintln!(
            "log unwritable 10s + locked 5s: {} rows delivered, {duplicated} events delivered twice",
            committed.len()
        );
        daemon.stop().await;
        db.client
            .batch_execute(&format!(
                "DROP OWNED BY {role}; DROP ROLE {role};"
            ))
            .await
            .expect("drop role");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_hanging_past_its_timeout() {
    within(Duration::from_secs(120), async {
        let db = Db::fresh("faults_hang").await;
        db.versioned_tables(&["hang"]).await;
        let receiver = Receiver::start().await;
        // The first attempt of every tenth row's INSERT never gets an answer.
        receiver.answer(|_, body, seen| {
            let row = body["data"]["new"]["id"].as_i64().unwrap_or(0);
            if row % 10 == 0 && seen == 0 && body["action"] == "INSERT" {
                Reply::Hang
            } else {
                Reply::Status(200)
            }
        });
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(
            &dir,
            &config(
                &db.url,
                &hook(
                    "hang",
                    receiver.addr,
                    "max_retries = 5, initial_interval = \"200ms\", max_interval = \"2s\", timeout = \"1s\"",
                ),
            ),
        );
        let cfg_s = cfg.display().to_string();
        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        let started = Instant::now();
        db.client
            .batch_execute("INSERT INTO hang SELECT generate_series(1, 500)")
            .await
            .expect("rows");
        // The UPDATEs of every fifth row (the hung ones among them) wait for their INSERTs.
        db.client
            .batch_execute("UPDATE hang SET v = v + 1 WHERE id % 5 = 0")
            .await
            .expect("updates");
        let committed = db.ids("hang").await;
        // The others are not held up by the hanging ones.
        let quick: HashSet<i64> = committed.iter().copied().filter(|r| r % 10 != 0).collect();
        receiver.wait_rows("hang", &quick, WAIT).await;
        receiver.wait_rows("hang", &committed, WAIT).await;
        let took = started.elapsed();
        daemon.assert_running("after the timeouts");
        let hits = receiver.hits("hang");
        for row in (10..=500).step_by(10) {
            let attempts: Vec<_> = hits.iter().filter(|h| h.row == Some(row)).collect();
            assert!(
                attempts.len() >= 2 && attempts[0].answered.is_none(),
                "row {row}: hung once, then retried"
            );
        }
        assert_delivered_in_order(&db, &receiver, "hang", &[]).await;
        // Nothing was delivered twice: a timed-out attempt is a failed one, not a delivery.
        let duplicated = assert_duplicates_only_across(&receiver, "hang", &[]);
        assert_eq!(duplicated, 0);
        // The attempt log says why.
        let list = events(&cfg, &["--limit", "2000"]).await;
        let retried: Vec<&serde_json::Value> = list
            .iter()
            .filter(|e| e["attempts"].as_i64() == Some(2))
            .collect();
        assert_eq!(retried.len(), 50, "every hung event took two attempts");
        let id = retried[0]["id"].as_str().unwrap_or_default();
        let out = run(&["events", "show", id, "--config", &cfg_s], &[]).await;
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let error = shown["attempts_log"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("timed out"), "{shown}");
        eprintln!(
            "hanging handler: 500 rows delivered in {:.1}s, 50 timed out once and were retried",
            took.as_secs_f64()
        );
        daemon.stop().await;
    })
    .await;
}
