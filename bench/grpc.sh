#!/usr/bin/env bash
# gRPC ShouldRateLimit against HTTP POST /v1/check on the same `tollgate serve`
# (issue 8, Speed), with external load generators written in C, as wrk is for
# bench/http.sh: h2load (Debian package nghttp2-client) drives both protocols with
# the same settings, and wrk drives HTTP too, so the gRPC figure is set beside the
# better of the two HTTP figures. Memory store, then Redis, in one run.
#
#   bench/grpc.sh                            # 64 in flight, rounds of 5 s
#   ROUNDS=5 DURATION=10 bench/grpc.sh       # longer, more rounds; medians
#
# 64 calls in flight on each side: gRPC as 4 HTTP/2 connections of 16 streams (a
# proxy's rate limit client multiplexes), HTTP/1 as 64 keep-alive connections. Both
# decide the same thing, one fixed-window check of one key under a limit no call
# reaches, so every answer is OK/200 and the figures are the cost of a decision.
# h2load counts HTTP statuses, not gRPC ones: after each gRPC run the script reads
# the server's /metrics and fails unless the rule's decisions match the calls h2load
# saw answered (a call that failed with a gRPC error decides nothing).
# Needs h2load and wrk; Redis on REDIS_URL (default redis://127.0.0.1:6379/0) for
# the Redis rows.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
IN_FLIGHT=${IN_FLIGHT:-64}
H2_CONNS=${H2_CONNS:-4}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
BASE_PORT=${BASE_PORT:-3211}

for tool in h2load wrk; do
  command -v "$tool" >/dev/null || {
    echo "$tool not found: apt-get install -y nghttp2-client wrk" >&2
    exit 1
  }
done
cargo build --quiet --release -p tollgate-server
BIN=${CARGO_TARGET_DIR:-target}/release/tollgate

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/ratelimit"
cat > "$work/ratelimit/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: client
    rate_limit:
      unit: second
      requests_per_unit: 4000000000
YAML
policy='[[policy]]
name = "bench"
algorithm = "fixed_window"
limit = 4000000000
period = "1s"
key = "global"'
# A RateLimitRequest {domain "bench", descriptors [{entries [{client, k1}]}],
# hits_addend 1} in protobuf, framed as one uncompressed gRPC message.
printf '\x00\x00\x00\x00\x19\x0a\x05bench\x12\x0e\x0a\x0c\x0a\x06client\x12\x02k1\x18\x01' > "$work/grpc.bin"
printf '{"policy":"bench","key":"k1"}' > "$work/http.json"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"policy":"bench","key":"k1"}'
LUA


stores=(memory)
port=$BASE_PORT
declare -A http_port grpc_port
for store in memory redis; do
  http_port[$store]=$port
  grpc_port[$store]=$((port + 1))
  port=$((port + 2))
  url='memory://'
  [ "$store" = redis ] && url=$REDIS_URL
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\nurl = "%s"\nkey_prefix = "tgbench-grpc:"\ntimeout = "1s"\n%s\n[envoy]\nlisten = "127.0.0.1:%s"\nconfig_dir = "%s"\n' \
    "${http_port[$store]}" "$url" "$policy" "${grpc_port[$store]}" "$work/ratelimit" > "$work/$store.toml"
  NO_COLOR=1 TOLLGATE_LOG=warn "$BIN" serve --config "$work/$store.toml" & pids+=($!)
done
wait_for "http://127.0.0.1:${http_port[memory]}/healthz"
if wait_for "http://127.0.0.1:${http_port[redis]}/readyz"; then
  stores+=(redis)
else
  echo "no Redis at $REDIS_URL: the Redis rows are skipped" >&2
fi

# The rule's decisions so far, from the server's /metrics.
decided() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^tollgate_envoy_total_hits_total\{domain="bench",rule="client"\}/ { print $2 }'
}

# Prints the requests/s of one run; a gRPC run also checks that the server
# decided what h2load counted.
measure() {
  local store=$1 kind=$2 out=$work/out
  case $kind in
    grpc)
      local before
      before=$(decided "${http_port[$store]}")
      h2load -t"$THREADS" -c"$H2_CONNS" -m$((IN_FLIGHT / H2_CONNS)) -D"$DURATION" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/grpc.bin" \
        "http://127.0.0.1:${grpc_port[$store]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" > "$out" 2>&1
      local after ok started
      after=$(decided "${http_port[$store]}")
      ok=$(awk '/^requests:/ { print $8 }' "$out")
      started=$(awk '/^requests:/ { print $4 }' "$out")
      # Calls in flight when h2load stopped are decided but not counted by it.
      if [ -z "$ok" ] || [ $((after - before)) -lt "$ok" ] || [ $((after - before)) -gt "$started" ]; then
        echo "gRPC run on $store: h2load saw ${ok:-?} of ${started:-?} answered, the server decided $((after - before))" >&2
        cat "$out" >&2
        exit 1
      fi
      ;;
    h2load_h1)
      h2load --h1 -t"$THREADS" -c"$IN_FLIGHT" -D"$DURATION" -H 'content-type: application/json' \
        -d "$work/http.json" "http://127.0.0.1:${http_port[$store]}/v1/check" > "$out" 2>&1
      ;;
    wrk)
      wrk -t"$THREADS" -c"$IN_FLIGHT" -d"${DURATION}s" -s "$work/post.lua" \
        "http://127.0.0.1:${http_port[$store]}/v1/check" > "$out" 2>&1
      awk '/^Requests\/sec:/ { print $2 }' "$out"
      return
      ;;
  esac
  if ! grep -q "^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$out" || ! grep -q " 0 failed, 0 errored" "$out"; then
    echo "$kind run on $store failed:" >&2
    cat "$out" >&2
    exit 1
  fi
  awk '/^finished in/ { print $4 }' "$out"
}

declare -A rps
kinds=(grpc h2load_h1 wrk)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for store in "${stores[@]}"; do
    for kind in "${kinds[@]}"; do
      rps[$store.$kind]="${rps[$store.$kind]:-} $(measure "$store" "$kind")"
    done
  done
done

echo
echo "$IN_FLIGHT in flight, $THREADS load threads, median of $ROUNDS round(s) of $DURATION s"
printf '%-8s %16s %16s %16s %18s\n' store "gRPC (h2load)" "HTTP (h2load)" "HTTP (wrk)" "gRPC / best HTTP"
for store in "${stores[@]}"; do
  g=$(echo "${rps[$store.grpc]}" | median)
  h=$(echo "${rps[$store.h2load_h1]}" | median)
  w=$(echo "${rps[$store.wrk]}" | median)
  best=$(awk -v a="$h" -v b="$w" 'BEGIN { print (a > b) ? a : b }')
  printf '%-8s %16.0f %16.0f %16.0f %18s\n' "$store" "$g" "$h" "$w" "$(ratio "$g" "$best")"
done
