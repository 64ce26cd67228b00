#!/usr/bin/env bash
# Soak (issue 7, item 5): mixed load for SECONDS (default 600) against two real
# servers, one on the memory store and one on Redis (on_error = deny, so a failing
# Redis shows as errors): all six algorithms, decisions, stacks, peeks and the
# protected API, with keys that fill up, go idle and expire over and over. It
# prints, per server, requests, errors, resident memory and open descriptors right
# after warm-up (the first fifth) and at the end, and fails on any error, on memory
# growing past a tenth plus 4 MiB after warm-up, or on descriptor growth.
#
#   bench/soak.sh                 # 10 minutes, release build
#   SECONDS_TO_RUN=60 bench/soak.sh
#
# Needs a Redis on TOLLGATE_TEST_REDIS_URL (default redis://127.0.0.1:6379).
# CI runs the same test for 15 s (`cargo test --workspace`).
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_SOAK_SECS=${SECONDS_TO_RUN:-600} \
  cargo test --release -p tollgate-server --test it soak -- --nocapture --test-threads 1
