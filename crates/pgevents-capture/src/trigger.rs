//! Trigger capture: one generated plpgsql function and one to three triggers per watched table.
//!
//! The function is generated per trigger so that everything known at install time (the
//! trigger's id, the primary-key expression for per-row ordering) is a constant in its body:
//! the writer pays for one `INSERT` into an index-free table, a `to_json` of the row, and an
//! advisory-lock probe that decides whether a sleeping dispatcher needs a `NOTIFY`.

use pgevents_event::Action;
use pgevents_log::{wake_channel, wake_key, Error, LogSchema};
use pgevents_postgres::{quote_ident, quote_literal, QualifiedName};
use pgevents_trigger::image::{image_sql, in_table_order};
use pgevents_trigger::ordering::{key_sql, old_key_sql};
use pgevents_trigger::{Ordering, Trigger};
use tokio_postgres::{Client, GenericClient};

use pgevents_postgres::catalog::{describe_table, TableInfo};
use pgevents_trigger::condition::Condition;

/// The PostgreSQL trigger names used for `name` on its table (always within 63 bytes, and
/// distinct for distinct names however long, so long names never collide).
fn pg_trigger_names(schema: &LogSchema, name: &str) -> [String; 5] {
    let mut prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if prefix.is_empty() {
        prefix.push('t');
    }
    let hash = schema.key(&format!("trigger:{name}")) as u64 as u32;
    let base = format!("pgevents_{prefix}_{hash:08x}");
    [
        format!("{base}_row"),
        format!("{base}_upd"),
        format!("{base}_trunc"),
        format!("{base}_ins"),
        format!("{base}_del"),
    ]
}

async fn table_info(
    client: &impl GenericClient,
    table: &QualifiedName,
) -> Result<TableInfo, Error> {
    describe_table(client, table)
        .await?
        .ok_or_else(|| Error::NoSuchTable(table.to_string()))
}

fn dollar_quote(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = format!("$pgevents{n}$");
        if !body.contains(&tag) {
            return format!("{tag}{body}{tag}");
        }
        n += 1;
    }
}

/// The body of trigger `id`'s capture function: the statements a writer runs.
fn capture_body<D>(
    schema: &LogSchema,
    id: i32,
    spec: &Trigger<D>,
    notify: bool,
    info: &TableInfo,
) -> String {
    let capture = schema.object("capture");
    let seed = id.to_string();
    let key_columns = info.key_columns.as_slice();
    let payload = in_table_order(spec.payload_columns.as_deref(), &info.columns);
    let new_image = image_sql("NEW", payload.as_deref());
    let old_image = image_sql("OLD", payload.as_deref());
    let new_key = key_sql(&spec.ordering, "NEW", key_columns, &seed);
    let old_key = key_sql(&spec.ordering, "OLD", key_columns, &seed);
    let changed_key = old_key_sql(&spec.ordering, "OLD", "NEW", key_columns, &seed);
    let wake = if notify {
        format!(
            "IF NOT pg_try_advisory_xact_lock_shared({}) THEN
        PERFORM pg_notify({}, '');
    END IF;",
            wake_key(schema),
            quote_literal(&wake_channel(schema))
        )
    } else {
        String::new()
    };
    format!(
        "
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {capture} (trigger_id, op, row_key, new_row)
        VALUES ({id}, 'I', {new_key}, {new_image});
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {capture} (trigger_id, op, row_key, old_key, old_row, new_row)
        VALUES ({id}, 'U', {new_key}, {changed_key}, {old_image}, {new_image});
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {capture} (trigger_id, op, row_key, old_row)
        VALUES ({id}, 'D', {old_key}, {old_image});
    ELSE
        INSERT INTO {capture} (trigger_id, op) VALUES ({id}, 'T');
    END IF;
    {wake}
    RETURN NULL;
END
"
    )
}

/// The DDL creating (or replacing) trigger `id`'s capture function with `body`.
fn capture_function(schema: &LogSchema, id: i32, body: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql
         SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body};
         COMMENT ON FUNCTION {func}() IS {comment}",
        func = schema.object(&format!("capture_{id}")),
        body = dollar_quote(body),
        comment = quote_literal(&format!(
            "pgevents capture function, log schema version {}",
            pgevents_log::SCHEMA_VERSION
        )),
    )
}

