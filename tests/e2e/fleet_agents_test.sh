#!/usr/bin/env bash
# e2e: one real shuttle-controller and three real shuttle-agent processes on this machine, each
# agent with its own data dir, socket, journal, metrics port and host id (issue 4, item 8):
#   1. enrollment: a join token per host; each agent enrolls once, then restarts without a token
#      and reconnects with its stored certificate; a reused and an expired token are refused;
#   2. impersonation: an agent holding host-a's certificate that claims host-b is refused, and
#      neither host shows connected through it;
#   3. push: `policy apply` reaches all three agents (hosts -o json, agents' /metrics), and a
#      policy with `hosts: [host-a]` lands in host-a's bundle only;
#   4. delta vs full: an agent that was down for 2 changes gets a delta when it comes back, one
#      that missed more than 16 changed policies a full snapshot (controller's
#      shuttle_controller_pushes_total{type} and the agent's log);
#   5. NACK: none anywhere (hosts, controller and agent counters), also for hosts that get a
#      policy whose rules are all for VMs they don't run. A real agent has no honest way to
#      refuse a bundle the controller accepted; the NACK path is tested with a fake agent in
#      controller/service/agent_fleet_integration_test.cc (PushAckDeltaNack);
#   6. ask: VMs web and db on host-a, an `ask` rule, a standing answer: the call is allowed;
#      with the controller stopped the cached answer still allows, a new object is denied by
#      fail-closed (and allowed by fail-open), counted in the agent's /metrics;
#   7. audit across a controller restart: denied cross-VM calls before and while the controller
#      is down reach the controller's audit log exactly once each, the spool drains to 0, and
#      `audit --vm --verdict` filters.
#
# Hermetic: temporary directories, port 0 (the controller keeps its port across its restart, as
# the agents are configured with it); every wait is a bounded poll; the VMs, the agents and the
# controller are always removed/stopped (trap). Fails, never skips, when not root.
#
# usage: fleet_agents_test.sh SHUTTLE_CONTROLLER SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH
#                             SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=fleet_agents
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"

