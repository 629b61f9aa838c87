#!/usr/bin/env bash
# Integration test: the real shuttle-controller and shuttlectl binaries, over mTLS on loopback.
# Hermetic: a temporary data dir, port 0 for gRPC and metrics (read back from --port-file), and
# the controller is always stopped on exit. Covers the policy plane end to end: apply, ls, get,
# history, rollback, rm, validate, explain, JSON output, roles (admin/viewer), foreign and
# missing client certificates, standing answers to `ask` (answer set/ls/rm), the (empty) audit
# log (audit, -o json, --follow ended by Ctrl-C), /metrics, server reflection (with
# reflection_probe, as grpcurl would ask), and persistence across a restart.
#
# usage: cli_controller_test.sh SHUTTLE_CONTROLLER SHUTTLECTL SOURCE_DIR REFLECTION_PROBE
set -uo pipefail

USAGE="usage: $0 SHUTTLE_CONTROLLER SHUTTLECTL SOURCE_DIR REFLECTION_PROBE"
CONTROLLER=${1:?$USAGE}
CTL=${2:?$USAGE}
SRC=${3:?$USAGE}
PROBE=${4:?$USAGE}
TESTDATA="$SRC/tests/integration/testdata"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shuttle-it.XXXXXX")
DATA="$WORK/data"
PID=""
GRPC_PORT=""
METRICS_PORT=""
passed=0

cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -KILL "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

fail() {
  echo "FAIL: $*" >&2
  for f in out err; do
    if [ -s "$WORK/$f" ]; then
      echo "--- shuttlectl std$f:" >&2
      head -n 40 "$WORK/$f" >&2
    fi
  done
  if [ -s "$WORK/controller.log" ]; then
    echo "--- controller log (last 30 lines):" >&2
    tail -n 30 "$WORK/controller.log" >&2
  fi
  echo "$passed passed, 1 failed"
  exit 1
}

pass() {
  passed=$((passed + 1))
  echo "ok $passed - $*"
}

# Starts the controller on the data dir with port 0 and waits (bounded) for its port file.
start_controller() {
  rm -f "$WORK/ports"
  "$CONTROLLER" --data-dir "$DATA" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --port-file "$WORK/ports" >>"$WORK/controller.log" 2>&1 &
  PID=$!
  local _
  for _ in $(seq 1 300); do  # 30 s at most
    [ -s "$WORK/ports" ] && break
    kill -0 "$PID" 2>/dev/null || fail "controller exited during start-up"
    sleep 0.1
  done
  [ -s "$WORK/ports" ] || fail "controller wrote no port file within 30 s"
  GRPC_PORT=$(sed -n 's/^grpc=//p' "$WORK/ports")
  METRICS_PORT=$(sed -n 's/^metrics=//p' "$WORK/ports")
  [[ $GRPC_PORT =~ ^[1-9][0-9]*$ && $METRICS_PORT =~ ^[1-9][0-9]*$ ]] ||
    fail "port file is not 'grpc=PORT' and 'metrics=PORT': $(tr '\n' ' ' <"$WORK/ports")"
}

# True while the controller process exists and is not a zombie.
controller_running() {
  [ -r "/proc/$PID/stat" ] && [ "$(cut -d' ' -f3 "/proc/$PID/stat" 2>/dev/null)" != Z ]
}

# SIGTERM, then the controller must exit 0 within 30 s (polled; cleanup kills it otherwise).
stop_controller() {
  kill -TERM "$PID"
  local _ rc=0
  for _ in $(seq 1 300); do
    controller_running || break
    sleep 0.1
  done
  controller_running && fail "controller still running 30 s after SIGTERM"
  wait "$PID" || rc=$?
  PID=""
  [ "$rc" -eq 0 ] || fail "controller exited $rc after SIGTERM (want 0)"
}

# shuttlectl as the admin (the data dir's pki/); stdout -> $WORK/out, stderr -> $WORK/err.
ctl() {
  "$CTL" --controller "127.0.0.1:$GRPC_PORT" --data-dir "$DATA" "$@" >"$WORK/out" 2>"$WORK/err"
}

expect_ok() {
  local what=$1
  shift
  ctl "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || fail "$what: shuttlectl exited $rc, want 0"
}

