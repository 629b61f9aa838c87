#!/usr/bin/env bash
# The `make bench` run (issue 3 point 8, issue 4 point 9). Builds nothing (the Makefile builds
# first). Runs:
#  1. the policy matcher benchmark (bench/matcher_bench.cc), briefly;
#  2. the fleet benchmark (bench/fleet_sim.cc) for 100 and 1,000 simulated agents: policy
#     convergence against a real shuttle-controller it starts and stops itself, and Authorize
#     throughput against a plain gRPC echo service (needs no root);
#  3. the syscall benchmark (bench/syscall_bench.c) bare on the host and under `shuttlectl run`
#     in a VM, interleaved (bare, vm, bare, vm, ...) so that the machine's noise hits both, then
#     a table of ns/op, the vm/bare ratios and the issue's targets with PASS/MISS.
# For (2) it starts its own shuttle-agent (root) on a temporary directory with metrics on port 0,
# creates one VM and removes it, stops the agent and removes the directory, also when
# interrupted. Safe to run again. A MISS is reported, not failed: the exit status is non-zero
# only if something broke.
#
# usage: scripts/bench.sh BUILD_DIR
# environment (all optional):
#   BENCH_N=20000      operations of each kind per repetition
#   BENCH_REPS=9       repetitions per run (the run reports their median and fastest)
#   BENCH_ROUNDS=11    bare+vm pairs
#   BENCH_POLICY=FILE  policy for the agent (--policy-file); default none (built-in defaults)
#   BENCH_MATCHER=0    skip the matcher benchmark
#   BENCH_FLEET=0      skip the fleet benchmark
#   BENCH_FLEET_AGENTS="100 1000"  agent counts, one fleet run each
#   BENCH_FLEET_ROUNDS=5           policy changes timed per run
#   BENCH_FLEET_DURATION=5s        length of each Authorize/echo run
set -euo pipefail