/// Everything that keeps `spec` from being installed by the current role, as typed errors:
/// [`Error::NoSuchTable`], [`Error::NoSuchColumn`] for each missing `columns`,
/// `payload_columns` or `ordering.columns` entry, [`Error::Unorderable`], — when
/// `need_trigger_privilege` (trigger capture) — [`Error::NotPermitted`] when the role may not
/// create triggers on the table, and [`Error::BadCondition`] for a `where` PostgreSQL rejects.
/// Changes nothing (the condition is tried on temporary objects of the session only).
pub async fn trigger_problems<D>(
    client: &impl GenericClient,
    spec: &Trigger<D>,
    need_trigger_privilege: bool,
) -> Result<Vec<Error>, Error> {
    let info = match table_info(client, &spec.table).await {
        Ok(info) => info,
        Err(e @ Error::NoSuchTable(_)) => return Ok(vec![e]),
        Err(e) => return Err(e),
    };
    let mut problems = missing_columns(spec, &info.columns);
    if need_trigger_privilege {
        let may_trigger: bool = client
            .query_one(
                "SELECT has_table_privilege($1, 'TRIGGER')",
                &[&spec.table.quoted()],
            )
            .await
            .map_err(|e| Error::query(format!("checking privileges on {}", spec.table), e))?
            .get(0);
        if !may_trigger {
            problems.push(Error::NotPermitted(format!(
                "the current role may not create triggers on {}: run install as the table's owner, or GRANT TRIGGER ON {} TO <role>",
                spec.table,
                spec.table.quoted()
            )));
        }
    }
    if spec.ordering == Ordering::Row && info.key_columns.is_empty() {
        problems.push(Error::Unorderable(spec.table.to_string()));
    }
    // Last: a refused condition may leave a surrounding transaction failed.
    if let Some(condition) = &spec.condition {
        match pgevents_trigger::condition::qualify(client, &spec.table, condition)
            .await
            .map_err(Error::from)
        {
            Ok(_) => {}
            Err(e @ Error::BadCondition { .. }) => problems.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(problems)
}

/// A [`Error::NoSuchColumn`] for every column `spec` names (in `columns`,
/// `payload_columns` or `ordering.columns`) that is not among `table_columns`.
pub fn missing_columns<D>(spec: &Trigger<D>, table_columns: &[String]) -> Vec<Error> {
    [
        ("columns", spec.columns.as_deref()),
        ("payload_columns", spec.payload_columns.as_deref()),
        ("ordering.columns", spec.ordering.group_columns()),
    ]
    .into_iter()
    .flat_map(|(field, names)| {
        names
            .into_iter()
            .flatten()
            .filter(|c| !table_columns.contains(c))
            .map(move |column| Error::NoSuchColumn {
                table: spec.table.to_string(),
                column: column.clone(),
                field,
            })
    })
    .collect()
}

/// Checks, without changing anything, that `spec` can be installed: the table and the
/// `columns` exist and the current role may create triggers on the table. Returns every
/// problem found, each saying what to do.
pub async fn check_trigger<D>(
    client: &impl GenericClient,
    spec: &Trigger<D>,
) -> Result<Vec<String>, Error> {
    Ok(trigger_problems(client, spec, true)
        .await?
        .iter()
        .map(Error::to_string)
        .collect())
}

/// Fails with the first of [`trigger_problems`], changing nothing: callers installing
/// several triggers check them all first, so that a mistake in one leaves no other
/// half-installed.
pub async fn validate_trigger<D>(
    client: &impl GenericClient,
    spec: &Trigger<D>,
    need_trigger_privilege: bool,
) -> Result<(), Error> {
    match trigger_problems(client, spec, need_trigger_privilege)
        .await?
        .into_iter()
        .next()
    {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The log's record of how `spec` is captured: what install registers for it.
fn definition<D>(spec: &Trigger<D>, key_columns: &[String], notify: bool) -> serde_json::Value {
    let mut definition = spec.definition(key_columns, "trigger");
    definition["notify"] = notify.into();
    definition
}

/// The PostgreSQL triggers install creates for `spec`: (name, whether it is wanted).
///
/// One row trigger serves every operation; an UPDATE filtered by `columns` has its own (with
/// a `WHEN` clause); a `where` condition gives each operation its own, since an INSERT
/// trigger's `WHEN` cannot name `OLD` nor a DELETE trigger's `NEW`.
fn wanted_triggers<D>(schema: &LogSchema, spec: &Trigger<D>) -> [(String, bool); 5] {
    let [row, upd, trunc, ins, del] = pg_trigger_names(schema, &spec.name);
    let filtered = spec.condition.is_some();
    let filtered_update = spec.captures(Action::Update) && (spec.columns.is_some() || filtered);
    let row_wanted = !filtered
        && (spec.captures(Action::Insert)
            || spec.captures(Action::Delete)
            || (spec.captures(Action::Update) && !filtered_update));
    [
        (row, row_wanted),
        (upd, filtered_update),
        (trunc, spec.captures(Action::Truncate)),
        (ins, filtered && spec.captures(Action::Insert)),
        (del, filtered && spec.captures(Action::Delete)),
    ]
}

/// What follows `CREATE TRIGGER <name>` for each wanted trigger of `spec` (same order as
/// [`wanted_triggers`]), calling `func`; `condition` is `spec`'s qualified `where`.
fn trigger_clauses<D>(
    schema: &LogSchema,
    spec: &Trigger<D>,
    condition: Option<&Condition>,
    func: &str,
) -> Vec<(String, String)> {
    let [row, upd, trunc, ins, del] = wanted_triggers(schema, spec);
    let each_row = |events: &str, when: Option<String>| {
        let when = when.map_or(String::new(), |w| format!(" WHEN ({w})"));
        format!(
            "AFTER {events} ON {} FOR EACH ROW{when} EXECUTE FUNCTION {func}()",
            spec.table.quoted()
        )
    };
    let mut row_ops: Vec<&str> = Vec::new();
    if spec.captures(Action::Insert) {
        row_ops.push("INSERT");
    }
    if spec.captures(Action::Update) && !upd.1 {
        row_ops.push("UPDATE");
    }
    if spec.captures(Action::Delete) {
        row_ops.push("DELETE");
    }
    let changed = spec.columns.as_ref().map(|columns| {
        columns
            .iter()
            .map(|c| {
                let c = quote_ident(c);
                format!("OLD.{c}::text IS DISTINCT FROM NEW.{c}::text")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    });
    let matches = condition.map(|c| format!("({}) OR ({})", c.on("OLD"), c.on("NEW")));
    let update_when = match (changed, matches) {
        (Some(changed), Some(matches)) => Some(format!("({changed}) AND ({matches})")),
        (changed, matches) => changed.or(matches),
    };
    [
        (row, each_row(&row_ops.join(" OR "), None)),
        (upd, each_row("UPDATE", update_when)),
        (
            trunc,
            format!(
                "AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {func}()",
                spec.table.quoted()
            ),
        ),
        (ins, each_row("INSERT", condition.map(|c| c.on("NEW")))),
        (del, each_row("DELETE", condition.map(|c| c.on("OLD")))),
    ]
    .into_iter()
    .filter(|((_, wanted), _)| *wanted)
    .map(|((name, _), clause)| (name, clause))
    .collect()
}

/// The trigger's log id when `spec` is installed exactly as [`install_trigger`] would
/// install it now — registered with this table and definition, its PostgreSQL triggers in
/// place on the table and calling its capture function, and that function from this
/// version of pgevents — else `None`. Needs only read access (the catalogs and the log's
/// `trigger` table): a role that may not install can tell whether it needs to.
pub async fn installed_trigger<D>(
    client: &impl GenericClient,
    schema: &LogSchema,
    spec: &Trigger<D>,
    notify: bool,
) -> Result<Option<i32>, Error> {
    let Some(info) = describe_table(client, &spec.table).await? else {
        return Ok(None);
    };
    let key_columns = info.key_columns.as_slice();
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT id, schema_name, table_name, definition FROM {} WHERE name = $1",
                schema.object("trigger")
            ),
            &[&spec.name],
        )
        .await
        .map_err(|e| Error::query(format!("looking up trigger {:?}", spec.name), e))?
    else {
        return Ok(None);
    };
    let id: i32 = row.get(0);
    let registered = QualifiedName {
        schema: row.get(1),
        name: row.get(2),
    };
    let recorded: serde_json::Value = row.get(3);
    if registered != spec.table || recorded != definition(spec, key_columns, notify) {
        return Ok(None);
    }
    let func = format!("{}()", schema.object(&format!("capture_{id}")));
    let wanted = wanted_triggers(schema, spec);
    let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    let present: Vec<String> = client
        .query(
            "SELECT t.tgname::text FROM pg_trigger t
              WHERE t.tgrelid = $1 AND t.tgname = ANY($2) AND t.tgenabled <> 'D'
                AND t.tgfoid = to_regprocedure($3)",
            &[&info.oid, &names, &func],
        )
        .await
        .map_err(|e| Error::query(format!("looking at the triggers on {}", spec.table), e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if wanted
        .iter()
        .any(|(name, want)| *want != present.contains(name))
    {
        return Ok(None);
    }
    // The function's body as this version writes it: any other (an older release's, or
    // one changed by hand) is replaced by install.
    let current: bool = client
        .query_one(
            "SELECT coalesce((SELECT prosrc = $2 FROM pg_proc WHERE oid = to_regprocedure($1)), false)",
            &[&func, &capture_body(schema, id, spec, notify, &info)],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("looking at the capture function of {:?}", spec.name),
                e,
            )
        })?
        .get(0);
    Ok(current.then_some(id))
}

/// Installs (or replaces) capture for `spec`, idempotently; returns the trigger's log id.
/// With `notify`, writers wake a sleeping dispatcher with a `NOTIFY` (see
/// [`pgevents_log::wake_key`]); without, dispatchers poll.
///
/// When everything is installed as `spec` asks already, it changes nothing and takes no lock
/// on the table. Otherwise the DDL waits at most [`pgevents_log::LOCK_TIMEOUT_MS`] for the
/// table's lock (an application transaction may hold it for long, and every later writer of
/// the table would queue behind the waiting DDL): past that it fails with SQLSTATE 55P03,
/// changing nothing, and the caller tries again later.
///
/// Fails with [`Error::NoSuchTable`], [`Error::NoSuchColumn`] or [`Error::Unorderable`]
/// before changing anything.
pub async fn install_trigger<D>(
    client: &mut Client,
    schema: &LogSchema,
    spec: &Trigger<D>,
    notify: bool,
) -> Result<i32, Error> {
    if let Some(id) = installed_trigger(&*client, schema, spec, notify).await? {
        return Ok(id);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query("starting the trigger install", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema.key("install")],
    )
    .await
    .map_err(|e| Error::query("taking the install lock", e))?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        pgevents_log::LOCK_TIMEOUT_MS
    ))
    .await
    .map_err(|e| Error::query("setting the install's lock timeout", e))?;
    validate_trigger(&tx, spec, false).await?;
    let info = table_info(&tx, &spec.table).await?;
    let key_columns = info.key_columns.as_slice();
    let definition = definition(spec, key_columns, notify);
    let id =
        pgevents_log::store::register_trigger(&tx, schema, &spec.name, &spec.table, &definition)
            .await?;
    let func = schema.object(&format!("capture_{id}"));
    let table = spec.table.quoted();
    let condition = match &spec.condition {
        Some(text) => Some(pgevents_trigger::condition::qualify(&tx, &spec.table, text).await?),
        None => None,
    };
    let mut ddl = capture_function(schema, id, &capture_body(schema, id, spec, notify, &info));
    for name in pg_trigger_names(schema, &spec.name) {
        ddl.push_str(&format!(
            ";\nDROP TRIGGER IF EXISTS {} ON {table}",
            quote_ident(&name)
        ));
    }
    for (name, clause) in trigger_clauses(schema, spec, condition.as_ref(), &func) {
        ddl.push_str(&format!(
            ";\nCREATE TRIGGER {} {clause}",
            quote_ident(&name)
        ));
    }
    tx.batch_execute(&ddl).await.map_err(|e| {
        Error::query(
            format!(
                "installing capture triggers on {} (needs ownership of the table or the TRIGGER privilege)",
                spec.table
            ),
            e,
        )
    })?;
    tx.commit()
        .await
        .map_err(|e| Error::query("committing the trigger install", e))?;
    tracing::debug!(trigger = %spec.name, table = %spec.table, id, "capture installed");
    Ok(id)
}

/// Removes the capture triggers and function of trigger `name` (its logged events stay).
pub async fn uninstall_trigger(
    client: &Client,
    schema: &LogSchema,
    name: &str,
) -> Result<bool, Error> {
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT id, schema_name, table_name FROM {} WHERE name = $1",
                schema.object("trigger")
            ),
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("looking up trigger {name:?}"), e))?
    else {
        return Ok(false);
    };
    let id: i32 = row.get(0);
    let table = QualifiedName {
        schema: row.get(1),
        name: row.get(2),
    };
    let mut ddl = format!(
        "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n",
        pgevents_log::LOCK_TIMEOUT_MS
    );
    let table_exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
        .await
        .map_err(|e| Error::query(format!("looking up table {table}"), e))?
        .get(0);
    if table_exists {
        for trigger in pg_trigger_names(schema, name) {
            ddl.push_str(&format!(
                "DROP TRIGGER IF EXISTS {} ON {};\n",
                quote_ident(&trigger),
                table.quoted()
            ));
        }
    }
    ddl.push_str(&format!(
        "DROP FUNCTION IF EXISTS {}();\nCOMMIT",
        schema.object(&format!("capture_{id}"))
    ));
    client
        .batch_execute(&ddl)
        .await
        .map_err(|e| Error::query(format!("removing capture of trigger {name:?}"), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_fit_and_never_collide() {
        let schema = LogSchema::default();
        let long_a = format!("{}a", "x".repeat(200));
        let long_b = format!("{}b", "x".repeat(200));
        let a = pg_trigger_names(&schema, &long_a);
        let b = pg_trigger_names(&schema, &long_b);
        for n in a.iter().chain(&b) {
            assert!(n.len() <= 63, "{n}");
        }
        assert_ne!(a, b);
        assert!(pg_trigger_names(&schema, "Order Events")[0].starts_with("pgevents_order_events_"));
    }

    #[test]
    fn dollar_quoting_avoids_the_body() {
        assert_eq!(dollar_quote("x"), "$pgevents0$x$pgevents0$");
        assert!(dollar_quote("$pgevents0$").starts_with("$pgevents1$"));
    }
}
