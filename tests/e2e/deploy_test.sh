#!/usr/bin/env bash
# e2e: what deploy/ ships, proven against the real programs (issue: deploy/ of DESIGN.md §3):
#   1. deploy/systemd: `systemd-analyze verify` of both units, rendered with the built binaries'
#      paths (the only change), prints nothing; the controller's sandbox stays tight
#      (`systemd-analyze security --offline`); every --flag the units and env files name is one
#      the binary has;
#   2. a real shuttle-controller and a real shuttle-agent started from the units' own ExecStart
#      lines (Environment= defaults, state and runtime paths moved to a temp dir, addresses to
#      port 0); the agent enrolls with a join token; a policy with an allowed crossing and an
#      `ask` rule, a standing answer, VMs web and db: a brokered connect, an asked one allowed and
#      one denied, so that every metric the dashboard shows has a series;
#   3. deploy/prometheus/prometheus.yml rendered with the real ports (its jobs, only the targets
#      replaced) beside shuttle-alerts.yml, `promtool check config` and `check rules`, a real
#      Prometheus on 127.0.0.1 with its own storage (never the packaged service): both targets
#      up, every alert rule loaded and evaluated by it (health ok);
#   4. every metric name the dashboard and the alerts use is in Prometheus, and every label they
#      group, match or print by is on that metric's series. Only shuttle_controller_store_errors_
#      total (created at the first store fault) may be absent, if the sources register it. The
#      check is run on misspelled copies too, and must fail on each (it can fail);
#   5. every alert and panel expression runs through Prometheus's /api/v1/query.
#
# Hermetic: temporary directories, port 0 (Prometheus: a free port picked just before), VM names
# with this shell's pid; every wait is a bounded poll; VMs, agent, controller and Prometheus are
# always removed/stopped (trap). Fails, never skips, when not root or a tool is missing.
#
# usage: deploy_test.sh SHUTTLE_CONTROLLER SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH
#                       SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=deploy
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"

# The controller first; e2e_init takes (and checks) the other five.
CONTROLLER=$(readlink -f "${1:-}")
shift
[ -x "$CONTROLLER" ] || fail "usage: $0 SHUTTLE_CONTROLLER AGENT CTL LAUNCH VM_INIT PROBE:" \
  "the controller binary '$CONTROLLER' is missing or not executable"
for tool in systemd-analyze prometheus promtool python3 curl; do
  command -v "$tool" >/dev/null ||
    fail "$tool is needed (Debian: scripts/install-deps.sh installs it)"
done
python3 -c 'import yaml' 2>/dev/null || fail "python3-yaml is needed (scripts/install-deps.sh)"
e2e_init "$@"

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPLOY="$SRC/deploy"
CHECK=(python3 "$SRC/tests/e2e/deploy_check.py")
W=$E2E_WORK
CLOG="$W/controller.log"
AGENT_LOG="$W/agent.log"
PLOG="$W/prometheus.log"
CPID="" PROM_PID="" GRPC_PORT="" CMETRICS="" AMETRICS="" PROM=""
WEB="e2e-deploy-web-$$"
DB="e2e-deploy-db-$$"
HOST_ID="e2e-deploy-host"
AGENT_SOCK="$W/run/agent.sock" # Where the unit's /run/shuttle/agent.sock is moved to.

# ----- helpers ---------------------------------------------------------------------------------

# e2e_lib's fail (reason, the given files, the agent's log), with the controller's and
# Prometheus's logs too.
eval "e2e_lib_$(declare -f fail)"
fail() { e2e_lib_fail "$1" "${@:2}" "$CLOG" "$PLOG"; }

# run_ok WHAT CMD...: CMD must succeed; its stdout goes to $W/out, its stderr to $W/err.
run_ok() {
  local what=$1
  shift
  "$@" >"$W/out" 2>"$W/err" || fail "$what: exited $?: $*" "$W/out" "$W/err"
}
cctl() { "$CTL" --controller "127.0.0.1:$GRPC_PORT" --data-dir "$W/controller" "$@"; }

# metric URL NAME [LABEL=VALUE]...: one scrape of URL, summed as e2e_lib's metric_sum does.
metric() {
  local url=$1
  shift
  curl -sS --max-time 10 "$url" >"$W/scrape" || fail "cannot scrape $url"
  metric_sum "$W/scrape" "$@"
}
agent_metric() { metric "http://127.0.0.1:$AMETRICS/metrics" "$@"; }
controller_metric() { metric "http://127.0.0.1:$CMETRICS/metrics" "$@"; }