BUILD_DIR=${1:-build}
case "$BUILD_DIR" in
  /*) ;;
  *) BUILD_DIR="$PWD/$BUILD_DIR" ;;
esac
N=${BENCH_N:-20000}
REPS=${BENCH_REPS:-9}
ROUNDS=${BENCH_ROUNDS:-11}
POLICY=${BENCH_POLICY:-}
RUN_TIMEOUT=120  # seconds for one run of the syscall benchmark; a run takes a few seconds

MATCHER="$BUILD_DIR/bench/shuttle_bench_matcher"
SYSCALL="$BUILD_DIR/bench/shuttle_bench_syscall"
FLOOR="$BUILD_DIR/bench/shuttle_bench_notify_floor"
FLEET="$BUILD_DIR/bench/shuttle_bench_fleet"
AGENT="$BUILD_DIR/agent/main/shuttle-agent"
CTL="$BUILD_DIR/cli/shuttlectl"
CONTROLLER="$BUILD_DIR/controller/main/shuttle-controller"
for bin in "$MATCHER" "$SYSCALL" "$FLOOR" "$FLEET" "$AGENT" "$CTL" "$CONTROLLER" \
  "$BUILD_DIR/driver-shim/linux/shuttle-launch" "$BUILD_DIR/driver-shim/linux/shuttle-vm-init"; do
  [ -x "$bin" ] || { echo "bench: $bin is not built (run: make build)" >&2; exit 1; }
done
for n in "$N" "$REPS" "$ROUNDS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_N/REPS/ROUNDS must be positive" >&2; exit 1; }
done
case "$SYSCALL" in
  /tmp/* | /run/* | /dev/*)  # A VM has its own /tmp, /run and /dev: the binary would not be there.
    echo "bench: $BUILD_DIR is not visible in a VM; use a build dir outside /tmp, /run and /dev" >&2
    exit 1
    ;;
esac
if [ -n "$POLICY" ]; then
  POLICY=$(cd "$(dirname "$POLICY")" && pwd)/$(basename "$POLICY")
  [ -r "$POLICY" ] || { echo "bench: cannot read BENCH_POLICY $POLICY" >&2; exit 1; }
fi

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
section() { printf '\n%s== %s%s\n' "$BOLD" "$1" "$PLAIN"; }

if [ "${BENCH_MATCHER:-1}" != 0 ]; then
  section "Policy matcher: CompiledPolicy::Decide() at 10, 1,000 and 100,000 rules"
  timeout 300 "$MATCHER" --benchmark_min_time=0.2 --benchmark_counters_tabular=true
fi

# The fleet benchmark stops its own controller whatever happens (and bounds every wait); the
# outer timeout is only a last resort. A failure to run is remembered, and reported at the end.
FLEET_FAILED=""
if [ "${BENCH_FLEET:-1}" != 0 ]; then
  for agents in ${BENCH_FLEET_AGENTS:-100 1000}; do
    [[ "$agents" =~ ^[1-9][0-9]*$ ]] ||
      { echo "bench: BENCH_FLEET_AGENTS must be positive numbers, not '$agents'" >&2; exit 1; }
  done
  for agents in ${BENCH_FLEET_AGENTS:-100 1000}; do
    section "Fleet: $agents agents, policy apply -> ACK; Authorize vs echo throughput"
    timeout 1200 "$FLEET" --controller "$CONTROLLER" --agents "$agents" \
      --rounds "${BENCH_FLEET_ROUNDS:-5}" --duration "${BENCH_FLEET_DURATION:-5s}" ||
      FLEET_FAILED="$FLEET_FAILED $agents"
  done
fi
report_fleet() {
  [ -z "$FLEET_FAILED" ] && return 0
  echo "bench: the fleet benchmark failed to run for N =$FLEET_FAILED (see above)" >&2
  return 1
}

section "Syscalls: bare on the host vs under 'shuttlectl run' in a VM"
if [ "$(id -u)" != 0 ]; then
  report_fleet || true
  echo "bench: the VM half needs root (the agent makes namespaces and seccomp listeners)" >&2
  exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shuttle-bench.XXXXXX")
AGENT_PID=""
VM="bench-$$"
VM_MADE=0
export SHUTTLE_AGENT_SOCKET="$WORK/agent.sock"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$VM_MADE" = 1 ]; then
    timeout 30 "$CTL" vm rm "$VM" >/dev/null 2>&1 ||
      echo "bench: could not remove VM $VM (agent log: $WORK/agent.log)" >&2
  fi
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do  # 10 s, then no more patience
      kill -0 "$AGENT_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  if [ "$status" != 0 ] && [ -s "$WORK/agent.log" ]; then
    echo "bench: last lines of the agent's log:" >&2
    tail -n 20 "$WORK/agent.log" >&2
  fi
  # Only a VM that could not be removed leaves mounts under data/; never delete through those.
  if ! grep -qs " $WORK/" /proc/mounts; then rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

agent_args=(--data-dir "$WORK/data" --socket "$WORK/agent.sock" --metrics-listen 127.0.0.1:0
  --journal "$WORK/inflight" --port-file "$WORK/ports" --log-level warning)
[ -n "$POLICY" ] && agent_args+=(--policy-file "$POLICY")
"$AGENT" "${agent_args[@]}" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 300); do  # 30 s at most
  [ -s "$WORK/ports" ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "bench: the agent exited during start-up" >&2; exit 1; }
  sleep 0.1
done
[ -s "$WORK/ports" ] || { echo "bench: the agent wrote no port file in 30 s" >&2; exit 1; }
METRICS_PORT=$(sed -n 's/^metrics=//p' "$WORK/ports")

timeout 60 "$CTL" vm create "$VM" >/dev/null
VM_MADE=1

# The benchmark's socket and file go on a tmpfs on both sides: the VM's /tmp is one, so the bare
# run uses /dev/shm (the host's /tmp may be a disk file system, which is not what is compared).
BARE_TMP=/dev/shm
VM_TMP=/tmp
bare_fs=$(stat -f -c %T "$BARE_TMP")
vm_fs=$(timeout 60 "$CTL" run --vm "$VM" -- stat -f -c %T "$VM_TMP")
echo "agent pid $AGENT_PID (metrics on 127.0.0.1:$METRICS_PORT), VM $VM, policy: ${POLICY:-none (defaults)}"
echo "N=$N per operation, $REPS repetitions per run (median), $ROUNDS rounds of bare+vm"
echo "files: bare in $BARE_TMP ($bare_fs), vm in $VM_TMP ($vm_fs)"
[ "$bare_fs" = "$vm_fs" ] || echo "note: different file systems; open_read compares them too"

run_bare() { TMPDIR="$BARE_TMP" timeout "$RUN_TIMEOUT" "$SYSCALL" -q -r "$REPS" "$N"; }
run_vm() {
  timeout "$RUN_TIMEOUT" "$CTL" run --vm "$VM" -- /usr/bin/env TMPDIR="$VM_TMP" \
    "$SYSCALL" -q -r "$REPS" "$N"
}

: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  printf 'round %d/%d: bare' "$round" "$ROUNDS"
  run_bare | sed "s/^/bare $round /" >>"$WORK/results"
  printf ', vm'
  run_vm | sed "s/^/vm $round /" >>"$WORK/results"
  printf '\n'
done
for mode in bare vm; do
  lines=$(grep -c "^$mode " "$WORK/results" || true)
  [ "$lines" = $((ROUNDS * 3)) ] || {
    echo "bench: expected $((ROUNDS * 3)) '$mode' results, got $lines" >&2
    exit 1
  }
done

# Proof that the VM's connects went through the agent: it decided at least the timed ones (the
# warm-up adds a few more).
decided=$(curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" |
  awk '/^shuttle_agent_decisions_total\{/ && /kind="unix-connect"/ { s += $NF } END { printf "%d", s }')
timed=$((ROUNDS * REPS * N))

printf '\n'
# Per operation: the median ns/op over the rounds for each side, and the median of the
# per-round ratios vm/bare (each pair ran back to back, so its ratio is the least disturbed
# figure), with their spread; "fastest" is the same ratio from each run's fastest repetition,
# which preemption by other work can only make slower. The target is judged on the median.
awk -v decided="$decided" -v timed="$timed" '
  function median(list,   n, i, j, t, a) {
    n = split(list, a, " ")
    for (i = 2; i <= n; ++i) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; --j) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  # Lines: MODE ROUND OP MEDIAN_NS MIN_NS MAX_NS
  { ns[$1, $2, $3] = $4; best[$1, $2, $3] = $5; rounds[$2] = 1 }
  END {
    split("connect open_read getppid", order, " ")
    target["connect"] = 3; target["open_read"] = 1.03; target["getppid"] = 1.03
    what["connect"] = "intercepted"; what["open_read"] = "not intercepted"; what["getppid"] = "not intercepted"
    printf "%-10s %-16s %11s %11s %8s %15s %8s  %s\n", "op", "", "bare ns/op", "vm ns/op", "vm/bare",
           "(spread)", "fastest", "target"
    for (k = 1; k <= 3; ++k) {
      op = order[k]; b = ""; v = ""; r = ""; f = ""; lo = ""; hi = ""
      for (round in rounds) {
        b = b " " ns["bare", round, op]; v = v " " ns["vm", round, op]
        x = ns["vm", round, op] / ns["bare", round, op]
        r = r " " x
        if (lo == "" || x < lo) lo = x
        if (hi == "" || x > hi) hi = x
        f = f " " best["vm", round, op] / best["bare", round, op]
      }
      ratio = median(r)
      printf "%-10s %-16s %11.1f %11.1f %8.3f %15s %8.3f  < %-5s %s\n", op, what[op], median(b), median(v),
             ratio, sprintf("(%.2f-%.2f)", lo, hi), median(f), target[op], (ratio < target[op] ? "PASS" : "MISS")
    }
    printf "\nagent decisions for unix-connect: %d (timed connects in the VM: %d)%s\n", decided, timed,
           (decided >= timed ? "" : "  WARNING: not every connect reached the agent")
  }' "$WORK/results"
printf 'vm/bare: median over the %d rounds of the per-round ratio; fastest: the same from the\n' "$ROUNDS"
printf 'fastest repetitions. The targets are issue 3 point 8'"'"'s; a MISS is reported, not failed.\n'

# What any seccomp user-notify supervisor costs on this machine: the same connect() loop with a
# supervisor process that only answers CONTINUE. Shuttle's connect ratio can't go below it.
printf '\nfloor: a do-nothing user-notify supervisor in another process (bench/notify_floor.c)\n'
timeout 300 "$FLOOR" -r "$ROUNDS" "$N"
report_fleet
