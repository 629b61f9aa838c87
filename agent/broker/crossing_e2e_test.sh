#!/usr/bin/env bash
# e2e: brokered crossings (issue 5 point 1). A real agent (as root) and two VMs, web and db.
# Servers (crossing_probe) run in db, behind names that exist only in db (its /run is private);
# clients run in web. What the policy allows reaches db's server through a descriptor the agent
# opened in db (the server's ACK names db, and SO_PEERCRED shows the client's uid); what it
# doesn't is refused with a clear errno; a redirect reaches another name, or the host; monitor
# mode continues into web's own namespace. Covered: unix path (absolute and relative), abstract,
# tcp and udp (connect) on 127.0.0.1, mq_open, deny, redirect (name, host), monitor. Then
# /metrics must show shuttle_agent_brokered_total by kind and scope, and the audit spool the
# real target VM.
#
# Hermetic like the other e2e tests (tests/e2e/e2e_lib.sh); fails, never skips, without root.
#
# usage: crossing_e2e_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT CROSSING_PROBE
E2E_NAME=crossing
# shellcheck source=../../tests/e2e/e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/e2e_lib.sh"
e2e_init "$@"

WEB="e2e-web-$$"
DB="e2e-db-$$"
MON="e2e-mon-$$"
TCP_PORT=$((20000 + $$ % 20000))
UDP_PORT=$((TCP_PORT + 1))
HOST_SOCK="$E2E_WORK/host.sock"
write_policy() {
  cat >"$E2E_WORK/policy.yaml" <<EOF
name: e2e-crossing
description: brokered crossings between web and db
rules:
  - name: web-app-socket
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: /run/app.sock }
    action: allow
  - name: web-relative-socket
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: /run/rel.sock }
    action: allow
  - name: web-legacy-socket
    subject: { vm: $WEB }
    kind: unix-connect
    object: { path: /run/legacy.sock }
    action: redirect
    redirect: { vm: $DB, name: /run/app.sock }
  - name: web-to-host
    subject: { vm: $WEB }
    kind: unix-connect
    object: { path: /run/hostsvc.sock }
    action: redirect
    redirect: { vm: host, name: $HOST_SOCK }
  - name: web-abstract
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, abstract: e2e-abs-$$ }
    action: allow
  - name: web-tcp
    subject: { vm: $WEB }
    kind: tcp-connect
    object: { vm: $DB, address: "127.0.0.1:$TCP_PORT" }
    action: allow
  - name: web-udp
    subject: { vm: $WEB }
    kind: udp-send
    object: { vm: $DB, address: "127.0.0.1:$UDP_PORT" }
    action: allow
  - name: web-queue
    subject: { vm: $WEB }
    kind: mq-open
    object: { vm: $DB, name: /e2e-q-$$ }
    action: allow
  - name: web-secret-denied
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: /run/secret.sock }
    action: deny
  - name: mon-app-socket-on-trial
    subject: { vm: $MON }
    kind: unix-connect
    object: { vm: $DB, path: /run/app.sock }
    action: allow
    audit_only: true
EOF
}

declare -A SRV_PID=() SRV_OUT=()
# start_server TAG VM KIND NAME: a crossing_probe server in the background, READY awaited.
start_server() {
  local tag=$1 vm=$2
  SRV_OUT[$tag]="$E2E_WORK/server-$tag.out"
  if [ "$vm" = host ]; then
    "$PROBE" server "$3" "$4" >"${SRV_OUT[$tag]}" 2>&1 </dev/null &
  else
    "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$vm" -- "$PROBE" server "$3" "$4" \
      >"${SRV_OUT[$tag]}" 2>&1 </dev/null &
  fi
  SRV_PID[$tag]=$!
  E2E_BG_PIDS+=("${SRV_PID[$tag]}")
  ready() {
    alive "${SRV_PID[$1]}" || fail "server $1 exited before READY" "${SRV_OUT[$1]}"
    grep -q '^READY' "${SRV_OUT[$1]}"
  }
  poll_until 60 ready "$tag" || fail "server $tag printed no READY within 60 s" "${SRV_OUT[$tag]}"
}

# run_client VM KIND TARGET [UID] [CWD-SCRIPT]: sets LINE and RC.
run_client() {
  local out="$E2E_WORK/client.out"
  timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$1" -- \
    "$PROBE" client "$2" "$3" ${4:+"$4"} >"$out" 2>&1 </dev/null
  RC=$?
  LINE=$(head -n 1 "$out")
}

# expect_ok WHAT SERVER-TAG FROM [UID]: the client said OK and the server saw FROM's client, as
# UID (SO_PEERCRED: unix sockets only; "-" for the others).
got_line() { grep -q -x -- "$2" "${SRV_OUT[$1]}"; }
expect_ok() {
  local what=$1 tag=$2 by=$3 uid=${4:--}
  [ "$RC" -eq 0 ] || fail "$what: expected OK, got '$LINE' (exit $RC)" "${SRV_OUT[$tag]}"
  poll_until 30 got_line "$tag" "GOT uid=$uid from=$by" ||
    fail "$what: the server did not print 'GOT uid=$uid from=$by'" "${SRV_OUT[$tag]}"
  pass "$what: '$LINE'"
}

expect_fail() {
  local what=$1 errno=$2
  [[ $RC -eq 1 && $LINE == "FAIL $errno"* ]] ||
    fail "$what: expected FAIL $errno, got '$LINE' (exit $RC)"
  pass "$what: '$LINE'"
}

