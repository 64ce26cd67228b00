#!/usr/bin/env bash
# Redis chaos (issue 7, part 3): the chaos tests of crates/tollgate-server/tests/it/
# chaos.rs, built in release mode, with many more faults per scenario, one scenario
# at a time, then a table of what each on_error mode admitted.
#
#   bench/chaos.sh                 # 30 faults per scenario (a few minutes)
#   ROUNDS=5 bench/chaos.sh        # shorter
#   ROUNDS=100 PACE_MS=5 bench/chaos.sh
#
# Each scenario starts its own redis-server (or a 3-master, 3-replica cluster for the
# failover; redis-server and redis-cli on PATH), two tollgate nodes per mode (deny,
# allow, local) on it, and steady load (fixed_window, 20 per second; two keys
# through POST /v1/check and one through the protected GET /, each asked through
# both nodes) while the faults come: kill -9 and restart; FUNCTION
# FLUSH and SCRIPT FLUSH; CLIENT PAUSE for 4x the 250 ms store timeout; DEBUG
# SLEEP 1; a master killed until its replica takes over (once per round). The test
# fails when a node answers a 5xx other than deny's 503, drops a connection, exits,
# admits more than its mode promises in any window, or does not recover by itself.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_CHAOS_ROUNDS=${ROUNDS:-30}
export TOLLGATE_CHAOS_PACE_MS=${PACE_MS:-10}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
started=$(date +%s)
status=0
cargo test --release -p tollgate-server --test it chaos:: -- --test-threads 1 --nocapture \
  2>&1 | tee "$out" | grep -E '^(test |CHAOS\|)|panicked|FAILED' || true
grep -q 'test result: ok' "$out" || status=1

echo
echo "| scenario | mode | faults | requests | admitted | policy allows | mode promises | overshoot | worst window over L | fallback answers | 503 | other 5xx | recovered after (s) | protected answers straddling two windows |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
grep -o 'CHAOS|[^|]*|[a-z]*|faults=.*' "$out" | while IFS='|' read -r _ scenario mode rest; do
  val() { printf '%s' "$rest" | tr '|' '\n' | sed -n "s/^$1=//p"; }
  echo "| $scenario | $mode | $(val faults) | $(val requests) | $(val admitted) | $(val policy_allows) | $(val promise) | $(val overshoot) | $(val worst_window_over) | $(val fallback_answers) | $(val 503) | $(val other_5xx) | $(val recovered_s) | $(val straddling) |"
done
grep -o 'CHAOS|failover|promoted after [0-9.]*' "$out" | awk '{print $3}' | sort -n \
  | awk '{a[NR]=$1} END{if (NR) print "failover: " NR " replicas promoted, after " a[1] " s (min), " a[int((NR+1)/2)] " s (median), " a[NR] " s (max)"}'
echo
echo "wall time: $(( $(date +%s) - started )) s; result: $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
