#!/usr/bin/env bash
# e2e: FIFOs and POSIX shm shared by the policy (issue 5, item 1). A real agent (as root) with a
# policy that shares a FIFO and a shm segment of VM db with VM web. A reader (ipc_probe fifo
# server) in db and a writer (ipc_probe fifo client) in web meet in one kernel pipe once the
# agent has bind-mounted db's FIFO into web; a shm segment db created is mapped and written by
# web (ipc_probe posix-shm: shm_open + mmap), and db's server sees the write. A third VM, not in
# the policy, sees neither. Then the policy file loses the FIFO rule and SIGHUP makes the agent
# re-read it: the bind goes (web's open fails), the shm share stays. Metrics count it all.
#
# Hermetic: temporary data dir, socket, journal, metrics port 0; VM names carry this shell's
# pid; the VMs are always removed and the agent stopped (trap). Fails, never skips, when not
# root or without namespaces.
#
# usage: share_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=share
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"
e2e_init "$@"

DB="e2e-share-db-$$"
WEB="e2e-share-web-$$"
OTHER="e2e-share-other-$$"
FIFO="/run/e2e-share-$$/pipe"
SHM="/e2e-share-$$"
NOT_FIFO="/run/e2e-share-$$/plain-file"  # A fifo-open rule must not expose a regular file.

# write_policy WITH_FIFO(0|1): the policy file, with or without the FIFO rule.
write_policy() {
  {
    echo "name: e2e-share"
    echo "rules:"
    if [ "$1" -eq 1 ]; then
      cat <<EOF
  - name: web-writes-db-fifo
    subject: { vm: $WEB }
    kind: fifo-open
    object: { vm: $DB, path: $FIFO }
    action: allow
EOF
    fi
    cat <<EOF
  - name: not-a-fifo
    subject: { vm: $WEB }
    kind: fifo-open
    object: { vm: $DB, path: $NOT_FIFO }
    action: allow
  - name: web-maps-db-shm
    subject: { vm: $WEB }
    kind: shm-open
    object: { vm: $DB, name: $SHM }
    action: allow
EOF
  } >"$E2E_WORK/policy.yaml.tmp"
  mv "$E2E_WORK/policy.yaml.tmp" "$E2E_WORK/policy.yaml"
}

# start_probe_server TAG VM KIND NAME: a background ipc_probe server; waits for its READY.
declare -A SRV_PID=() SRV_OUT=()
start_probe_server() {
  local tag=$1 vm=$2
  SRV_OUT[$tag]="$E2E_WORK/server-$tag.out"
  "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$vm" -- "$PROBE" server "$3" "$4" \
    >"${SRV_OUT[$tag]}" 2>"$E2E_WORK/server-$tag.err" </dev/null &
  SRV_PID[$tag]=$!
  E2E_BG_PIDS+=("${SRV_PID[$tag]}")
  ready() { grep -q '^READY ' "${SRV_OUT[$1]}" || { alive "${SRV_PID[$1]}" || return 2; return 1; }; }
  poll_until 60 ready "$tag" ||
    fail "$3 server in $vm printed no READY within 60 s" "${SRV_OUT[$tag]}" \
      "$E2E_WORK/server-$tag.err"
}

