//! deskpulse-loadtest: a deterministic 11.11 chat-desk traffic generator,
//! an open-loop load driver with ground-truth checking, and a side-by-side
//! benchmark against Redis and NATS JetStream.
//!
//! scenario → gen (events) → truth (expected figures) ; run/bench → conn
//! (sockets) → verdict + report.

pub mod bench;
pub mod conn;
pub mod events;
pub mod http;
pub mod idle;
pub mod procstat;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod truth;
pub mod validate;
pub mod verdict;
