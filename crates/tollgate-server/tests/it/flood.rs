//! Key floods: millions of distinct keys against the memory and Redis stores.
