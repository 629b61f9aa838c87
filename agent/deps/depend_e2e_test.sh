#!/usr/bin/env bash
# e2e: application dependencies (issue 5 point 4). A real agent (as root), VMs web, db and a
# third one. db registers a service (`shuttlectl service add`): crossing_probe's unix server at
# /run/echo.sock, which exists only in db (its /run is private) and runs nowhere yet. web's
# connect to /run/echo.sock (allowed by a unix-connect rule) finds nothing listening in db; the
# `depend` rule lets web depend on the service, so the agent starts it in db, waits until it
# accepts, and the connect succeeds (the server's ACK names db). A second connect reuses the
# running service (one start). The third VM, allowed to connect but without a depend rule, is
# refused with the open's own errno and starts nothing. The registration survives an agent
# restart; `service rm` removes it. /metrics counts the starts and the refusal.
#
# Hermetic like the other e2e tests (tests/e2e/e2e_lib.sh); fails, never skips, without root.
#
# usage: depend_e2e_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT CROSSING_PROBE
E2E_NAME=depend
# shellcheck source=../../tests/e2e/e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/e2e_lib.sh"
e2e_init "$@"

WEB="e2e-dweb-$$"
DB="e2e-ddb-$$"
THIRD="e2e-dthird-$$"
cat >"$E2E_WORK/policy.yaml" <<POLICY
name: e2e-depend
description: web depends on db's echo service; the third VM may connect but not start it
rules:
  - name: clients-reach-echo
    subject: { vm: "*" }
    kind: unix-connect
    object: { vm: $DB, path: /run/echo.sock }
    action: allow
  - name: web-depends-on-echo
    subject: { vm: $WEB }
    kind: depend
    object: { vm: $DB, service: echo }
    action: allow
POLICY

# run_client VM: crossing_probe's unix client to /run/echo.sock in VM; sets LINE and RC.
run_client() {
  local out="$E2E_WORK/client.out"
  timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$1" -- \
    "$PROBE" client unix /run/echo.sock >"$out" 2>&1 </dev/null
  RC=$?
  LINE=$(head -n 1 "$out")
}

# service_field N: column N of echo's row in `service ls` (VM NAME READY STATE PID STARTS ...).
service_field() {
  ctl service ls | awk -v vm="$DB" -v col="$1" '$1 == vm && $2 == "echo" { print $col }'
}

start_agent "$E2E_WORK/agent.log"
create_vm "$WEB"
create_vm "$DB"
create_vm "$THIRD"

# Registration: validation errors are clear, a good service is listed as stopped.
out=$(ctl service add --vm "$DB" --name echo --ready unix:run/echo.sock -- "$PROBE" 2>&1) &&
  fail "service add with a relative ready path succeeded: $out"
[[ $out == *"ready: 'run/echo.sock' is not absolute"* ]] || fail "unclear error: $out"
pass "service add refuses a bad --ready: $out"
out=$(ctl service add --vm "$DB" --name echo --ready unix:/run/echo.sock --start-timeout 20s -- \
  "$PROBE" server unix /run/echo.sock 2>&1) || fail "service add: $out"
[[ $out == "service $DB/echo registered (ready at unix:/run/echo.sock)" ]] ||
  fail "service add said: $out"
[ "$(service_field 4)" = stopped ] || fail "a new service should be stopped: $(ctl service ls)"
ctl -o json service ls | grep -q '"startTimeout": "20s"' ||
  fail "service ls -o json lacks the start timeout: $(ctl -o json service ls)"
pass "service add + ls: $DB/echo registered, stopped"

# The third VM may connect, but no depend rule lets it start the service: the open's errno
# (ENOENT: no socket file in db), and nothing started.
run_client "$THIRD"
[[ $RC -eq 1 && $LINE == "FAIL ENOENT"* ]] || fail "third VM: expected FAIL ENOENT, got '$LINE'"
[ "$(service_field 6)" = 0 ] || fail "the refused VM started the service: $(ctl service ls)"
pass "no depend rule: $THIRD gets '$LINE', nothing started"

# web: nothing listens in db yet; the service starts on demand and the connect succeeds in db.
run_client "$WEB"
[[ $RC -eq 0 && $LINE == "OK $DB" ]] || fail "web: expected 'OK $DB', got '$LINE' (exit $RC)"
[ "$(service_field 4)" = running ] || fail "echo should be running: $(ctl service ls)"
pass "depend: web's connect started $DB/echo on demand and reached it ('$LINE')"
run_client "$WEB"
[[ $RC -eq 0 && $LINE == "OK $DB" ]] || fail "second connect: expected 'OK $DB', got '$LINE'"
[ "$(service_field 6)" = 1 ] || fail "expected one start: $(ctl service ls)"
SERVICE_LOG="$E2E_WORK/data/services/$DB.echo.log"
poll_until 30 grep -q "GOT uid=0 from=$WEB" "$SERVICE_LOG" ||
  fail "the service's log does not show web's client" "$SERVICE_LOG"
pass "a running service is reused (one start); its output is in DATA/services/$DB.echo.log"

scrape >"$E2E_WORK/metrics" || fail "cannot scrape /metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_service_starts_total vm="$DB" service=echo \
  result=ready)
[ "$n" -eq 1 ] || fail "service_starts_total{result=ready} is $n, expected 1" "$E2E_WORK/metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_on_demand_total result=denied)
[ "$n" -eq 1 ] || fail "on_demand_total{result=denied} is $n, expected 1" "$E2E_WORK/metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_services_running)
[ "$n" -eq 1 ] || fail "services_running is $n, expected 1" "$E2E_WORK/metrics"
pass "metrics: one start (ready), one refusal, one service running"
poll_until 30 grep -rqa "web-depends-on-echo" "$E2E_WORK/data/audit" ||
  fail "the audit spool does not record the depend decision"
pass "audit: the depend decision is recorded with its rule"

# The registration survives an agent restart.
stop_agent || fail "the agent did not stop on SIGTERM"
start_agent "$E2E_WORK/agent.2.log"
[ "$(service_field 3)" = unix:/run/echo.sock ] ||
  fail "echo is not registered after a restart: $(ctl service ls)"
pass "the registration survives an agent restart"

out=$(ctl service rm --vm "$DB" --name echo 2>&1) || fail "service rm: $out"
[ -z "$(service_field 2)" ] || fail "echo is still listed: $(ctl service ls)"
out=$(ctl service rm --vm "$DB" --name echo 2>&1) && fail "a second service rm succeeded"
[[ $out == *"has no service named echo"* ]] || fail "unclear error: $out"
pass "service rm removes it; removing it again says why it can't"

echo "$E2E_NAME: $E2E_PASSED passed"