if [ $# -ne 6 ]; then
  echo "usage: $0 SHUTTLE_CONTROLLER SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT" \
    "IPC_PROBE" >&2
  exit 2
fi
CONTROLLER=$(readlink -f "$1")
shift
[ -x "$CONTROLLER" ] || fail "binary $CONTROLLER is missing or not executable"
command -v python3 >/dev/null || fail "python3 is needed"
command -v curl >/dev/null || fail "curl is needed"
e2e_init "$@"

W=$E2E_WORK
CDATA="$W/controller"
CLOG="$W/controller.log"
CPID=""
GRPC_PORT=""
CMETRICS_PORT=""
HOSTS=(host-a host-b host-c)
declare -A APID=() ALOG=() AMETRICS=() ARUNS=()
VMS_ON_A=() # VMs created on host-a's agent (removed on exit).
mkdir -p "$W/policies"

# ----- helpers ---------------------------------------------------------------------------------

# Replaces e2e_lib's fail: the reason, the given files, the controller's log and the log of every
# agent this test started (their tails), then exit 1.
fail() {
  echo "FAIL: $1" >&2
  local f
  for f in "${@:2}" "$CLOG" "${ALOG[@]}"; do
    if [ -s "$f" ]; then
      echo "--- $f (last 25 lines):" >&2
      tail -n 25 "$f" >&2
    fi
  done
  echo "$E2E_NAME: $E2E_PASSED passed, 1 failed ($((SECONDS - E2E_STARTED)) s)" >&2
  exit 1
}

# e2e_lib's pass, with the time since the start.
pass() {
  E2E_PASSED=$((E2E_PASSED + 1))
  echo "ok $E2E_PASSED - $* [+$((SECONDS - E2E_STARTED)) s]"
}

cctl() { "$CTL" --controller "127.0.0.1:$GRPC_PORT" --data-dir "$CDATA" "$@"; }
actl() {
  local h=$1
  shift
  "$CTL" --agent-socket "$W/agents/$h/agent.sock" "$@"
}

# cctl_ok WHAT ARGS...: shuttlectl against the controller must succeed; stdout -> $W/out.
cctl_ok() {
  local what=$1
  shift
  cctl "$@" >"$W/out" 2>"$W/err" || fail "$what: shuttlectl $* exited $?" "$W/out" "$W/err"
}

# start_controller [LISTEN]: starts the controller on its data dir and waits (bounded) for its
# port file. The first start picks a port; restarts pass the same one (the agents know it).
start_controller() {
  local listen=${1:-127.0.0.1:0} tries
  for tries in 1 2 3 4 5; do
    rm -f "$W/controller.ports"
    echo "=== start $tries: --listen $listen" >>"$CLOG"
    "$CONTROLLER" --data-dir "$CDATA" --listen "$listen" --metrics-listen 127.0.0.1:0 \
      --port-file "$W/controller.ports" >>"$CLOG" 2>&1 &
    CPID=$!
    controller_started() { [ -s "$W/controller.ports" ] || ! alive "$CPID"; }
    poll_until 30 controller_started || fail "the controller wrote no port file within 30 s"
    [ -s "$W/controller.ports" ] && break
    wait "$CPID" 2>/dev/null
    CPID=""
    # Only a restart on a fixed port may find it still taken for a moment; then try again.
    [ "$listen" != 127.0.0.1:0 ] && tail -n 3 "$CLOG" | grep -qi 'address already in use' ||
      fail "the controller exited during start-up"
  done
  [ -n "$CPID" ] || fail "the controller could not listen on $listen after 5 attempts"
  GRPC_PORT=$(sed -n 's/^grpc=//p' "$W/controller.ports")
  CMETRICS_PORT=$(sed -n 's/^metrics=//p' "$W/controller.ports")
  [[ $GRPC_PORT =~ ^[1-9][0-9]*$ && $CMETRICS_PORT =~ ^[1-9][0-9]*$ ]] ||
    fail "bad controller port file: $(tr '\n' ' ' <"$W/controller.ports")"
  e2e_log "controller pid $CPID on 127.0.0.1:$GRPC_PORT, metrics on $CMETRICS_PORT"
}

# SIGTERM; the controller must exit 0 within 30 s.
stop_controller() {
  kill -TERM "$CPID"
  wait_exit "$CPID" 30 || fail "the controller did not exit within 30 s of SIGTERM"
  [ "$WAIT_RC" -eq 0 ] || fail "the controller exited $WAIT_RC after SIGTERM (want 0)"
  CPID=""
}

# spawn_agent SLOT HOST_ID [ARGS...]: starts an agent in the background on the slot's own data
# dir, socket, journal and port file, logging to a new file; sets APID/ALOG[SLOT].
spawn_agent() {
  local slot=$1 host_id=$2 d="$W/agents/$1"
  shift 2
  mkdir -p "$d"
  ARUNS[$slot]=$((${ARUNS[$slot]:-0} + 1))
  ALOG[$slot]="$d/agent.${ARUNS[$slot]}.log"
  rm -f "$d/ports"
  "$AGENT" --data-dir "$d/data" --socket "$d/agent.sock" --journal "$d/run/inflight" \
    --metrics-listen 127.0.0.1:0 --port-file "$d/ports" --host-id "$host_id" \
    --controller "127.0.0.1:$GRPC_PORT" --controller-ca "$CDATA/pki/ca.pem" \
    --launcher "$LAUNCH" --vm-init "$VM_INIT" "$@" >"${ALOG[$slot]}" 2>&1 &
  APID[$slot]=$!
}

# start_agent SLOT HOST_ID [ARGS...]: spawn_agent, then waits (bounded) until it serves.
start_agent() {
  local slot=$1
  spawn_agent "$@"
  agent_serving() {
    alive "${APID[$1]}" || fail "agent $1 exited during start-up" "${ALOG[$1]}"
    [ -s "$W/agents/$1/ports" ]
  }
  poll_until 60 agent_serving "$slot" || fail "agent $slot wrote no port file within 60 s"
  AMETRICS[$slot]=$(sed -n 's/^metrics=//p' "$W/agents/$slot/ports")
  [[ ${AMETRICS[$slot]} =~ ^[1-9][0-9]*$ ]] || fail "agent $slot: bad port file"
}

# stop_agent_slot SLOT: SIGTERM; the agent must exit 0 within 30 s.
stop_agent_slot() {
  local pid=${APID[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  wait_exit "$pid" 30 || fail "agent $1 did not exit within 30 s of SIGTERM"
  [ "$WAIT_RC" -eq 0 ] || fail "agent $1 exited $WAIT_RC after SIGTERM (want 0)" "${ALOG[$1]}"
  APID[$1]=""
}

# expect_refused SLOT HOST_ID TOKEN PATTERN: the agent must exit 1 within 30 s, naming PATTERN,
# and keep no credentials.
expect_refused() {
  local slot=$1
  spawn_agent "$slot" "$2" --join-token "$3"
  wait_exit "${APID[$slot]}" 30 || fail "agent $slot with a bad token still runs after 30 s"
  APID[$slot]=""
  [ "$WAIT_RC" -eq 1 ] || fail "agent $slot with a bad token exited $WAIT_RC (want 1)"
  grep -Eq "^shuttle-agent: enrollment with controller 127\\.0\\.0\\.1:$GRPC_PORT.*$4" \
    "${ALOG[$slot]}" || fail "agent $slot: no one-line error matching /$4/" "${ALOG[$slot]}"
  [ ! -e "$W/agents/$slot/data/pki/agent.pem" ] || fail "agent $slot kept a certificate"
}

scrape_agent() { curl -sS --max-time 10 "http://127.0.0.1:${AMETRICS[$1]}/metrics"; }
scrape_controller() { curl -sS --max-time 10 "http://127.0.0.1:$CMETRICS_PORT/metrics"; }
# agent_metric SLOT NAME [LABEL=VALUE]...: one scrape, summed as e2e_lib's metric_sum does.
agent_metric() {
  local slot=$1
  shift
  scrape_agent "$slot" >"$W/metrics.$slot" || fail "cannot scrape agent $slot's /metrics"
  metric_sum "$W/metrics.$slot" "$@"
}
controller_metric() {
  scrape_controller >"$W/metrics.controller" || fail "cannot scrape the controller's /metrics"
  metric_sum "$W/metrics.controller" "$@"
}

# hosts_check PYTHON_EXPR: `hosts -o json` parsed into `d`, with `h` = {host id: host}; true if
# the expression holds.
hosts_check() {
  cctl hosts -o json >"$W/hosts.json" 2>"$W/hosts.err" || return 1
  EXPR="$1" python3 -c '
import json, os, sys
d = json.load(open(sys.argv[1]))
h = {x["hostId"]: x for x in d.get("hosts", [])}
def conn(i): return i in h and h[i].get("connected", False)
def ver(i): return int(h[i].get("policyVersion", "0")) if i in h else -1
def fleet(): return max([int(x.get("fleetVersion", "0")) for x in h.values()] + [0])
def vms(i): return sorted(v["name"] for v in h.get(i, {}).get("vms", []))
sys.exit(0 if eval(os.environ["EXPR"]) else 1)' "$W/hosts.json"
}

# wait_versions TIMEOUT VERSION SLOT...: every slot's host ACKed VERSION (hosts -o json) and its
# agent's shuttle_agent_policy_version says so.
wait_versions() {
  local timeout=$1 v=$2 s
  shift 2
  local expr
  expr="all(conn(i) and ver(i) == $v for i in [$(printf '"%s",' "$@")])"
  poll_until "$timeout" hosts_check "$expr" ||
    fail "hosts did not all run version $v within $timeout s: $*" "$W/hosts.json"
  for s in "$@"; do
    [ "$(agent_metric "$s" shuttle_agent_policy_version)" -eq "$v" ] ||
      fail "agent $s: shuttle_agent_policy_version is not $v" "$W/metrics.$s"
  done
}

# apply FILE: policy apply; sets VERSION to the new fleet version.
apply() {
  cctl_ok "apply $(basename "$1")" policy apply -f "$1"
  VERSION=$(sed -n 's/.*fleet version \([0-9]*\)$/\1/p' "$W/out")
  [[ $VERSION =~ ^[0-9]+$ ]] || fail "apply $(basename "$1"): no fleet version" "$W/out"
}

# bundle_size SLOT VERSION: the policy count the agent logged for the last push of VERSION.
bundle_size() {
  sed -n "s/.*enforcing policy version $2 ([a-z ]*, \\([0-9]*\\) policies).*/\\1/p" \
    "${ALOG[$1]}" | tail -n 1
}

# probe SLOT VM KIND TARGET: the ipc_probe client in the VM; sets PROBE_LINE (its one line).
probe() {
  timeout -k 5 60 "$CTL" --agent-socket "$W/agents/$1/agent.sock" run --vm "$2" -- \
    "$PROBE" client "$3" "$4" >"$W/probe.out" 2>"$W/probe.err" </dev/null
  local rc=$?
  PROBE_LINE=$(head -n 1 "$W/probe.out")
  case "$rc" in
    0) [[ $PROBE_LINE == OK* ]] || fail "probe $4 in $2: exit 0 but '$PROBE_LINE'" ;;
    1) [[ $PROBE_LINE == FAIL\ * ]] || fail "probe $4 in $2: exit 1 but '$PROBE_LINE'" ;;
    *) fail "probe $4 in $2 exited $rc (not a probe result)" "$W/probe.out" "$W/probe.err" ;;
  esac
}
# probe_allowed/probe_denied SLOT VM KIND TARGET: as the other e2e tests judge it, a call the
# agent let through fails (if at all) with the kernel's errno, never EACCES.
probe_allowed() {
  probe "$@"
  [[ $PROBE_LINE != "FAIL EACCES"* ]] || fail "$4 from $2 was denied: '$PROBE_LINE'"
}
probe_denied() {
  probe "$@"
  [[ $PROBE_LINE == "FAIL EACCES"* ]] || fail "$4 from $2 was not denied: '$PROBE_LINE'"
}

