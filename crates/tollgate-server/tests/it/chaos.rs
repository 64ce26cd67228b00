//! Redis chaos under continuous load against two server nodes.
