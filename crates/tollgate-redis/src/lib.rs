//! The Redis and Redis Cluster store for tollgate.
