#!/usr/bin/env bash
# e2e: a VM's process survives a kill -9 of the agent (issue 3, item 6). A program in a VM does
# connect() in a loop on two unix socket paths, one denied by the policy (EACCES expected) and
# one that does not exist (ENOENT expected). After it got through some calls the agent is killed
# with SIGKILL while the loop runs, and started again on the same data dir, socket and journal.
# The program must go on once the agent is back and finish: every call answered, no ENOSYS, no
# other unexpected errno. The restarted agent must have adopted the VM (same init pid in
# `vm ls`) and taken back the seccomp listeners from the VM's init.
#
# The program's output goes to a file through the descriptor passed to `shuttlectl run`, so it
# still arrives after shuttlectl lost its agent (shuttlectl then exits 1: "the agent went away
# before the program ended", which is expected). Its stdin is a FIFO the test holds: once the
# loop made MIN_CALLS calls and a line arrives there, it stops and prints its counts.
#
# Hermetic: temporary data dir, socket, journal, metrics port 0; the VM name carries this
# shell's pid; the VM is always removed and the agent stopped (trap). Fails, never skips, when
# not root or without namespaces.
#
# usage: agent_restart_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=agent_restart
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"
e2e_init "$@"

MIN_CALLS=5000
CALLS_BEFORE_KILL=1000 # The loop must be well under way when the agent dies...
CALLS_AFTER_RESTART=2000 # ...and must make this many more once the new agent is up.
PROGRESS_EVERY=500       # The loop prints "progress N" every this many calls (ipc_probe.c).
VM="e2e-rst-$$"
DENIED="/run/e2e-denied-$$.sock"
MISSING="/run/e2e-missing-$$.sock"
cat >"$E2E_WORK/policy.yaml" <<EOF
name: e2e-restart
rules:
  - name: no-denied-socket
    subject: { vm: $VM }
    kind: unix-connect
    object: { path: $DENIED }
    action: deny
EOF

LOOP_OUT="$E2E_WORK/loop.out"
LOOP_ERR="$E2E_WORK/loop.err"
progress() { awk '$1 == "progress" { n = $2 } END { print n + 0 }' "$LOOP_OUT" 2>/dev/null || echo 0; }
progress_at_least() { [ "$(progress)" -ge "$1" ]; }
loop_done() { grep -q '^DONE ' "$LOOP_OUT"; }

start_agent "$E2E_WORK/agent.1.log"
create_vm "$VM"
INIT_BEFORE=$(vm_ls_init_pid "$VM")
[ -n "$INIT_BEFORE" ] || fail "vm ls does not show $VM"

# The loop's stdin: a FIFO that this shell keeps open read-write (no EOF, never blocks).
mkfifo "$E2E_WORK/stdin.fifo" || fail "mkfifo"
exec {LOOP_IN}<>"$E2E_WORK/stdin.fifo"
"$CTL" --agent-socket "$AGENT_SOCK" run --vm "$VM" -- \
  "$PROBE" connect-loop "$MIN_CALLS" "$DENIED" "$MISSING" \
  <"$E2E_WORK/stdin.fifo" >"$LOOP_OUT" 2>"$LOOP_ERR" &
RUN_PID=$!
E2E_BG_PIDS+=("$RUN_PID")

poll_until 60 progress_at_least "$CALLS_BEFORE_KILL" ||
  fail "the loop did not reach $CALLS_BEFORE_KILL calls within 60 s" "$LOOP_OUT" "$LOOP_ERR"
loop_done && fail "the loop finished before the agent was killed" "$LOOP_OUT"
# The program's pid on the host, from the agent's log: "run in vm V ...: CMD (pid N) for pid M".
PROGRAM_PID=$(sed -n "s/.*run in vm $VM as uid [0-9]*: .* (pid \\([0-9]*\\)) for pid .*/\\1/p" \
  "$AGENT_LOG" | tail -n 1)
[[ $PROGRAM_PID =~ ^[0-9]+$ ]] || fail "no 'run in vm $VM ... (pid N)' line in the agent log"

OLD_AGENT=$AGENT_PID
kill -KILL "$AGENT_PID"
wait_exit "$AGENT_PID" 30 || fail "the agent survived SIGKILL for 30 s"
AGENT_PID=""
AT_KILL=$(progress)
e2e_log "killed the agent (pid $OLD_AGENT) with SIGKILL after $AT_KILL+ calls"
alive "$PROGRAM_PID" || fail "the program (pid $PROGRAM_PID) died with the agent" "$LOOP_OUT"

# shuttlectl loses its agent: it must say so and exit 1 (the program goes on regardless).
wait_exit "$RUN_PID" 30 || fail "shuttlectl did not notice the agent's death within 30 s"
if [ "$WAIT_RC" -ne 1 ] || ! grep -q "the agent went away before the program ended" "$LOOP_ERR"; then
  fail "shuttlectl after the agent's death: exit $WAIT_RC" "$LOOP_ERR"
