#!/usr/bin/env bash
# e2e: isolation by default between two VMs (issue 3, item 5). A real agent (as root) with a
# one-rule policy, two VMs A and B. For every IPC mechanism a server (ipc_probe) creates its
# object in A and prints READY; then a client in A must reach it (OK, and the server prints
# GOT from=A); a client in B naming the same object must not (it fails, or lands on B's own
# object of that name, and A's server never prints GOT for it); once B has its own object of
# that name, B's client lands there (B's server prints GOT from=B), still not in A; and a last
# client in A (a sentinel) proves A's server was still serving after B's attempts. The signal
# case: B's kill() of the pid that A's server has in A's PID namespace. Then the agent's
# /metrics must have counted every intercepted call by kind, and the policy's deny (B
# connecting to a blocked socket path that exists in B) with verdict="deny".
#
# Hermetic: temporary data dir, socket, journal, metrics port 0; VM names carry this shell's
# pid; the VMs are always removed and the agent stopped (trap). Fails, never skips, when not
# root or without namespaces.
#
# usage: isolation_matrix_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=isolation_matrix
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"
e2e_init "$@"

VM_A="e2e-iso-a-$$"
VM_B="e2e-iso-b-$$"
BLOCKED="/run/e2e-blocked-$$.sock"
cat >"$E2E_WORK/policy.yaml" <<EOF
name: e2e-isolation
description: isolation matrix e2e test; everything else is the default (same VM allowed)
rules:
  - name: b-no-blocked-socket
    subject: { vm: $VM_B }
    kind: unix-connect
    object: { path: $BLOCKED }
    action: deny
EOF

# mechanism -> the object's name for the server ("-": the server picks it: port or pid)
declare -A NAME=(
  [unix]="/tmp/e2e-probe-$$.sock" [abstract]="e2e-probe-$$" [tcp]=- [udp]=-
  [fifo]="/tmp/e2e-probe-$$.fifo" [posix-shm]="/e2e-probe-$$" [posix-mq]="/e2e-probe-$$"
  [sysv-shm]=0x5e2e0001 [sysv-msg]=0x5e2e0002 [signal]=-)
# mechanism -> the interaction kind the agent sees ("": not intercepted)
declare -A KIND=(
  [unix]=unix-connect [abstract]=unix-connect [tcp]=tcp-connect [udp]=udp-send [fifo]=""
  [posix-shm]="" [posix-mq]=mq-open [sysv-shm]=shm-open [sysv-msg]=mq-open [signal]=signal)
# mechanism -> intercepted calls one server makes (creating the object; UDP: its sendto()
# answers, up to two per server)
declare -A SERVER_CALLS=(
  [unix]=0 [abstract]=0 [tcp]=0 [udp]=1 [fifo]=0 [posix-shm]=0 [posix-mq]=1 [sysv-shm]=1
  [sysv-msg]=1 [signal]=0)
MECHANISMS=(unix abstract tcp udp fifo posix-shm posix-mq sysv-shm sysv-msg signal)
declare -A EXPECTED=()   # interaction kind -> intercepted calls this test made
declare -A SAME=() CROSS=() LOCAL=() SEEN=()

count_call() { [ -n "$1" ] && EXPECTED[$1]=$((${EXPECTED[$1]:-0} + $2)); }

# start_server TAG VM MECHANISM NAME: background `shuttlectl run` of a server; waits for its
# READY. Sets SRV_PID[TAG], SRV_OUT[TAG], SRV_ERR[TAG] and TARGET (what clients name).
declare -A SRV_PID=() SRV_OUT=() SRV_ERR=()
start_server() {
  local tag=$1 vm=$2 m=$3
  SRV_OUT[$tag]="$E2E_WORK/server-$m-$tag.out"
  SRV_ERR[$tag]="$E2E_WORK/server-$m-$tag.err"
  "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$vm" -- "$PROBE" server "$m" "$4" \
    >"${SRV_OUT[$tag]}" 2>"${SRV_ERR[$tag]}" </dev/null &
  SRV_PID[$tag]=$!
  E2E_BG_PIDS+=("${SRV_PID[$tag]}")
  server_ready() {
    alive "${SRV_PID[$1]}" ||
      fail "$2 server in $3 exited before READY" "${SRV_OUT[$1]}" "${SRV_ERR[$1]}"
    grep -q '^READY ' "${SRV_OUT[$1]}"
  }
  poll_until 60 server_ready "$tag" "$m" "$vm" ||
    fail "$m server in $vm printed no READY within 60 s" "${SRV_OUT[$tag]}" "${SRV_ERR[$tag]}"
  TARGET=$(sed -n 's/^READY [^ ]* target=//p' "${SRV_OUT[$tag]}")
  [ -n "$TARGET" ] || fail "$m server in $vm: READY without a target" "${SRV_OUT[$tag]}"
}

# stop_server TAG: SIGTERM to shuttlectl (forwarded to the program), which must exit 0 in 30 s.
stop_server() {
  kill -TERM "${SRV_PID[$1]}"
  wait_exit "${SRV_PID[$1]}" 30 ||
    fail "server $1 did not stop within 30 s" "${SRV_OUT[$1]}" "${SRV_ERR[$1]}"
  [ "$WAIT_RC" -eq 0 ] || fail "server $1 exited $WAIT_RC" "${SRV_OUT[$1]}" "${SRV_ERR[$1]}"
}