# unit_argv UNIT OUT ARGS...: deploy_check.py unit-argv into OUT (NUL-separated); fails loudly.
unit_argv() {
  local unit=$1 out=$2
  shift 2
  "${CHECK[@]}" unit-argv "$DEPLOY/systemd/$unit" "$@" >"$out" 2>"$W/err" ||
    fail "cannot render $unit's ExecStart" "$W/err"
  # Hermetic: nothing of the host's own Shuttle state may be left in the command line.
  if tr '\0' '\n' <"$out" | grep -E '^/(var/lib|run)/shuttle' >"$W/err"; then
    fail "$unit's rendered ExecStart still names host paths" "$W/err"
  fi
}

# read_port FILE KEY: the KEY=PORT line of a daemon's port file.
read_port() {
  local port
  port=$(sed -n "s/^$2=//p" "$1")
  [[ $port =~ ^[1-9][0-9]*$ ]] || fail "bad port file $1: $(tr '\n' ' ' <"$1")"
  echo "$port"
}

start_controller() {
  unit_argv shuttle-controller.service "$W/controller.argv" \
    --set SHUTTLE_LISTEN=127.0.0.1:0 --set SHUTTLE_METRICS_LISTEN=127.0.0.1:0 \
    --set "SHUTTLE_CONTROLLER_OPTS=--port-file $W/controller.ports" \
    --map "/usr/local/bin/shuttle-controller=$CONTROLLER" \
    --map "/var/lib/shuttle/controller=$W/controller"
  local argv=()
  mapfile -d '' argv <"$W/controller.argv"
  echo "=== ${argv[*]}" >>"$CLOG"
  "${argv[@]}" >>"$CLOG" 2>&1 &
  CPID=$!
  controller_up() {
    alive "$CPID" || fail "the controller (started as its unit says) exited during start-up"
    [ -s "$W/controller.ports" ]
  }
  poll_until 30 controller_up || fail "the controller wrote no port file within 30 s"
  GRPC_PORT=$(read_port "$W/controller.ports" grpc)
  CMETRICS=$(read_port "$W/controller.ports" metrics)
  e2e_log "controller pid $CPID: ${argv[*]}"
}

# Replaces e2e_lib's launch_agent (which e2e_cleanup also uses to remove the VMs): the agent as
# its unit starts it (rendered by start_agent), waiting (bounded, 60 s) for its port file; sets
# AGENT_PID, or returns 1 with the reason in LAUNCH_ERROR. Enrolled once, a
# restarted agent ignores the join token.
launch_agent() {
  local argv=()
  mapfile -d '' argv <"$W/agent.argv"
  rm -f "$W/agent.ports"
  LAUNCH_ERROR=""
  echo "=== ${argv[*]}" >>"$AGENT_LOG"
  "${argv[@]}" >>"$AGENT_LOG" 2>&1 &
  AGENT_PID=$!
  agent_up() { [ -s "$W/agent.ports" ] || ! alive "$AGENT_PID"; }
  poll_until 60 agent_up
  if ! alive "$AGENT_PID"; then
    LAUNCH_ERROR="the agent (started as its unit says) exited during start-up"
  elif [ ! -s "$W/agent.ports" ]; then
    LAUNCH_ERROR="the agent wrote no port file within 60 s"
  fi
  [ -z "$LAUNCH_ERROR" ]
}

start_agent() {
  unit_argv shuttle-agent.service "$W/agent.argv" \
    --set SHUTTLE_METRICS_LISTEN=127.0.0.1:0 \
    --set "SHUTTLE_AGENT_OPTS=--controller 127.0.0.1:$GRPC_PORT --controller-ca \
$W/controller/pki/ca.pem --join-token $1 --host-id $HOST_ID --port-file $W/agent.ports \
--launcher $LAUNCH --vm-init $VM_INIT" \
    --map "/usr/local/bin/shuttle-agent=$AGENT" --map "/var/lib/shuttle/agent=$W/agent" \
    --map "/run/shuttle=$W/run"
  launch_agent || fail "$LAUNCH_ERROR"
  AMETRICS=$(read_port "$W/agent.ports" metrics)
  e2e_log "agent pid $AGENT_PID: $(tr '\0' ' ' <"$W/agent.argv")"
}