write_policy
start_agent "$E2E_WORK/agent.log"
create_vm "$WEB"
create_vm "$DB"
create_vm "$MON"

# Unix path: db's /run/app.sock exists only in db.
start_server app "$DB" unix /run/app.sock
run_client "$WEB" unix /run/app.sock
expect_ok "unix path web -> $DB:/run/app.sock (allow)" app "$WEB" 0
[ "$LINE" = "OK $DB" ] || fail "the ACK came from '$LINE', not from $DB"

# SO_PEERCRED: a client running as uid 4242 is seen as 4242 by db's server.
run_client "$WEB" unix /run/app.sock 4242
expect_ok "unix path as uid 4242: SO_PEERCRED in $DB shows 4242" app "$WEB" 4242

# Redirect to another name: web's /run/legacy.sock is db's /run/app.sock.
run_client "$WEB" unix /run/legacy.sock
expect_ok "redirect web:/run/legacy.sock -> $DB:/run/app.sock" app "$WEB" 0
[ "$(grep -c '^GOT ' "${SRV_OUT[app]}")" -eq 3 ] || fail "app server: expected 3 clients" \
  "${SRV_OUT[app]}"

# Allowed, but nothing is there yet: db's errno (ENOENT), from the brokered open in db.
run_client "$WEB" unix /run/rel.sock
expect_fail "allowed web -> $DB:/run/rel.sock before it exists" ENOENT

# Relative path: the client's working directory (/ in `shuttlectl run`) makes it absolute.
start_server rel "$DB" unix /run/rel.sock
run_client "$WEB" unix run/rel.sock
expect_ok "relative unix path run/rel.sock -> $DB:/run/rel.sock" rel "$WEB" 0

# Deny: a clear errno, and the server is never reached.
start_server secret "$DB" unix /run/secret.sock
run_client "$WEB" unix /run/secret.sock
expect_fail "deny web -> $DB:/run/secret.sock" EACCES
[ "$(grep -c '^GOT ' "${SRV_OUT[secret]}")" -eq 0 ] || fail "the denied client reached the server"

# Redirect to the host.
start_server host host unix "$HOST_SOCK"
run_client "$WEB" unix /run/hostsvc.sock
expect_ok "redirect web:/run/hostsvc.sock -> host:$HOST_SOCK" host "$WEB" 0

# Abstract names live in db's network namespace.
start_server abs "$DB" abstract "e2e-abs-$$"
run_client "$WEB" abstract "e2e-abs-$$"
expect_ok "abstract @e2e-abs-$$ web -> $DB" abs "$WEB" 0

# TCP and UDP (connect) on db's loopback.
start_server tcp "$DB" tcp "$TCP_PORT"
run_client "$WEB" tcp "127.0.0.1:$TCP_PORT"
expect_ok "tcp 127.0.0.1:$TCP_PORT web -> $DB" tcp "$WEB"
start_server udp "$DB" udp "$UDP_PORT"
run_client "$WEB" udp "127.0.0.1:$UDP_PORT"
expect_ok "udp (connect) 127.0.0.1:$UDP_PORT web -> $DB" udp "$WEB"

# A POSIX queue of db's IPC namespace.
start_server mq "$DB" mq "/e2e-q-$$"
run_client "$WEB" mq "/e2e-q-$$"
expect_ok "mq_open /e2e-q-$$ web -> $DB" mq "$WEB"

# Monitor (an audit_only rule): decided and audited, but the call continues into the caller's own VM, where
# there is no /run/app.sock.
run_client "$MON" unix /run/app.sock
expect_fail "audit_only allow $MON -> $DB:/run/app.sock continues in $MON" ENOENT

scrape >"$E2E_WORK/metrics" || fail "cannot scrape /metrics"
for kind in unix-connect tcp-connect udp-send mq-open; do
  n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_brokered_total kind=$kind result=ok)
  [ "$n" -ge 1 ] || fail "shuttle_agent_brokered_total{kind=$kind,result=ok} is $n" \
    "$E2E_WORK/metrics"
done
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_brokered_total kind=unix-connect scope=cross-vm \
  result=ok)
# app.sock (root, uid 4242), legacy.sock redirected, rel.sock, the abstract name.
[ "$n" -eq 5 ] || fail "brokered unix-connect cross-vm ok: $n, expected 5" "$E2E_WORK/metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_brokered_total scope=vm-host result=ok)
[ "$n" -eq 1 ] || fail "brokered vm-host ok: $n, expected 1" "$E2E_WORK/metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_brokered_total result=not_found)
[ "$n" -eq 1 ] || fail "brokered not_found: $n, expected 1" "$E2E_WORK/metrics"
n=$(metric_sum "$E2E_WORK/metrics" shuttle_agent_brokered_duration_seconds_count kind=unix-connect)
[ "$n" -eq 6 ] || fail "brokered latency samples (unix-connect): $n, expected 6" "$E2E_WORK/metrics"
pass "metrics: brokered_total by kind/scope/result and the latency histogram"

# The audit spool names the real target VM of the redirect.
poll_until 30 grep -rqa "$HOST_SOCK" "$E2E_WORK/data/audit" ||
  fail "the audit spool does not name the host redirect's target $HOST_SOCK"
pass "audit: the redirect to the host is recorded with its target"

echo "$E2E_NAME: $E2E_PASSED passed"