fleet_cleanup() {
  local rc=$? p vm s
  trap - EXIT
  for p in "${E2E_BG_PIDS[@]}"; do
    alive "$p" && kill -KILL "$p" 2>/dev/null
  done
  if [ "${#VMS_ON_A[@]}" -gt 0 ]; then
    # The VMs belong to host-a's agent: start it again if this run left it stopped.
    if [ -z "${APID[host-a]:-}" ] || ! alive "${APID[host-a]}"; then
      rm -f "$W/agents/host-a/ports"
      spawn_agent host-a host-a
      cleanup_agent_up() { [ -s "$W/agents/host-a/ports" ] || ! alive "${APID[host-a]}"; }
      poll_until 60 cleanup_agent_up
    fi
    for vm in "${VMS_ON_A[@]}"; do
      if ! actl host-a vm rm "$vm" >/dev/null 2>&1; then
        p=${E2E_INIT_PIDS[$vm]:-}
        if [ -n "$p" ] && alive "$p"; then
          echo "cleanup: vm rm $vm failed; killing its init pid $p" >&2
          kill -KILL "$p" 2>/dev/null
        fi
      fi
    done
  fi
  for s in "${!APID[@]}"; do
    p=${APID[$s]}
    [ -n "$p" ] && alive "$p" || continue
    kill -TERM "$p" 2>/dev/null
    if ! poll_until 30 gone "$p"; then
      echo "cleanup: agent $s did not stop on SIGTERM within 30 s; killed" >&2
      kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null
  done
  if [ -n "$CPID" ] && alive "$CPID"; then
    kill -TERM "$CPID" 2>/dev/null
    poll_until 30 gone "$CPID" || kill -KILL "$CPID" 2>/dev/null
    wait "$CPID" 2>/dev/null
  fi
  rm -rf "$W"
  [ -n "${E2E_BIN:-}" ] && rm -rf "$E2E_BIN"
  exit "$rc"
}
trap fleet_cleanup EXIT