# The failure contract: the wanted exit status and exactly one "shuttlectl: " line on stderr.
expect_exit() {
  local want=$1 what=$2
  shift 2
  ctl "$@"
  local rc=$?
  [ "$rc" -eq "$want" ] || fail "$what: shuttlectl exited $rc, want $want"
  one_error_line "$what"
}

one_error_line() {
  if [ "$(wc -l <"$WORK/err")" -ne 1 ] || ! grep -q '^shuttlectl: ' "$WORK/err"; then
    fail "$1: stderr is not exactly one 'shuttlectl: ' line"
  fi
}

out_has() { grep -Eq -- "$2" "$WORK/out" || fail "$1: stdout lacks /$2/"; }
out_lacks() { ! grep -Eq -- "$2" "$WORK/out" || fail "$1: stdout has /$2/"; }
err_has() { grep -Eq -- "$2" "$WORK/err" || fail "$1: stderr lacks /$2/"; }
out_is_file() { cmp -s "$WORK/out" "$2" || fail "$1: stdout differs from $2"; }

# Parses stdout as JSON (python3) and checks a Python expression over it, `d`.
json_check() {
  EXPR="$2" python3 -c '
import json, os, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval(os.environ["EXPR"]) else 1)' "$WORK/out" ||
    fail "$1: JSON check failed: $2"
}

command -v python3 >/dev/null || fail "python3 is needed"
command -v openssl >/dev/null || fail "openssl is needed"
command -v curl >/dev/null || fail "curl is needed"

# ----- start-up and usage ----------------------------------------------------------------------
start_controller
pass "controller started: grpc port $GRPC_PORT, metrics port $METRICS_PORT"
for f in ca.pem ca.key server.pem server.key admin.pem admin.key; do
  [ -s "$DATA/pki/$f" ] || fail "first start did not create pki/$f"
done
pass "first start created the PKI in the data dir"

"$CTL" --help >"$WORK/out" 2>"$WORK/err" || fail "--help exited non-zero"
out_has "--help" 'policy apply'
out_has "--help" 'explain'
expect_exit 2 "usage error" policy apply
err_has "usage error" '^shuttlectl: policy apply: missing -f FILE'
pass "--help and usage errors"

# ----- apply, ls, get --------------------------------------------------------------------------
expect_ok "apply webapp" policy apply -f "$TESTDATA/webapp.yaml"
out_has "apply webapp" '^applied policy webapp: revision 1, fleet version [0-9]+$'
expect_ok "apply webapp again" policy apply -f "$TESTDATA/webapp.yaml"
out_has "apply webapp again" '^policy webapp unchanged: revision 1'
pass "policy apply (and an unchanged re-apply)"

expect_ok "ls" policy ls
out_has "ls" '^NAME +REVISION +MODE +RULES +HOSTS +UPDATED +AUTHOR$'
out_has "ls" '^webapp +1 +enforce +2 +\* +[0-9T:-]+Z +admin$'
out_has "ls" '^fleet version: [0-9]+$'
SHUTTLE_CONTROLLER="127.0.0.1:$GRPC_PORT" "$CTL" --data-dir "$DATA" policy ls >"$WORK/out" \
  2>"$WORK/err" || fail "ls with \$SHUTTLE_CONTROLLER failed"
out_has "ls via \$SHUTTLE_CONTROLLER" '^webapp '
pass "policy ls (flag and \$SHUTTLE_CONTROLLER)"

expect_ok "get" policy get webapp
out_is_file "get" "$TESTDATA/webapp.yaml"
pass "policy get prints the YAML as applied"

# ----- history and rollback --------------------------------------------------------------------
expect_ok "apply webapp v2" policy apply -f "$TESTDATA/webapp-v2.yaml"
out_has "apply webapp v2" '^applied policy webapp: revision 2,'
expect_ok "history" policy history webapp
out_has "history" '^REVISION +FLEET-VERSION +CHANGE'
out_has "history" '^1 +[0-9]+ +apply +2 '
out_has "history" '^2 +[0-9]+ +apply +3 '
expect_ok "history json" policy history webapp -o json
json_check "history json" 'len(d["revisions"]) == 2 and d["revisions"][1]["revision"] == "2"'
pass "policy history after two applies (table and JSON)"

