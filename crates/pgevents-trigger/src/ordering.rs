//! Ordering keys: which events of a trigger are delivered in commit order, and the one place
//! that renders the SQL computing an event's keys, for both capture modes.
//!
//! The log orders events that share a key (`row_key`): an event is claimed only when no
//! earlier pending event has its key (see the log schema's `claim`). Trigger capture computes
//! the keys in the capture function, logical capture in the statement that writes decoded
//! rows; both call [`key_sql`] and [`old_key_sql`], so the same row gets the same key in both
//! modes, and a switch of mode keeps order.

use pgevents_postgres::quote_ident;

/// In which order a trigger's events are delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Ordering {
    /// The events of one row (its primary key, else its replica identity index) in commit
    /// order; a failing event holds back only later events of that row. An UPDATE that
    /// changes the key waits for earlier events of both keys, and later events of both wait
    /// for it.
    #[default]
    Row,
    /// All the trigger's events in commit order: a failing event holds back all later ones.
    Table,
    /// No order: events are delivered as soon as they are due.
    None,
    /// The events that share the values of these columns (a group, e.g. an account) in
    /// commit order; a failing event holds back only later events of its group. An UPDATE
    /// that moves a row to another group waits for earlier events of both groups, and later
    /// events of both wait for it.
    Columns(Vec<String>),
}

impl Ordering {
    /// The config spelling's kind: `"row"`, `"table"`, `"none"` or `"columns"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ordering::Row => "row",
            Ordering::Table => "table",
            Ordering::None => "none",
            Ordering::Columns(_) => "columns",
        }
    }

    /// The columns that make a group, for `Columns` ordering.
    pub fn group_columns(&self) -> Option<&[String]> {
        match self {
            Ordering::Columns(columns) => Some(columns),
            _ => None,
        }
    }

    /// How the log's trigger definitions record it: the config spelling, as JSON
    /// (`"row"`, ..., or `{"columns": [...]}`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Ordering::Columns(columns) => serde_json::json!({ "columns": columns }),
            other => other.as_str().into(),
        }
    }

    /// The ordering [`Ordering::to_json`] recorded, or `None` for JSON it does not write.
    pub fn from_json(value: &serde_json::Value) -> Option<Ordering> {
        match value.as_str() {
            Some("row") => Some(Ordering::Row),
            Some("table") => Some(Ordering::Table),
            Some("none") => Some(Ordering::None),
            Some(_) => None,
            None => serde_json::from_value(value.get("columns")?.clone())
                .ok()
                .map(Ordering::Columns),
        }
    }
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ordering::Columns(columns) => write!(f, "columns {columns:?}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The SQL of the ordering key of the row image `record` (`NEW`, `OLD`, or a table alias)
/// under `ordering`, for a table whose rows are identified by `key_columns`; `seed` is the SQL
/// of the trigger's id (a constant, or a column), so keys of different triggers differ.
///
/// `Row` ordering with no key columns gives no key: such a table cannot be ordered per row
/// (`check` says so and offers `"table"` or `"none"`). `Columns` ordering keys the values
/// of its columns as one row value, so a NULL is a group of its own, not "no key".
pub fn key_sql(ordering: &Ordering, record: &str, key_columns: &[String], seed: &str) -> String {
    if *ordering == Ordering::Table {
        return format!("hashtextextended('', {seed})");
    }
    match (ordering, keyed_columns(ordering, key_columns)) {
        (_, None) => "NULL::bigint".into(),
        (Ordering::Row, Some([one])) => format!(
            "hashtextextended(({record}.{})::text, {seed})",
            quote_ident(one)
        ),
        (_, Some(columns)) => format!(
            "hashtextextended(ROW({})::text, {seed})",
            qualified(record, columns)
        ),
    }
}

/// The columns whose values make a row's key under `ordering` (`key_columns` for `Row`),
/// when there are any.
fn keyed_columns<'a>(ordering: &'a Ordering, key_columns: &'a [String]) -> Option<&'a [String]> {
    let columns = match ordering {
        Ordering::Row => key_columns,
        Ordering::Columns(columns) => columns.as_slice(),
        Ordering::Table | Ordering::None => return None,
    };
    (!columns.is_empty()).then_some(columns)
}

/// `record."a", record."b"`.
pub(crate) fn qualified(record: &str, columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{record}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL of an UPDATE's old key: the key of `old` when it differs from the key of `new`
/// (the UPDATE changed the row's key, or moved it to another group), else NULL.
pub fn old_key_sql(
    ordering: &Ordering,
    old: &str,
    new: &str,
    key_columns: &[String],
    seed: &str,
) -> String {
    if keyed_columns(ordering, key_columns).is_none() {
        return "NULL::bigint".into();
    }
    let old_key = key_sql(ordering, old, key_columns, seed);
    let new_key = key_sql(ordering, new, key_columns, seed);
    format!("CASE WHEN {old_key} IS DISTINCT FROM {new_key} THEN {old_key} END")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_quote_columns() {
        assert_eq!(
            key_sql(&Ordering::Row, "NEW", &["Id \"x\"".into()], "3"),
            "hashtextextended((NEW.\"Id \"\"x\"\"\")::text, 3)"
        );
        assert!(
            key_sql(&Ordering::Row, "OLD", &["a".into(), "b".into()], "1")
                .contains("ROW(OLD.\"a\", OLD.\"b\")")
        );
        assert_eq!(key_sql(&Ordering::Row, "NEW", &[], "1"), "NULL::bigint");
        assert_eq!(
            key_sql(&Ordering::None, "NEW", &["a".into()], "1"),
            "NULL::bigint"
        );
        assert_eq!(
            key_sql(&Ordering::Table, "NEW", &[], "u.trigger_id"),
            "hashtextextended('', u.trigger_id)"
        );
    }

    #[test]
    fn old_keys_only_when_the_key_changed() {
        let sql = old_key_sql(&Ordering::Row, "OLD", "NEW", &["id".into()], "7");
        assert_eq!(
            sql,
            "CASE WHEN hashtextextended((OLD.\"id\")::text, 7) IS DISTINCT FROM \
             hashtextextended((NEW.\"id\")::text, 7) THEN hashtextextended((OLD.\"id\")::text, 7) END"
        );
        assert_eq!(
            old_key_sql(&Ordering::Table, "OLD", "NEW", &["id".into()], "7"),
            "NULL::bigint"
        );
    }

    #[test]
    fn group_keys_are_row_values_of_the_group_columns() {
        let group = Ordering::Columns(vec!["account_id".into()]);
        // A row value, even of one column: a NULL account is a group, not "no key".
        assert_eq!(
            key_sql(&group, "NEW", &["id".into()], "3"),
            "hashtextextended(ROW(NEW.\"account_id\")::text, 3)"
        );
        assert!(old_key_sql(&group, "o", "n", &[], "3").starts_with(
            "CASE WHEN hashtextextended(ROW(o.\"account_id\")::text, 3) IS DISTINCT FROM"
        ));
        assert_eq!(
            key_sql(&Ordering::Columns(vec![]), "NEW", &[], "3"),
            "NULL::bigint"
        );
        assert_eq!(
            group.to_json(),
            serde_json::json!({"columns": ["account_id"]})
        );
        assert_eq!(Ordering::Row.to_json(), serde_json::json!("row"));
        for ordering in [Ordering::Row, Ordering::Table, Ordering::None, group] {
            assert_eq!(Ordering::from_json(&ordering.to_json()), Some(ordering));
        }
        assert_eq!(Ordering::from_json(&serde_json::json!("rows")), None);
    }
}
