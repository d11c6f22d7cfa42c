//! pgevents-config through its public API: the PRODUCT.md example, defaults, and a message
//! naming the field for every kind of mistake.
//!
//! Written against the default features (every destination).
#![cfg(all(
    feature = "webhook",
    feature = "nats",
    feature = "redis",
    feature = "amqp",
    feature = "stdout"
))]

use std::time::Duration;

use pgevents_config::{
    CaptureMode, Config, ConfigErrors, DeliveryOrdering, Env, SinkConfig, TableName,
    DEFAULT_ADMIN_LISTEN,
};
use pgevents_delivery::RetryPolicy;
use pgevents_event::{Action, Format};

/// The example of PRODUCT.md §4, verbatim.
const PRODUCT_EXAMPLE: &str = r#"
[database]
url_from_env = "DATABASE_URL"          # or url = "postgres://..."; TLS via sslmode in the URL
# log_schema = "pgevents"              # where the event log lives

[capture]
mode = "trigger"                       # or "logical" (no triggers on user tables)
# slot = "pgevents"  publication = "pgevents"

[admin]
listen = "127.0.0.1:8080"
token_from_env = "PGEVENTS_ADMIN_TOKEN"   # when set, the API and /metrics need it (§6)

[retention]
delivered = "7d"
failed = "30d"

[[trigger]]
name = "order_events"
table = "public.orders"                # "orders" means public.orders
operations = ["INSERT", "UPDATE", "DELETE"]   # TRUNCATE optional
columns = ["status"]                   # optional: an UPDATE fires only if one of these changed
format = "seed"                        # or "hasura"
ordering = "row"                       # "row" (default): per-row commit order; "none"
retry = { max_retries = 5, initial_interval = "1s", max_interval = "5m", timeout = "30s" }
webhook = { url_from_env = "ORDERS_HOOK", headers = { "X-Api-Key" = { from_env = "HOOK_KEY" } }, signing_secret_from_env = "HOOK_SECRET" }
# instead of webhook: nats = { url = "nats://127.0.0.1:4222", subject = "pg.orders" }        (JetStream)
#                     redis = { url = "redis://127.0.0.1:6379", stream = "pg:orders" }       (XADD)
#                     amqp = { url = "amqp://guest:guest@127.0.0.1:5672", exchange = "pg", routing_key = "orders" }
#                     stdout = {}
"#;

