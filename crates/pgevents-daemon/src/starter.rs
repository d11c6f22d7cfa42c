//! `pgevents init`: a commented starter config for one database.
//!
//! The file has every section with its defaults, a reference of every trigger key and
//! destination, and one commented-out `[[trigger]]` block per table of the database. Only
//! keys the config parser accepts are written outside comments, so `pgevents check` accepts
//! the file as it is and once any trigger block is uncommented. Secrets are never written:
//! the database URL and every other secret come from the environment (`*_from_env`).

use std::fmt::Write as _;
use std::time::Duration;

use pgevents_config::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_LOG_SCHEMA, DEFAULT_OPERATIONS, DEFAULT_PUBLICATION,
    DEFAULT_RETENTION_DELIVERED, DEFAULT_RETENTION_FAILED, DEFAULT_SLOT,
};
use pgevents_delivery::RetryPolicy;
use pgevents_log::QualifiedName;

use crate::DaemonError;

/// The environment variable the starter config reads the database URL from.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// The longest trigger name the config accepts, in bytes.
const MAX_TRIGGER_NAME_BYTES: usize = 63;

/// One table of the database, as the starter config lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    name: QualifiedName,
    /// Whether it has a primary key or a replica identity index (per-row order needs one).
    keyed: bool,
}

/// Connects to the database at `url` and returns a commented starter config for it.
///
/// Every ordinary and partitioned table outside the system schemas and pgevents' own log
/// schema is listed, in schema and name order.
pub async fn starter_config(url: &str) -> Result<String, DaemonError> {
    let client = pgevents_log::connect(url, None)
        .await
        .map_err(|e| DaemonError::from(e).prefixed("--database-url"))?;
    let query = |e| DaemonError::from(pgevents_log::Error::query("listing the tables", e));
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(query)?
        .get(0);
    let rows = client
        .query(
            "SELECT n.nspname, c.relname,
                    EXISTS (SELECT 1 FROM pg_index i
                             WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1)
                AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
            &[&DEFAULT_LOG_SCHEMA],
        )
        .await
        .map_err(query)?;
    let tables: Vec<Table> = rows
        .iter()
        .map(|row| Table {
            name: QualifiedName {
                schema: row.get(0),
                name: row.get(1),
            },
            keyed: row.get(2),
        })
        .collect();
    Ok(render(&database, &tables))
}

/// The starter config for `tables` of `database`.
fn render(database: &str, tables: &[Table]) -> String {
    let retry = RetryPolicy::default();
    let operations = DEFAULT_OPERATIONS
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        r#"# pgevents config for database {database}, written by `pgevents init`.
#
# Uncomment the [[trigger]] block of each table to watch (and choose its destination), then:
#   export {DATABASE_URL_ENV}='postgres://...'     # the URL given to `pgevents init`
#   pgevents check --config FILE
#   pgevents run --config FILE
# A key commented out shows its default. Secrets come from the environment (*_from_env):
# this file holds none. Durations: "500ms", "30s", "5m", "2h", "7d". Unknown keys are errors.

[database]
url_from_env = "{DATABASE_URL_ENV}"          # or url = "postgres://user@host/db"; TLS via sslmode in the URL
# log_schema = "{DEFAULT_LOG_SCHEMA}"              # where the event log lives

[capture]
mode = "trigger"                       # or "logical": no triggers on user tables; needs wal_level = logical
# slot = "{DEFAULT_SLOT}"                    # logical mode: the replication slot
# publication = "{DEFAULT_PUBLICATION}"             # logical mode: the publication

[admin]
listen = "{DEFAULT_ADMIN_LISTEN}"              # the admin API, /metrics, /healthz and the console at /
# token_from_env = "PGEVENTS_ADMIN_TOKEN"   # when set, every path but /healthz needs Authorization: Bearer <token>

[retention]
delivered = "{delivered}"                       # how long delivered events are kept
failed = "{failed}"                         # how long failed events are kept

# The keys of a [[trigger]]:
#   name = "order_events"                  unique: letters, digits, _, - and .
#   table = "public.orders"                "orders" means public.orders
#   operations = [{operations}]   add "TRUNCATE" to capture it too
#   columns = ["status"]                   optional: an UPDATE fires only if one of these changed
#   format = "seed"                        or "hasura": Hasura's event-trigger body
#   ordering = "row"                       events of one row in commit order; "table": all events in
#                                          commit order; "none": any order; {{ columns = ["account_id"] }}:
#                                          events sharing those columns' values in commit order
#   where = "status <> 'draft'"            optional: an SQL condition on the row (old or new row for UPDATE)
#   payload_columns = ["id", "status"]     optional: only these columns in data.old / data.new
#   retry = {{ max_retries = {max_retries}, initial_interval = "{initial}", max_interval = "{max}", timeout = "{timeout}" }}
# and exactly one destination:
#   webhook = {{ url_from_env = "ORDERS_HOOK", headers = {{ "X-Api-Key" = {{ from_env = "HOOK_KEY" }} }}, signing_secret_from_env = "HOOK_SECRET" }}
#   nats = {{ url = "nats://127.0.0.1:4222", subject = "pg.orders" }}        JetStream
#   redis = {{ url = "redis://127.0.0.1:6379", stream = "pg:orders" }}       XADD
#   amqp = {{ url = "amqp://guest:guest@127.0.0.1:5672", exchange = "pg", routing_key = "orders" }}
#   kafka = {{ brokers = "127.0.0.1:9092", topic = "pg.orders" }}            key: the row
#   stdout = {{}}                                                            JSON lines on standard output
"#,
        delivered = duration_text(DEFAULT_RETENTION_DELIVERED),
        failed = duration_text(DEFAULT_RETENTION_FAILED),
        max_retries = retry.max_retries,
        initial = duration_text(retry.initial_interval),
        max = duration_text(retry.max_interval),
        timeout = duration_text(retry.timeout),
    );
    if tables.is_empty() {
        out.push_str(
            "\n# The database has no tables yet: create one, then run `pgevents init` again\n\
             # or add a [[trigger]] block as above.\n",
        );
    }
    let mut names: Vec<String> = Vec::with_capacity(tables.len());
    for table in tables {
        let name = unique(trigger_name(&table.name), &names);
        let hook = format!(
            "{}_HOOK",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        let _ = write!(
            out,
            "\n# [[trigger]]\n\
             # name = {name}\n\
             # table = {table}\n\
             # operations = [{operations}]\n",
            name = toml_string(&name),
            table = toml_string(&table.name.to_string()),
        );
        if !table.keyed {
            out.push_str(
                "# ordering = \"none\"              # no primary key or replica identity index: per-row order is impossible\n",
            );
        }
        let _ = writeln!(
            out,
            "# stdout = {{}}                    # or webhook = {{ url_from_env = \"{hook}\" }}, or a broker (see above)"
        );
        names.push(name);
    }
    out
}

