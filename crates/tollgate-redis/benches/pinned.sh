#!/usr/bin/env bash
# The throughput bench with the scheduler taken out of the ratio: Redis (every one of
# its threads) pinned to one core, the load generators (this bench's process, and the
# redis-benchmark it runs as a child) to another, so tollgate's store and
# redis-benchmark each get one whole core beside Redis's one. Redis's own CPU
# affinity is restored when the script ends, however it ends.
#
#   bash crates/tollgate-redis/benches/pinned.sh
#
# Environment: the bench's own (TOLLGATE_BENCH_*, see throughput.rs), and
#   REDIS_CORE   the core Redis runs on (default 0)
#   CLIENT_CORE  the core the bench and redis-benchmark run on (default 1)
#   BENCH_BIN    a bench executable to run instead of building and running the
#                crate's (for comparing two builds: copy each one's
#                target/release/deps/throughput-* aside and run both in turn)
#
# Redis must run on this machine (the URL's port is looked up in INFO server), and
# the user must be allowed to change its affinity (its owner, or root).
set -euo pipefail

url=${TOLLGATE_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
hostport=${url#redis://}
hostport=${hostport%%/*}
host=${hostport%%:*}
port=${hostport##*:}
[ "$port" = "$hostport" ] && port=6379
redis_core=${REDIS_CORE:-0}
client_core=${CLIENT_CORE:-1}

pid=$(redis-cli -h "$host" -p "$port" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then
  echo "pinned.sh: no local Redis process behind $url" >&2
  exit 1
fi

# Every thread's mask as it was, to put back.
declare -A before
for task in /proc/"$pid"/task/*; do
  tid=${task##*/}
  before[$tid]=$(taskset -p "$tid" | awk '{ print $NF }')
done
restore() {
  for tid in "${!before[@]}"; do
    taskset -p "${before[$tid]}" "$tid" >/dev/null 2>&1 || true
  done
  echo "pinned.sh: Redis (pid $pid) affinity restored" >&2
}
trap restore EXIT

taskset -a -p -c "$redis_core" "$pid" >/dev/null
echo "pinned.sh: Redis (pid $pid) on core $redis_core, bench and redis-benchmark on core $client_core" >&2

if [ -n "${BENCH_BIN:-}" ]; then
  taskset -c "$client_core" "$BENCH_BIN" --bench
else
  # Build first, unpinned, so the pinned run is the bench alone.
  cargo bench -p tollgate-redis --bench throughput --no-run
  taskset -c "$client_core" cargo bench -p tollgate-redis --bench throughput
fi