# stop_pid PID WHAT: SIGTERM; it must exit 0 within 30 s.
stop_pid() {
  kill -TERM "$1" 2>/dev/null
  wait_exit "$1" 30 || fail "$2 did not exit within 30 s of SIGTERM"
  [ "$WAIT_RC" -eq 0 ] || fail "$2 exited $WAIT_RC after SIGTERM (want 0)"
}

# probe VM TARGET: the ipc_probe unix client in VM; sets PROBE_LINE (its one line).
probe() {
  timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$1" -- \
    "$PROBE" client unix "$2" >"$W/probe.out" 2>"$W/probe.err" </dev/null
  local rc=$?
  PROBE_LINE=$(head -n 1 "$W/probe.out")
  case "$rc" in
    0 | 1) ;;
    *) fail "probe $2 in $1 exited $rc (not a probe result)" "$W/probe.out" "$W/probe.err" ;;
  esac
}

# The Prometheus HTTP API is up.
prom_ready() { curl -sf --max-time 5 "$PROM/-/ready" >/dev/null; }

# Stops Prometheus and the controller, then e2e_lib's cleanup: background runs, the VMs (with an
# agent started again if needed), the agent, the temporary directories; exits with the status
# the script had.
deploy_cleanup() {
  local rc=$? p
  trap - EXIT
  for p in "$PROM_PID" "$CPID"; do
    [ -n "$p" ] && alive "$p" || continue
    kill -TERM "$p" 2>/dev/null
    poll_until 30 gone "$p" || kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  (exit "$rc")
  e2e_cleanup
}
trap deploy_cleanup EXIT

# ----- 1. systemd units ------------------------------------------------------------------------
mkdir -p "$W/units"
sed "s|/usr/local/bin/shuttle-controller|$CONTROLLER|" "$DEPLOY/systemd/shuttle-controller.service" \
  >"$W/units/shuttle-controller.service"
sed "s|/usr/local/bin/shuttle-agent|$AGENT|" "$DEPLOY/systemd/shuttle-agent.service" \
  >"$W/units/shuttle-agent.service"
for unit in shuttle-controller shuttle-agent; do
  # The rendering changes the ExecStart= binary and nothing else.
  changed=$(diff "$DEPLOY/systemd/$unit.service" "$W/units/$unit.service" | grep -c '^>')
  [ "$changed" -eq 1 ] || fail "$unit.service: rendering changed $changed lines (want 1)"
done
# verify exits 0 even for unknown keys or bad values: any output at all is a failure.
(cd "$W/units" && systemd-analyze verify ./shuttle-controller.service ./shuttle-agent.service) \
  >"$W/verify.out" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ ! -s "$W/verify.out" ] ||
  fail "systemd-analyze verify exited $rc or complained" "$W/verify.out"
systemd-analyze security --offline=true --no-pager "$W/units/shuttle-controller.service" \
  >"$W/security.out" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p' "$W/security.out")
[[ $exposure =~ ^[0-9.]+$ ]] || fail "no exposure level from systemd-analyze security" \
  "$W/security.out"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' ||
  fail "shuttle-controller.service exposure $exposure (want <= 2.0)" "$W/security.out"
"$CONTROLLER" --helpfull >"$W/controller.help" 2>&1
"$AGENT" --helpfull >"$W/agent.help" 2>&1
for daemon in controller agent; do
  run_ok "shuttle-$daemon's unit or env file names a flag the binary does not have" \
    "${CHECK[@]}" flags "$DEPLOY/systemd/shuttle-$daemon.service" \
    "$DEPLOY/systemd/shuttle-$daemon.env" --help-output "$W/$daemon.help"
done
pass "systemd-analyze verify: both units clean; controller exposure $exposure; every flag real"

# ----- 2. the daemons, as the units start them --------------------------------------------------
start_controller
run_ok "token create" cctl token create --ttl 10m --host "$HOST_ID"
TOKEN=$(sed -n 's/^token: *//p' "$W/out")
[[ $TOKEN =~ ^sjt_[0-9a-f]{64}$ ]] || fail "token create printed no token" "$W/out"
start_agent "$TOKEN"
agent_connected() { [ "$(agent_metric shuttle_agent_controller_connected)" -eq 1 ]; }
poll_until 30 agent_connected || fail "the agent is not connected to the controller after 30 s"
pass "controller and agent run from their units' ExecStart; the agent enrolled and connected"

