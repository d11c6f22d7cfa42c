//! The one description of a pgevents trigger, and the SQL both capture modes render from it.
//!
//! A [`Trigger`] says which table's changes become events (operations, the `columns` an
//! UPDATE must change, the `where` condition), what the events hold (`payload_columns`, the
//! payload [`Format`]), in which order they are delivered ([`Ordering`]), how failures are
//! retried ([`RetryPolicy`]) and where they go (its destination `D`). Every layer uses this
//! one type with the destination it knows: the config file gives a `Trigger` whose
//! destination is a sink's settings, the library one whose destination is a handler, the
//! dispatcher one with a ready sink, and capture (trigger or logical) reads only the parts
//! that decide what is captured, whatever the destination.
//!
//! The SQL that per-row order and payload parity rest on is rendered here once for both
//! capture modes: the ordering keys ([`ordering::key_sql`]), the row images
//! ([`image::image_sql`]) and the qualified filter ([`condition::qualify`]). Trigger capture
//! puts them in its generated functions, logical capture in the statement that writes
//! decoded rows, so the same row gets the same key and the same `data` in each mode.
//!
//! ```
//! use pgevents_postgres::QualifiedName;
//! use pgevents_trigger::{Ordering, Trigger};
//!
//! let table = QualifiedName::parse("orders").expect("a table name");
//! let trigger = Trigger::new("order_events", table, ())
//!     .ordering(Ordering::Columns(vec!["account_id".into()]))
//!     .condition("status <> 'draft'");
//! assert_eq!(trigger.table.to_string(), "public.orders");
//! ```

pub mod condition;
pub mod image;
pub mod ordering;

pub use condition::{Condition, ConditionError};
pub use ordering::Ordering;
pub use pgevents_delivery::RetryPolicy;
pub use pgevents_event::{Action, Format};
pub use pgevents_postgres::{QualifiedName, TableNameError};

/// Operations captured unless a trigger says otherwise.
pub const DEFAULT_OPERATIONS: [Action; 3] = [Action::Insert, Action::Update, Action::Delete];

/// One trigger: a table's changes, which of them, in what shape and order, retried how, to
/// which destination `D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger<D = ()> {
    /// The trigger's unique name (in payloads, the API and the CLI; PostgreSQL object names
    /// are derived from it, whatever its length).
    pub name: String,
    /// The watched table.
    pub table: QualifiedName,
    /// Which of INSERT, UPDATE, DELETE, TRUNCATE are captured (default
    /// [`DEFAULT_OPERATIONS`]).
    pub operations: Vec<Action>,
    /// When set, an UPDATE is captured only if one of these columns changed.
    pub columns: Option<Vec<String>>,
    /// Which events are delivered in commit order (default [`Ordering::Row`], which needs a
    /// primary key or a replica identity index).
    pub ordering: Ordering,
    /// When set, `data.old` / `data.new` hold only these columns (in table order); the
    /// others never reach the log.
    pub payload_columns: Option<Vec<String>>,
    /// When set (the config's `where`), an SQL condition on the row's columns: INSERT fires
    /// when the new row matches, DELETE when the old row does, UPDATE when either does.
    pub condition: Option<String>,
    /// The payload format (default seed).
    pub format: Format,
    /// Retries and the attempt timeout; `None` takes the policy of whatever runs the
    /// trigger (the listener builder's, else [`RetryPolicy::default`]).
    pub retry: Option<RetryPolicy>,
    /// Where the events go.
    pub destination: D,
}

impl<D> Trigger<D> {
    /// A trigger on `table` as users write it (`"orders"` means `public.orders`), named after
    /// the table (`public.orders`), with the defaults of [`Trigger::new`].
    pub fn for_table(table: &str, destination: D) -> Result<Trigger<D>, TableNameError> {
        let table = QualifiedName::parse(table)?;
        Ok(Trigger::new(table.to_string(), table, destination))
    }

    /// A trigger named `name` capturing INSERT, UPDATE and DELETE of `table`, ordered per
    /// row, delivered to `destination` in the seed format with the default retries.
    pub fn new(name: impl Into<String>, table: QualifiedName, destination: D) -> Trigger<D> {
        Trigger {
            name: name.into(),
            table,
            operations: DEFAULT_OPERATIONS.to_vec(),
            columns: None,
            ordering: Ordering::Row,
            payload_columns: None,
            condition: None,
            format: Format::Seed,
            retry: None,
            destination,
        }
    }

