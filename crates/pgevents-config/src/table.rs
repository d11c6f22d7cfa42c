//! Table names in the config: the same parser the library uses, so `table = "..."` and
//! `Listener::builder(..).on("...", ..)` accept exactly the same names.

pub use pgevents_postgres::{QualifiedName as TableName, TableNameError, DEFAULT_SCHEMA};
