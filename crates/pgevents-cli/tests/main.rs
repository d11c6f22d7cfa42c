//! Integration tests of the `pgevents` binary, in one test binary: the real daemon against a
//! real PostgreSQL, real HTTP receivers, and injected faults.

mod backfill;
mod bad_input;
mod console;
mod daemon;
mod demo;
mod faults;
mod init;
mod kafka_check;
mod ordinary;
mod retention;
mod security;
mod support;
#[path = "../../pgevents-admin/tests/browser/webdriver.rs"]
mod webdriver;
