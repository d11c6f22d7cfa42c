//! The test support every pgevents crate's tests share, so that each piece is written once:
//! throwaway databases on the shared test cluster ([`db`]), waits with deadlines, never bare
//! sleeps ([`wait`]), tasks that run until the test stops them ([`background`]), real HTTP
//! receivers and free or closed ports on loopback ([`net`]), child processes killed and
//! reaped whatever happens to the test ([`process`]), the addresses of the brokers running on
//! this machine and names no other test uses ([`brokers`]), and sample events with their
//! deliveries for the sinks' tests ([`events`]).
//!
//! Only ever a `[dev-dependencies]` entry: no product crate depends on it, and it is never
//! published. Helpers one crate alone needs stay in that crate's own `tests/support/`.

pub mod background;
pub mod brokers;
pub mod db;
pub mod events;
pub mod net;
pub mod process;
pub mod wait;
