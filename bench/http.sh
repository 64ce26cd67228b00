#!/usr/bin/env bash
# HTTP throughput of `tollgate serve` (issue 5, Speed): wrk on loopback against
# POST /v1/check, one hot key and 100,000 random keys, with the memory store and
# with Redis, beside a bare axum hello-world (this machine's loopback HTTP ceiling,
# since wrk shares the cores with the server), all in one run.
#
#   bench/http.sh                           # wrk -t2 -c50 -d10s per measurement
#   DURATION=20s ROUNDS=3 bench/http.sh     # longer, interleaved rounds; medians
#
# Needs wrk (Debian package wrk) and, for the Redis rows, a Redis on
# REDIS_URL (default redis://127.0.0.1:6379/0). When throttlecrab-server (a Rust
# GCRA server: `cargo install throttlecrab-server`, whose build needs Debian's
# protobuf-compiler) is on PATH, its POST /throttle is measured too, with the same
# wrk settings. Beside each row it prints the CPU time per request of the server,
# of Redis (when Redis runs on this machine) and of wrk. The policy admits a billion
# requests per second, so every answer is a 200: the figures are the cost of a
# decision, not of 429s.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
ROUNDS=${ROUNDS:-1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
MEM_PORT=${MEM_PORT:-3201}
REDIS_PORT=${REDIS_PORT:-3202}
HELLO_PORT=${HELLO_PORT:-3203}
CRAB_PORT=${CRAB_PORT:-3204}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
cargo build --quiet --release -p tollgate-server
cargo build --quiet --release -p tollgate-tower --example bench_server
BIN=${CARGO_TARGET_DIR:-target}/release/tollgate
HELLO=${CARGO_TARGET_DIR:-target}/release/examples/bench_server

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

policy='[[policy]]
name = "api"
algorithm = "gcra"
limit = 1000000000
period = "1s"
[protect]
policies = []'
printf '[server]\nlisten = "127.0.0.1:%s"\n%s\n' "$MEM_PORT" "$policy" > "$work/memory.toml"
printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\nurl = "%s"\nkey_prefix = "tgbench-http:"\ntimeout = "1s"\n%s\n' \
  "$REDIS_PORT" "$REDIS_URL" "$policy" > "$work/redis.toml"

NO_COLOR=1 TOLLGATE_LOG=warn "$BIN" serve --config "$work/memory.toml" & pids+=($!)
mem_pid=$!
redis_ok=1
NO_COLOR=1 TOLLGATE_LOG=warn "$BIN" serve --config "$work/redis.toml" & pids+=($!)
redis_pid=$!
THREADS=2 "$HELLO" plain "$HELLO_PORT" & pids+=($!)
hello_pid=$!
crab_ok=0
crab_pid=0
if command -v throttlecrab-server >/dev/null 2>&1; then
  throttlecrab-server --http --http-host 127.0.0.1 --http-port "$CRAB_PORT" >/dev/null 2>&1 & pids+=($!)
  crab_pid=$!
  crab_ok=1
fi
# Redis's own process, when it runs on this machine: its CPU per request is printed
# beside the Redis rows.
redis_server_pid=$(redis-cli -u "$REDIS_URL" INFO server 2>/dev/null | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }' || true)
[ -n "$redis_server_pid" ] && [ -r "/proc/$redis_server_pid/stat" ] || redis_server_pid=0

cat > "$work/hot.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"policy":"api","key":"hot"}'
LUA
# The 100k-keys scripts format their requests once, in init (which runs in each
# wrk thread's own Lua state, where request() runs): 100,000 draws of a key from
# 100,000, with a fixed seed, sent in turn. A request() per request still costs wrk
# more than a fixed request, so the hello-world is measured with such a script too
# (hello_r: GET / with the same random keys in a header), and each 100k-keys row is
# set beside it: the same load generator's cost on both sides of the ratio.
cat > "$work/draws.lua" <<'LUA'
local n = 100000
local requests = {}
local i = 0
function init(args)
  math.randomseed(12345)
  for j = 1, n do
    requests[j] = format_request("k" .. math.random(1, n))
  end
end
function request()
  i = i % n + 1
  return requests[i]
end
LUA
# random_script NAME: the draws, each formatted by the format_request read on stdin.
random_script() { cat - "$work/draws.lua" > "$work/$1.lua"; }
random_script random <<'LUA'
function format_request(key)
  return wrk.format("POST", "/v1/check", { ["Content-Type"] = "application/json" },
    '{"policy":"api","key":"' .. key .. '"}')
end
LUA
random_script hello_random <<'LUA'
function format_request(key)
  return wrk.format("GET", "/", { ["x-key"] = key })
end
LUA
cat > "$work/crab_hot.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"hot","max_burst":1000000000,"count_per_period":1000000000,"period":1}'
LUA
random_script crab_random <<'LUA'
function format_request(key)
  return wrk.format("POST", "/throttle", { ["Content-Type"] = "application/json" },
    '{"key":"' .. key .. '","max_burst":1000000000,"count_per_period":1000000000,"period":1}')
end
LUA
cat > "$work/hello.lua" <<'LUA'
wrk.headers["x-key"] = "hello"
LUA

wait_for "http://127.0.0.1:$MEM_PORT/healthz"
wait_for "http://127.0.0.1:$HELLO_PORT/"
if [ "$crab_ok" = 1 ] && ! wait_for "http://127.0.0.1:$CRAB_PORT/health"; then
  echo "throttlecrab-server did not start: its rows are skipped" >&2
  crab_ok=0
fi
if ! wait_for "http://127.0.0.1:$REDIS_PORT/readyz"; then
  echo "no Redis at $REDIS_URL: the Redis rows are skipped" >&2
  redis_ok=0
fi

HZ=$(getconf CLK_TCK)

# measure URL SCRIPT SERVER_PID: prints "requests/s p99_ms server_us redis_us wrk_us"
# of one wrk run, the last three the CPU time per request of the server, of Redis
# (0 when it is not local) and of wrk itself.
measure() {
  local url=$1 script=$2 server=$3
  local s0 r0 s1 r1
  s0=$(ticks "$server")
  r0=$(ticks "$redis_server_pid")
  local TIMEFORMAT='%U %S'
  { time wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$script" "$url" > "$work/out" 2>&1; } 2> "$work/wrk_time"
  s1=$(ticks "$server")
  r1=$(ticks "$redis_server_pid")
  local rps p99 n
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/out")
  n=$(awk '/ requests in / { print $1 }' "$work/out")
  p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }; print v }' "$work/out")
  awk -v rps="${rps:-0}" -v p99="${p99:-0}" -v n="${n:-0}" -v s=$((s1 - s0)) -v r=$((r1 - r0)) -v hz="$HZ" -v w="$(cat "$work/wrk_time")" 'BEGIN {
    split(w, t, " ")
    if (n > 0) printf "%s %s %.2f %.2f %.2f\n", rps, p99, s / hz / n * 1e6, r / hz / n * 1e6, (t[1] + t[2]) / n * 1e6
    else printf "%s %s 0 0 0\n", rps, p99
  }'
}

