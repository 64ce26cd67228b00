#!/usr/bin/env bash
# The layer's cost per request (issue 4, Speed): an axum hello-world without and
# with the rate-limit layer (memory store), under wrk on loopback, in one run.
#
#   crates/tollgate-tower/benches/wrk.sh            # 3 rounds of 10 s per scenario
#   ROUNDS=5 DURATION=20s CONNS=64 crates/tollgate-tower/benches/wrk.sh
#
# Scenarios, interleaved round by round so drift on a shared machine hits all:
#   plain    no layer                  (every request sends one x-key header)
#   noop     a layer that does nothing (what axum's Router::layer itself costs)
#   one-key  the layer, one hot key    (the same x-key on every request)
#   100k     the layer, 100k keys      (x-key drawn from 100 000 values, fixed seed)
# The server runs one tokio worker (THREADS) and wrk one thread, so each has a
# core of this 2-core machine. Prints requests/s per round and the median ratios.
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
export THREADS=${THREADS:-1}
PLAIN_PORT=${PLAIN_PORT:-3101}
LAYER_PORT=${LAYER_PORT:-3102}
NOOP_PORT=${NOOP_PORT:-3103}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
cargo build --quiet --release -p tollgate-tower --example bench_server
BIN=target/release/examples/bench_server

work=$(mktemp -d)
"$BIN" plain "$PLAIN_PORT" & plain_pid=$!
"$BIN" layer "$LAYER_PORT" & layer_pid=$!
"$BIN" noop "$NOOP_PORT" & noop_pid=$!
trap 'kill "$plain_pid" "$layer_pid" "$noop_pid" 2>/dev/null; rm -rf "$work"' EXIT

cat > "$work/one.lua" <<'LUA'
wrk.headers["x-key"] = "hot-key"
LUA
cat > "$work/random.lua" <<'LUA'
local n = 100000
local i = 0
function setup(thread) math.randomseed(12345) end
function request()
  i = math.random(1, n)
  return wrk.format("GET", "/", { ["x-key"] = "key-" .. i })
end
LUA

for port in "$PLAIN_PORT" "$LAYER_PORT" "$NOOP_PORT"; do
  for _ in $(seq 1 50); do
    curl -s -o /dev/null -H 'x-key: warmup' "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
done

rps() { # port script -> requests per second
  wrk -t1 -c"$CONNS" -d"$DURATION" -s "$2" "http://127.0.0.1:$1/" \
    | awk '/^Requests\/sec:/ { print $2 }'
}

echo "wrk -t1 -c$CONNS -d$DURATION, server THREADS=$THREADS, $ROUNDS rounds, $(nproc) cores"
printf '%-6s %11s %11s %11s %11s %10s %10s %10s\n' round plain noop one-key 100k noop/plain one/plain 100k/plain
: > "$work/ratios"
for r in $(seq 1 "$ROUNDS"); do
  p=$(rps "$PLAIN_PORT" "$work/one.lua")
  n=$(rps "$NOOP_PORT" "$work/one.lua")
  o=$(rps "$LAYER_PORT" "$work/one.lua")
  k=$(rps "$LAYER_PORT" "$work/random.lua")
  ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }
  a=$(ratio "$n" "$p"); b=$(ratio "$o" "$p"); c=$(ratio "$k" "$p")
  printf '%-6s %11s %11s %11s %11s %10s %10s %10s\n' "$r" "$p" "$n" "$o" "$k" "$a" "$b" "$c"
  echo "$a $b $c" >> "$work/ratios"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median noop/plain:    $(cut -d' ' -f1 "$work/ratios" | median)"
echo "median one-key/plain: $(cut -d' ' -f2 "$work/ratios" | median)"
echo "median 100k/plain:    $(cut -d' ' -f3 "$work/ratios" | median)"