fi
pass "agent killed with SIGKILL mid-loop; shuttlectl exited 1: the agent went away"

start_agent "$E2E_WORK/agent.2.log"
AT_RESTART=$(progress)
grep -q "vm $VM: adopted (init pid $INIT_BEFORE)" "$AGENT_LOG" ||
  fail "the restarted agent's log does not say it adopted $VM (init pid $INIT_BEFORE)"
adopted=$(grep -o 'adopted [0-9]* VMs, [0-9]* listeners; restarted [0-9]* waiting calls.*' \
  "$AGENT_LOG" | tail -n 1)
if ! [[ $adopted =~ ^adopted\ 1\ VMs,\ ([1-9][0-9]*)\ listeners ]]; then
  fail "the restarted agent did not reclaim the VM's listeners: '${adopted:-no summary line}'"
fi
pass "restarted agent: $adopted"

INIT_AFTER=$(vm_ls_init_pid "$VM")
[ "$INIT_AFTER" = "$INIT_BEFORE" ] ||
  fail "vm ls after the restart shows init pid '$INIT_AFTER', before it was $INIT_BEFORE"
pass "vm ls after the restart: $VM, same init pid $INIT_AFTER"

target=$((AT_RESTART + CALLS_AFTER_RESTART))
if ! poll_until 60 progress_at_least "$target"; then
  # Say where the program waits. Blocked in seccomp_do_user_notification while the new agent
  # has nothing pending is the signature of a notification the killed agent had received
  # (state SENT) but not yet journaled: nobody will ever answer it.
  why="the program (host pid $PROGRAM_PID) waits in $(cat "/proc/$PROGRAM_PID/wchan" 2>/dev/null)"
  why+=", syscall $(cut -d' ' -f1 "/proc/$PROGRAM_PID/syscall" 2>/dev/null)"
  fail "the loop did not go on after the restart (at $(progress), waited for $target): $why" \
    "$LOOP_OUT" "$LOOP_ERR"
fi
pass "the loop went on after the restart: $AT_KILL calls at the kill, $(progress) now"

echo stop >&"$LOOP_IN"
poll_until 60 loop_done || fail "the loop printed no DONE within 60 s of the stop" "$LOOP_OUT"
poll_until 30 gone "$PROGRAM_PID" || fail "the program did not exit after DONE"
DONE_LINE=$(grep '^DONE ' "$LOOP_OUT")
e2e_log "$DONE_LINE"
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p" <<<"$DONE_LINE"; }
calls=$(field calls)
denied_eacces=$(field denied_eacces)
denied_enoent=$(field denied_enoent)
missing_enoent=$(field missing_enoent)
enosys=$(field enosys)
other=$(field other)
[ "$calls" -ge "$MIN_CALLS" ] || fail "the loop made $calls calls, fewer than $MIN_CALLS"
[ "$enosys" -eq 0 ] || fail "$enosys connect() calls returned ENOSYS"
[ "$other" -eq 0 ] || fail "$other connect() calls returned something unexpected: $DONE_LINE"
[ $((denied_eacces + denied_enoent + missing_enoent)) -eq "$calls" ] ||
  fail "the counts do not add up to the calls: $DONE_LINE"
# One call at most can be received by the old agent and left unanswered: the journal makes the
# new agent answer it with CONTINUE, so that one denied connect reaches the kernel (ENOENT).
# Calls waiting when the agent died are restarted and decided again by the new agent, so no
# denied call may get through (the journal's CONTINUE is only a fallback).
[ "$denied_enoent" -eq 0 ] || fail "$denied_enoent denied connects were not denied: $DONE_LINE"
if [ "$denied_eacces" -lt $((calls / 2 - 1)) ] || [ "$missing_enoent" -ne $((calls / 2)) ]; then
  fail "the loop's answers are not what the policy says: $DONE_LINE"
fi
pass "all $calls calls answered: EACCES $denied_eacces (policy), ENOENT $missing_enoent" \
  "(missing path), $denied_enoent denied calls let through, ENOSYS 0, unexpected 0"

scrape >"$E2E_WORK/metrics.after" || fail "cannot scrape /metrics"
denies=$(metric_sum "$E2E_WORK/metrics.after" shuttle_agent_decisions_total \
  kind=unix-connect verdict=deny)
# Every call after the kill was decided by the new agent: all but the (fewer than
# PROGRESS_EVERY) calls the loop made between its last "progress" line and the kill.
since_kill=$((calls - AT_KILL - PROGRESS_EVERY))
[ "$denies" -ge $((since_kill / 2 - 1)) ] ||
  fail "the restarted agent counted $denies denies; the loop made more than $since_kill calls since"
pass "the restarted agent decided the loop's calls (unix-connect deny: $denies)"

remove_vm "$VM"
stop_agent || fail "the agent did not stop on SIGTERM within 30 s"
pass "VM removed, agent stopped"
echo "$E2E_NAME: $E2E_PASSED passed, 0 failed ($((SECONDS - E2E_STARTED)) s)"
