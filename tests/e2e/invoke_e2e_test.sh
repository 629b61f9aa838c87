#!/usr/bin/env bash
# e2e: application invocation and resource name transfer across VMs (issue 5, points 2 and 3).
# A real agent (as root) with a policy that places programs of VM web in VM db; every program
# below is started in web with `shuttlectl run` (under interception) and must run in db:
#  - /usr/bin/hostname run in web prints db's name (a VM's UTS name is its own);
#  - the exit code comes back (7), and a signal to the caller reaches the program in db (it
#    traps TERM and exits 42; shuttlectl -> stand-in -> agent -> program);
#  - a statically linked caller (invoke_exec) that execs the program directly gets the same;
#  - the environment is filtered by the rule's `env` list;
#  - a denied invocation exits 126 with the reason on stderr;
#  - a file argument of web is read and written back by the program in db when the
#    name-transfer rule says writable, and is read-only otherwise; the program sees only the
#    bound copy, under /run/shuttle-xfer;
#  - the audit log holds the name transfer with both real paths;
#  - unix-connect rules (deny all in web, allow any in db to web) don't touch the stand-in's
#    connect to the agent's own socket;
#  - removing the rule (SIGHUP) removes the stand-in: hostname runs in web again.
#
# Hermetic: temporary data dir, socket, journal, metrics port 0; VM names carry this shell's
# pid; the VMs are always removed and the agent stopped (trap). Fails, never skips, when not
# root or without namespaces.
#
# usage: invoke_e2e_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE
#                           INVOKE_EXEC
E2E_NAME=invoke
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"
[ $# -eq 6 ] || { echo "usage: $0 AGENT CTL LAUNCH VM_INIT IPC_PROBE INVOKE_EXEC" >&2; exit 2; }
INVOKE_EXEC_SRC=$(readlink -f "$6")
e2e_init "${@:1:5}"
[ -x "$INVOKE_EXEC_SRC" ] || fail "invoke_exec $INVOKE_EXEC_SRC is missing (build it first)"
cp "$INVOKE_EXEC_SRC" "$E2E_BIN/invoke_exec" || fail "copy invoke_exec"
INVOKE_EXEC="$E2E_BIN/invoke_exec"

WEB="inv-web-$$"
DB="inv-db-$$"

# The program placed in db (several names, one rule each). Runs in whichever VM runs it.
cat >"$E2E_BIN/tool" <<'EOF'
#!/bin/bash
case "$1" in
  exit) echo "tool in $(hostname)"; exit "$2" ;;
  trap)
    trap 'echo "got TERM in $(hostname)"; exit 42' TERM
    echo "TRAP-READY in $(hostname)"
    while :; do sleep 30 & wait $!; done ;;
  env) env | sort ;;
  die) kill -USR1 $$ ;;
  read) echo "tool in $(cat /proc/sys/kernel/hostname) reads $2"; cat "$2" ;;
  append) echo "path=$2"; cat "$2" || exit 3; echo "$3" >>"$2" || exit 4 ;;
  *) echo "tool: unknown mode $1" >&2; exit 2 ;;
esac
EOF
chmod 0755 "$E2E_BIN/tool"
for name in rotool denied rtool loop; do cp "$E2E_BIN/tool" "$E2E_BIN/$name"; done

write_policy() {
  cat >"$E2E_WORK/policy.yaml" <<EOF
name: e2e-invoke
rules:
  - name: hostname-in-db
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: /usr/bin/hostname }
    action: allow
  - name: tool-in-db
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/tool }
    action: allow
    env: [KEEP_*, LANG]
  - name: tool-files
    subject: { vm: $WEB }
    kind: name-transfer
    object: { vm: $DB, program: $E2E_BIN/tool }
    action: allow
    writable: true
  - name: rotool-in-db
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/rotool }
    action: allow
  - name: rotool-files
    subject: { vm: $WEB }
    kind: name-transfer
    object: { vm: $DB, program: $E2E_BIN/rotool }
    action: allow
  - name: rtool-in-web
    subject: { vm: $DB }
    kind: invoke
    object: { vm: $WEB, program: $E2E_BIN/rtool }
    action: allow
  - name: rtool-files
    subject: { vm: $DB }
    kind: name-transfer
    object: { vm: $WEB, program: $E2E_BIN/rtool }
    action: allow
  - name: loop-there
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/loop }
    action: allow
  - name: loop-back
    subject: { vm: $DB }
    kind: invoke
    object: { vm: $WEB, program: $E2E_BIN/loop }
    action: allow
  - name: web-no-unix-sockets           # the stand-in's connect to the agent still works
    subject: { vm: $WEB }
    kind: unix-connect
    action: deny
  - name: db-any-unix-socket-in-web     # and is not brokered into the other VM either
    subject: { vm: $DB }
    kind: unix-connect
    object: { vm: $WEB }
    action: allow
  - name: denied-anywhere
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/denied }
    action: allow
  - name: denied-from-web
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/denied }
    action: deny