# got_count TAG: how often that server was reached so far.
got_count() { grep -c '^GOT ' "${SRV_OUT[$1]}"; }
got_at_least() { [ "$(got_count "$1")" -ge "$2" ]; }

# run_client VM MECHANISM TARGET: sets CLIENT_LINE (the probe's one line) and CLIENT_RC.
run_client() {
  local out="$E2E_WORK/client.out" err="$E2E_WORK/client.err"
  timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$1" -- \
    "$PROBE" client "$2" "$3" >"$out" 2>"$err" </dev/null
  CLIENT_RC=$?
  CLIENT_LINE=$(head -n 1 "$out")
  case "$CLIENT_RC" in
    0) [[ $CLIENT_LINE == OK* ]] || fail "$2 client in $1: exit 0 but '$CLIENT_LINE'" "$err" ;;
    1) [[ $CLIENT_LINE == FAIL\ * ]] || fail "$2 client in $1: exit 1 but '$CLIENT_LINE'" "$err" ;;
    *) fail "$2 client in $1 exited $CLIENT_RC (not a probe result)" "$out" "$err" ;;
  esac
}

start_agent "$E2E_WORK/agent.log"
create_vm "$VM_A"
create_vm "$VM_B"
scrape >"$E2E_WORK/metrics.before" || fail "cannot scrape /metrics"

for m in "${MECHANISMS[@]}"; do
  kind=${KIND[$m]}
  start_server A "$VM_A" "$m" "${NAME[$m]}"
  count_call "$kind" "${SERVER_CALLS[$m]}"
  A_TARGET=$TARGET

  # (a) same VM: must work, and the server must see it.
  run_client "$VM_A" "$m" "$A_TARGET"
  count_call "$kind" 1
  [ "$CLIENT_RC" -eq 0 ] || fail "$m: a client in its own VM failed: $CLIENT_LINE" "${SRV_OUT[A]}"
  poll_until 30 got_at_least A 1 || fail "$m: client in A said OK but the server saw nothing" \
    "${SRV_OUT[A]}" "${SRV_ERR[A]}"
  SAME[$m]=$CLIENT_LINE

  # (b) from the other VM, same name: must not reach A's object.
  run_client "$VM_B" "$m" "$A_TARGET"
  count_call "$kind" 1
  CROSS[$m]=$CLIENT_LINE
  if [ "$CLIENT_RC" -eq 0 ]; then
    # Allowed only as "landed on B's own object of that name" (kill of a pid number that
    # names a process of B); the server check below proves A's object was not reached.
    [[ $CLIENT_LINE == *"in VM $VM_B"* ]] ||
      fail "$m: a client in $VM_B reached something: '$CLIENT_LINE'" "${SRV_OUT[A]}"
  fi

  # (c) B creates its own object under the same name: B's client lands there, not in A.
  # (Not for signals: a pid can't be chosen.)
  if [ "$m" != signal ]; then
    b_name=${NAME[$m]}
    [ "$b_name" = - ] && b_name=$A_TARGET # tcp/udp: the very port A's server has.
    start_server B "$VM_B" "$m" "$b_name"
    count_call "$kind" "${SERVER_CALLS[$m]}"
    [ "$TARGET" = "$A_TARGET" ] || fail "$m: B's server got '$TARGET', A's has '$A_TARGET'"
    run_client "$VM_B" "$m" "$A_TARGET"
    count_call "$kind" 1
    [ "$CLIENT_RC" -eq 0 ] || fail "$m: B's client failed to reach B's own object: $CLIENT_LINE" \
      "${SRV_OUT[B]}"
    poll_until 30 got_at_least B 1 || fail "$m: B's client said OK but B's server saw nothing" \
      "${SRV_OUT[B]}"
    stop_server B
    [ "$(grep '^GOT ' "${SRV_OUT[B]}")" = "GOT from=$VM_B" ] ||
      fail "$m: B's server was not reached exactly once, by B" "${SRV_OUT[B]}"
    LOCAL[$m]="$CLIENT_LINE (B's object)"
  else
    LOCAL[$m]="n/a (pids are not chosen)"
  fi

  # A sentinel from A: the server still serves, and anything B had delivered would come first.
  run_client "$VM_A" "$m" "$A_TARGET"
  count_call "$kind" 1
  [ "$CLIENT_RC" -eq 0 ] || fail "$m: the sentinel client in A failed: $CLIENT_LINE" "${SRV_OUT[A]}"
  poll_until 30 got_at_least A 2 || fail "$m: the server did not see the sentinel" "${SRV_OUT[A]}"
  stop_server A

  # A's server output is final now: exactly the two clients of A, none of B.
  n=$(got_count A)
  [ "$n" -eq 2 ] || fail "$m: the server in A was reached $n times, expected 2 (A's clients)" \
    "${SRV_OUT[A]}"
  if [ "$m" = signal ]; then
    # A sender outside A's PID namespace would show as pid:0.
    bad=$(grep '^GOT ' "${SRV_OUT[A]}" | grep -v -E '^GOT from=pid:[1-9][0-9]*$' || true)
  else
    bad=$(grep '^GOT ' "${SRV_OUT[A]}" | grep -v -x "GOT from=$VM_A" || true)
  fi
  [ -z "$bad" ] || fail "$m: the server in A was reached from outside A: $bad" "${SRV_OUT[A]}"
  SEEN[$m]="2 GOT, both from A"
  pass "$m ($A_TARGET): same VM '${SAME[$m]}'; cross VM '${CROSS[$m]}'; B with its own:" \
    "'${LOCAL[$m]}'; A's server reached by A only"
