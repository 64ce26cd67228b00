//! The `tollgate` binary's integration tests: one test binary that runs the real
//! `tollgate` executable, one module per concern.

mod common;
mod errors;
mod lab;
mod serve;
mod simulate;
