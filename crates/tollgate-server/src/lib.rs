//! The modules behind the `tollgate` binary (`src/main.rs`), as a library so the
//! fuzz targets under `fuzz/` and the tests can call them directly: the
//! configuration parser, the decision API's router, the simulator's CSV reader.
//!
//! This is not a published API: it follows the binary's needs.

pub mod api;
pub mod app;
pub mod backend;
pub mod cli;
pub mod clients;
pub mod config;
pub mod grpc;
pub mod lab;
pub mod metrics;
pub mod proxy;
pub mod records;
pub mod serve;
pub mod simulate;
