//! `pgevents init`: a starter config listing the database's tables, which `check` accepts
//! once a trigger block is uncommented; `--out` never overwrites a file.

use crate::support::{run, text, write_config, Db};

/// `config` with the commented-out `[[trigger]]` block of `table` uncommented.
fn uncomment(config: &str, table: &str) -> String {
    let table_line = format!("# table = {table:?}");
    let lines: Vec<&str> = config.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut in_block = false;
    for (i, line) in lines.iter().enumerate() {
        if *line == "# [[trigger]]" {
            in_block = lines.get(i + 2) == Some(&table_line.as_str());
        } else if line.is_empty() {
            in_block = false;
        }
        out.push(if in_block {
            line.strip_prefix("# ").unwrap_or(line)
        } else {
            line
        });
    }
    out.join("\n") + "\n"
}

async fn tables() -> Db {
    let db = Db::fresh("init").await;
    db.client
        .batch_execute(
            r#"CREATE TABLE orders (id bigint PRIMARY KEY, status text);
               CREATE TABLE audit_log (at timestamptz, line text);
               CREATE SCHEMA billing;
               CREATE TABLE billing."Invoice Lines" (id int PRIMARY KEY, amount numeric);"#,
        )
        .await
        .expect("tables");
    db
}

#[tokio::test]
async fn init_lists_every_table_and_check_accepts_an_uncommented_trigger() {
    let db = tables().await;
    let out = run(&["init", "--database-url", &db.url], &[]).await;
    let (config, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for table in [
        r#"# table = "public.orders""#,
        r#"# table = "public.audit_log""#,
        r#"# table = "billing.\"Invoice Lines\"""#,
    ] {
        assert!(config.contains(table), "{table} in:\n{config}");
    }
    assert!(
        !config.contains(&db.url),
        "the URL is not written into the file"
    );
    assert!(config.contains("url_from_env = \"DATABASE_URL\""));

    let dir = tempfile::tempdir().expect("dir");
    let env = [("DATABASE_URL", db.url.as_str())];
    let one = write_config(&dir, &uncomment(&config, "public.orders"));
    let out = run(&["check", "--config", &one.display().to_string()], &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("(1 triggers)"), "{stdout}");

    let every = [
        "public.orders",
        "public.audit_log",
        r#"billing."Invoice Lines""#,
    ]
    .into_iter()
    .fold(config.clone(), |text, table| uncomment(&text, table));
    let all = write_config(&dir, &every);
    let out = run(&["check", "--config", &all.display().to_string()], &env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}\n{every}");
    assert!(stdout.contains("(3 triggers)"), "{stdout}");
    let out = run(&["install", "--config", &all.display().to_string()], &env).await;
    assert!(out.status.success(), "{:?}", text(&out));
}

#[tokio::test]
async fn init_out_writes_a_file_and_never_overwrites_one() {
    let db = tables().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("pgevents.toml");
    let file = path.display().to_string();
    let out = run(&["init", "--database-url", &db.url, "--out", &file], &[]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    assert_eq!(stdout, "", "with --out nothing goes to stdout");
    let written = std::fs::read_to_string(&path).expect("the config is written");
    assert!(written.contains("# table = \"public.orders\""), "{written}");

    std::fs::write(&path, "# mine\n").expect("overwrite by hand");
    let out = run(&["init", "--database-url", &db.url, "--out", &file], &[]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&file) && stderr.contains("exists already"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("file"), "# mine\n");
}

#[tokio::test]
async fn init_names_the_database_url_when_it_cannot_connect() {
    let out = run(
        &[
            "init",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("--database-url"), "{stderr}");
}
