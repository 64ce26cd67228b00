# Helpers shared by the bench scripts (sourced, not run).

# wait_for URL: true once URL answers (up to 10 s).
wait_for() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}

# median: the median of the numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ticks PID: the CPU time (user + system, in clock ticks of `getconf CLK_TCK`) PID
# has used, or 0 when PID is 0 or gone. The fields are counted after the ")" that
# ends the command name, which may itself hold spaces.
ticks() {
  if [ "$1" -gt 0 ] && [ -r "/proc/$1/stat" ]; then
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
  else
    echo 0
  fi
}

# ratio A B: A / B to two decimals, or n/a when B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
