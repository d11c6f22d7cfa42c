//! Bad input through the real binary: each mistake gets exit code 2 and a message that names
//! the field or object at fault and says what to do — from `check`, `install` and `run`
//! alike — and nothing is left half-installed.

use crate::support::{config, output, text, write_config, Db};

/// Runs `command` with `cfg` and asserts exit 2 and that stderr holds every needle.
fn refused(command: &str, cfg: &std::path::Path, env: &[(&str, &str)], needles: &[&str]) -> String {
    let cfg_s = cfg.display().to_string();
    let out = output(&[command, "--config", &cfg_s], env);
    let (_, err) = text(&out);
    if std::env::var_os("PGEVENTS_TEST_SHOW").is_some() {
        eprintln!("$ pgevents {command}\n{err}");
    }
    assert_eq!(out.status.code(), Some(2), "`{command}` exits 2:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{command}` says {needle:?}:\n{err}");
    }
    assert!(err.contains(&cfg_s), "`{command}` names the file:\n{err}");
    err
}

/// Nothing of pgevents in the database: no log schema, no trigger.
async fn assert_nothing_installed(db: &Db, after: &str) {
    let schemas = db
        .count("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgevents'")
        .await;
    let triggers = db
        .count("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
        .await;
    assert_eq!(
        (schemas, triggers),
        (0, 0),
        "nothing installed after {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mistakes_name_the_field_and_the_fix() {
    let db = Db::fresh("bad_config").await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("table");
    let url = db.url.as_str();
    let good = "[[trigger]]\nname = \"a\"\ntable = \"orders\"\nstdout = {}\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed TOML",
            config(url, "[[trigger]\nname = \"a\"\n"),
            vec!["line 7", "expected `]`"],
        ),
        (
            "an unknown key",
            config(url, &format!("{good}colour = \"red\"\n")),
            vec!["trigger[0].colour", "unknown field", "expected one of"],
        ),
        (
            "a wrong type",
            config(url, &format!("{good}retry = {{ max_retries = \"five\" }}\n")),
            vec!["trigger[0].retry.max_retries", "expected u32"],
        ),
        (
            "an invalid duration",
            config(url, &format!("{good}retry = {{ timeout = \"30 seconds\" }}\n")),
            vec!["trigger[\"a\"].retry.timeout", "e.g. \"30s\""],
        ),
        (
            "a webhook URL without scheme",
            config(
                url,
                "[[trigger]]\nname = \"a\"\ntable = \"orders\"\nwebhook = { url = \"example.com/hook\" }\n",
            ),
            vec!["trigger[\"a\"].webhook.url", "absolute URL like https://"],
        ),
        (
            "a database URL without scheme",
            config("localhost/shop", good),
            vec!["database.url", "postgres://user:password@localhost"],
        ),
        (
            "a missing environment variable",
            format!(
                "[database]\nurl_from_env = \"PGEVENTS_TEST_NO_SUCH_VAR\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{good}"
            ),
            vec![
                "database.url_from_env",
                "PGEVENTS_TEST_NO_SUCH_VAR is not set",
                "export it",
            ],
        ),
        (
            "two triggers with one name",
            config(url, &format!("{good}\n{good}")),
            vec!["trigger[1].name", "\"a\" is already the name", "rename"],
        ),
        (
            "an unknown sslmode",
            config(&url.replace("sslmode=disable", "sslmode=sometimes"), good),
            vec!["sslmode", "verify-full"],
        ),
        (
            "verify-full without trusted roots",
            config(&url.replace("sslmode=disable", "sslmode=verify-full"), good),
            vec!["sslmode=verify-full", "sslrootcert="],
        ),
        (
            "sslmode=require against a server without TLS",
            config(&url.replace("sslmode=disable", "sslmode=require"), good),
            vec!["sslmode=require", "ssl = on"],
        ),
    ];
    for (what, body, needles) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = write_config(&dir, &body);
        for command in ["check", "install", "run"] {
            let err = refused(command, &cfg, &[], &needles);
            assert!(
                !err.contains("panicked"),
                "{what}: `{command}` fails cleanly:\n{err}"
            );
        }
        assert_nothing_installed(&db, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_mistakes_install_nothing() {
    let db = Db::fresh("bad_db").await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("table");
    let dir = tempfile::tempdir().expect("dir");
    let good = "[[trigger]]\nname = \"good\"\ntable = \"orders\"\nstdout = {}\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "a table that does not exist (after a good trigger)",
            format!("{good}\n[[trigger]]\nname = \"bad\"\ntable = \"nope\"\nstdout = {{}}\n"),
            vec![
                "trigger[\"bad\"].table",
                "public.nope does not exist",
                "create it",
            ],
        ),
        (
            "a `columns` entry that does not exist",
            format!(
                "{good}\n[[trigger]]\nname = \"bad\"\ntable = \"orders\"\noperations = [\"UPDATE\"]\ncolumns = [\"status\", \"colour\"]\nstdout = {{}}\n"
            ),
            vec![
                "trigger[\"bad\"].columns",
                "\"colour\" does not exist in table public.orders",
                "fix the trigger's `columns`",
            ],
        ),
        (
            "a `payload_columns` entry that does not exist",
            format!(
                "{good}\n[[trigger]]\nname = \"bad\"\ntable = \"orders\"\npayload_columns = [\"id\", \"colour\"]\nstdout = {{}}\n"
            ),
            vec![
                "trigger[\"bad\"].payload_columns",
                "\"colour\" does not exist in table public.orders",
            ],
        ),
        (
            "a `where` condition PostgreSQL rejects",
            format!(
                "{good}\n[[trigger]]\nname = \"bad\"\ntable = \"orders\"\nwhere = \"colour = 'red'\"\nstdout = {{}}\n"
            ),
            vec![
                "trigger[\"bad\"].where",
                "column \"colour\" does not exist",
            ],
        ),
        (
            "an `ordering.columns` entry that does not exist",
            format!(
                "{good}\n[[trigger]]\nname = \"bad\"\ntable = \"orders\"\nordering = {{ columns = [\"account\"] }}\nstdout = {{}}\n"
            ),
            vec![
                "trigger[\"bad\"].ordering.columns",
                "\"account\" does not exist in table public.orders",
            ],
        ),
    ];
    for (what, triggers, needles) in cases {
        let cfg = write_config(&dir, &config(&db.url, &triggers));
        for command in ["check", "install", "run"] {
            let err = refused(command, &cfg, &[], &needles);
            if command != "check" {
                assert!(err.contains("nothing was installed"), "{what}: {err}");
            }
            assert_nothing_installed(&db, &format!("{what}: {command}")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_named_with_the_grant_that_fixes_them() {
    let db = Db::fresh("bad_acl").await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("table");
    let role = format!("pgevents_noacl_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"
        ))
        .await
        .expect("role");
    let trigger = "[[trigger]]\nname = \"orders\"\ntable = \"orders\"\nstdout = {}\n";
    let dir = tempfile::tempdir().expect("dir");
    let as_role = db.url_as(&role, None, db.port());
    let role_cfg = write_config(&dir, &config(&as_role, trigger));

    // Not the table's owner, no TRIGGER privilege: nothing is installed.
    for command in ["check", "install", "run"] {
        refused(
            command,
            &role_cfg,
            &[],
            &[
                "trigger[\"orders\"].table",
                "may not create triggers on public.orders",
                "GRANT TRIGGER ON \"public\".\"orders\" TO <role>",
            ],
        );
        assert_nothing_installed(&db, command).await;
    }
    // With TRIGGER but no CREATE on the database: the log cannot be created.
    db.client
        .batch_execute(&format!("GRANT TRIGGER ON orders TO {role}"))
        .await
        .expect("grant");
    refused(
        "install",
        &role_cfg,
        &[],
        &[
            "database: installing the event log",
            "permission denied",
            "GRANT CREATE ON DATABASE",
        ],
    );
    assert_nothing_installed(&db, "install without CREATE").await;
    db.client
        .batch_execute(&format!("REVOKE TRIGGER ON orders FROM {role}"))
        .await
        .expect("revoke");

    // Installed by the owner; the role has no grant on the log: `check` lists what is
    // missing with the statements that fix it, and `run` explains.
    let owner_dir = tempfile::tempdir().expect("dir");
    let owner_cfg = write_config(&owner_dir, &config(&db.url, trigger));
    let out = output(
        &["install", "--config", &owner_cfg.display().to_string()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let err = refused(
        "check",
        &role_cfg,
        &[],
        &[
            "USAGE on schema pgevents",
            "SELECT, INSERT, UPDATE, DELETE on tables pgevents.attempt, pgevents.backfill, pgevents.capture, pgevents.event",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"pgevents\" TO pgevents_noacl_",
        ],
    );
    assert!(
        !err.contains("may not create triggers"),
        "an installed trigger needs no TRIGGER privilege to run:\n{err}"
    );
    refused(
        "run",
        &role_cfg,
        &[],
        &[
            "permission denied",
            "`pgevents check` lists what is missing",
        ],
    );
    // With the documented grants, `check` passes for the role.
    db.runner_role(&role, "unused", "pgevents").await;
    let out = output(&["check", "--config", &role_cfg.display().to_string()], &[]);
    assert!(
        out.status.success(),
        "check as the runner: {}",
        text(&out).1
    );
    db.client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .expect("drop role");
}
