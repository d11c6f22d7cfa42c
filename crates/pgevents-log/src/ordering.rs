//! Ordering keys: which events of a trigger are delivered in commit order, and the one place
//! that renders the SQL computing an event's keys, for both capture modes.
//!
//! The log orders events that share a key (`row_key`): an event is claimed only when no
//! earlier pending event has its key (see the log schema's `claim`). Trigger capture computes
//! the keys in the capture function, logical capture in the statement that writes decoded
//! rows; both call [`key_sql`] and [`old_key_sql`], so the same row gets the same key in both
//! modes, and a switch of mode keeps order.

use crate::quote_ident;

/// In which order a trigger's events are delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
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
}

impl Ordering {
    /// The config spelling: `"row"`, `"table"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Row => "row",
            Ordering::Table => "table",
            Ordering::None => "none",
        }
    }
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SQL of the ordering key of the row image `record` (`NEW`, `OLD`, or a table alias)
/// under `ordering`, for a table whose rows are identified by `key_columns`; `seed` is the SQL
/// of the trigger's id (a constant, or a column), so keys of different triggers differ.
///
/// `Row` ordering with no key columns gives no key: such a table cannot be ordered per row
/// (`check` says so and offers `"table"` or `"none"`).
pub fn key_sql(ordering: Ordering, record: &str, key_columns: &[String], seed: &str) -> String {
    match (ordering, key_columns) {
        (Ordering::None, _) | (Ordering::Row, []) => "NULL::bigint".into(),
        (Ordering::Table, _) => format!("hashtextextended('', {seed})"),
        (Ordering::Row, [one]) => format!(
            "hashtextextended(({record}.{})::text, {seed})",
            quote_ident(one)
        ),
        (Ordering::Row, many) => format!(
            "hashtextextended(ROW({})::text, {seed})",
            many.iter()
                .map(|c| format!("{record}.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The SQL of an UPDATE's old key: the key of `old` when it differs from the key of `new`
/// (the UPDATE changed the row's key), else NULL.
pub fn old_key_sql(
    ordering: Ordering,
    old: &str,
    new: &str,
    key_columns: &[String],
    seed: &str,
) -> String {
    if ordering != Ordering::Row || key_columns.is_empty() {
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
            key_sql(Ordering::Row, "NEW", &["Id \"x\"".into()], "3"),
            "hashtextextended((NEW.\"Id \"\"x\"\"\")::text, 3)"
        );
        assert!(
            key_sql(Ordering::Row, "OLD", &["a".into(), "b".into()], "1")
                .contains("ROW(OLD.\"a\", OLD.\"b\")")
        );
        assert_eq!(key_sql(Ordering::Row, "NEW", &[], "1"), "NULL::bigint");
        assert_eq!(
            key_sql(Ordering::None, "NEW", &["a".into()], "1"),
            "NULL::bigint"
        );
        assert_eq!(
            key_sql(Ordering::Table, "NEW", &[], "u.trigger_id"),
            "hashtextextended('', u.trigger_id)"
        );
    }

    #[test]
    fn old_keys_only_when_the_key_changed() {
        let sql = old_key_sql(Ordering::Row, "OLD", "NEW", &["id".into()], "7");
        assert_eq!(
            sql,
            "CASE WHEN hashtextextended((OLD.\"id\")::text, 7) IS DISTINCT FROM \
             hashtextextended((NEW.\"id\")::text, 7) THEN hashtextextended((OLD.\"id\")::text, 7) END"
        );
        assert_eq!(
            old_key_sql(Ordering::Table, "OLD", "NEW", &["id".into()], "7"),
            "NULL::bigint"
        );
    }
}