declare -A rps p99 cpu_s cpu_r cpu_w
names=(hello hello_r mem_hot mem_random)
[ "$redis_ok" = 1 ] && names+=(redis_hot redis_random)
[ "$crab_ok" = 1 ] && names+=(crab_hot crab_random)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for name in "${names[@]}"; do
    case $name in
      hello) r=$(measure "http://127.0.0.1:$HELLO_PORT/" "$work/hello.lua" "$hello_pid") ;;
      hello_r) r=$(measure "http://127.0.0.1:$HELLO_PORT/" "$work/hello_random.lua" "$hello_pid") ;;
      mem_hot) r=$(measure "http://127.0.0.1:$MEM_PORT/v1/check" "$work/hot.lua" "$mem_pid") ;;
      mem_random) r=$(measure "http://127.0.0.1:$MEM_PORT/v1/check" "$work/random.lua" "$mem_pid") ;;
      redis_hot) r=$(measure "http://127.0.0.1:$REDIS_PORT/v1/check" "$work/hot.lua" "$redis_pid") ;;
      redis_random) r=$(measure "http://127.0.0.1:$REDIS_PORT/v1/check" "$work/random.lua" "$redis_pid") ;;
      crab_hot) r=$(measure "http://127.0.0.1:$CRAB_PORT/throttle" "$work/crab_hot.lua" "$crab_pid") ;;
      crab_random) r=$(measure "http://127.0.0.1:$CRAB_PORT/throttle" "$work/crab_random.lua" "$crab_pid") ;;
    esac
    read -r a b c d e <<< "$r"
    rps[$name]="${rps[$name]:-} $a"
    p99[$name]="${p99[$name]:-} $b"
    cpu_s[$name]="${cpu_s[$name]:-} $c"
    cpu_r[$name]="${cpu_r[$name]:-} $d"
    cpu_w[$name]="${cpu_w[$name]:-} $e"
  done
