#!/usr/bin/env bash
# The layer's cost per request (issue 4, Speed): an axum hello-world without and
# with the rate-limit layer (memory store), under wrk on loopback, in one run.
#
#   crates/tollgate-tower/benches/wrk.sh            # 3 rounds of 10 s per scenario
#   ROUNDS=5 DURATION=20s CONNS=64 crates/tollgate-tower/benches/wrk.sh
#   PIN=1 ROUNDS=7 DURATION=5s crates/tollgate-tower/benches/wrk.sh   # servers on
#     core 0 (SERVER_CORE), wrk on core 1 (WRK_CORE): the scheduler out of the ratio
#
# Scenarios, interleaved round by round so drift on a shared machine hits all:
#   plain    no layer                  (every request sends one x-key header)
#   noop     a layer that does nothing (what axum's Router::layer itself costs)
#   one-key  the layer, one hot key    (the same x-key on every request)
#   outer    the layer around the whole router instead of through Router::layer
#   plain-r  no layer, wrk sending the 100k scenario's requests
#   100k     the layer, 100k keys      (x-key drawn from 100 000 values, fixed seed)
# 100k is compared with plain-r, not plain: wrk hands each of those requests over
# from Lua, which costs wrk more, so both sides of that ratio get the same requests
# at the same pace (a server driven slower spends more CPU per request, in wakeups
# and system calls, as it answers fewer requests per wakeup).
# Every server is the same binary with the same runtime (THREADS tokio workers,
# default 1), listener and connection settings; only the router differs. wrk runs
# one thread, so each has a core of this 2-core machine (PIN=1 makes that so). Even
# rounds run the scenarios in the reverse order, so none always runs first. Prints, per round,
# requests/s and the server's CPU time per request (from /proc: user + system),
# and the median ratios of both. On a shared machine the CPU time per request is
# the steadier figure: other load lowers everyone's requests/s, but hardly what
# one request costs the server.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# shellcheck source=bench/lib.sh
. bench/lib.sh # ticks (median and ratio are this script's own, below)

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
export THREADS=${THREADS:-1}
PLAIN_PORT=${PLAIN_PORT:-3101}
LAYER_PORT=${LAYER_PORT:-3102}
NOOP_PORT=${NOOP_PORT:-3103}
OUTER_PORT=${OUTER_PORT:-3104}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
cargo build --quiet --release -p tollgate-tower --example bench_server
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_server
SERVER_PIN=()
WRK_PIN=()
if [ "${PIN:-0}" = 1 ]; then
  SERVER_PIN=(taskset -c "${SERVER_CORE:-0}")
  WRK_PIN=(taskset -c "${WRK_CORE:-1}")
fi

work=$(mktemp -d)
"${SERVER_PIN[@]}" "$BIN" plain "$PLAIN_PORT" & plain_pid=$!
"${SERVER_PIN[@]}" "$BIN" layer "$LAYER_PORT" & layer_pid=$!
"${SERVER_PIN[@]}" "$BIN" noop "$NOOP_PORT" & noop_pid=$!
"${SERVER_PIN[@]}" "$BIN" outer "$OUTER_PORT" & outer_pid=$!
trap 'kill "$plain_pid" "$layer_pid" "$noop_pid" "$outer_pid" 2>/dev/null; rm -rf "$work"' EXIT

cat > "$work/one.lua" <<'LUA'
wrk.headers["x-key"] = "hot-key"
LUA
# The requests are formatted once, in init (which runs in the thread's own Lua
# state, where request() runs), so that each one costs wrk little: 100 000 draws
# of a key from 100 000, with a fixed seed, sent in turn.
cat > "$work/random.lua" <<'LUA'
local n = 100000
local requests = {}
local i = 0
function init(args)
  math.randomseed(12345)
  for j = 1, n do
    requests[j] = wrk.format("GET", "/", { ["x-key"] = "key-" .. math.random(1, n) })
  end
end
function request()
  i = i % n + 1
  return requests[i]
end
LUA

for port in "$PLAIN_PORT" "$LAYER_PORT" "$NOOP_PORT" "$OUTER_PORT"; do
  for _ in $(seq 1 50); do
    curl -s -o /dev/null -H 'x-key: warmup' "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
done

CLK_TCK=$(getconf CLK_TCK)
# port script pid -> "requests/s microseconds-of-server-CPU-per-request"
measure() {
  local before after out requests rps
  before=$(ticks "$3")
  out=$("${WRK_PIN[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" -s "$2" "http://127.0.0.1:$1/")
  after=$(ticks "$3")
  requests=$(echo "$out" | awk '/ requests in / { print $1 }')
  rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
  awk -v r="$rps" -v n="$requests" -v t="$((after - before))" -v hz="$CLK_TCK" \
    'BEGIN { printf "%.0f %.2f", r, t * 1e6 / hz / n }'
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.3f", x / y }'; }

echo "wrk -t1 -c$CONNS -d$DURATION, server THREADS=$THREADS, $ROUNDS rounds, $(nproc) cores, PIN=${PIN:-0}"
echo "requests/s (server CPU us/request); ratios to plain (100k: to plain-r): throughput | plain CPU / scenario CPU"
printf '%-5s %-15s %-15s %-15s %-15s %-15s %-15s %s\n' \
  round plain noop one-key outer plain-r 100k "noop one-key outer 100k | same for CPU"
: > "$work/ratios"
for r in $(seq 1 "$ROUNDS"); do
  order="p n o w q k"
  [ $((r % 2)) = 0 ] && order="k q w o n p"
  for s in $order; do
    case $s in
      p) read -r p pc <<< "$(measure "$PLAIN_PORT" "$work/one.lua" "$plain_pid")" ;;
      n) read -r n nc <<< "$(measure "$NOOP_PORT" "$work/one.lua" "$noop_pid")" ;;
      o) read -r o oc <<< "$(measure "$LAYER_PORT" "$work/one.lua" "$layer_pid")" ;;
      w) read -r w wc <<< "$(measure "$OUTER_PORT" "$work/one.lua" "$outer_pid")" ;;
      q) read -r q qc <<< "$(measure "$PLAIN_PORT" "$work/random.lua" "$plain_pid")" ;;
      k) read -r k kc <<< "$(measure "$LAYER_PORT" "$work/random.lua" "$layer_pid")" ;;
    esac
  done
  line="$(ratio "$n" "$p") $(ratio "$o" "$p") $(ratio "$w" "$p") $(ratio "$k" "$q")"
  line="$line $(ratio "$pc" "$nc") $(ratio "$pc" "$oc") $(ratio "$pc" "$wc") $(ratio "$qc" "$kc")"
  printf '%-5s %-15s %-15s %-15s %-15s %-15s %-15s %s\n' "$r" "$p ($pc)" "$n ($nc)" \
    "$o ($oc)" "$w ($wc)" "$q ($qc)" "$k ($kc)" "$line"
  echo "$line" >> "$work/ratios"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { cut -d' ' -f"$1" "$work/ratios" | median; }
echo "median throughput ratio: noop $(col 1), one-key $(col 2), outer $(col 3), 100k $(col 4)"
echo "median CPU ratio (reference/scenario): noop $(col 5), one-key $(col 6), outer $(col 7), 100k $(col 8)"