    /// The same trigger with another destination.
    pub fn with_destination<E>(&self, destination: E) -> Trigger<E> {
        Trigger {
            name: self.name.clone(),
            table: self.table.clone(),
            operations: self.operations.clone(),
            columns: self.columns.clone(),
            ordering: self.ordering.clone(),
            payload_columns: self.payload_columns.clone(),
            condition: self.condition.clone(),
            format: self.format,
            retry: self.retry,
            destination,
        }
    }

    /// The same trigger with its destination turned into another by `f`.
    pub fn map_destination<E>(self, f: impl FnOnce(D) -> E) -> Trigger<E> {
        let description = self.description();
        description.with_destination(f(self.destination))
    }

    /// The trigger without its destination: what capture needs.
    pub fn description(&self) -> Trigger {
        self.with_destination(())
    }

    /// Captures these operations (INSERT, UPDATE, DELETE, TRUNCATE).
    pub fn operations(mut self, operations: impl IntoIterator<Item = Action>) -> Trigger<D> {
        self.operations = operations.into_iter().collect();
        self
    }

    /// Captures an UPDATE only if one of `columns` changed.
    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Trigger<D> {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Delivers in this order.
    pub fn ordering(mut self, ordering: Ordering) -> Trigger<D> {
        self.ordering = ordering;
        self
    }

    /// Keeps only `columns` in `data.old` / `data.new`.
    pub fn payload_columns<S: Into<String>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Trigger<D> {
        self.payload_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Captures only the changes of rows matching `condition` (SQL on the row's columns).
    pub fn condition(mut self, condition: impl Into<String>) -> Trigger<D> {
        self.condition = Some(condition.into());
        self
    }

    /// Delivers payloads in `format`.
    pub fn format(mut self, format: Format) -> Trigger<D> {
        self.format = format;
        self
    }

    /// Retries failed deliveries under `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> Trigger<D> {
        self.retry = Some(policy);
        self
    }

    /// Whether the trigger captures `action`.
    pub fn captures(&self, action: Action) -> bool {
        self.operations.contains(&action)
    }

    /// How messages name this trigger: `trigger["order_events"]`.
    pub fn path(&self) -> String {
        format!("trigger[{:?}]", self.name)
    }

    /// The log's record of how this trigger is captured (its `trigger.definition`), for a
    /// table whose rows are identified by `key_columns`, in capture mode `capture`.
    pub fn definition(&self, key_columns: &[String], capture: &str) -> serde_json::Value {
        serde_json::json!({
            "operations": self.operations.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "columns": self.columns,
            "ordering": self.ordering.to_json(),
            "payload_columns": self.payload_columns,
            "where": self.condition,
            "key": key_columns,
            "capture": capture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_for_a_table_is_named_after_it() {
        let trigger = Trigger::for_table("orders", ()).expect("a table name");
        assert_eq!(trigger.name, "public.orders");
        assert_eq!(trigger.table.to_string(), "public.orders");
        assert!(Trigger::for_table("Orders", ()).is_err());
    }

    #[test]
    fn a_new_trigger_has_the_documented_defaults_and_keeps_them_across_destinations() {
        let table = QualifiedName::parse("billing.invoices").expect("a table name");
        let trigger = Trigger::new("invoices", table.clone(), 7_u8)
            .columns(["status"])
            .payload_columns(["id", "status"])
            .retry(RetryPolicy::default());
        assert_eq!(trigger.operations, DEFAULT_OPERATIONS.to_vec());
        assert_eq!(trigger.ordering, Ordering::Row);
        assert_eq!(trigger.format, Format::Seed);
        assert!(trigger.captures(Action::Update) && !trigger.captures(Action::Truncate));
        assert_eq!(trigger.path(), "trigger[\"invoices\"]");
        let moved = trigger.clone().map_destination(|n| n.to_string());
        assert_eq!(moved.destination, "7");
        let moved = trigger.with_destination("elsewhere");
        assert_eq!(moved.description(), trigger.description());
        assert_eq!(moved.destination, "elsewhere");
        assert_eq!(moved.table, table);
        assert_eq!(moved.columns, trigger.columns);
        assert_eq!(moved.payload_columns, trigger.payload_columns);
        assert_eq!(moved.retry, trigger.retry);
        assert_eq!(
            trigger.definition(&["id".into()], "trigger")["where"],
            serde_json::Value::Null
        );
    }
}
