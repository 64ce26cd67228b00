//! Security defaults, each checked against the real binary.
