//! The library refuses the mistakes the daemon's config refuses, with typed errors —
//! [`pgevents::Error::is_usage`] for the caller's input, a SQLSTATE for missing privileges —
//! and leaves nothing half-installed.

use std::time::Duration;

use pgevents::{Listener, Trigger};

async fn fresh() -> (String, tokio_postgres::Client) {
    let url = pgevents_tempdb::testing::fresh_database("pgevents_bad").expect("test database");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    (url, client)
}

fn ok(_: pgevents::Event) -> std::future::Ready<Result<(), std::convert::Infallible>> {
    std::future::ready(Ok(()))
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Nothing of pgevents in the database: no log schema, no trigger on any table.
async fn assert_nothing_installed(client: &tokio_postgres::Client) {
    assert_eq!(
        count(
            client,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgevents%'"
        )
        .await,
        0,
        "no log schema"
    );
    assert_eq!(
        count(
            client,
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
        )
        .await,
        0,
        "no trigger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_mistakes_are_usage_errors_and_change_nothing() {
    let (url, client) = fresh().await;
    client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("table");
    let cases: Vec<(&str, pgevents::ListenerBuilder, &str)> = vec![
        (
            "a missing table (after a good one)",
            Listener::builder(&url).on("orders", ok).on("nope", ok),
            "public.nope does not exist",
        ),
        (
            "a missing column",
            Listener::builder(&url).trigger(
                Trigger::for_table("orders", ok)
                    .expect("a table name")
                    .columns(["colour"]),
            ),
            "\"colour\"",
        ),
        (
            "a name with three parts",
            Listener::builder(&url).on("a.b.c", ok),
            "a.b.c",
        ),
        (
            "an unclosed quote",
            Listener::builder(&url).on("\"orders", ok),
            "quote",
        ),
        ("an empty name", Listener::builder(&url).on("", ok), ""),
        (
            "one table twice",
            Listener::builder(&url)
                .on("orders", ok)
                .on("public.orders", ok),
            "twice",
        ),
        (
            "a MANUAL operation",
            Listener::builder(&url).trigger(
                Trigger::for_table("orders", ok)
                    .expect("a table name")
                    .operations(vec![pgevents::Action::Manual]),
            ),
            "MANUAL",
        ),
        (
            "an empty log schema name",
            Listener::builder(&url).log_schema("").on("orders", ok),
            "log schema",
        ),
        (
            "an unknown sslmode",
            Listener::builder(url.replace("sslmode=disable", "sslmode=sometimes")).on("orders", ok),
            "sslmode",
        ),
    ];
    for (what, builder, needle) in cases {
        let err = builder.build().await.expect_err(what);
        assert!(err.is_usage(), "{what} is a usage error: {err}");
        assert!(!err.is_connection(), "{what} is not a connection error");
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert_nothing_installed(&client).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_privileges_gets_a_typed_error_and_nothing_is_installed() {
    let (url, client) = fresh().await;
    let role = format!("pgevents_bad_{}", std::process::id());
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY);
             DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
             GRANT CREATE ON DATABASE \"{db}\" TO {role};",
            db = url
                .rsplit('/')
                .next()
                .and_then(|s| s.split('?').next())
                .unwrap_or_default()
        ))
        .await
        .expect("role");
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    let err = Listener::builder(&as_role)
        .on("orders", ok)
        .build()
        .await
        .expect_err("no TRIGGER privilege on orders");
    assert_eq!(err.code(), Some("42501"), "{err}");
    assert!(!err.is_usage() && !err.is_connection(), "{err}");
    assert!(
        err.to_string()
            .contains("GRANT TRIGGER ON \"public\".\"orders\""),
        "{err}"
    );
    assert_nothing_installed(&client).await;
    // An unreachable server is a connection error, after the connect timeout at most.
    let started = std::time::Instant::now();
    let err = Listener::builder("postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
        .on("orders", ok)
        .build()
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_connection() && !err.is_usage(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE \"{}\" FROM {role}; DROP ROLE {role};",
            url.rsplit('/')
                .next()
                .and_then(|s| s.split('?').next())
                .unwrap_or_default()
        ))
        .await
        .expect("drop role");
}