cat >"$W/policy.yaml" <<EOF
name: e2e-deploy
rules:
  - name: web-to-db-socket
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: /run/e2e-deploy-ok.sock }
    action: allow
  - name: web-asks-db
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: /run/e2e-deploy-ask/* }
    action: ask
    ask: { ttl: 5m, offline_ttl: 10m, timeout: 2s, fail: closed }
EOF
run_ok "policy apply" cctl policy apply -f "$W/policy.yaml"
VERSION=$(sed -n 's/.*fleet version \([0-9]*\)$/\1/p' "$W/out")
[[ $VERSION =~ ^[0-9]+$ ]] || fail "policy apply printed no fleet version" "$W/out"
run_ok "answer set" cctl answer set --vm "$WEB" --kind unix-connect \
  --object /run/e2e-deploy-ask/ok.sock --verdict allow --ttl 5m
at_version() { [ "$(agent_metric shuttle_agent_policy_version)" -eq "$VERSION" ]; }
poll_until 30 at_version || fail "the agent does not enforce version $VERSION after 30 s"
create_vm "$WEB"
create_vm "$DB"
# A host gets only the rules whose subject VM it runs: they come with the push that follows the
# heartbeat (every 5 s) reporting web. Pushes before it: version 0 at connect, then $VERSION.
rules_pushed() { [ "$(agent_metric shuttle_agent_policy_pushes_total result=ack)" -ge 3 ]; }
poll_until 30 rules_pushed || fail "no push with the rules for $WEB within 30 s" "$W/scrape"

"$CTL" --agent-socket "$AGENT_SOCK" run --vm "$DB" -- "$PROBE" server unix \
  /run/e2e-deploy-ok.sock >"$W/server.out" 2>"$W/server.err" </dev/null &
SERVER_PID=$!
E2E_BG_PIDS+=("$SERVER_PID")
server_ready() {
  alive "$SERVER_PID" || fail "the server in $DB exited" "$W/server.out" "$W/server.err"
  grep -q '^READY ' "$W/server.out"
}
poll_until 60 server_ready || fail "the server in $DB printed no READY within 60 s" \
  "$W/server.out"
probe "$WEB" /run/e2e-deploy-ok.sock
[[ $PROBE_LINE == OK* ]] || fail "allowed connect from $WEB to $DB: '$PROBE_LINE'"
probe "$WEB" /run/e2e-deploy-ask/ok.sock # Answered allow: nobody listens, but not EACCES.
[[ $PROBE_LINE != "FAIL EACCES"* ]] || fail "the asked and answered connect was denied"
probe "$WEB" /run/e2e-deploy-ask/no.sock # No standing answer: the controller denies.
[[ $PROBE_LINE == "FAIL EACCES"* ]] || fail "the asked connect without answer: '$PROBE_LINE'"
crossed() {
  [ "$(agent_metric shuttle_agent_brokered_total result=ok)" -ge 1 ] &&
    [ "$(controller_metric shuttle_controller_authorize_total outcome=deny)" -ge 1 ] &&
    [ "$(controller_metric shuttle_controller_audit_records_ingested_total)" -ge 3 ]
}
poll_until 30 crossed || fail "no brokered crossing, Authorize deny or 3 audit records" \
  "$W/scrape"
kill -TERM "$SERVER_PID" 2>/dev/null
wait_exit "$SERVER_PID" 30 || fail "the server in $DB did not stop"
pass "a brokered connect, an ask allowed and one denied; audit records reached the controller"

# ----- 3. Prometheus ---------------------------------------------------------------------------
run_ok "render prometheus.yml" "${CHECK[@]}" render-prometheus \
  "$DEPLOY/prometheus/prometheus.yml" "$W/prom" --target "shuttle-controller=127.0.0.1:$CMETRICS" \
  --target "shuttle-agent=127.0.0.1:$AMETRICS"
cp "$DEPLOY/prometheus/shuttle-alerts.yml" "$W/prom/" || fail "copy shuttle-alerts.yml"
run_ok "promtool check config" promtool check config "$W/prom/prometheus.yml"
run_ok "promtool check rules" promtool check rules "$W/prom/shuttle-alerts.yml"
for attempt in 1 2 3; do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0));
print(s.getsockname()[1])')
  PROM="http://127.0.0.1:$port"
  echo "=== attempt $attempt on $PROM" >>"$PLOG"
  prometheus --config.file="$W/prom/prometheus.yml" --storage.tsdb.path="$W/prom/data" \
    --web.listen-address="127.0.0.1:$port" >>"$PLOG" 2>&1 &
  PROM_PID=$!
  prom_up() { prom_ready || ! alive "$PROM_PID"; }
  poll_until 60 prom_up || fail "Prometheus is not ready within 60 s"
  alive "$PROM_PID" && break
  wait "$PROM_PID" 2>/dev/null
  PROM_PID=""
  # Only a port taken between picking it and binding it is worth another attempt.
  tail -n 5 "$PLOG" | grep -qi 'address already in use' || fail "Prometheus exited at start"
done
[ -n "$PROM_PID" ] || fail "Prometheus found no free port in 3 attempts"
e2e_log "prometheus pid $PROM_PID on $PROM"
targets_up() { "${CHECK[@]}" targets-up "$PROM" shuttle-controller shuttle-agent >"$W/out"; }
poll_until 60 targets_up || fail "the scrape targets are not both up after 60 s" "$W/out"
rules_ok() { "${CHECK[@]}" rules-ok "$PROM" "$W/prom/shuttle-alerts.yml" >"$W/rules.out"; }
poll_until 60 rules_ok || fail "Prometheus did not evaluate every alert rule within 60 s" \
  "$W/rules.out"
pass "promtool: config and rules valid; Prometheus scrapes both targets (up) and evaluates" \
  "$(sed -n 's/^loaded \([0-9]* of [0-9]*\) rules.*/\1/p' "$W/rules.out") rules (health ok)"

