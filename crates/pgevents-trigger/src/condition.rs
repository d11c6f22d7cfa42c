//! Row filters: a trigger's `where` condition, made safe to evaluate on a row image.
//!
//! The condition is written against the table's columns (`status <> 'draft'`). Trigger
//! capture evaluates it in the triggers' `WHEN` clauses on `NEW` / `OLD`, logical capture in
//! the statement that writes decoded rows on its row aliases; both need every column
//! reference qualified. Rather than parse SQL, pgevents lets PostgreSQL do it: a temporary
//! view selecting the condition from a temporary copy of the table's columns under the
//! alias `pgevents_row`, beside a
//! second range entry so that the deparsed text (`pg_get_viewdef`) qualifies every column,
//! gives the condition with each reference as `pgevents_row.<column>`. A temporary trigger
//! `WHEN` on a copy of the table's columns then proves it is a condition a trigger accepts
//! (boolean, no subqueries), so both modes accept and refuse the same conditions.

use pgevents_postgres::QualifiedName;
use tokio_postgres::GenericClient;

/// The alias the deparsed condition qualifies columns with.
const ALIAS: &str = "pgevents_row";
/// The probe objects, in the session's temporary schema.
const PROBE: &str = "pg_temp.pgevents_condition_probe";
const PROBE_VIEW: &str = "pg_temp.pgevents_condition_view";

/// Why a `where` condition could not be qualified.
#[derive(Debug, thiserror::Error)]
pub enum ConditionError {
    /// PostgreSQL (or pgevents) refused it as a condition on the table's rows.
    #[error("the condition {condition:?} on table {table} cannot filter its rows: {detail}")]
    Bad {
        /// The table.
        table: String,
        /// The condition as written.
        condition: String,
        /// What PostgreSQL (or pgevents) said about it.
        detail: String,
    },
    /// Checking it failed for another reason (a lost connection).
    #[error(transparent)]
    Postgres(#[from] pgevents_postgres::Error),
}

/// A `where` condition with every column reference qualified, ready to be evaluated on any
/// row image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition(String);

impl Condition {
    /// The condition on the row image `record` (`NEW`, `OLD`, or a row alias).
    pub fn on(&self, record: &str) -> String {
        self.0.replace(&format!("{ALIAS}."), &format!("{record}."))
    }
}

/// Qualifies `condition` on the rows of `table`: a [`Condition`], or
/// [`ConditionError::Bad`] with PostgreSQL's own message when it is not a valid condition
/// of a trigger on that table. Creates and drops temporary objects in the session only.
pub async fn qualify(
    client: &impl GenericClient,
    table: &QualifiedName,
    condition: &str,
) -> Result<Condition, ConditionError> {
    let bad = |detail: String| ConditionError::Bad {
        table: table.to_string(),
        condition: condition.to_string(),
        detail,
    };
    if condition.to_lowercase().contains(ALIAS) {
        return Err(bad(format!("{ALIAS} is a name pgevents reserves")));
    }
    let steps = [
        format!("DROP TABLE IF EXISTS {PROBE} CASCADE"),
        format!("CREATE TEMPORARY TABLE {PROBE} (LIKE {})", table.quoted()),
        format!(
            "CREATE TEMPORARY VIEW {PROBE_VIEW} AS SELECT (\n{condition}\n) AS pgevents_matches
               FROM {PROBE} AS {ALIAS}, (SELECT 1) AS pgevents_dummy"
        ),
    ];
    let result = probe(client, &steps).await;
    let deparsed = match result {
        Ok(()) => client
            .query_one(
                &format!("SELECT pg_get_viewdef('{PROBE_VIEW}'::regclass, false)"),
                &[],
            )
            .await
            .map(|r| r.get::<_, String>(0)),
        Err(e) => Err(e),
    };
    let qualified = match deparsed {
        Ok(text) => extract(&text).map(|c| Condition(c.to_string())),
        Err(e) => return Err(classify(e, bad)),
    };
    let Some(qualified) = qualified else {
        cleanup(client).await;
        return Err(bad("PostgreSQL read it as more than one condition".into()));
    };
    let trigger = format!(
        "CREATE TRIGGER pgevents_condition_probe AFTER INSERT ON {PROBE} FOR EACH ROW
           WHEN ({}) EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        qualified.on("NEW")
    );
    let checked = probe(client, &[trigger]).await;
    cleanup(client).await;
    checked.map_err(|e| classify(e, bad))?;
    Ok(qualified)
}

async fn probe(client: &impl GenericClient, steps: &[String]) -> Result<(), tokio_postgres::Error> {
    for step in steps {
        // One statement per prepared query: a condition cannot smuggle in another.
        client.execute(step.as_str(), &[]).await?;
    }
    Ok(())
}

async fn cleanup(client: &impl GenericClient) {
    // Inside a failed transaction this fails too, and the rollback removes the objects.
    let _ = client
        .execute(&format!("DROP TABLE IF EXISTS {PROBE} CASCADE"), &[])
        .await;
}

/// A database error about the condition is the condition's problem; anything else (a lost
/// connection) is the query's.
fn classify(e: tokio_postgres::Error, bad: impl Fn(String) -> ConditionError) -> ConditionError {
    match e.as_db_error() {
        Some(db) => bad(db.message().to_string()),
        None => pgevents_postgres::Error::query("checking a trigger's `where` condition", e).into(),
    }
}

/// The condition in a deparsed `SELECT (<condition>) AS pgevents_matches FROM ...`.
fn extract(viewdef: &str) -> Option<&str> {
    let select = viewdef.trim_start().strip_prefix("SELECT ")?;
    let end = select.rfind(" AS pgevents_matches")?;
    let condition = select[..end].trim();
    (!condition.is_empty()
        && !condition.contains("pgevents_matches")
        && !condition.contains("pgevents_dummy"))
    .then_some(condition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_cut_from_the_view_and_moved_to_a_record() {
        let viewdef = " SELECT ((pgevents_row.status <> 'draft'::text) AND (pgevents_row.\"Odd\" > 3)) AS pgevents_matches\n   FROM tt pgevents_row,\n    ( SELECT 1 AS \"?column?\") pgevents_dummy;";
        let condition = Condition(extract(viewdef).expect("a condition").to_string());
        assert_eq!(
            condition.on("NEW"),
            "((NEW.status <> 'draft'::text) AND (NEW.\"Odd\" > 3))"
        );
        assert_eq!(extract(" SELECT  AS pgevents_matches FROM t"), None);
    }
}