expect_ok "rollback" policy rollback webapp --to 1
out_has "rollback" '^rolled back policy webapp to revision 1: now revision 3, fleet version'
expect_ok "get after rollback" policy get webapp
out_is_file "get after rollback" "$TESTDATA/webapp.yaml"
expect_ok "get --revision 2" policy get webapp --revision 2
out_is_file "get --revision 2" "$TESTDATA/webapp-v2.yaml"
expect_ok "history json after rollback" -o json policy history webapp
json_check "history after rollback" \
  'len(d["revisions"]) == 3 and d["revisions"][2]["change"].startswith("rollback")'
expect_exit 1 "rollback to a missing revision" policy rollback webapp --to 99
pass "policy rollback makes revision 1 current again as revision 3"

expect_ok "ls json" policy ls -o json
json_check "ls json" \
  '[p["name"] for p in d["policies"]] == ["webapp"] and d["policies"][0]["revision"] == "3"'
pass "policy ls -o json parses"

# ----- validate --------------------------------------------------------------------------------
expect_ok "validate good" policy validate -f "$TESTDATA/webapp.yaml"
out_has "validate good" 'webapp.yaml: valid \(policy webapp, 2 rules\)'
expect_exit 1 "validate bad" policy validate -f "$TESTDATA/bad.yaml"
out_has "validate bad" '^[^ ]*bad\.yaml:2:[0-9]+: name: '
out_has "validate bad" '^[^ ]*bad\.yaml:6:[0-9]+: rules\[0\]\.kind'
out_has "validate bad" '^[^ ]*bad\.yaml:13:[0-9]+: rules\[1\]\.action: '
err_has "validate bad" '^shuttlectl: policy validate: .*bad\.yaml: invalid, [0-9]+ errors$'
expect_exit 1 "validate bad json" policy validate -f "$TESTDATA/bad.yaml" -o json
json_check "validate bad json" 'd["valid"] is False and len(d["errors"]) >= 3'
pass "policy validate lists every error as file:line:col and exits 1"

expect_exit 1 "apply bad" policy apply -f "$TESTDATA/bad.yaml"
err_has "apply bad" 'policy apply: INVALID_ARGUMENT: '
out_has "apply bad" 'bad\.yaml:6:[0-9]+: '
expect_ok "ls after bad apply" policy ls -o json
json_check "ls after bad apply" '[p["name"] for p in d["policies"]] == ["webapp"]'
pass "policy apply of an invalid file stores nothing"

# ----- explain ---------------------------------------------------------------------------------
DB_SOCKET=/run/postgresql/.s.PGSQL.5432
expect_ok "explain allow" explain --vm web --program /usr/bin/webapp --kind unix-connect \
  --object "$DB_SOCKET" --object-vm db
out_has "explain allow" '^verdict: +allow$'
out_has "explain allow" '^scope: +cross-vm$'
out_has "explain allow" '^decided by: +webapp/web-to-db'
out_has "explain allow" '^enforced: +yes$'
out_has "explain allow" '^webapp +web-no-db-sockets +deny +.+'
pass "explain: allow by the program rule, the VM rule listed as losing"

expect_ok "explain deny" explain --vm web --program /usr/bin/other --kind unix-connect \
  --object "$DB_SOCKET" --object-vm db
out_has "explain deny" '^verdict: +deny$'
out_has "explain deny" '^decided by: +webapp/web-no-db-sockets'
expect_ok "explain default" explain --vm web --kind tcp-connect --object 127.0.0.1:5432 \
  --object-vm db
out_has "explain default" '^verdict: +deny$'
out_has "explain default" '^decided by: +default'
pass "explain: deny by rule, and deny by the cross-vm default"

expect_ok "explain json" explain --vm web --program /usr/bin/webapp --kind unix-connect \
  --object "$DB_SOCKET" --object-vm db -o json
json_check "explain json" \
  'd["decision"]["verdict"] == "VERDICT_ALLOW" and d["decision"]["rule"] == "web-to-db"'
expect_ok "explain candidate" explain --vm web --program /usr/bin/webapp --kind unix-connect \
  --object "$DB_SOCKET" --object-vm db -f "$TESTDATA/candidate.yaml"
out_has "explain candidate" '^verdict: +deny$'
out_has "explain candidate" '^decided by: +webapp/lockdown'
pass "explain -o json, and a dry run of a candidate file"

# ----- roles and certificates ------------------------------------------------------------------
"$CONTROLLER" issue-cert --data-dir "$DATA" --role viewer --name alice --out-dir "$WORK/certs" \
  >"$WORK/out" 2>"$WORK/err" || fail "issue-cert --role viewer failed"
