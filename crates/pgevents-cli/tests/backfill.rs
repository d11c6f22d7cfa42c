//! `pgevents backfill` through the real binary: `--where` selects exactly the matching rows in
//! primary-key order, bad input exits 2 and starts nothing, `--status` and `--cancel`, and a
//! backfill whose writers are killed (the command, then a daemon) continues where it was:
//! every row is read once, none twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{
    config, hook, run, text, wait_until, within, write_config, Daemon, Db, Receiver, PATIENT, WAIT,
};

/// The rows a backfill has read so far.
async fn rows_done(db: &Db) -> i64 {
    db.count("SELECT coalesce(max(rows_done), 0) FROM pgevents.backfill")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_selects_exactly_the_matching_rows_and_bad_input_exits_2() {
    within(Duration::from_secs(120), async {
        let db = Db::fresh("backfill_where").await;
        db.client
            .batch_execute(
                "CREATE TABLE orders (id int PRIMARY KEY, status text);
                 INSERT INTO orders SELECT g, CASE g % 3 WHEN 0 THEN 'paid' ELSE 'new' END
                   FROM generate_series(1, 12000) g;
                 CREATE TABLE loose (n int, status text);",
            )
            .await
            .expect("tables");
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(
            &dir,
            &config(
                &db.url,
                "[[trigger]]\nname = \"orders\"\ntable = \"orders\"\nstdout = {}\n\n\
                 [[trigger]]\nname = \"loose\"\ntable = \"loose\"\nordering = \"none\"\nstdout = {}\n",
            ),
        );
        let cfg_s = cfg.display().to_string();
        let out = run(&["install", "--config", &cfg_s], &[]).await;
        assert!(out.status.success(), "install: {}", text(&out).1);

        for (args, needles) in [
            (vec!["nope"], vec!["no trigger named \"nope\"", "orders"]),
            (
                vec!["orders", "--where", "colour = 'red'"],
                vec!["colour", "cannot select its rows"],
            ),
            (vec!["orders", "--where", "status ="], vec!["syntax error"]),
            (vec!["loose"], vec!["public.loose", "no primary key"]),
        ] {
            let mut all = vec!["backfill", "--config", &cfg_s];
            all.extend(args.iter().copied());
            let out = run(&all, &[]).await;
            let (_, err) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} exits 2: {err}");
            for needle in needles {
                assert!(err.contains(needle), "{args:?} says {needle:?}: {err}");
            }
        }
        assert_eq!(
            db.count("SELECT count(*) FROM pgevents.backfill").await,
            0,
            "bad input starts nothing"
        );

        let out = run(
            &["backfill", "--config", &cfg_s, "orders", "--where", "status = 'paid'"],
            &[],
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "backfill: {stderr}");
        assert!(stdout.contains("done: 4000 rows"), "{stdout}");
        assert!(
            stderr.contains("rows/s"),
            "a progress line when not on a terminal: {stderr}"
        );
        let read: Vec<i32> = db
            .client
            .query(
                "SELECT (new_row->>'id')::int FROM pgevents.event WHERE op = 'R' ORDER BY seq",
                &[],
            )
            .await
            .expect("READ events")
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let paid: Vec<i32> = (1..=12000).filter(|id| id % 3 == 0).collect();
        assert_eq!(read, paid, "exactly the matching rows, in primary-key order");

        let out = run(&["backfill", "--config", &cfg_s, "--status"], &[]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "--status: {stderr}");
        let line = stdout
            .lines()
            .find(|l| l.contains("orders"))
            .unwrap_or_default();
        for needle in ["done", "4000", "status = 'paid'"] {
            assert!(line.contains(needle), "--status shows {needle:?}: {stdout}");
        }
        let out = run(&["backfill", "--config", &cfg_s, "--cancel", "1"], &[]).await;
        assert_eq!(out.status.code(), Some(2), "nothing to cancel: {}", text(&out).1);
        assert!(text(&out).1.contains("no running backfill 1"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_continues_where_it_was() {
    within(Duration::from_secs(180), async {
        const ROWS: i64 = 20_000;
        let db = Db::fresh("backfill_kill").await;
        db.client
            .batch_execute(&format!(
                "CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
                 INSERT INTO items SELECT generate_series(1, {ROWS})"
            ))
            .await
            .expect("table");
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(&dir, &config(&db.url, &hook("items", receiver.addr, PATIENT)));
        let cfg_s = cfg.display().to_string();
        let out = run(&["install", "--config", &cfg_s], &[]).await;
        assert!(out.status.success(), "install: {}", text(&out).1);
        // Two writers hold rows 6,000 and 14,000: a backfill stops just before each, giving way
        // to the writer, until it commits. That is where the processes writing it are killed.
        let first = crate::support::connect(&db.url).await;
        let second = crate::support::connect(&db.url).await;
        first
            .batch_execute("BEGIN; UPDATE items SET v = 1 WHERE id = 6000")
            .await
            .expect("first writer");
        second
            .batch_execute("BEGIN; UPDATE items SET v = 1 WHERE id = 14000")
            .await
            .expect("second writer");

        let mut command = crate::support::pgevents(&["backfill", "--config", &cfg_s, "items"], &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgevents backfill");
        wait_until(WAIT, "the backfill up to the first held row", || async {
            rows_done(&db).await >= 5000
        })
        .await;
        command.kill().expect("kill pgevents backfill");
        let _ = command.wait();
        let at_kill = rows_done(&db).await;
        assert!(at_kill < 6000, "stopped before the held row: {at_kill}");

        let mut daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        first.batch_execute("COMMIT").await.expect("first commit");
        wait_until(WAIT, "the daemon continuing up to the second held row", || async {
            rows_done(&db).await >= 13_000
        })
        .await;
        daemon.kill().await;
        let at_second_kill = rows_done(&db).await;
        assert!(at_second_kill < 14_000, "stopped before the held row: {at_second_kill}");

        let daemon = Daemon::start(&cfg, &[]);
        daemon.wait_log("pgevents running").await;
        second.batch_execute("COMMIT").await.expect("second commit");
        wait_until(WAIT, "the backfill done", || async {
            db.count("SELECT count(*) FROM pgevents.backfill WHERE state = 'done'")
                .await
                == 1
        })
        .await;
        assert_eq!(rows_done(&db).await, ROWS, "every row read once");
        assert_eq!(
            db.count(
                "SELECT count(DISTINCT new_row->>'id') * 1000000 + count(*) FROM pgevents.event WHERE op = 'R'"
            )
            .await,
            ROWS * 1_000_000 + ROWS,
            "one READ event per row: no chunk written twice"
        );
        wait_until(WAIT, "every row delivered", || {
            let n = receiver.delivered_rows("items").len() as i64;
            async move { n == ROWS }
        })
        .await;
        // Deliveries of READ events: each row's once, but for those in flight when the
        // daemon was killed.
        let mut reads: HashMap<i64, usize> = HashMap::new();
        for hit in receiver.deliveries("items") {
            if hit.body["action"] == "READ" {
                *reads.entry(hit.row.unwrap_or_default()).or_default() += 1;
            }
        }
        let twice = reads.values().filter(|n| **n > 1).count();
        assert!(
            twice <= 1000,
            "READ events delivered twice only when in flight at the kill: {twice}"
        );
        assert_eq!(reads.len() as i64, ROWS, "every row's READ delivered");
        daemon.stop().await;
    })
    .await;
}