# ----- 1. enrollment ---------------------------------------------------------------------------
start_controller
declare -A TOKEN=()
for h in "${HOSTS[@]}"; do
  cctl_ok "token create --host $h" token create --ttl 10m --host "$h"
  TOKEN[$h]=$(sed -n 's/^token: *//p' "$W/out")
  [[ ${TOKEN[$h]} =~ ^sjt_[0-9a-f]{64}$ ]] || fail "token create printed no token" "$W/out"
done
for h in "${HOSTS[@]}"; do
  start_agent "$h" "$h" --join-token "${TOKEN[$h]}"
done
for h in "${HOSTS[@]}"; do
  grep -q "enrolled with controller 127.0.0.1:$GRPC_PORT as host $h" "${ALOG[$h]}" ||
    fail "agent $h did not log its enrollment" "${ALOG[$h]}"
  for f in agent.pem agent.key ca.pem; do
    [ -s "$W/agents/$h/data/pki/$f" ] || fail "agent $h stored no pki/$f"
  done
  [ "$(stat -c %a "$W/agents/$h/data/pki/agent.key")" = 600 ] || fail "agent $h: key not 0600"
done
poll_until 30 hosts_check 'all(conn(i) for i in ["host-a", "host-b", "host-c"])' ||
  fail "the three enrolled agents are not all connected within 30 s" "$W/hosts.json"
pass "3 agents enrolled with single-use tokens (key 0600, certificate, CA) and connected"

# The VMs of sections 6 and 7 live on host-a; made now, so the restart below re-adopts them
# and reports them in its Hello.
for vm in web db; do
  out=$(actl host-a vm create "$vm" 2>&1) || fail "vm create $vm on host-a: $out"
  VMS_ON_A+=("$vm")
  [[ $out =~ \(init\ pid\ ([0-9]+)\) ]] || fail "vm create $vm: unexpected output: $out"
  E2E_INIT_PIDS[$vm]=${BASH_REMATCH[1]}
done