if [ ! -s "$WORK/certs/alice.pem" ] || [ ! -s "$WORK/certs/alice.key" ]; then
  fail "issue-cert wrote no alice.pem/alice.key"
fi
VIEWER=(--cert "$WORK/certs/alice.pem" --key "$WORK/certs/alice.key")
expect_ok "viewer ls" "${VIEWER[@]}" policy ls
out_has "viewer ls" '^webapp '
expect_ok "viewer explain" "${VIEWER[@]}" explain --vm web --kind signal --object 1 \
  --object-vm db
expect_exit 1 "viewer apply" "${VIEWER[@]}" policy apply -f "$TESTDATA/keeper.yaml"
err_has "viewer apply" '^shuttlectl: policy apply: PERMISSION_DENIED: '
expect_exit 1 "viewer rm" "${VIEWER[@]}" policy rm webapp
err_has "viewer rm" '^shuttlectl: policy rm: PERMISSION_DENIED: '
expect_exit 1 "viewer rollback" "${VIEWER[@]}" policy rollback webapp --to 2
err_has "viewer rollback" 'PERMISSION_DENIED'
pass "a viewer certificate reads but may not apply, rm or rollback"

# A client certificate from a CA the controller does not know, claiming the admin role.
mkdir -p "$WORK/other"
(
  cd "$WORK/other" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
      -out ca.pem -subj "/CN=other-ca" -days 1 &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mallory.key \
      -out mallory.csr -subj "/OU=admin/CN=mallory" &&
    printf 'extendedKeyUsage=clientAuth\n' >ext.cnf &&
    openssl x509 -req -in mallory.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 1 \
      -extfile ext.cnf -out mallory.pem
) >"$WORK/openssl.log" 2>&1 || fail "openssl could not make the foreign CA: $(cat "$WORK/openssl.log")"
expect_exit 1 "foreign client cert" --cert "$WORK/other/mallory.pem" \
  --key "$WORK/other/mallory.key" policy ls
out_lacks "foreign client cert" 'webapp'
expect_exit 1 "foreign client cert apply" --cert "$WORK/other/mallory.pem" \
  --key "$WORK/other/mallory.key" policy rm webapp
pass "a client certificate from another CA is refused"

expect_exit 1 "no client cert" --no-client-cert policy ls
out_lacks "no client cert" 'webapp'
pass "a client without a certificate is refused"

expect_exit 1 "server from another CA" --ca "$WORK/other/ca.pem" policy ls
pass "shuttlectl refuses a controller its CA did not sign"

# ----- join tokens and hosts (enrollment itself: controller/service/agent_fleet_integration_test)
expect_ok "token create" token create --ttl 10m --host web-9
out_has "token create" '^token: +sjt_[0-9a-f]{64}$'
out_has "token create" '^host: +web-9$'
expect_ok "token create json" token create -o json
json_check "token create json" 'd["token"].startswith("sjt_") and len(d["token"]) == 68'
expect_exit 1 "viewer token create" "${VIEWER[@]}" token create
err_has "viewer token create" '^shuttlectl: token create: PERMISSION_DENIED: '
expect_exit 1 "token create bad host" token create --host ../x
err_has "token create bad host" 'INVALID_ARGUMENT: host id'
expect_ok "hosts" hosts
out_has "hosts" '^HOST +CONNECTED +POLICY-VERSION'
expect_exit 1 "hosts unknown" hosts nope
err_has "hosts unknown" '^shuttlectl: hosts: NOT_FOUND: '
expect_exit 1 "no client cert hosts" --no-client-cert hosts
err_has "no client cert hosts" 'UNAUTHENTICATED'
pass "token create prints a join token (admin only); hosts answers"

# ----- standing answers to `ask` ---------------------------------------------------------------
expect_ok "answer ls empty" answer ls
out_has "answer ls empty" '^ID +VM +KIND +OBJECT +VERDICT +TTL +EXPIRES +AUTHOR +CREATED +NOTE$'
expect_ok "answer set" answer set --vm web --kind unix-connect --object '/run/*' --object-vm db \
  --verdict allow --ttl 2m --note INC-1