done

declare -A m
echo
echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION, median of $ROUNDS round(s)"
printf '%-14s %12s %10s   %s\n' target "requests/s" "p99 ms" "CPU us per request: server, Redis, wrk"
for name in "${names[@]}"; do
  m[$name]=$(echo "${rps[$name]}" | median)
  printf '%-14s %12s %10s   %6s %6s %6s\n' "$name" "${m[$name]}" "$(echo "${p99[$name]}" | median)" \
    "$(echo "${cpu_s[$name]}" | median)" "$(echo "${cpu_r[$name]}" | median)" "$(echo "${cpu_w[$name]}" | median)"
done
if [ "$ROUNDS" -gt 1 ]; then
  # The rounds themselves: on a shared machine a single row moves by a tenth
  # between rounds, and a p99 more.
  echo
  echo "each round: requests/s | p99 ms"
  for name in "${names[@]}"; do
    printf '%-14s %s |%s\n' "$name" "${rps[$name]# }" "${p99[$name]}"
  done
fi
echo
echo "memory, hot key    / hello-world: $(ratio "${m[mem_hot]}" "${m[hello]}")"
echo "memory, 100k keys  / hello-world: $(ratio "${m[mem_random]}" "${m[hello]}") (driven by a fixed request), $(ratio "${m[mem_random]}" "${m[hello_r]}") (hello_r: driven by random requests, as the 100k-keys rows are)"
if [ "$redis_ok" = 1 ]; then
  echo "redis, hot key     / memory:      $(ratio "${m[redis_hot]}" "${m[mem_hot]}")"
  echo "redis, 100k keys   / memory:      $(ratio "${m[redis_random]}" "${m[mem_random]}")"
  if [ "$redis_server_pid" -gt 0 ]; then
    # What the Redis rows could reach on these cores if the server's Redis path cost
    # no more CPU than its memory path and no core were ever idle: the cores over
    # (the memory server's CPU + Redis's + wrk's) per request, against memory.
    cores=$(nproc)
    for pair in hot:mem_hot:redis_hot random:mem_random:redis_random; do
      IFS=: read -r label mem red <<< "$pair"
      cs=$(echo "${cpu_s[$mem]}" | median)
      cr=$(echo "${cpu_r[$red]}" | median)
      cw=$(echo "${cpu_w[$red]}" | median)
      ceiling=$(awk -v c="$cores" -v a="$cs" -v b="$cr" -v w="$cw" 'BEGIN { t = a + b + w; if (t > 0) printf "%.0f", c * 1e6 / t; else print 0 }')
      echo "redis, $label: ceiling on $cores cores at the memory server's CPU per request: $ceiling/s, $(ratio "$ceiling" "${m[$mem]}") of memory; cores busy in the Redis row: $(awk -v r="${m[$red]}" -v a="$(echo "${cpu_s[$red]}" | median)" -v b="$cr" -v w="$cw" 'BEGIN { printf "%.2f", r * (a + b + w) / 1e6 }')"
    done
  fi
fi
if [ "$crab_ok" = 1 ]; then
  echo "memory, hot key    / throttlecrab: $(ratio "${m[mem_hot]}" "${m[crab_hot]}")"
  echo "memory, 100k keys  / throttlecrab: $(ratio "${m[mem_random]}" "${m[crab_random]}")"
fi
