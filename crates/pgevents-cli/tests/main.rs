//! Integration tests of the `pgevents` binary, in one test binary: the real daemon against a
//! real PostgreSQL, real HTTP receivers, and injected faults.

mod bad_input;
mod daemon;
mod demo;
mod faults;
mod kafka_check;
mod retention;
mod security;
mod support;
