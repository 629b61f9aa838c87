# Shared by the e2e tests (sourced, not run): argument parsing, the root/namespace preflight,
# one hermetic agent (temporary data dir, socket, journal, metrics port 0), bounded polling
# helpers, /metrics scraping and the cleanup that always removes the test's VMs and stops the
# agent. Every wait is a bounded poll on a file, a process or an output; no sleep synchronises.
#
# The sourcing script sets E2E_NAME and calls: e2e_init "$@" (AGENT CTL LAUNCH VM_INIT PROBE).

set -uo pipefail

E2E_WORK=""
E2E_BIN=""
AGENT_PID=""
METRICS_PORT=""
AGENT_LOG=""
E2E_VMS=()                  # VMs this run created (removed on exit).
declare -A E2E_INIT_PIDS=() # VM -> init pid, to kill the VM if the agent can't remove it.
E2E_BG_PIDS=()              # Background shuttlectl runs (killed on exit).
E2E_PASSED=0
E2E_STARTED=$SECONDS

e2e_log() { echo "[$E2E_NAME +$((SECONDS - E2E_STARTED))s] $*"; }

# Prints the reason, the agent's log tail and a shuttlectl output file if given, then exits 1.
fail() {
  echo "FAIL: $1" >&2
  local f
  for f in "${@:2}"; do
    if [ -s "$f" ]; then
      echo "--- $f:" >&2
      tail -n 40 "$f" >&2
    fi
  done
  if [ -n "$AGENT_LOG" ] && [ -s "$AGENT_LOG" ]; then
    echo "--- agent log $AGENT_LOG (last 40 lines):" >&2
    tail -n 40 "$AGENT_LOG" >&2
  fi
  echo "$E2E_NAME: $E2E_PASSED passed, 1 failed" >&2
  exit 1
}

pass() {
  E2E_PASSED=$((E2E_PASSED + 1))
  echo "ok $E2E_PASSED - $*"
}

# poll_until TIMEOUT_S CMD...: runs CMD every 50 ms until it succeeds (0) or TIMEOUT_S seconds
# have passed (1). The only sleep in these tests is this polling interval.
poll_until() {
  local timeout=$1 deadline
  shift
  deadline=$((SECONDS + timeout))
  while true; do
    "$@" && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.05
  done
}

# A process exists and is not a zombie.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # The state follows "(comm) ", and comm may hold spaces or parentheses.
  [ "${stat%% *}" != Z ]
}
gone() { ! alive "$1"; }

# wait_exit PID TIMEOUT_S: waits (bounded) for our child PID to end; sets WAIT_RC to its status
# (read by the sourcing scripts).
# shellcheck disable=SC2034
wait_exit() {
  WAIT_RC=""
  poll_until "$2" gone "$1" || return 1
  wait "$1" 2>/dev/null
  WAIT_RC=$?
  return 0
}

ctl() { "$CTL" --agent-socket "$AGENT_SOCK" "$@"; }

