#!/usr/bin/env bash
# Key floods (issue 7, part 2): the flood tests of crates/tollgate-server/tests/it/
# flood.rs, built in release mode and run with millions of distinct keys, one test
# at a time, then their figures as a table.
#
#   bench/flood.sh                    # 3 x 1,000,000 requests (4,500,000 keys) on
#                                     # max_keys 1,000,000; 500,000 through Redis
#   FLOOD_KEYS=300000 MAX_KEYS=100000 bench/flood.sh     # smaller
#
# Each memory flood request adds distinct keys: a GET / from a random client IP
# (X-Forwarded-For through the trusted proxy 127.0.0.1) with a random X-Api-Key (two
# keys), or a POST /v1/check with a random key (one). The memory tests flood three
# times (PHASES): once the store is at its cap, the last flood must not raise the
# peak RSS. The Redis test starts its own
# redis-server (redis-server and redis-cli on PATH), scans every key for a TTL and
# waits for DBSIZE to reach 0. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_FLOOD_KEYS=${FLOOD_KEYS:-1000000}
export TOLLGATE_FLOOD_MAX_KEYS=${MAX_KEYS:-1000000}
export TOLLGATE_FLOOD_REDIS_KEYS=${REDIS_KEYS:-500000}
export TOLLGATE_FLOOD_FALLBACK_KEYS=${FALLBACK_KEYS:-50000}
export TOLLGATE_FLOOD_PHASES=${PHASES:-4}
export TOLLGATE_FLOOD_CONNS=${CONNS:-64}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
started=$(date +%s)
status=0
cargo test --release -p tollgate-server --test it flood:: -- --test-threads 1 --nocapture \
  2>&1 | tee "$out" | grep -E '^(test |FLOOD\|)|panicked|FAILED' || true
grep -q 'test result: ok' "$out" || status=1

echo
echo "| flood | figures |"
echo "|---|---|"
grep -o 'FLOOD|.*' "$out" | while IFS='|' read -r _ name rest; do
  echo "| $name | ${rest//|/, } |"
done
echo
echo "wall time: $(( $(date +%s) - started )) s; result: $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