out_has "answer set" '^added answer ans-[0-9a-f]{8}: web unix-connect db:/run/\* -> allow \(ttl 2m, expires never\)$'
ANSWER_ID=$(sed -n 's/^added answer \(ans-[0-9a-f]*\):.*/\1/p' "$WORK/out")
[ -n "$ANSWER_ID" ] || fail "answer set printed no answer id"
expect_ok "answer set again" answer set --vm web --kind unix-connect --object '/run/*' \
  --object-vm db --verdict deny
out_has "answer set again" "^replaced answer $ANSWER_ID: web unix-connect db:/run/\\* -> deny \\(ttl default,"
expect_ok "answer set with id" answer set --id any-signal --vm '*' --kind signal --object '*' \
  --verdict deny --expires 1h -o json
json_check "answer set with id" \
  'd["answer"]["id"] == "any-signal" and d["answer"]["author"] == "admin" and not d["replaced"]'
expect_ok "answer ls" answer ls
# Replaced whole: the note and ttl of the first set are gone.
out_has "answer ls" "^$ANSWER_ID +web +unix-connect +db:/run/\\* +deny +default +never +admin +[0-9T:-]+Z +-$"
out_has "answer ls" '^any-signal +\* +signal +\*:\* +deny +default +[0-9T:-]+Z +admin '
expect_ok "answer ls json" answer ls -o json
json_check "answer ls json" \
  'sorted(a["id"] for a in d["answers"]) == sorted(["any-signal", "'"$ANSWER_ID"'"])'
pass "answer set adds, and replaces the answer with the same VM, kind and objects; answer ls"

expect_exit 1 "answer set redirect" answer set --vm web --kind signal --object 1 --verdict redirect
err_has "answer set redirect" '^shuttlectl: answer set: --verdict must be allow or deny'
expect_exit 1 "answer set bad vm" answer set --vm 'we b' --kind signal --object 1 --verdict allow
err_has "answer set bad vm" 'INVALID_ARGUMENT: subject_vm'
expect_exit 2 "answer set missing verdict" answer set --vm web --kind signal --object 1
expect_exit 1 "viewer answer set" "${VIEWER[@]}" answer set --vm web --kind signal --object 1 \
  --verdict allow
err_has "viewer answer set" '^shuttlectl: answer set: PERMISSION_DENIED: '
expect_ok "viewer answer ls" "${VIEWER[@]}" answer ls
out_has "viewer answer ls" '^any-signal '
expect_ok "answer rm" answer rm "$ANSWER_ID"
out_has "answer rm" "^removed answer $ANSWER_ID$"
expect_exit 1 "answer rm again" answer rm "$ANSWER_ID"
err_has "answer rm again" "^shuttlectl: answer rm: NOT_FOUND: standing answer \"$ANSWER_ID\" not found"
pass "answer: bad input and roles refused in one line; answer rm"

# ----- audit (records themselves: controller/service/ask_audit_integration_test) -----------------
expect_ok "audit empty" audit
out_has "audit empty" '^TIME +HOST +VM +PID +PROGRAM +KIND +OBJECT +VERDICT +ENFORCED +RULE +VERSION +LATENCY$'
[ "$(wc -l <"$WORK/out")" -eq 1 ] || fail "audit on an empty log printed more than the header"
expect_ok "audit json" audit -o json --vm web --since 10m --verdict deny --kind unix-connect
json_check "audit json" 'd["records"] == [] and d["nextPageToken"] == ""'
expect_ok "viewer audit" "${VIEWER[@]}" audit --host web-9 --since 2024-05-01T12:00:00Z
expect_exit 1 "audit limit too big" audit --limit 10001
err_has "audit limit too big" 'INVALID_ARGUMENT: limit 10001'
expect_exit 1 "no client cert audit" --no-client-cert audit
err_has "no client cert audit" '^shuttlectl: audit: UNAUTHENTICATED'
pass "audit on an empty log: table header, -o json, filters, roles"

"$CTL" --controller "127.0.0.1:$GRPC_PORT" --data-dir "$DATA" audit --follow \
  >"$WORK/follow.out" 2>"$WORK/follow.err" &
FOLLOW_PID=$!
for _ in $(seq 1 300); do  # 30 s at most
  [ -s "$WORK/follow.out" ] && break
  kill -0 "$FOLLOW_PID" 2>/dev/null || break
  sleep 0.1
