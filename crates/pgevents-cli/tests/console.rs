//! The demo's console in a real browser (headless Chromium through chromedriver): the URL
//! the demo prints shows its events, a payment's failed attempts and its delivery; a
//! redelivery from the page runs again; an event invoked from the page reaches the demo's
//! handler. The screenshot is saved as `<target>/demo-console.png`.

use std::time::Instant;

use crate::demo::{DemoRun, DEMO_WAIT};
use crate::webdriver::Browser;

const ORDERS: &str = "#triggers tr[data-trigger='public.pgevents_demo_orders']";
const PAYMENTS: &str = "#triggers tr[data-trigger='public.pgevents_demo_payments']";
/// The attempt log: the first attempt's error, the last attempt's number.
const FIRST_ATTEMPT_FAILED: &str = "#d-attempts tbody tr:first-child .error";
const LAST_ATTEMPT: &str = "#d-attempts tbody tr:last-child td:first-child";
/// The order the test invokes from the console.
const INVOKED: &str = r#"{"customer": "invoked from the console"}"#;
/// WebDriver keys: Control down, then all keys up.
const CONTROL: char = '\u{E009}';
const RELEASE: char = '\u{E000}';

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_console_shows_retries_redelivers_and_invokes_in_chromium() {
    let mut demo = DemoRun::start(&["--interval-ms", "200"]);
    let deadline = Instant::now() + DEMO_WAIT;
    while demo.console.is_none() {
        demo.next_line(deadline);
    }
    let console = demo.console.clone().unwrap_or_default();

    let browser = Browser::start().await;
    let steps = async {
        browser.open(&console).await?;
        browser.wait_for(ORDERS).await?;
        // The payments that were delivered: each after two failed attempts.
        browser
            .click(&format!("{PAYMENTS} .delivered-count"))
            .await?;
        browser
            .click("#events tbody tr[data-status='delivered']")
            .await?;
        browser.wait_for_text("#d-status", "delivered").await?;
        browser.wait_for(FIRST_ATTEMPT_FAILED).await?;
        browser.wait_for_text(LAST_ATTEMPT, "3").await?;
        browser.click("#redeliver").await?;
        // Redelivered with a fresh retry budget: two more failed attempts, then delivered.
        browser.wait_for_text(LAST_ATTEMPT, "6").await?;
        browser.wait_for_text("#d-status", "delivered").await?;
        // A manual event from the console reaches the orders' handler.
        browser.click(&format!("{ORDERS} .invoke")).await?;
        browser
            .type_into("#invoke-body", &format!("{CONTROL}a{RELEASE}{INVOKED}"))
            .await?;
        browser.click("#invoke-submit").await?;
        browser.screenshot("demo-console.png").await
    };
    let steps = steps.await;
    browser.finish(steps, "demo-console").await;
    let manual = demo.events_until(|events| events.iter().any(|(action, _)| action == "MANUAL"));
    let (_, payload) = manual.last().cloned().unwrap_or_default();
    assert!(payload.contains("invoked from the console"), "{payload}");
    let status = demo.stop();
    assert!(status.success(), "demo exits 0 after Ctrl-C: {status}");
}