EOF
}
write_policy
start_agent "$E2E_WORK/agent.log"
create_vm "$WEB"
create_vm "$DB"

# run_in VM OUT ERR CMD...: `shuttlectl run` in VM; sets RC.
run_in() {
  local vm=$1 out=$2 err=$3
  shift 3
  timeout 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$vm" -- "$@" >"$out" 2>"$err"
  RC=$?
}
hostname_is() {
  run_in "$WEB" "$E2E_WORK/h.out" "$E2E_WORK/h.err" /usr/bin/hostname
  [ "$RC" -eq 0 ] && [ "$(cat "$E2E_WORK/h.out")" = "$1" ]
}

# 1. The stand-in is bound over /usr/bin/hostname in web (the manager looks at new VMs every
#    2 s): hostname run in web prints db's name.
poll_until 20 hostname_is "$DB" ||
  fail "hostname in $WEB printed '$(cat "$E2E_WORK/h.out")' (rc $RC), not $DB" "$E2E_WORK/h.err"
pass "/usr/bin/hostname run in $WEB runs in $DB"
run_in "$DB" "$E2E_WORK/hd.out" "$E2E_WORK/hd.err" /usr/bin/hostname
[ "$(cat "$E2E_WORK/hd.out")" = "$DB" ] || fail "hostname in $DB itself: $(cat "$E2E_WORK/hd.out")"
pass "/usr/bin/hostname in $DB is untouched"

# 2. Exit code.
run_in "$WEB" "$E2E_WORK/x.out" "$E2E_WORK/x.err" "$E2E_BIN/tool" exit 7
[ "$RC" -eq 7 ] || fail "tool exit 7: rc $RC" "$E2E_WORK/x.out" "$E2E_WORK/x.err"
grep -qx "tool in $DB" "$E2E_WORK/x.out" || fail "tool did not run in $DB" "$E2E_WORK/x.out"
pass "exit code 7 comes back from $DB"

# 3. A signal to the caller reaches the program in db.
timeout 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$WEB" -- "$E2E_BIN/tool" trap \
  >"$E2E_WORK/t.out" 2>"$E2E_WORK/t.err" &
TRAP_CTL=$!
E2E_BG_PIDS+=("$TRAP_CTL")
poll_until 20 grep -q "TRAP-READY in $DB" "$E2E_WORK/t.out" ||
  fail "the trapping tool did not start in $DB" "$E2E_WORK/t.out" "$E2E_WORK/t.err"
kill -TERM "$TRAP_CTL"
wait_exit "$TRAP_CTL" 20 || fail "the caller did not end after SIGTERM" "$E2E_WORK/t.err"
[ "$WAIT_RC" -eq 42 ] || fail "after SIGTERM rc $WAIT_RC, not 42" "$E2E_WORK/t.out" "$E2E_WORK/t.err"
grep -q "got TERM in $DB" "$E2E_WORK/t.out" || fail "the program did not see TERM" "$E2E_WORK/t.out"
pass "SIGTERM to the caller reaches the program in $DB (exit 42)"

# 3b. A program killed by a signal: the caller dies of the same signal (bash in web reports it).
run_in "$WEB" "$E2E_WORK/k.out" "$E2E_WORK/k.err" /bin/bash -c "'$E2E_BIN/tool' die; echo rc=\$?"
grep -qx 'rc=138' "$E2E_WORK/k.out" && grep -q 'User defined signal 1' "$E2E_WORK/k.err" ||
  fail "a program killed by SIGUSR1 in $DB" "$E2E_WORK/k.out" "$E2E_WORK/k.err"
pass "a program killed by SIGUSR1 in $DB kills its caller with SIGUSR1"

