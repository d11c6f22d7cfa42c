//! The console in a real browser: headless Chromium (Debian's `chromium`), driven through
//! `chromedriver` (Debian's `chromium-driver`) over the W3C WebDriver protocol, finds a
//! failed event, redelivers it and sees it delivered, then backfills a trigger's rows and sees
//! the backfill done; the screenshots are saved as `<target>/console-redeliver.png` and
//! `<target>/console-backfill.png`.

use crate::support::{daemon, Mode, Table};

mod webdriver;
use webdriver::Browser;

const TOKEN: &str = "browser-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_redelivers_a_failed_event_in_chromium() {
    let d = daemon(
        vec![
            Table::new("order_events", "orders"),
            Table::new("invoice_events", "invoices"),
        ],
        Some(TOKEN),
        true,
    )
    .await;
    d.sql(
        "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 6) g;
         UPDATE orders SET note = 'paid' WHERE id <= 2;
         INSERT INTO invoices SELECT g, 'invoice ' || g FROM generate_series(1, 4) g;",
    )
    .await;
    d.wait_for_events("order_events", "delivered", 8).await;
    d.wait_for_events("invoice_events", "delivered", 4).await;
    let sink = d.sinks[0].clone();
    sink.set(Mode::Fail);
    d.sql("DELETE FROM orders WHERE id = 6").await;
    let failed = d.wait_for_events("order_events", "failed", 1).await;
    let failed_id = failed[0]["id"].as_str().expect("id").to_owned();
    sink.set(Mode::Deliver);

    let browser = Browser::start().await;
    let steps = async {
        browser.open(&d.base).await?;
        // The API needs the token: the console asks for it.
        browser.wait_for("#token-input").await?;
        browser.screenshot("console-token.png").await?;
        browser.type_into("#token-input", TOKEN).await?;
        browser.click("#token-submit").await?;
        browser
            .wait_for_text(
                "#triggers tr[data-trigger='order_events'] .capture",
                "ordering row",
            )
            .await?;
        // The failed count of order_events filters the list down to the failed event.
        browser
            .wait_for_text(
                "#triggers tr[data-trigger='order_events'] .failed-count",
                "1",
            )
            .await?;
        browser
            .click("#triggers tr[data-trigger='order_events'] .failed-count")
            .await?;
        browser
            .click(&format!(
                "#events tbody tr[data-id='{failed_id}'][data-status='failed']"
            ))
            .await?;
        browser.wait_for_text("#d-status", "failed").await?;
        browser
            .wait_for_text("#d-attempts tbody tr:first-child td:nth-child(4)", "500")
            .await?;
        browser.click("#redeliver").await?;
        browser.wait_for_text("#d-status", "delivered").await?;
        // Back to every status: the list shows it delivered too.
        browser.click("#f-status option[value='']").await?;
        browser
            .wait_for(&format!(
                "#events tbody tr[data-id='{failed_id}'][data-status='delivered']"
            ))
            .await?;
        browser
            .wait_for_text(
                "#triggers tr[data-trigger='order_events'] .failed-count",
                "0",
            )
            .await?;
        browser.screenshot("console-redeliver.png").await?;
        // A backfill of two invoices, started from the trigger's row, shows up done.
        browser
            .click("#triggers tr[data-trigger='invoice_events'] .backfill")
            .await?;
        browser.type_into("#backfill-where", "id <= 2").await?;
        browser.click("#backfill-submit").await?;
        browser
            .wait_for_text("#backfills tbody tr[data-state='done'] .rows-done", "2")
            .await?;
        browser.screenshot("console-backfill.png").await
    };
    let steps = steps.await;
    browser.finish(steps, "console").await;
    let event = d.wait_for_status(&failed_id, "delivered").await;
    assert_eq!(event["event"]["action"], "DELETE");
    d.stop().await;
}