# Parses arguments and checks, loudly, that the test can do what it must: root, namespaces.
e2e_init() {
  if [ $# -ne 5 ]; then
    echo "usage: $0 SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE" >&2
    exit 2
  fi
  # Absolute: the probe runs inside the VMs, whose working directory is /.
  AGENT=$(readlink -f "$1") CTL=$(readlink -f "$2") LAUNCH=$(readlink -f "$3")
  VM_INIT=$(readlink -f "$4") PROBE=$(readlink -f "$5")
  local b
  for b in "$AGENT" "$CTL" "$LAUNCH" "$VM_INIT" "$PROBE"; do
    [ -x "$b" ] || fail "binary $b is missing or not executable (build the targets first)"
  done
  # CI runs as root; an e2e test that silently skipped would prove nothing.
  [ "$(id -u)" -eq 0 ] || fail "must run as root (uid $(id -u)): the agent creates namespaces"
  local why
  if ! why=$(unshare --mount --ipc --net --uts --pid --fork true 2>&1); then
    fail "cannot create mount/ipc/net/uts/pid namespaces here: $why"
  fi
  if ! grep -qsw user_notif /proc/sys/kernel/seccomp/actions_avail; then
    fail "the kernel has no seccomp user notification (actions_avail lacks user_notif)"
  fi

  E2E_WORK=$(mktemp -d "${TMPDIR:-/tmp}/shuttle-$E2E_NAME.XXXXXX") || fail "mktemp"
  chmod 0755 "$E2E_WORK"
  AGENT_SOCK="$E2E_WORK/agent.sock"
  # Programs run inside the VMs must be on a path the VMs can see: their /tmp, /run and /dev are
  # private, and the build tree may live under /tmp (a CI clone does). /var/tmp is on the root
  # file system, which every VM sees through its overlay.
  E2E_BIN=$(mktemp -d /var/tmp/shuttle-e2e-bin.XXXXXX) || fail "mktemp /var/tmp"
  chmod 0755 "$E2E_BIN"
  cp "$PROBE" "$E2E_BIN/ipc_probe" || fail "copy ipc_probe to $E2E_BIN"
  PROBE="$E2E_BIN/ipc_probe"
  trap e2e_cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  e2e_log "work dir $E2E_WORK"
}

# launch_agent LOG: starts the agent (same data dir, socket and journal every time) and waits
# (bounded, 60 s) for its port file; sets AGENT_PID and METRICS_PORT. Returns 1 with a reason in
# LAUNCH_ERROR instead of failing, so the cleanup can use it too.
launch_agent() {
  AGENT_LOG=$1
  LAUNCH_ERROR=""
  rm -f "$E2E_WORK/ports"
  "$AGENT" --data-dir "$E2E_WORK/data" --socket "$AGENT_SOCK" --metrics-listen 127.0.0.1:0 \
    --journal "$E2E_WORK/run/inflight" --port-file "$E2E_WORK/ports" \
    --policy-file "$E2E_WORK/policy.yaml" --host-id "e2e-host" \
    --launcher "$LAUNCH" --vm-init "$VM_INIT" >>"$AGENT_LOG" 2>&1 &
  AGENT_PID=$!
  local deadline=$((SECONDS + 60))
  until [ -s "$E2E_WORK/ports" ]; do
    if ! alive "$AGENT_PID"; then
      LAUNCH_ERROR="the agent exited during start-up"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      LAUNCH_ERROR="the agent wrote no port file within 60 s"
      return 1
    fi
    sleep 0.05
  done
  METRICS_PORT=$(sed -n 's/^metrics=//p' "$E2E_WORK/ports")
  if ! [[ $METRICS_PORT =~ ^[1-9][0-9]*$ ]]; then
    LAUNCH_ERROR="bad port file: $(cat "$E2E_WORK/ports")"
    return 1
  fi
  return 0
}

start_agent() {
  launch_agent "$1" || fail "$LAUNCH_ERROR"
  e2e_log "agent pid $AGENT_PID up, metrics on 127.0.0.1:$METRICS_PORT, log $(basename "$1")"
}

# SIGTERM, then the agent must be gone within 30 s.
stop_agent() {
  [ -n "$AGENT_PID" ] || return 0
  if alive "$AGENT_PID"; then
    kill -TERM "$AGENT_PID" 2>/dev/null
    if ! wait_exit "$AGENT_PID" 30; then
      kill -KILL "$AGENT_PID" 2>/dev/null
      wait "$AGENT_PID" 2>/dev/null
      AGENT_PID=""
      return 1
    fi
  fi
  wait "$AGENT_PID" 2>/dev/null
  AGENT_PID=""
  return 0
}

# create_vm NAME: creates the VM and remembers its init pid.
create_vm() {
  local out
  out=$(ctl vm create "$1" 2>&1) || fail "vm create $1: $out"
  E2E_VMS+=("$1")
  [[ $out =~ \(init\ pid\ ([0-9]+)\) ]] || fail "vm create $1: unexpected output: $out"
  E2E_INIT_PIDS[$1]=${BASH_REMATCH[1]}
  e2e_log "$out"
}

# remove_vm NAME: `vm rm`, which must succeed; the VM is then no longer cleanup's business.
remove_vm() {
  local out v rest=()
  out=$(ctl vm rm "$1" 2>&1) || fail "vm rm $1: $out"
  for v in "${E2E_VMS[@]}"; do
    [ "$v" = "$1" ] || rest+=("$v")
  done
  E2E_VMS=("${rest[@]}")
}

# The init pid that `vm ls` shows for VM $1 (empty if not listed).
vm_ls_init_pid() {
  ctl vm ls | awk -v vm="$1" '$1 == vm { print $2 }'
}

# Prints the agent's /metrics (bounded by curl's own timeout).
scrape() {
  curl -sS --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics"
}

# metric_sum FILE NAME [LABEL=VALUE]...: the sum of every sample of NAME in the scrape FILE
# whose labels include all the given ones (0 if none).
metric_sum() {
  local file=$1 name=$2
  shift 2
  awk -v name="$name" -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    $0 ~ "^" name "[{ ]" {
      ok = 1
      for (i = 1; i <= n; i++) {
        split(w[i], kv, "=")
        if (index($0, kv[1] "=\"" kv[2] "\"") == 0) ok = 0
      }
      if (ok) sum += $NF
    }
    END { printf "%d\n", sum }' "$file"
}

e2e_cleanup() {
  local rc=$? p vm
  for p in "${E2E_BG_PIDS[@]}"; do
    alive "$p" && kill -KILL "$p" 2>/dev/null
  done
  if [ "${#E2E_VMS[@]}" -gt 0 ]; then
    # The VMs must go even if this run broke the agent: start one if needed.
    if [ -z "$AGENT_PID" ] || ! alive "$AGENT_PID"; then
      launch_agent "$E2E_WORK/agent.cleanup.log" ||
        echo "cleanup: cannot start an agent to remove the VMs: $LAUNCH_ERROR" >&2
    fi
    for vm in "${E2E_VMS[@]}"; do
      if ! ctl vm rm "$vm" >/dev/null 2>&1; then
        p=${E2E_INIT_PIDS[$vm]:-}
        # Killing the init ends the VM (every process in its PID namespace, its mounts).
        if [ -n "$p" ] && alive "$p"; then
          echo "cleanup: vm rm $vm failed; killing its init pid $p" >&2
          kill -KILL "$p" 2>/dev/null
        fi
      fi
    done
  fi
  stop_agent || echo "cleanup: the agent did not stop on SIGTERM within 30 s; killed" >&2
  rm -rf "$E2E_WORK"
  [ -n "${E2E_BIN:-}" ] && rm -rf "$E2E_BIN"
  exit "$rc"
}