# probe_client VM KIND NAME: sets CLIENT_LINE and CLIENT_RC (0 OK, 1 FAIL).
probe_client() {
  CLIENT_LINE=$(timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$1" -- \
    "$PROBE" client "$2" "$3" 2>"$E2E_WORK/client.err" </dev/null | head -n 1)
  CLIENT_RC=${PIPESTATUS[0]}
}

got_from() { grep -q "^GOT from=$2\$" "${SRV_OUT[$1]}"; }

metric() {
  scrape >"$E2E_WORK/metrics.txt" || return 1
  metric_sum "$E2E_WORK/metrics.txt" "$@"
}
active_shares_are() { [ "$(metric shuttle_agent_shares state=active)" -eq "$1" ]; }

# in_vm VM CMD...: runs CMD in VM; returns its status.
in_vm() { timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$@" </dev/null; }

write_policy 1
start_agent "$E2E_WORK/agent.log"
create_vm "$DB"
create_vm "$WEB"
create_vm "$OTHER"

# The objects appear in db after the VMs: the shares wait (pending), then are applied.
in_vm "$DB" -- mkdir -p "$(dirname "$FIFO")" || fail "mkdir in $DB"
in_vm "$DB" -- touch "$NOT_FIFO" || fail "touch in $DB"
start_probe_server fifo "$DB" fifo "$FIFO"
start_probe_server shm "$DB" posix-shm "$SHM"
poll_until 60 active_shares_are 2 ||
  fail "the agent did not apply both shares within 60 s ($(grep -c . "$E2E_WORK/metrics.txt") metric lines)"
grep -q "share applied by rule e2e-share/web-writes-db-fifo" "$AGENT_LOG" ||
  fail "the agent's log does not name the rule that shared the FIFO"
pass "both shares applied once their sources existed in $DB"

failed_shares_are() { [ "$(metric shuttle_agent_shares state=failed)" -eq "$1" ]; }
poll_until 30 failed_shares_are 1 || fail "the fifo-open rule on a regular file is not 'failed'"
grep -q "$NOT_FIFO': not a FIFO" "$AGENT_LOG" || fail "the agent did not log why $NOT_FIFO is not shared"
in_vm "$WEB" -- test -e "$NOT_FIFO" && fail "$NOT_FIFO (a regular file) became visible in $WEB"
pass "a fifo-open rule does not expose a regular file"

# FIFO: the writer in web reaches the reader in db.
probe_client "$WEB" fifo "$FIFO"
[ "$CLIENT_RC" -eq 0 ] || fail "fifo writer in $WEB: $CLIENT_LINE" "$E2E_WORK/client.err"
poll_until 30 got_from fifo "$WEB" || fail "db's FIFO reader saw nothing from $WEB" "${SRV_OUT[fifo]}"
pass "a writer in $WEB reached the FIFO reader in $DB"

# The shared FIFO node is read-only from web: data flows, the node can't be changed.
if in_vm "$WEB" -- chmod 0600 "$FIFO" 2>/dev/null; then
  fail "chmod of the shared FIFO succeeded in $WEB (the bind should be read-only)"
fi
pass "the FIFO node is read-only in $WEB"

# shm: web maps db's segment and writes into it; db's server sees the write.
probe_client "$WEB" posix-shm "$SHM"
[ "$CLIENT_RC" -eq 0 ] || fail "shm client in $WEB: $CLIENT_LINE" "$E2E_WORK/client.err"
poll_until 30 got_from shm "$WEB" || fail "db's shm server saw nothing from $WEB" "${SRV_OUT[shm]}"
pass "$WEB mapped and wrote $DB's POSIX shm segment $SHM"

# A VM the policy does not name sees neither.
probe_client "$OTHER" fifo "$FIFO"
[ "$CLIENT_RC" -eq 1 ] || fail "fifo client in $OTHER: '$CLIENT_LINE' (expected FAIL)"
probe_client "$OTHER" posix-shm "$SHM"
[ "$CLIENT_RC" -eq 1 ] || fail "shm client in $OTHER: '$CLIENT_LINE' (expected FAIL)"
got_from fifo "$OTHER" && fail "db's FIFO reader got a message from $OTHER"
pass "$OTHER (no rule) reaches neither object"

# Policy change: the FIFO rule goes; SIGHUP re-reads the file; the bind is removed.
write_policy 0
kill -HUP "$AGENT_PID"
poll_until 30 active_shares_are 1 || fail "the FIFO share was not removed within 30 s"
[ "$(metric shuttle_agent_share_changes_total op=remove)" -ge 1 ] ||
  fail "shuttle_agent_share_changes_total{op=\"remove\"} did not count the removal"
probe_client "$WEB" fifo "$FIFO"
[ "$CLIENT_RC" -eq 1 ] || fail "fifo writer in $WEB after the rule went: '$CLIENT_LINE'"
[[ $CLIENT_LINE == *ENOENT* ]] || fail "expected ENOENT for the removed FIFO, got '$CLIENT_LINE'"
pass "removing the rule removed the bind ($WEB: $CLIENT_LINE)"

probe_client "$WEB" posix-shm "$SHM"
[ "$CLIENT_RC" -eq 0 ] || fail "shm client in $WEB after the FIFO rule went: $CLIENT_LINE"
pass "the shm share stayed"

for tag in fifo shm; do
  kill -TERM "${SRV_PID[$tag]}" 2>/dev/null
  wait_exit "${SRV_PID[$tag]}" 30 || fail "the $tag server did not stop"
done
e2e_log "$E2E_PASSED checks passed"