expect_refused reuse host-a "${TOKEN[host-a]}" 'PERMISSION_DENIED: join token already used'
cctl_ok "token create --ttl 1s" token create --ttl 1s --host host-d -o json
read -r EXPIRED_TOKEN EXPIRES_NS < <(python3 -c '
import json, sys, datetime
d = json.load(open(sys.argv[1]))
t = datetime.datetime.fromisoformat(d["expires"].replace("Z", "+00:00"))
print(d["token"], int(t.timestamp() * 1e9))' "$W/out") || fail "token create -o json" "$W/out"
token_expired() { [ "$(date +%s%N)" -gt "$EXPIRES_NS" ]; }
poll_until 10 token_expired || fail "a 1 s token has not expired after 10 s (clock?)"
expect_refused expired host-d "$EXPIRED_TOKEN" 'PERMISSION_DENIED: join token expired at'
[ "$(controller_metric shuttle_controller_enrollments_total outcome=ok)" -eq 3 ] &&
  [ "$(metric_sum "$W/metrics.controller" shuttle_controller_enrollments_total \
    outcome=denied)" -eq 2 ] ||
  fail "enrollments_total is not ok=3 denied=2" "$W/metrics.controller"
pass "a reused and an expired token are refused: the agent exits 1 naming why, keeps nothing"

for h in "${HOSTS[@]}"; do stop_agent_slot "$h"; done
poll_until 30 hosts_check 'not any(conn(i) for i in h)' ||
  fail "stopped agents still show connected after 30 s" "$W/hosts.json"

# ----- 2. impersonation ------------------------------------------------------------------------
# host-a's credentials (only them: the VMs stay host-a's) in an agent that claims host-b.
mkdir -p "$W/agents/impostor/data"
cp -a "$W/agents/host-a/data/pki" "$W/agents/impostor/data/" || fail "copy host-a's pki"
start_agent impostor host-b
DENIED_HELLO="PERMISSION_DENIED: certificate names 'host-a', hello claims 'host-b'"
refused_twice() { [ "$(grep -c "$DENIED_HELLO" "${ALOG[impostor]}")" -ge 2 ]; }
poll_until 30 refused_twice ||
  fail "the impostor's policy stream was not refused twice within 30 s" "${ALOG[impostor]}"
hosts_check '"host-b" in h and not conn("host-b") and not conn("host-a")' ||
  fail "while the impostor runs, hosts shows host-a or host-b connected" "$W/hosts.json"
hosts_check 'not any(conn(i) for i in h)' || fail "some host shows connected" "$W/hosts.json"
stop_agent_slot impostor
pass "an agent with host-a's certificate claiming host-b is refused ($DENIED_HELLO)"

for h in "${HOSTS[@]}"; do
  start_agent "$h" "$h"
  if grep -q "enrolled with controller" "${ALOG[$h]}"; then
    fail "agent $h enrolled again instead of using its certificate" "${ALOG[$h]}"
  fi
done
poll_until 30 hosts_check 'all(conn(i) for i in ["host-a", "host-b", "host-c"])' ||
  fail "restarted agents (no token) did not reconnect within 30 s" "$W/hosts.json"
poll_until 30 hosts_check 'vms("host-a") == ["db", "web"]' ||
  fail "host-a does not report its VMs web and db" "$W/hosts.json"
grep -q "adopted 2 VMs" "${ALOG[host-a]}" || fail "host-a did not re-adopt web and db"
pass "restarted without a token, all 3 reconnect with their stored certificates"

# ----- 3. push ---------------------------------------------------------------------------------
DENY_SOCK=/run/fleet-deny.sock
MISSING_SOCK=/run/fleet-missing.sock
cat >"$W/policies/base.yaml" <<EOF
name: fleet-base
rules:
  - name: web-no-deny-socket
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: $DENY_SOCK }
    action: deny
EOF
t0=$(date +%s%N)
apply "$W/policies/base.yaml"
V_BASE=$VERSION
wait_versions 30 "$V_BASE" "${HOSTS[@]}"
pass "policy apply (version $V_BASE) reached all 3 agents within" \
  "$((($(date +%s%N) - t0) / 1000000)) ms (apply, then polling hosts -o json)"

cat >"$W/policies/only-a.yaml" <<EOF
name: fleet-only-a
hosts: [host-a]
rules:
  - name: no-signals-to-db
    kind: signal
    object: { vm: db }
    action: deny
EOF
apply "$W/policies/only-a.yaml"
V_ONLY_A=$VERSION
wait_versions 30 "$V_ONLY_A" "${HOSTS[@]}"
for h in "${HOSTS[@]}"; do
  before=$(bundle_size "$h" "$V_BASE")
  after=$(bundle_size "$h" "$V_ONLY_A")
  [[ $before =~ ^[0-9]+$ && $after =~ ^[0-9]+$ ]] ||
    fail "agent $h did not log the bundles of versions $V_BASE and $V_ONLY_A" "${ALOG[$h]}"
  if [ "$h" = host-a ]; then want=$((before + 1)); else want=$before; fi
  [ "$after" -eq "$want" ] ||
    fail "agent $h holds $after policies at version $V_ONLY_A, want $want" "${ALOG[$h]}"
done
pass "a policy for hosts [host-a] is in host-a's bundle only (the others get the version bump)"