# ----- 4. metric names and labels --------------------------------------------------------------
DASHBOARD="$DEPLOY/grafana/shuttle-dashboard.json"
RULES="$DEPLOY/prometheus/shuttle-alerts.yml"
LAZY=(--lazy shuttle_controller_store_errors_total)
"${CHECK[@]}" check-names "$PROM" "$DASHBOARD" "$RULES" "$SRC" "${LAZY[@]}" >"$W/names.out" \
  2>&1 || fail "the dashboard or the alerts use names Prometheus does not have" "$W/names.out"
NAMES=$(tail -n 1 "$W/names.out")

# expect_check_fails WHAT FILE PATTERN: check-names on a misspelled copy must fail naming it.
expect_check_fails() {
  local dashboard=$DASHBOARD rules=$RULES
  case "$2" in *.json) dashboard=$2 ;; *) rules=$2 ;; esac
  if "${CHECK[@]}" check-names "$PROM" "$dashboard" "$rules" "$SRC" "${LAZY[@]}" \
    >"$W/neg.out" 2>&1; then
    fail "check-names passed with $1" "$W/neg.out"
  fi
  grep -q "$3" "$W/neg.out" || fail "check-names on $1 does not name $3" "$W/neg.out"
}
sed '0,/(rate(shuttle_agent_decisions_total/s//(rate(shuttle_agent_decision_total/' "$DASHBOARD" \
  >"$W/misspelled-metric.json"
expect_check_fails "a misspelled metric in the dashboard" "$W/misspelled-metric.json" \
  'metric shuttle_agent_decision_total does not exist'
sed '0,/by (kind, scope, verdict)/s//by (kind, scope, verdcit)/' "$DASHBOARD" \
  >"$W/misspelled-label.json"
expect_check_fails "a misspelled label in the dashboard" "$W/misspelled-label.json" \
  "label 'verdcit'"
sed 's/shuttle_controller_store_errors_total/shuttle_controller_store_error_total/' "$RULES" \
  >"$W/misspelled-lazy.yml"
expect_check_fails "a misspelled lazily created metric in the alerts" "$W/misspelled-lazy.yml" \
  'metric shuttle_controller_store_error_total does not exist'
pass "names: $NAMES; misspelled copies (metric, label, lazy metric) fail the check"

# ----- 5. every expression runs --------------------------------------------------------------
"${CHECK[@]}" eval "$PROM" "$DASHBOARD" "$RULES" >"$W/eval.out" 2>&1 ||
  fail "an expression does not run in Prometheus" "$W/eval.out"
pass "/api/v1/query: $(tail -n 1 "$W/eval.out")"

# ----- done ------------------------------------------------------------------------------------
kill -TERM "$PROM_PID"
wait_exit "$PROM_PID" 30 || fail "Prometheus did not exit within 30 s of SIGTERM"
PROM_PID=""
for vm in "$WEB" "$DB"; do remove_vm "$vm"; done
stop_pid "$AGENT_PID" "the agent"
AGENT_PID=""
stop_pid "$CPID" "the controller"
CPID=""
pass "VMs removed; Prometheus, agent and controller stopped"
echo "$E2E_NAME: $E2E_PASSED passed, 0 failed ($((SECONDS - E2E_STARTED)) s)"
