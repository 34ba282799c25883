//! deskpulse: real-time monitoring of e-commerce chat desks.
//!
//! Events flow `ingest → log → engine → publish`; see ARCHITECTURE.md.

pub mod config;
pub mod engine;
pub mod http;
pub mod log;
pub mod protocol;
pub mod replay;