# ----- 4. delta vs full ------------------------------------------------------------------------
# host_c_returns VERSION delta|full: once host-a and host-b run VERSION, starts host-c again; it
# must converge with exactly one push of that type and none of the other (the controller's
# shuttle_controller_pushes_total{type}), which its log names too.
host_c_returns() {
  local v=$1 type=$2 other=full log_type=delta
  [ "$type" = full ] && other=delta log_type="full snapshot"
  wait_versions 30 "$v" host-a host-b
  local want0 other0 want1 other1
  want0=$(controller_metric shuttle_controller_pushes_total type="$type")
  other0=$(metric_sum "$W/metrics.controller" shuttle_controller_pushes_total type="$other")
  start_agent host-c host-c
  wait_versions 30 "$v" host-c
  want1=$(controller_metric shuttle_controller_pushes_total type="$type")
  other1=$(metric_sum "$W/metrics.controller" shuttle_controller_pushes_total type="$other")
  [ $((want1 - want0)) -eq 1 ] && [ "$other1" -eq "$other0" ] ||
    fail "host-c back at $v: $type pushes $want0->$want1 (want +1), $other $other0->$other1" \
      "$W/metrics.controller"
  grep -q "enforcing policy version $v ($log_type, " "${ALOG[host-c]}" ||
    fail "host-c's log does not show a $log_type push of version $v" "${ALOG[host-c]}"
}

stop_agent_slot host-c
poll_until 30 hosts_check 'not conn("host-c")' || fail "host-c still connected" "$W/hosts.json"
cat >>"$W/policies/base.yaml" <<EOF
  - name: web-no-db-queues
    subject: { vm: web }
    kind: mq-open
    object: { vm: db }
    action: deny
EOF
apply "$W/policies/base.yaml"
cat >"$W/policies/extra.yaml" <<EOF
name: fleet-extra
rules:
  - name: no-db-signals
    subject: { vm: web }
    kind: signal
    object: { vm: db }
    action: deny
EOF
apply "$W/policies/extra.yaml"
V_TWO_MORE=$VERSION
host_c_returns "$V_TWO_MORE" delta
grep -q "enforcing persisted policy version $V_ONLY_A " "${ALOG[host-c]}" ||
  fail "host-c did not enforce its persisted version $V_ONLY_A at start" "${ALOG[host-c]}"
pass "host-c, down for 2 changes, came back at version $V_ONLY_A and got a delta to $V_TWO_MORE"

stop_agent_slot host-c
poll_until 30 hosts_check 'not conn("host-c")' || fail "host-c still connected" "$W/hosts.json"
for i in $(seq 1 17); do # More changed policies than a delta carries (16).
  cat >"$W/policies/bulk.yaml" <<EOF
name: fleet-bulk-$i
rules:
  - name: r
    subject: { vm: nobody-$i }
    kind: signal
    action: deny
EOF
  apply "$W/policies/bulk.yaml"
done
V_BULK=$VERSION
host_c_returns "$V_BULK" full
pass "host-c, down for 17 changed policies, got a full snapshot of version $V_BULK"

# Every host's bundle compiled, also where all of a policy's rules are for VMs it doesn't run
# (host-b and host-c get fleet-base without rules): no NACK anywhere.
hosts_check 'not any(x.get("lastNackError") or x.get("lastNackTime") for x in h.values())' ||
  fail "a host NACKed a push" "$W/hosts.json"
[ "$(controller_metric shuttle_controller_nacks_total)" -eq 0 ] ||
  fail "shuttle_controller_nacks_total is not 0" "$W/metrics.controller"
for h in "${HOSTS[@]}"; do
  [ "$(agent_metric "$h" shuttle_agent_policy_pushes_total result=nack)" -eq 0 ] ||
    fail "agent $h NACKed a push" "$W/metrics.$h"
done
pass "no NACK: hosts shows none, controller and agents count 0"