# 3c. The stand-in SIGKILLed: the program in db goes too.
timeout 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$WEB" -- /bin/bash -c \
  "'$E2E_BIN/tool' trap & echo STANDIN=\$!; wait" >"$E2E_WORK/sk.out" 2>"$E2E_WORK/sk.err" &
SK_CTL=$!
E2E_BG_PIDS+=("$SK_CTL")
poll_until 20 grep -q "TRAP-READY in $DB" "$E2E_WORK/sk.out" ||
  fail "the second trapping tool did not start" "$E2E_WORK/sk.out" "$E2E_WORK/sk.err"
STANDIN=$(sed -n 's/^STANDIN=//p' "$E2E_WORK/sk.out")
run_in "$DB" "$E2E_WORK/pg.out" "$E2E_WORK/pg.err" pgrep -f "tool trap"
[ "$RC" -eq 0 ] || fail "pgrep in $DB does not see the running tool" "$E2E_WORK/pg.err"
run_in "$WEB" "$E2E_WORK/kk.out" "$E2E_WORK/kk.err" kill -KILL "$STANDIN"
[ "$RC" -eq 0 ] || fail "kill -KILL $STANDIN in $WEB" "$E2E_WORK/kk.err"
db_tool_gone() {
  run_in "$DB" "$E2E_WORK/pg.out" "$E2E_WORK/pg.err" pgrep -f "tool trap"
  [ "$RC" -eq 1 ]
}
poll_until 20 db_tool_gone || fail "the program in $DB outlived its SIGKILLed stand-in" \
  "$E2E_WORK/pg.out"
wait_exit "$SK_CTL" 20 || fail "the caller's shell did not end"
pass "SIGKILL of the stand-in in $WEB ends the program in $DB"

# 4. A statically linked caller.
file -L "$INVOKE_EXEC" | grep -q 'statically linked' || fail "invoke_exec is not static"
run_in "$WEB" "$E2E_WORK/s.out" "$E2E_WORK/s.err" "$INVOKE_EXEC" "$E2E_BIN/tool" exit 9
[ "$RC" -eq 9 ] && grep -qx "tool in $DB" "$E2E_WORK/s.out" ||
  fail "static caller: rc $RC" "$E2E_WORK/s.out" "$E2E_WORK/s.err"
run_in "$WEB" "$E2E_WORK/s2.out" "$E2E_WORK/s2.err" "$INVOKE_EXEC" /usr/bin/hostname
[ "$(cat "$E2E_WORK/s2.out")" = "$DB" ] || fail "static caller of hostname" "$E2E_WORK/s2.err"
pass "a statically linked caller's exec runs the program in $DB"

# 5. Environment filtering: KEEP_* and LANG pass, the rest is dropped.
run_in "$WEB" "$E2E_WORK/e.out" "$E2E_WORK/e.err" /usr/bin/env KEEP_A=1 KEEP_B=2 LANG=C \
  SECRET_C=3 "$E2E_BIN/tool" env
[ "$RC" -eq 0 ] || fail "tool env: rc $RC" "$E2E_WORK/e.err"
grep -qx KEEP_A=1 "$E2E_WORK/e.out" && grep -qx KEEP_B=2 "$E2E_WORK/e.out" &&
  grep -qx LANG=C "$E2E_WORK/e.out" || fail "passed variables missing" "$E2E_WORK/e.out"
! grep -q SECRET_C "$E2E_WORK/e.out" || fail "SECRET_C reached $DB" "$E2E_WORK/e.out"
pass "the environment is filtered by the rule's env list"

# 6. Denied: 126 and the reason.
run_in "$WEB" "$E2E_WORK/d.out" "$E2E_WORK/d.err" "$E2E_BIN/denied" exit 0
[ "$RC" -eq 126 ] || fail "denied invocation: rc $RC, not 126" "$E2E_WORK/d.out" "$E2E_WORK/d.err"
grep -q "denied by rule e2e-invoke/denied-from-web" "$E2E_WORK/d.err" ||
  fail "denied invocation: no reason on stderr" "$E2E_WORK/d.err"
[ ! -s "$E2E_WORK/d.out" ] || fail "the denied program ran" "$E2E_WORK/d.out"
pass "a denied invocation exits 126: $(head -n1 "$E2E_WORK/d.err")"

# 7. Name transfer: a file of web read and written back (writable), read-only without.
run_in "$WEB" "$E2E_WORK/f.out" "$E2E_WORK/f.err" /bin/bash -c \
  "cd /tmp && echo hello >f.txt && '$E2E_BIN/tool' append f.txt world; echo rc=\$?; cat /tmp/f.txt"