done
grep -q '^TIME  HOST  VM' "$WORK/follow.out" || fail "audit --follow printed no header"
kill -INT "$FOLLOW_PID"
follow_rc=0
wait "$FOLLOW_PID" || follow_rc=$?
[ "$follow_rc" -eq 0 ] || fail "audit --follow exited $follow_rc on SIGINT (want 0): $(cat "$WORK/follow.err")"
[ -s "$WORK/follow.err" ] && fail "audit --follow wrote to stderr: $(cat "$WORK/follow.err")"
pass "audit --follow runs until SIGINT and then exits 0"

# ----- server reflection (the service itself: controller/service/reflection_service_test) --------
"$PROBE" "127.0.0.1:$GRPC_PORT" "$DATA/pki/ca.pem" shuttle.v1.AgentService >"$WORK/out" \
  2>"$WORK/err" || fail "reflection_probe failed"
for service in shuttle.v1.PolicyService shuttle.v1.AgentService shuttle.v1.FleetService \
  shuttle.v1.AuditService shuttle.v1.AnswerService grpc.health.v1.Health \
  grpc.reflection.v1alpha.ServerReflection; do
  out_has "reflection list_services" "^service $service\$"
done
[ "$(grep -c '^service ' "$WORK/out")" -eq 7 ] || fail "reflection lists other than 7 services"
out_has "reflection file_containing_symbol" '^file shuttle.v1.AgentService shuttle/v1/agent.proto$'
out_has "reflection file_containing_symbol" '^file shuttle.v1.AgentService shuttle/v1/types.proto$'
pass "server reflection (v1alpha) lists the services and serves a file with its dependencies"

# ----- metrics ---------------------------------------------------------------------------------
curl -sf --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/out" 2>"$WORK/err" ||
  fail "curl /metrics failed"
out_has "/metrics" '^shuttle_grpc_requests_total\{.*method="[^"]*List[^"]*"'
out_has "/metrics" '^shuttle_grpc_requests_total\{.*method="[^"]*Apply[^"]*"'
out_has "/metrics" '^shuttle_controller_authorize_total\{outcome="allow"\} 0$'
out_has "/metrics" '^shuttle_controller_authorize_duration_seconds_count 0$'
out_has "/metrics" '^shuttle_controller_audit_records_ingested_total 0$'
out_has "/metrics" '^shuttle_controller_audit_duplicates_total 0$'
out_has "/metrics" '^shuttle_controller_audit_followers 0$'
pass "/metrics has shuttle_grpc_requests_total with method labels, and the ask/audit metrics"

# ----- rm, restart, persistence ----------------------------------------------------------------
expect_ok "apply keeper" policy apply -f "$TESTDATA/keeper.yaml"
expect_ok "rm webapp" policy rm webapp
out_has "rm webapp" '^deleted policy webapp: revision 4, fleet version [0-9]+$'
expect_ok "ls after rm" policy ls
out_lacks "ls after rm" '^webapp '
out_has "ls after rm" '^keeper +1 +monitor +1 '
expect_ok "history after rm" policy history webapp
out_has "history after rm" '^4 +[0-9]+ +delete '
pass "policy rm removes the policy and keeps its history"

OLD_PORT=$GRPC_PORT
stop_controller
pass "SIGTERM stops the controller with exit status 0"

expect_exit 1 "controller down" policy ls
err_has "controller down" "^shuttlectl: policy ls: cannot reach controller at 127\.0\.0\.1:$OLD_PORT: UNAVAILABLE"
pass "an unreachable controller is one line naming its address"

start_controller
expect_ok "ls after restart" policy ls
out_has "ls after restart" '^keeper +1 +monitor +1 '
out_lacks "ls after restart" '^webapp '
expect_ok "get keeper after restart" policy get keeper
out_is_file "get keeper after restart" "$TESTDATA/keeper.yaml"
expect_ok "history after restart" policy history webapp -o json
json_check "history after restart" 'len(d["revisions"]) == 4 and d["revisions"][3]["deleted"]'
expect_ok "answers after restart" answer ls -o json
json_check "answers after restart" '[a["id"] for a in d["answers"]] == ["any-signal"]'
expect_ok "rollback after restart" policy rollback webapp --to 2
out_has "rollback after restart" 'now revision 5'
pass "a restarted controller on the same data dir keeps policies, history and answers"

stop_controller
echo "$passed passed, 0 failed"
