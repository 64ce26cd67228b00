//! The `tollgate` binary's integration tests: one test binary that runs the real
//! `tollgate` executable, one module per concern.

mod abuse;
mod common;
mod deploy;
mod errors;
mod http;
mod lab;
mod lab_live;
mod redis_store;
mod running;
mod serve;
mod simulate;