done

# The policy's deny: a unix socket that exists in B, but B's programs may not connect to it.
start_server B "$VM_B" unix "$BLOCKED"
run_client "$VM_B" unix "$BLOCKED"
count_call unix-connect 1
[[ $CLIENT_RC -eq 1 && $CLIENT_LINE == "FAIL EACCES"* ]] ||
  fail "connect to $BLOCKED in $VM_B (policy deny): expected FAIL EACCES, got '$CLIENT_LINE'"
stop_server B
[ "$(got_count B)" -eq 0 ] || fail "the denied connect reached the server" "${SRV_OUT[B]}"
DENY_LINE=$CLIENT_LINE
pass "policy deny: $VM_B -> $BLOCKED: '$CLIENT_LINE', server not reached"

scrape >"$E2E_WORK/metrics.after" || fail "cannot scrape /metrics"

echo
echo "Isolation matrix: server in A=$VM_A; clients in A and in B=$VM_B, naming A's object."
echo "'B, own object' is B's client again after B created an object of the same name itself."
row() { printf '  %-10s %-13s %-47s %-47s %-28s %s\n' "$@"; }
row MECHANISM INTERCEPTED "SAME VM (A -> A)" "CROSS VM (B -> A's object)" "B, OWN OBJECT" \
  "A'S SERVER SAW"
for m in "${MECHANISMS[@]}"; do
  row "$m" "${KIND[$m]:-no (mnt ns)}" "${SAME[$m]}" "${CROSS[$m]}" "${LOCAL[$m]%% (B*}" \
    "${SEEN[$m]}"
done
row "deny rule" unix-connect "(B -> B's $BLOCKED)" "$DENY_LINE" "" "(B's server: nothing)"
echo "  fifo and posix-shm are not intercepted (a FIFO open and shm_open are file opens): the"
echo "  VM's private /tmp and /dev/shm (mount namespace) isolate them. Every other call is seen by"
echo "  the agent, which answers continue (the call lands in the caller's own namespaces) or, for"
echo "  the deny rule, EACCES."
echo

echo "shuttle_agent_decisions_total, growth during the matrix (all scopes and verdicts):"
printf '  %-13s %9s %9s\n' KIND COUNTED MADE
for kind in unix-connect tcp-connect udp-send mq-open shm-open signal; do
  before=$(metric_sum "$E2E_WORK/metrics.before" shuttle_agent_decisions_total kind="$kind")
  after=$(metric_sum "$E2E_WORK/metrics.after" shuttle_agent_decisions_total kind="$kind")
  grew=$((after - before))
  printf '  %-13s %9d %9d\n' "$kind" "$grew" "${EXPECTED[$kind]:-0}"
  [ "$grew" -ge "${EXPECTED[$kind]:-0}" ] ||
    fail "decisions of kind $kind grew by $grew, but this test made ${EXPECTED[$kind]} such calls"
done
grep '^shuttle_agent_decisions_total{' "$E2E_WORK/metrics.after" | sed 's/^/  /'
pass "every intercepted call was decided and counted by kind"

deny_before=$(metric_sum "$E2E_WORK/metrics.before" shuttle_agent_decisions_total \
  kind=unix-connect verdict=deny)
deny_after=$(metric_sum "$E2E_WORK/metrics.after" shuttle_agent_decisions_total \
  kind=unix-connect verdict=deny)
[ $((deny_after - deny_before)) -ge 1 ] ||
  fail "the policy's deny is not counted with verdict=\"deny\" (before $deny_before, after $deny_after)"
pass "the policy's deny is counted: kind=\"unix-connect\", verdict=\"deny\" grew by $((deny_after - deny_before))"

for outcome in malformed inspect_error vm_unknown vm_mismatch; do
  n=$(metric_sum "$E2E_WORK/metrics.after" shuttle_agent_notifications_total outcome="$outcome")
  [ "$n" -eq 0 ] || fail "shuttle_agent_notifications_total{outcome=\"$outcome\"} is $n, expected 0"
done
pass "no notification was malformed, uninspectable or from an unknown VM"

remove_vm "$VM_A"
remove_vm "$VM_B"
stop_agent || fail "the agent did not stop on SIGTERM within 30 s"
pass "VMs removed, agent stopped"
echo "$E2E_NAME: $E2E_PASSED passed, 0 failed ($((SECONDS - E2E_STARTED)) s)"
