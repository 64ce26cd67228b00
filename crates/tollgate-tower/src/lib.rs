//! tower and axum middleware for tollgate.