/// A trigger name for `table`: `<table>_events`, with the schema in front outside `public`;
/// characters a trigger name may not hold become `_`.
fn trigger_name(table: &QualifiedName) -> String {
    let base = if table.schema == pgevents_log::DEFAULT_SCHEMA {
        format!("{}_events", table.name)
    } else {
        format!("{}_{}_events", table.schema, table.name)
    };
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(MAX_TRIGGER_NAME_BYTES);
    name
}

/// `name`, or `name` with a number at its end when `taken` holds it already.
fn unique(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            let mut base = name.clone();
            base.truncate(MAX_TRIGGER_NAME_BYTES - suffix.len());
            base + &suffix
        })
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or(name)
}

/// `d` as the config writes durations, in the largest unit that holds it whole.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ]
    .into_iter()
    .find(|(unit, _)| ms > 0 && ms.is_multiple_of(*unit))
    .map_or_else(
        || format!("{ms}ms"),
        |(unit, name)| format!("{}{name}", ms / unit),
    )
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str, keyed: bool) -> Table {
        Table {
            name: QualifiedName {
                schema: schema.into(),
                name: name.into(),
            },
            keyed,
        }
    }

    #[test]
    fn durations_in_their_largest_whole_unit() {
        assert_eq!(duration_text(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(duration_text(Duration::from_secs(300)), "5m");
        assert_eq!(duration_text(Duration::from_secs(30)), "30s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::ZERO), "0ms");
    }

    #[test]
    fn trigger_names_are_valid_and_unique() {
        assert_eq!(
            trigger_name(&table("public", "orders", true).name),
            "orders_events"
        );
        assert_eq!(
            trigger_name(&table("billing", "Invoice Lines", true).name),
            "billing_Invoice_Lines_events"
        );
        let long = "x".repeat(80);
        assert_eq!(trigger_name(&table("public", &long, true).name).len(), 63);
        let taken = vec!["a_b_events".to_string(), "a_b_events_2".to_string()];
        assert_eq!(unique("a_b_events".into(), &taken), "a_b_events_3");
        assert_eq!(unique("c_events".into(), &taken), "c_events");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("a\nb"), r#""a\u000Ab""#);
    }

    #[test]
    fn every_table_is_a_commented_trigger_block() {
        let text = render(
            "shop",
            &[
                table("public", "orders", true),
                table("audit", "log lines", false),
            ],
        );
        assert!(text.contains("# table = \"public.orders\"\n"), "{text}");
        assert!(
            text.contains("# name = \"audit_log_lines_events\"\n"),
            "{text}"
        );
        assert!(
            text.contains("# table = \"audit.\\\"log lines\\\"\"\n"),
            "{text}"
        );
        assert!(text.contains("# ordering = \"none\""), "{text}");
        assert_eq!(text.matches("\n# [[trigger]]\n").count(), 2);
        assert!(!text.contains("\n[[trigger]]"));
        assert!(text.contains("delivered = \"7d\""));
        assert!(text.contains("retry = { max_retries = 5, initial_interval = \"1s\", max_interval = \"5m\", timeout = \"30s\" }"));
    }
}
