//! The `tollgate` binary's integration tests: one test binary that runs the real
//! `tollgate` executable, one module per concern.

mod abuse;
mod chaos;
mod common;
mod deploy;
mod envoy;
mod errors;
mod flood;
mod harness;
mod http;
mod lab;
mod lab_live;
mod redis_store;
mod running;
mod security;
mod serve;
mod simulate;
mod soak;