grep -qx 'rc=0' "$E2E_WORK/f.out" || fail "tool append (writable)" "$E2E_WORK/f.out" "$E2E_WORK/f.err"
grep -q '^path=/run/shuttle-xfer/' "$E2E_WORK/f.out" ||
  fail "the program did not get a transferred path" "$E2E_WORK/f.out"
[ "$(tail -n2 "$E2E_WORK/f.out")" = "$(printf 'hello\nworld')" ] ||
  fail "web's file was not written back" "$E2E_WORK/f.out"
pass "a file argument is read and written back in $DB ($(grep '^path=' "$E2E_WORK/f.out"))"
run_in "$WEB" "$E2E_WORK/r.out" "$E2E_WORK/r.err" /bin/bash -c \
  "echo hello >/tmp/r.txt && '$E2E_BIN/rotool' append /tmp/r.txt world; echo rc=\$?; cat /tmp/r.txt"
grep -qx 'rc=4' "$E2E_WORK/r.out" || fail "rotool append should fail to write (rc 4)" \
  "$E2E_WORK/r.out" "$E2E_WORK/r.err"
grep -q 'Read-only file system' "$E2E_WORK/r.err" || fail "no EROFS" "$E2E_WORK/r.err"
[ "$(tail -n1 "$E2E_WORK/r.out")" = hello ] || fail "read-only file changed" "$E2E_WORK/r.out"
pass "without writable the transferred file is read-only"

# 7b. The other direction: a file of db handed to a program db runs in web.
run_in "$DB" "$E2E_WORK/b.out" "$E2E_WORK/b.err" /bin/bash -c \
  "echo dbdata >/tmp/d.txt && '$E2E_BIN/rtool' read /tmp/d.txt"
[ "$RC" -eq 0 ] && grep -q "^tool in $WEB reads /run/shuttle-xfer/" "$E2E_WORK/b.out" &&
  grep -qx dbdata "$E2E_WORK/b.out" || fail "db -> web with a file" "$E2E_WORK/b.out" "$E2E_WORK/b.err"
pass "the other direction: $DB runs a program in $WEB on its own file"

# 7c. A program placed both ways would loop: refused, 126.
run_in "$WEB" "$E2E_WORK/l.out" "$E2E_WORK/l.err" "$E2E_BIN/loop" exit 0
[ "$RC" -eq 126 ] && grep -q "chains of invocations are refused" "$E2E_WORK/l.err" ||
  fail "a loop of placements: rc $RC" "$E2E_WORK/l.out" "$E2E_WORK/l.err"
pass "a program placed both ways is refused (no loop)"

# 8. The audit log shows the name transfer with both real paths.
audit_has_paths() {
  grep -aqs "$WEB:/tmp/f.txt -> $DB:/run/shuttle-xfer/" "$E2E_WORK"/data/audit/* 2>/dev/null
}
poll_until 15 audit_has_paths || fail "no audit record with both paths in $E2E_WORK/data/audit"
pass "the audit record shows $WEB:/tmp/f.txt -> $DB:/run/shuttle-xfer/..."
scrape >"$E2E_WORK/metrics.txt" || fail "scrape /metrics"
[ "$(metric_sum "$E2E_WORK/metrics.txt" shuttle_agent_invocations_total result=denied)" -ge 1 ] &&
  [ "$(metric_sum "$E2E_WORK/metrics.txt" shuttle_agent_name_transfers_total result=bound)" -ge 2 ] ||
  fail "invocation metrics missing" "$E2E_WORK/metrics.txt"
pass "invocations and name transfers are counted"

# 9. A policy without the hostname rule (SIGHUP) removes the stand-in.
cat >"$E2E_WORK/policy.yaml" <<EOF
name: e2e-invoke
rules:
  - name: tool-in-db
    subject: { vm: $WEB }
    kind: invoke
    object: { vm: $DB, program: $E2E_BIN/tool }
    action: allow
EOF
kill -HUP "$AGENT_PID"
poll_until 20 hostname_is "$WEB" ||
  fail "after the rule went, hostname in $WEB printed '$(cat "$E2E_WORK/h.out")'" "$E2E_WORK/h.err"
pass "removing the rule removes the stand-in: hostname runs in $WEB again"

echo "$E2E_NAME: $E2E_PASSED passed"
