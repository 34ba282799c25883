//! The HTTP surface: REST queries, auth and scope, static dashboards.

pub mod auth;
