//! The seed's listener, in Rust: one handler per table, each receiving
//! `{table, action, data: {old, new}}` for every committed change.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run -p pgevents --example orders
//! ```
//! (The tables must exist, e.g. `CREATE TABLE orders (id serial PRIMARY KEY, status text);
//! CREATE TABLE orders_audit (id serial PRIMARY KEY, note text)`.)

use pgevents::{BoxError, Event, Handler, Listener};

/// A handler with state of its own, as a type.
struct AuditHandler {
    prefix: String,
}

impl Handler for AuditHandler {
    async fn handle(&self, event: Event) -> Result<(), BoxError> {
        let old = event.old().map(ToString::to_string).unwrap_or_default();
        println!(
            "{} {} {} old={old}",
            self.prefix,
            event.table(),
            event.action()
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "set DATABASE_URL to the database to watch, e.g. postgres://postgres@127.0.0.1/postgres"
    })?;
    let listener = Listener::builder(url)
        .on("orders", |event: Event| async move {
            println!(
                "data change on table 'orders' detected: {}",
                event.payload_str()
            );
            Ok::<_, std::convert::Infallible>(())
        })
        .trigger(pgevents::Trigger::for_table(
            "orders_audit",
            AuditHandler {
                prefix: "audit:".into(),
            },
        )?)
        .build()
        .await?;
    listener.run(tokio::signal::ctrl_c()).await?;
    Ok(())
}