# ----- 6. ask with cache and fail mode; 7. audit across a controller restart ---------------------
cat >"$W/policies/ask.yaml" <<EOF
name: fleet-ask
rules:
  - name: web-asks-closed
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/fleet-ask/* }
    action: ask
    ask: { ttl: 5m, offline_ttl: 10m, timeout: 2s, fail: closed }
  - name: web-asks-open
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/fleet-open/* }
    action: ask
    ask: { ttl: 5m, offline_ttl: 10m, timeout: 2s, fail: open }
EOF
apply "$W/policies/ask.yaml"
V_ASK=$VERSION
wait_versions 30 "$V_ASK" "${HOSTS[@]}"
cctl_ok "answer set" answer set --vm web --kind unix-connect --object /run/fleet-ask/ok.sock \
  --verdict allow --ttl 5m

# 7, first half: denied cross-VM calls with the controller up. The loop alternates the denied
# socket (cross-VM deny, audited) and a missing one (intra-VM, not audited): 250 audited denies.
LOOP_CALLS=500
AUDITED_PER_LOOP=$((LOOP_CALLS / 2))
connect_loop() {
  timeout -k 5 120 "$CTL" --agent-socket "$W/agents/host-a/agent.sock" run --vm web -- \
    "$PROBE" connect-loop "$LOOP_CALLS" "$DENY_SOCK" "$MISSING_SOCK" \
    >"$W/loop.out" 2>"$W/loop.err" </dev/null
  local done_line
  done_line=$(grep '^DONE ' "$W/loop.out")
  [[ $done_line == *" calls=$LOOP_CALLS denied_eacces=$AUDITED_PER_LOOP denied_enoent=0 missing_enoent=$AUDITED_PER_LOOP enosys=0 other=0 "* ]] ||
    fail "connect loop in web: '$done_line'" "$W/loop.out" "$W/loop.err"
}
connect_loop
pass "$AUDITED_PER_LOOP denied cross-VM connects in web with the controller up"

# ask_counters: host-a's ask cache hits and misses and fail-mode decisions, into HIT MISS FM.
ask_counters() {
  HIT=$(agent_metric host-a shuttle_agent_ask_cache_total result=hit)
  MISS=$(metric_sum "$W/metrics.host-a" shuttle_agent_ask_cache_total result=miss)
  FM=$(metric_sum "$W/metrics.host-a" shuttle_agent_fail_mode_decisions_total)
}
# expect_ask_counts WHAT HITS MISSES FAIL_MODE: how much each grew since the last ask_counters.
expect_ask_counts() {
  local h0=$HIT m0=$MISS f0=$FM got
  ask_counters
  got="cache hit +$((HIT - h0)), miss +$((MISS - m0)), fail mode +$((FM - f0))"
  [ "$got" = "cache hit +$2, miss +$3, fail mode +$4" ] ||
    fail "$1: $got (want +$2, +$3, +$4)" "$W/metrics.host-a"
}

# 6, online: the standing answer allows; an object no answer covers is denied by the controller.
ask_counters
probe_allowed host-a web unix /run/fleet-ask/ok.sock
ONLINE_LINE=$PROBE_LINE
probe_allowed host-a web unix /run/fleet-ask/ok.sock
probe_denied host-a web unix /run/fleet-ask/unanswered.sock
expect_ask_counts "online asks" 1 2 0
[ "$(controller_metric shuttle_controller_authorize_total outcome=allow)" -eq 1 ] &&
  [ "$(metric_sum "$W/metrics.controller" shuttle_controller_authorize_total outcome=deny)" \
    -eq 1 ] || fail "controller authorize_total is not allow=1 deny=1" "$W/metrics.controller"
pass "ask online: the standing answer allows ('$ONLINE_LINE', then a cache hit), no answer denies"

stop_controller
agent_offline() { [ "$(agent_metric host-a shuttle_agent_controller_connected)" -eq 0 ]; }
poll_until 30 agent_offline || fail "host-a still says it is connected 30 s after the stop"

probe_allowed host-a web unix /run/fleet-ask/ok.sock
CACHED_LINE=$PROBE_LINE
probe_denied host-a web unix /run/fleet-ask/new.sock
probe_allowed host-a web unix /run/fleet-open/new.sock
expect_ask_counts "controller down" 1 2 2
FM_REASONS=$(grep '^shuttle_agent_fail_mode_decisions_total{' "$W/metrics.host-a" |
  awk '$NF > 0 { printf "%s ", $1 "=" $NF }')
pass "controller stopped: cached answer allows ('$CACHED_LINE'); new objects: fail closed" \
  "denies, fail open allows; counted: $FM_REASONS"

# 7, second half: as many denied calls while the controller is down; they wait in the spool.
connect_loop
spooled() {
  [ "$(agent_metric host-a shuttle_agent_audit_spool_records)" -ge "$AUDITED_PER_LOOP" ]
}
poll_until 30 spooled || fail "host-a's spool does not hold the $AUDITED_PER_LOOP new records" \
  "$W/metrics.host-a"
pass "$AUDITED_PER_LOOP more denied connects with the controller down, spooled" \
  "($(metric_sum "$W/metrics.host-a" shuttle_agent_audit_spool_records) records waiting)"

t0=$SECONDS
start_controller "127.0.0.1:$GRPC_PORT"
wait_versions 60 "$V_ASK" "${HOSTS[@]}"
[ "$(controller_metric shuttle_controller_pushes_total type=full)" -eq 3 ] &&
  [ "$(metric_sum "$W/metrics.controller" shuttle_controller_pushes_total type=delta)" -eq 0 ] ||
  fail "after the controller restart: not exactly 3 full pushes and no delta" \
    "$W/metrics.controller"
pass "controller restarted: all 3 agents reconnected and converged in $((SECONDS - t0)) s" \
  "(a full snapshot each: the new process holds no acknowledged content)"

WANT=$((2 * AUDITED_PER_LOOP))
# deny_records: the audit records of the loop's denied socket (host-a, -o json), counted.
deny_records() {
  cctl audit -o json --host host-a --limit 10000 >"$W/audit.json" 2>"$W/audit.err" || return 1
  AUDIT_COUNT=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(sum(1 for r in d.get("records", []) if r["interaction"].get("objectName") == sys.argv[2]))
' "$W/audit.json" "$DENY_SOCK") || return 1
}
audit_complete() { deny_records && [ "$AUDIT_COUNT" -ge "$WANT" ]; }
spool_empty() { [ "$(agent_metric host-a shuttle_agent_audit_spool_records)" -eq 0 ]; }
poll_until 60 audit_complete ||
  fail "the controller has ${AUDIT_COUNT:-?} of the $WANT audit records after 60 s" "$W/audit.err"
poll_until 60 spool_empty || fail "host-a's audit spool did not drain within 60 s" \
  "$W/metrics.host-a"
dropped=$(metric_sum "$W/metrics.host-a" shuttle_agent_audit_dropped_total)
[ "$dropped" -eq 0 ] || fail "host-a dropped $dropped audit records" "$W/metrics.host-a"
deny_records || fail "audit query failed" "$W/audit.err"
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
recs = [r for r in d.get("records", []) if r["interaction"].get("objectName") == sys.argv[2]]
ids = [r["id"] for r in recs]
want = int(sys.argv[3])
bad = [r["id"] for r in recs if r["decision"]["verdict"] != "VERDICT_DENY"
       or r["interaction"]["subjectVm"] != "web" or r["hostId"] != "host-a"
       or not r["id"].startswith("host-a/")]
boots = {i.split("/")[1] for i in ids}
if len(recs) != want or len(set(ids)) != want or bad:
  sys.exit("%d records, %d distinct ids (want %d each); wrong fields: %s" %
           (len(recs), len(set(ids)), want, bad[:5]))
print("%d records, %d distinct ids, %d agent boots" % (len(recs), len(set(ids)), len(boots)))
' "$W/audit.json" "$DENY_SOCK" "$WANT" >"$W/audit.check" 2>&1 ||
  fail "audit across the restart: $(cat "$W/audit.check")" "$W/audit.json"
pass "audit across the controller restart: $(cat "$W/audit.check"), spool 0, nothing dropped"

cctl_ok "audit --vm web --verdict deny" audit -o json --vm web --verdict deny --limit 10000
python3 -c '
import json, sys
recs = json.load(open(sys.argv[1])).get("records", [])
ok = all(r["decision"]["verdict"] == "VERDICT_DENY" and "web" in
         (r["interaction"].get("subjectVm"), r["interaction"].get("objectVm")) for r in recs)
n = sum(1 for r in recs if r["interaction"].get("objectName") == sys.argv[2])
sys.exit(0 if ok and n == int(sys.argv[3]) else 1)' "$W/out" "$DENY_SOCK" "$WANT" ||
  fail "audit --vm web --verdict deny returned other records, or not all $WANT" "$W/out"
cctl_ok "audit --verdict allow" audit -o json --vm web --verdict allow --limit 10000
python3 -c '
import json, sys
recs = json.load(open(sys.argv[1])).get("records", [])
names = {r["interaction"].get("objectName") for r in recs}
ok = recs and all(r["decision"]["verdict"] == "VERDICT_ALLOW" for r in recs)
sys.exit(0 if ok and "/run/fleet-ask/ok.sock" in names and sys.argv[2] not in names else 1)
' "$W/out" "$DENY_SOCK" || fail "audit --vm web --verdict allow is wrong" "$W/out"
cctl_ok "audit table" audit --vm web --verdict deny --host host-a --limit 3
rows=$(tail -n +2 "$W/out")
[ "$(grep -c ' deny ' <<<"$rows")" -eq 3 ] && ! grep -Eq ' (allow|redirect) ' <<<"$rows" ||
  fail "audit --vm web --verdict deny (table) shows other verdicts" "$W/out"
pass "audit --vm web --verdict deny|allow filter (JSON and table)"

# ----- done ------------------------------------------------------------------------------------
for vm in web db; do
  actl host-a vm rm "$vm" >"$W/out" 2>&1 || fail "vm rm $vm" "$W/out"
done
VMS_ON_A=()
for h in "${HOSTS[@]}"; do stop_agent_slot "$h"; done
stop_controller
pass "VMs removed, agents and controller stopped"
echo "$E2E_NAME: $E2E_PASSED passed, 0 failed ($((SECONDS - E2E_STARTED)) s)"