fn product_env() -> Env {
    Env::fixed([
        ("DATABASE_URL", "postgres://app:db-pa55@localhost:5432/shop"),
        ("PGEVENTS_ADMIN_TOKEN", "admin-t0ken"),
        (
            "ORDERS_HOOK",
            "https://hooks.example.com/orders?key=url-s3cret",
        ),
        ("HOOK_KEY", "api-k3y"),
        ("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ])
}

const SECRETS: [&str; 5] = ["db-pa55", "admin-t0ken", "url-s3cret", "api-k3y", "MfKQ9r8"];

fn no_env() -> Env {
    Env::fixed::<_, &str, &str>([])
}

/// A minimal valid config, with `extra` appended to its trigger.
fn with_trigger(extra: &str) -> String {
    format!(
        "[database]\nurl = \"postgres://localhost/shop\"\n\n[[trigger]]\nname = \"t\"\ntable = \"orders\"\n{extra}\n"
    )
}

fn errors(text: &str) -> ConfigErrors {
    match Config::from_toml_str_with_env(text, "pgevents.toml", &no_env()) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(errors) => errors,
    }
}

#[test]
fn the_product_example_parses() {
    let config = Config::from_toml_str_with_env(PRODUCT_EXAMPLE, "pgevents.toml", &product_env())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.database_url(),
        "postgres://app:db-pa55@localhost:5432/shop"
    );
    assert_eq!(config.database.log_schema, "pgevents");
    assert_eq!(config.capture.mode, CaptureMode::Trigger);
    assert_eq!(config.capture.slot, "pgevents");
    assert_eq!(config.capture.publication, "pgevents");
    assert_eq!(config.admin.listen, DEFAULT_ADMIN_LISTEN);
    assert!(config.admin.allowed_hosts.is_empty());
    assert_eq!(config.admin.token(), Some("admin-t0ken"));
    assert_eq!(config.retention.delivered, Duration::from_secs(7 * 86400));
    assert_eq!(config.retention.failed, Duration::from_secs(30 * 86400));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());

    let trigger = config.trigger("order_events").expect("the trigger");
    assert_eq!(trigger.path(), "trigger[\"order_events\"]");
    assert_eq!(trigger.table, TableName::new("public", "orders"));
    assert_eq!(
        trigger.operations,
        [Action::Insert, Action::Update, Action::Delete]
    );
    assert!(!trigger.captures(Action::Truncate));
    assert_eq!(
        trigger.columns.as_deref(),
        Some(&["status".to_string()][..])
    );
    assert_eq!(trigger.format, Format::Seed);
    assert_eq!(trigger.ordering, DeliveryOrdering::PerRow);
    assert_eq!(
        trigger.retry,
        RetryPolicy {
            max_retries: 5,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    );
    assert_eq!(trigger.sink.key(), "webhook");
    assert!(matches!(trigger.sink, SinkConfig::Webhook(_)));
    trigger
        .build_sink(&trigger.path())
        .unwrap_or_else(|e| panic!("{e}"));

    let shown = format!("{config:?}");
    for secret in SECRETS {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(
        shown.contains("postgres://app:***@localhost:5432/shop"),
        "{shown}"
    );
}

#[test]
fn defaults_fill_in_everything_optional() {
    let config = Config::from_toml_str_with_env(&with_trigger("stdout = {}"), "x.toml", &no_env())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.admin.token(), None);
    let trigger = &config.triggers[0];
    assert_eq!(
        trigger.operations,
        [Action::Insert, Action::Update, Action::Delete]
    );
    assert_eq!(trigger.columns, None);
    assert_eq!(trigger.format, Format::Seed);
    assert_eq!(trigger.ordering, DeliveryOrdering::PerRow);
    assert_eq!(trigger.retry, RetryPolicy::default());
    assert!(trigger.build_sink("trigger[0]").is_ok());
}

#[test]
fn other_choices_parse() {
    let text = r#"
        [database]
        url = "postgresql://localhost/shop"
        log_schema = "events"
        [capture]
        mode = "logical"
        slot = "shop_slot"
        publication = "shop_pub"
        [admin]
        listen = "[::1]:9090"
        allowed_hosts = ["PGEvents.Internal", "10.0.0.5"]
        [retention]
        delivered = "12h"
        failed = "500ms"
        [[trigger]]
        name = "invoices"
        table = '"my schema"."Weird ""Name"""'
        operations = ["truncate", "INSERT", "insert"]
        format = "hasura"
        ordering = "none"
        payload_columns = ["id", "Status", "id"]
        where = "\"Status\" <> 'draft'"
        retry = { timeout = "2s" }
        stdout = {}
    "#;
    let config =
        Config::from_toml_str_with_env(text, "x.toml", &no_env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.capture.mode, CaptureMode::Logical);
    assert_eq!(config.capture.slot, "shop_slot");
    assert_eq!(config.admin.listen.to_string(), "[::1]:9090");
    assert_eq!(
        config.admin.allowed_hosts,
        ["pgevents.internal", "10.0.0.5"]
    );
    assert_eq!(config.retention.failed, Duration::from_millis(500));
    let trigger = &config.triggers[0];
    assert_eq!(trigger.table, TableName::new("my schema", "Weird \"Name\""));
    assert_eq!(trigger.operations, [Action::Insert, Action::Truncate]);
    assert_eq!(trigger.format, Format::Hasura);
    assert_eq!(trigger.ordering, DeliveryOrdering::Unordered);
    assert_eq!(trigger.condition.as_deref(), Some("\"Status\" <> 'draft'"));
    let grouped = Config::from_toml_str_with_env(
        &with_trigger("stdout = {}\nordering = { columns = [\"account_id\", \"region\"] }"),
        "x.toml",
        &no_env(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        grouped.triggers[0].ordering,
        DeliveryOrdering::Columns(vec!["account_id".into(), "region".into()])
    );
    assert_eq!(
        trigger.payload_columns.as_deref(),
        Some(&["id".to_string(), "Status".to_string()][..])
    );
    assert_eq!(trigger.retry.timeout, Duration::from_secs(2));
    assert_eq!(
        trigger.retry.max_retries,
        RetryPolicy::default().max_retries
    );
}

/// Each mistake alone: the one error names `path` and its message contains `hint`.
#[test]
fn each_mistake_names_its_field_and_says_what_to_do() {
    let db = "[database]\nurl = \"postgres://localhost/shop\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        ("".into(), "database", "no database URL; add url_from_env"),
        ("[database]\nurl_from_env = \"DATABASE_URL\"".into(), "database.url_from_env", "environment variable DATABASE_URL is not set; export it or use url ="),
        ("[database]\nurl = \"mysql://localhost/shop\"".into(), "database.url", "use postgres:// or postgresql://"),
        ("[database]\nurl = \"localhost/shop\"".into(), "database.url", "not a valid URL"),
        ("[database]\nurl = \"postgres://x/y\"\nurl_from_env = \"X\"".into(), "database.url_from_env", "keep only one"),
        ("[database]\nurl = \"postgres://x/y\"\nlog_schema = \"\"".into(), "database.log_schema", "1 to 63 bytes"),
        (format!("{db}[capture]\nmode = \"logical\"\nslot = \"My-Slot\""), "capture.slot", "lower-case letters"),
        (format!("{db}[admin]\nlisten = \"localhost:8080\""), "admin.listen", "write e.g. \"127.0.0.1:8080\""),
        (format!("{db}[admin]\ntoken_from_env = \"TOKEN\""), "admin.token_from_env", "TOKEN is not set; export it or remove token_from_env"),
        (format!("{db}[admin]\nallowed_hosts = [\"ok.example\", \"https://admin.example\"]"), "admin.allowed_hosts[1]", "write the bare name"),
        (format!("{db}[retention]\ndelivered = \"7\""), "retention.delivered", "has no unit; write e.g. \"7s\""),
        (format!("{db}[retention]\nfailed = 30"), "retention.failed", "has no unit"),
        (format!("{db}[retention]\nfailed = \"-1d\""), "retention.failed", "negative"),
        (with_trigger("stdout = {}").replace("name = \"t\"\n", ""), "trigger[0].name", "missing; give the trigger a unique name"),
        (with_trigger("stdout = {}").replace("name = \"t\"", "name = \"\""), "trigger[0].name", "missing"),
        (with_trigger("stdout = {}").replace("name = \"t\"", "name = \"a b\""), "trigger[0].name", "is not a trigger name"),
        (with_trigger("stdout = {}").replace("table = \"orders\"\n", ""), "trigger[\"t\"].table", "missing; name the table"),
        (with_trigger("stdout = {}").replace("orders", "Orders"), "trigger[\"t\"].table", "write \"orders\" for the lower-case table"),
        (with_trigger("stdout = {}").replace("orders", "a.b.c"), "trigger[\"t\"].table", "more than two parts"),
        (with_trigger("stdout = {}\noperations = [\"INSERT\", \"UPSERT\"]"), "trigger[\"t\"].operations[1]", "\"UPSERT\" is not an operation; use INSERT, UPDATE, DELETE or TRUNCATE"),
        (with_trigger("stdout = {}\noperations = [\"MANUAL\"]"), "trigger[\"t\"].operations[0]", "remove it from operations"),
        (with_trigger("stdout = {}\noperations = []"), "trigger[\"t\"].operations", "is empty"),
        (with_trigger("stdout = {}\ncolumns = []"), "trigger[\"t\"].columns", "is empty"),
        (with_trigger("stdout = {}\ncolumns = [\"\"]"), "trigger[\"t\"].columns[0]", "empty column name"),
        (with_trigger("stdout = {}\nordering = { columns = [] }"), "trigger[\"t\"].ordering.columns", "is empty; list the columns whose values make a group"),
        (with_trigger("stdout = {}\nordering = { columns = [\"\"] }"), "trigger[\"t\"].ordering.columns[0]", "empty column name"),
        (with_trigger("stdout = {}\nwhere = \" \""), "trigger[\"t\"].where", "is empty; write an SQL condition"),
        (with_trigger("stdout = {}\npayload_columns = []"), "trigger[\"t\"].payload_columns", "is empty; list the columns events should carry"),
        (with_trigger("stdout = {}\npayload_columns = [\"id\", \"\"]"), "trigger[\"t\"].payload_columns[1]", "empty column name"),
        (with_trigger("stdout = {}\nretry = { timeout = \"0s\" }"), "trigger[\"t\"].retry.timeout", "is zero"),
        (with_trigger("stdout = {}\nretry = { timeout = \"1x\" }"), "trigger[\"t\"].retry.timeout", "unknown unit \"x\"; use ms, s, m, h or d"),
        (with_trigger("stdout = {}\nretry = { initial_interval = \"0ms\" }"), "trigger[\"t\"].retry.initial_interval", "is zero"),
        (with_trigger("stdout = {}\nretry = { initial_interval = \"10m\", max_interval = \"1m\" }"), "trigger[\"t\"].retry.initial_interval", "\"10m\" is longer than max_interval \"1m\"; lower initial_interval or raise max_interval"),
        (with_trigger("retry = { initial_interval = \"10m\" }\nstdout = {}"), "trigger[\"t\"].retry.initial_interval", "longer than max_interval 300s (the default)"),
        (with_trigger(""), "trigger[\"t\"]", "has no destination; add one"),
        (with_trigger("stdout = {}\nwebhook = { url = \"https://x.example\" }"), "trigger[\"t\"]", "has 2 destinations (webhook, stdout)"),
        (with_trigger("webhook = { url_from_env = \"ORDERS_HOOK\" }"), "trigger[\"t\"].webhook.url_from_env", "ORDERS_HOOK is not set; export it or use url ="),
        (with_trigger("webhook = { url = \"ftp://x.example\" }"), "trigger[\"t\"].webhook.url", "use http:// or https://"),
        (with_trigger("webhook = { url = \"https://x.example\", headers = { \"X-Key\" = { from_env = \"K\" } } }"), "trigger[\"t\"].webhook.headers[\"X-Key\"].from_env", "K is not set"),
        (format!("{}{}", with_trigger("stdout = {}"), "[[trigger]]\nname = \"t\"\ntable = \"x\"\nstdout = {}"), "trigger[1].name", "\"t\" is already the name of trigger[0]; trigger names must be unique"),
    ];
    for (text, path, hint) in cases {
        let errors = errors(&text);
        assert_eq!(errors.errors.len(), 1, "{text}\n{errors}");
        let error = &errors.errors[0];
        assert_eq!(error.path, path, "{text}\n{errors}");
        assert!(
            error.message.contains(hint),
            "{text}\n{errors}\nwanted: {hint}"
        );
    }
}

#[test]
fn five_mistakes_are_all_reported_one_per_line() {
    let text = r#"
[database]
url_from_env = "DATABASE_URL"

[admin]
listen = "everywhere"

[[trigger]]
name = "orders"
table = "Orders"
retry = { timeout = "30" }
stdout = {}

[[trigger]]
name = "orders"
table = "invoices"
operations = ["INSERT", "UPSERT"]
"#;
    let errors = errors(text);
    let lines: Vec<String> = errors.to_string().lines().map(String::from).collect();
    let expected_starts = [
        "pgevents.toml: database.url_from_env: environment variable DATABASE_URL is not set",
        "pgevents.toml: admin.listen: \"everywhere\" is not an IP address and port",
        "pgevents.toml: trigger[1].name: \"orders\" is already the name of trigger[0]",
        "pgevents.toml: trigger[0].table: \"Orders\" has upper-case letters",
        "pgevents.toml: trigger[0].retry.timeout: \"30\" has no unit",
        "pgevents.toml: trigger[1].operations[1]: \"UPSERT\" is not an operation",
        "pgevents.toml: trigger[1]: has no destination",
    ];
    assert_eq!(lines.len(), expected_starts.len(), "{errors}");
    for (line, start) in lines.iter().zip(expected_starts) {
        assert!(line.starts_with(start), "{line}\nwanted: {start}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_name_with_their_place() {
    for (text, path, key, line) in [
        (
            with_trigger("stdout = {}\nfrmat = \"seed\""),
            "trigger[0].frmat",
            "frmat",
            8,
        ),
        (
            with_trigger("stdout = {}\nretry = { max_retry = 3 }"),
            "trigger[0].retry.max_retry",
            "max_retry",
            8,
        ),
        (
            with_trigger("webhook = { url = \"https://x.example\", secret = \"s\" }"),
            "trigger[0].webhook.secret",
            "secret",
            7,
        ),
        (
            with_trigger("stdout = { pretty = true }"),
            "trigger[0].stdout.pretty",
            "pretty",
            7,
        ),
        (
            format!("{}[databse]\nurl = \"x\"", with_trigger("stdout = {}")),
            "databse",
            "databse",
            8,
        ),
    ] {
        let errors = errors(&text);
        assert_eq!(errors.errors.len(), 1, "{errors}");
        let error = &errors.errors[0];
        assert_eq!(error.path, path, "{errors}");
        assert!(
            error.message.contains(&format!("unknown field `{key}`")),
            "{errors}"
        );
        assert!(
            error.message.contains(&format!("(line {line}, column ")),
            "{errors}"
        );
    }
}

/// An unknown key is one problem among the others: the rest of the file is still checked.
#[test]
fn unknown_keys_are_reported_beside_the_other_mistakes() {
    let text = r#"
[database]
url = "postgres://localhost/shop"
pool = 4

[[trigger]]
name = "orders"
table = "orders"
retyr = { max_retries = 3 }
retry = { timeout = "0s" }
ordering = { columns = ["account_id"], kind = "x" }
stdout = {}

[[trigger]]
name = "invoices"
table = "Invoices"
operations = ["UPSERT"]
stdout = { colour = true }
"#;
    let errors = errors(text);
    let found: Vec<(&str, &str)> = errors
        .errors
        .iter()
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    let expected = [
        ("database.pool", "unknown field `pool`"),
        ("trigger[0].retyr", "unknown field `retyr`"),
        ("trigger[0].ordering.kind", "unknown field `kind`"),
        ("trigger[1].stdout.colour", "unknown field `colour`"),
        ("trigger[\"invoices\"].table", "upper-case letters"),
        ("trigger[\"invoices\"].operations[0]", "is not an operation"),
        ("trigger[\"orders\"].retry.timeout", "is zero"),
    ];
    for (path, says) in expected {
        assert!(
            found.iter().any(|(p, m)| *p == path && m.contains(says)),
            "{path}: {says} is reported:\n{errors}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{errors}");
    assert!(
        found
            .iter()
            .any(|(p, m)| *p == "trigger[0].retyr" && m.contains("(line 9, column 1)")),
        "unknown keys keep their place: {errors}"
    );
}

#[test]
fn syntax_and_type_errors_give_line_and_column() {
    let errors = errors("[database]\nurl = \"postgres://x/y\n");
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].path, "");
    assert!(
        errors.errors[0].message.contains("(line 2, column "),
        "{errors}"
    );
    assert!(!errors.to_string().contains('\n'), "one line: {errors}");

    let errors = errors_of(&with_trigger("stdout = {}\nformat = \"json\""));
    assert_eq!(errors.errors[0].path, "trigger[0].format");
    assert!(
        errors.errors[0]
            .message
            .contains("unknown variant `json`, expected `seed` or `hasura`"),
        "{errors}"
    );
    let errors = errors_of(&with_trigger("stdout = {}\nretry = { max_retries = -1 }"));
    assert_eq!(errors.errors[0].path, "trigger[0].retry.max_retries");

    let errors = errors_of("[database]\nurl = \"postgres://x/y\"\n[trigger]\nname = \"t\"");
    assert_eq!(errors.errors[0].path, "trigger");
    assert!(
        errors.errors[0].message.contains("write [[trigger]]"),
        "{errors}"
    );
}

fn errors_of(text: &str) -> ConfigErrors {
    errors(text)
}

#[test]
fn warnings_note_what_is_allowed_but_odd() {
    let config = Config::from_toml_str_with_env(
        "[database]\nurl = \"postgres://x/y\"\n[capture]\nslot = \"s\"",
        "x.toml",
        &no_env(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<&str> = config.warnings().iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["capture.slot", "trigger"]);
    assert!(config.triggers.is_empty());

    let config = Config::from_toml_str_with_env(
        &with_trigger("stdout = {}\noperations = [\"INSERT\"]\ncolumns = [\"status\"]"),
        "x.toml",
        &no_env(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.warnings().len(), 1);
    assert!(config.warnings()[0].message.contains("no UPDATE"));
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pgevents.toml");
    std::fs::write(&path, with_trigger("stdout = {}")).expect("write");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source, path.display().to_string());
    assert_eq!(config.triggers.len(), 1);

    std::fs::write(&path, with_trigger("")).expect("write");
    let errors = Config::load(&path).expect_err("no destination");
    assert!(
        errors.to_string().starts_with(&format!(
            "{}: trigger[\"t\"]: has no destination",
            path.display()
        )),
        "{errors}"
    );

    let missing = dir.path().join("missing.toml");
    let errors = Config::load(&missing).expect_err("no file");
    assert!(
        errors.to_string().contains("cannot read the config file"),
        "{errors}"
    );
    assert!(errors.to_string().contains("PGEVENTS_CONFIG"), "{errors}");
}

#[test]
fn errors_never_show_secrets() {
    let env = Env::fixed([
        ("DATABASE_URL", "mysql://app:db-pa55@localhost/shop"),
        ("HOOK", "ftp://x.example/?key=url-s3cret"),
        ("HOOK_KEY", "api-k3y\n"),
    ]);
    let text = "[database]\nurl_from_env = \"DATABASE_URL\"\n[[trigger]]\nname = \"t\"\ntable = \"t\"\n\
                webhook = { url_from_env = \"HOOK\", headers = { \"X-Key\" = { from_env = \"HOOK_KEY\" } } }";
    let errors = Config::from_toml_str_with_env(text, "x.toml", &env).expect_err("three problems");
    assert_eq!(errors.errors.len(), 3, "{errors}");
    for secret in SECRETS {
        assert!(!errors.to_string().contains(secret), "{secret} in {errors}");
    }
}

/// The broker lines of PRODUCT.md §4, verbatim, as the trigger's destination instead of the
/// webhook.
const PRODUCT_BROKER_LINES: [(&str, &str); 4] = [
    (
        "nats",
        r#"nats = { url = "nats://127.0.0.1:4222", subject = "pg.orders" }"#,
    ),
    (
        "redis",
        r#"redis = { url = "redis://127.0.0.1:6379", stream = "pg:orders" }"#,
    ),
    (
        "amqp",
        r#"amqp = { url = "amqp://guest:guest@127.0.0.1:5672", exchange = "pg", routing_key = "orders" }"#,
    ),
    ("stdout", "stdout = {}"),
];

#[test]
fn the_product_broker_lines_parse_and_build_without_connecting() {
    for (key, line) in PRODUCT_BROKER_LINES {
        let webhook_line = PRODUCT_EXAMPLE
            .lines()
            .find(|l| l.starts_with("webhook = "))
            .expect("the example's webhook line");
        let text = PRODUCT_EXAMPLE.replace(webhook_line, line);
        let config = Config::from_toml_str_with_env(&text, "pgevents.toml", &product_env())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let trigger = config.trigger("order_events").expect("the trigger");
        assert_eq!(trigger.sink.key(), key);
        let matched = match &trigger.sink {
            SinkConfig::Nats(nats) => nats.subject.as_deref() == Some("pg.orders"),
            SinkConfig::Redis(redis) => {
                redis.stream.as_deref() == Some("pg:orders") && redis.maxlen.is_none()
            }
            SinkConfig::Amqp(amqp) => {
                amqp.exchange.as_deref() == Some("pg")
                    && amqp.routing_key.as_deref() == Some("orders")
            }
            SinkConfig::Stdout(_) => true,
            other => panic!("{key}: {other:?}"),
        };
        assert!(matched, "{key}: {:?}", trigger.sink);
        // Building a broker sink parses its settings but connects to nothing.
        trigger
            .build_sink(&trigger.path())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("guest:guest"), "{shown}");
    }
}

#[test]
fn broker_urls_can_come_from_the_environment() {
    let env = Env::fixed([
        ("NATS_URL", "nats://n4ts-t0ken@127.0.0.1:4222"),
        ("REDIS_URL", "redis://:r3dis-pw@127.0.0.1:6379/0"),
        ("AMQP_URL", "amqp://app:amqp-pw@127.0.0.1:5672/%2f"),
    ]);
    for line in [
        r#"nats = { url_from_env = "NATS_URL", subject = "pg.orders" }"#,
        r#"redis = { url_from_env = "REDIS_URL", stream = "pg:orders", maxlen = 100000 }"#,
        r#"amqp = { url_from_env = "AMQP_URL", exchange = "pg", routing_key = "orders" }"#,
    ] {
        let config = Config::from_toml_str_with_env(&with_trigger(line), "x.toml", &env)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let sink = config.triggers[0]
            .build_sink("trigger[0]")
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let _ = sink;
        let shown = format!("{config:?}");
        for secret in ["n4ts-t0ken", "r3dis-pw", "amqp-pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    let errors = errors(&with_trigger(
        r#"redis = { url_from_env = "REDIS_URL", stream = "s" }"#,
    ));
    assert_eq!(
        errors.errors[0].to_string(),
        "trigger[\"t\"].redis.url_from_env: environment variable REDIS_URL is not set; export it or use url = \"...\""
    );
}

#[test]
fn broker_mistakes_name_their_field() {
    let cases = [
        (
            r#"nats = { url = "nats://127.0.0.1:4222" }"#,
            "trigger[\"t\"].nats.subject",
            "missing; name the subject",
        ),
        (
            r#"nats = { url = "nats://127.0.0.1:4222", subject = "pg.*" }"#,
            "trigger[\"t\"].nats.subject",
            "wildcard",
        ),
        (
            r#"nats = { url = "http://127.0.0.1:4222", subject = "pg" }"#,
            "trigger[\"t\"].nats.url",
            "use nats://",
        ),
        (
            r#"nats = { subject = "pg" }"#,
            "trigger[\"t\"].nats.url",
            "missing; set url = \"nats://",
        ),
        (
            r#"redis = { url = "redis://127.0.0.1" }"#,
            "trigger[\"t\"].redis.stream",
            "missing; name the stream",
        ),
        (
            r#"redis = { url = "redis://127.0.0.1", stream = "s", maxlen = 0 }"#,
            "trigger[\"t\"].redis.maxlen",
            "0 is out of range",
        ),
        (
            r#"redis = { url = "amqp://127.0.0.1", stream = "s" }"#,
            "trigger[\"t\"].redis.url",
            "use redis://",
        ),
        (
            r#"amqp = { url = "amqp://127.0.0.1", routing_key = "k" }"#,
            "trigger[\"t\"].amqp.exchange",
            "missing; name the exchange",
        ),
        (
            r#"amqp = { url = "amqp://127.0.0.1", exchange = "" }"#,
            "trigger[\"t\"].amqp.routing_key",
            "default exchange",
        ),
        (
            r#"amqp = { url = "nats://127.0.0.1", exchange = "pg" }"#,
            "trigger[\"t\"].amqp.url",
            "use amqp://",
        ),
    ];
    for (line, path, message) in cases {
        let found = errors(&with_trigger(line));
        assert_eq!(found.errors.len(), 1, "{line}: {found}");
        assert_eq!(found.errors[0].path, path, "{line}: {found}");
        assert!(found.errors[0].message.contains(message), "{line}: {found}");
    }
    let found = errors(&with_trigger(
        "nats = { url = \"nats://x\", subject = \"s\" }\nredis = { url = \"redis://x\", stream = \"s\" }",
    ));
    assert!(
        found
            .to_string()
            .contains("has 2 destinations (nats, redis)"),
        "{found}"
    );
    let found = errors(&with_trigger(
        "amqp = { url = \"amqp://x\", exchange = \"pg\", durable = true }",
    ));
    assert!(found.to_string().contains("amqp.durable"), "{found}");
}
