//! Row images: the one place that renders the SQL of a captured row's JSON (`data.old` /
//! `data.new`), for both capture modes, so a row comes out byte for byte the same in each.
//!
//! Without `payload_columns` the image is `to_json(record)`. With it, the image is `to_json`
//! of a one-row subquery selecting only those columns of `record` under their own names:
//! PostgreSQL renders that row with the same `composite_to_json` as the whole row, so the
//! kept columns look exactly as they would in the full image.

use crate::ordering::qualified;

/// The SQL of the JSON image of `record` (`NEW`, `OLD`, or a row alias), keeping only
/// `payload_columns` (already in table order) when set.
pub fn image_sql(record: &str, payload_columns: Option<&[String]>) -> String {
    match payload_columns {
        None => format!("to_json({record})"),
        Some(columns) => format!(
            "to_json((SELECT pgevents_image FROM (SELECT {}) pgevents_image))",
            qualified(record, columns)
        ),
    }
}

/// `payload_columns` in the order of `table_columns` (the table's), dropping names the
/// table does not have; `None` when every column is kept.
pub fn in_table_order(
    payload_columns: Option<&[String]>,
    table_columns: &[String],
) -> Option<Vec<String>> {
    let wanted = payload_columns?;
    Some(
        table_columns
            .iter()
            .filter(|c| wanted.contains(c))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_quote_and_keep_table_order() {
        assert_eq!(image_sql("NEW", None), "to_json(NEW)");
        assert_eq!(
            image_sql("o", Some(&["a".into(), "B \"x\"".into()])),
            "to_json((SELECT pgevents_image FROM (SELECT o.\"a\", o.\"B \"\"x\"\"\") pgevents_image))"
        );
        let table: Vec<String> = ["id", "status", "note"].map(String::from).to_vec();
        assert_eq!(
            in_table_order(Some(&["note".into(), "id".into()]), &table),
            Some(vec!["id".to_string(), "note".to_string()])
        );
        assert_eq!(in_table_order(None, &table), None);
    }
}
