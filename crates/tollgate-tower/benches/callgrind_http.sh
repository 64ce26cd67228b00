#!/usr/bin/env bash
# The server's user-space instructions per HTTP request (valgrind's callgrind),
# with and without the layer: what wrk.sh measures, as a count that other load
# on the machine does not change. Each scenario's server (the same bench_server
# binary as wrk.sh's) runs under callgrind; its counters are zeroed after a
# warm-up request, wrk drives it over loopback, and the instructions collected
# are divided by the requests wrk completed. Kernel time is not counted.
#
#   crates/tollgate-tower/benches/callgrind_http.sh               # plain layer outer
#   DURATION=20s crates/tollgate-tower/benches/callgrind_http.sh plain outer
#
# The ratio plain/scenario is the throughput the layer leaves, if the server's
# CPU per request is proportional to its instructions (on the 2-core machine of
# issue 4 it matched wrk.sh's medians: 14,434 plain, 18,652 layer, 0.774).
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-15s}
PORT=${PORT:-3201}
[ "$#" -gt 0 ] || set -- plain layer outer
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }
cargo build --quiet --release -p tollgate-tower --example bench_server
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_server

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo 'wrk.headers["x-key"] = "hot-key"' > "$work/one.lua"

base=""
for mode in "$@"; do
  THREADS=1 valgrind --tool=callgrind --dump-instr=no \
    --callgrind-out-file="$work/$mode.out" "$BIN" "$mode" "$PORT" 2>/dev/null &
  pid=$!
  for _ in $(seq 1 150); do
    curl -s -o /dev/null -H 'x-key: warmup' "http://127.0.0.1:$PORT/" && break
    sleep 0.2
  done
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$(wrk -t1 -c8 -d"$DURATION" -s "$work/one.lua" "http://127.0.0.1:$PORT/")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  requests=$(echo "$out" | awk '/ requests in / { print $1 }')
  # The dump made after the run (the largest of the files: the other is what
  # ran between the dump and the exit).
  instr=$(for f in "$work/$mode.out"*; do awk '/^(summary|totals):/ { print $2; exit }' "$f"; done |
    sort -n | tail -1)
  per=$((instr / requests))
  base=${base:-$per}
  printf '%-6s %8d requests %8d instructions/request  plain/this %s\n' "$mode" "$requests" "$per" \
    "$(awk -v a="$base" -v b="$per" 'BEGIN { printf "%.3f", a / b }')"
done
