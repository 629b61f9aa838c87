#!/usr/bin/env bash
# e2e: the sample application (issue 5, item 6): Debian's PostgreSQL server in VM db and psql in
# VM web, connecting through the default socket path /run/postgresql/.s.PGSQL.5432, with a real
# agent enforcing a --policy-file that the test rewrites and reloads (SIGHUP) between steps:
#   1. no rule: the call stays in web (intra-vm), where no server listens: psql fails with
#      "No such file or directory"; db's server is isolated;
#   2. a rule allows web -> db: the agent brokers the connect into db and psql gets its answer;
#   3. the rule turned into deny: the next psql is refused with "Permission denied";
#   4. allow again: the next psql works; neither the server nor the agent was restarted
#      (the server's postmaster pid is the same throughout);
#   5. monitor mode (the deny rule in a `mode: monitor` policy): decided (counted deny) and
#      audited (a record in the agent's spool with verdict deny and enforced false) but not
#      enforced: the call continues inside web, so psql fails with "No such file or directory".
# The database lives in db's overlay (PGDATA under /var/lib/postgresql, invisible to the host and
# to web); postgres runs as user postgres in the foreground under `shuttlectl run`, with its
# socket in /run/postgresql (db's private /run).
#
# Hermetic: temporary data dir, socket, journal, metrics port 0; VM names carry this shell's pid;
# the VMs are always removed and the agent stopped (trap). Fails, never skips, when not root or
# when PostgreSQL is not installed (scripts/install-deps.sh installs it).
#
# usage: postgres_test.sh SHUTTLE_AGENT SHUTTLECTL SHUTTLE_LAUNCH SHUTTLE_VM_INIT IPC_PROBE
E2E_NAME=postgres
# shellcheck source=e2e_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e_lib.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
e2e_init "$@"

# ----- preflight: Debian's PostgreSQL server and client ----------------------------------------
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
  sort -V | tail -n 1)
[ -n "$PG_BIN" ] || fail "no PostgreSQL server in /usr/lib/postgresql/*/bin" \
  "(run scripts/install-deps.sh: it installs Debian's postgresql)"
for b in initdb postgres pg_isready; do
  [ -x "$PG_BIN/$b" ] || fail "$PG_BIN/$b is missing (package postgresql-* incomplete?)"
done
PSQL=$(command -v psql) || fail "psql is not installed (package postgresql-client)"
id postgres >/dev/null 2>&1 || fail "there is no user postgres (package postgresql-common)"
command -v protoc >/dev/null || fail "protoc is needed to read the audit spool"
command -v python3 >/dev/null || fail "python3 is needed to read the audit spool"
e2e_log "PostgreSQL from $PG_BIN, psql $PSQL"

WEB="e2e-pg-web-$$"
DB="e2e-pg-db-$$"
SOCK_DIR=/run/postgresql
SOCK="$SOCK_DIR/.s.PGSQL.5432"
PGDATA_VM="/var/lib/postgresql/shuttle-e2e-$$" # inside db's overlay only
W=$E2E_WORK

# write_policy none|allow|deny|monitor: the policy file for that step (see the header).
write_policy() {
  local mode=enforce action=allow
  case "$1" in
    none)
      cat >"$W/policy.yaml" <<EOF
name: e2e-postgres
description: "step none: nothing about PostgreSQL; web's connect stays in web"
rules:
  - name: web-no-signals-to-db
    subject: { vm: $WEB }
    kind: signal
    object: { vm: $DB }
    action: deny
EOF
      return
      ;;
    allow) ;;
    deny) action=deny ;;
    monitor) mode=monitor action=deny ;;
    *) fail "write_policy: unknown step $1" ;;
  esac
  cat >"$W/policy.yaml" <<EOF
name: e2e-postgres
mode: $mode
description: "step $1: psql in web -> PostgreSQL's socket in db"
rules:
  - name: web-to-postgres
    subject: { vm: $WEB }
    kind: unix-connect
    object: { vm: $DB, path: $SOCK }
    action: $action
EOF
}

# reload STEP: rewrites the policy file and SIGHUPs the agent, then waits (bounded) until the
# agent logs that it enforces the new local version.
LOCAL_VERSION=1
reload() {
  write_policy "$1"
  LOCAL_VERSION=$((LOCAL_VERSION + 1))
  kill -HUP "$AGENT_PID" || fail "cannot signal the agent"
  reloaded() { grep -q "local version $LOCAL_VERSION)" "$AGENT_LOG"; }
  poll_until 30 reloaded || fail "the agent did not load policy step $1 within 30 s"
}

# in_vm VM [--user U] -- CMD...: shuttlectl run, bounded; output in $W/run.out, $W/run.err.
in_vm() {
  local vm=$1
  shift
  timeout -k 5 60 "$CTL" --agent-socket "$AGENT_SOCK" run --vm "$vm" "$@" \
    >"$W/run.out" 2>"$W/run.err" </dev/null
}

# psql_web: psql in web against the default socket directory; sets PSQL_RC and PSQL_OUT (stdout
# and stderr, one line).
psql_web() {
  in_vm "$WEB" -- "$PSQL" -X -At -h "$SOCK_DIR" -U postgres -d postgres \
    -c "select 'answer from ' || current_setting('cluster_name')"
  PSQL_RC=$?
  PSQL_OUT=$(cat "$W/run.out" "$W/run.err" | tr '\n' ' ')
}
expect_answer() {
  psql_web
  [ "$PSQL_RC" -eq 0 ] && [[ $PSQL_OUT == *"answer from shuttle-e2e-db"* ]] ||
    fail "$1: psql in web exited $PSQL_RC: $PSQL_OUT" "$W/run.err"
}
# expect_error WHAT TEXT: psql must exit 2 (connection failed) naming TEXT.
expect_error() {
  psql_web
  [ "$PSQL_RC" -eq 2 ] && [[ $PSQL_OUT == *"$2"* ]] ||
    fail "$1: psql in web exited $PSQL_RC, want 2 with '$2': $PSQL_OUT" "$W/run.err"
}

# metric NAME [LABEL=VALUE]...: one scrape of the agent, summed.
metric() {
  scrape >"$W/metrics" || fail "cannot scrape the agent's /metrics"
  metric_sum "$W/metrics" "$@"
}
cross_vm() { metric shuttle_agent_decisions_total kind=unix-connect scope=cross-vm "verdict=$1"; }
brokered() { metric shuttle_agent_brokered_total kind=unix-connect scope=cross-vm result=ok; }

# spool_records: the agent's audit spool decoded (protoc), one line per record:
# "VERDICT enforced=true|false SUBJECT_VM OBJECT_VM OBJECT_NAME"; in $W/spool.txt.
spool_records() {
  python3 - "$W/data/audit" "$REPO/proto" >"$W/spool.txt" 2>"$W/spool.err" <<'EOF'
import glob, os, struct, subprocess, sys
spool, protos = sys.argv[1], sys.argv[2]
for seg in sorted(glob.glob(os.path.join(spool, "segment-*.log"))):
    data = open(seg, "rb").read()
    pos = 0
    while pos + 8 <= len(data):
        (length, _crc) = struct.unpack_from("<II", data, pos)
        if pos + 8 + length > len(data):
            break  # the writer is mid-record
        text = subprocess.run(
            ["protoc", "--decode=shuttle.v1.AuditRecord", "-I", protos, "shuttle/v1/types.proto"],
            input=data[pos + 8:pos + 8 + length], capture_output=True, check=True).stdout.decode()
        pos += 8 + length
        fields = {}
        for line in text.splitlines():
            key, _, value = line.strip().partition(": ")
            if value and key not in fields:
                fields[key] = value.strip('"')
        print(fields.get("verdict", "?"), "enforced=" + fields.get("enforced", "false"),
              fields.get("subject_vm", "?"), fields.get("object_vm", "?"),
              fields.get("object_name", "?"))
EOF
}
# spool_has LINE: the decoded spool holds exactly this record line at least once.
spool_has() { spool_records && grep -qxF "$1" "$W/spool.txt"; }

# ----- the VMs, and PostgreSQL in db -----------------------------------------------------------
write_policy none
start_agent "$W/agent.log"
create_vm "$WEB"
create_vm "$DB"

in_vm "$DB" -- /bin/sh -c "mkdir -p $SOCK_DIR && chown postgres:postgres $SOCK_DIR &&
  chmod 2775 $SOCK_DIR" || fail "cannot make $SOCK_DIR in $DB" "$W/run.err"
t0=$SECONDS
in_vm "$DB" --user postgres -- "$PG_BIN/initdb" -D "$PGDATA_VM" -U postgres --auth=trust \
  --no-sync -E UTF8 --locale=C.UTF-8 || fail "initdb in $DB" "$W/run.out" "$W/run.err"
[ ! -e "$PGDATA_VM" ] || fail "$PGDATA_VM, made in $DB, is visible on the host"
in_vm "$WEB" -- /bin/test -e "$PGDATA_VM/PG_VERSION" &&
  fail "$PGDATA_VM, made in $DB, is visible in $WEB"
e2e_log "initdb in $DB: $PGDATA_VM ($((SECONDS - t0)) s)"

"$CTL" --agent-socket "$AGENT_SOCK" run --vm "$DB" --user postgres -- "$PG_BIN/postgres" \
  -D "$PGDATA_VM" -c listen_addresses= -c unix_socket_directories="$SOCK_DIR" \
  -c cluster_name=shuttle-e2e-db -c fsync=off >"$W/postgres.out" 2>"$W/postgres.err" </dev/null &
PG_PID=$!
E2E_BG_PIDS+=("$PG_PID")
pg_ready() {
  alive "$PG_PID" || fail "postgres in $DB exited during start-up" "$W/postgres.err"
  in_vm "$DB" -- "$PG_BIN/pg_isready" -q -h "$SOCK_DIR"
}
poll_until 60 pg_ready || fail "postgres in $DB did not accept connections within 60 s" \
  "$W/postgres.err"
in_vm "$DB" -- /bin/cat "$PGDATA_VM/postmaster.pid" || fail "no postmaster.pid in $DB"
POSTMASTER=$(head -n 1 "$W/run.out")
in_vm "$DB" -- "$PSQL" -X -At -h "$SOCK_DIR" -U postgres -d postgres -c 'select 1' &&
  [ "$(cat "$W/run.out")" = 1 ] || fail "psql inside $DB does not work" "$W/run.out" "$W/run.err"
pass "PostgreSQL ($PG_BIN) serves $SOCK in $DB (postmaster pid $POSTMASTER in $DB);" \
  "psql in $DB reaches it"

# ----- 1. no rule ------------------------------------------------------------------------------
expect_error "no rule" "No such file or directory"
pass "no rule: the connect stays in $WEB, which has no server: '$(sed -n 1p "$W/run.err")'"

# ----- 2. allow --------------------------------------------------------------------------------
reload allow
allow0=$(cross_vm allow)
brokered0=$(brokered)
expect_answer "allow rule"
[ "$(cross_vm allow)" -eq $((allow0 + 1)) ] ||
  fail "the allowed connect was not counted as a cross-vm allow" "$W/metrics"
[ "$(brokered)" -eq $((brokered0 + 1)) ] ||
  fail "the allowed connect was not counted as brokered (shuttle_agent_brokered_total)" "$W/metrics"
pass "rule web-to-postgres allows: psql in $WEB -> '$(head -n 1 "$W/run.out")' (brokered into $DB)"

# ----- 3. deny, 4. allow again: without restarting either side -------------------------------
reload deny
deny0=$(cross_vm deny)
expect_error "deny rule" "Permission denied"
[ "$(cross_vm deny)" -eq $((deny0 + 1)) ] ||
  fail "the refused connect was not counted as a cross-vm deny" "$W/metrics"
pass "the rule changed to deny (SIGHUP): the next psql is refused: '$(sed -n 1p "$W/run.err")'"

reload allow
expect_answer "allow again"
alive "$PG_PID" || fail "postgres in $DB is gone"
in_vm "$DB" -- /bin/cat "$PGDATA_VM/postmaster.pid" &&
  [ "$(head -n 1 "$W/run.out")" = "$POSTMASTER" ] ||
  fail "the postmaster in $DB changed (was pid $POSTMASTER)" "$W/run.out"
pass "allowed again: the next psql works; server (postmaster $POSTMASTER) and agent" \
  "(pid $AGENT_PID) never restarted"

# ----- 5. monitor mode -------------------------------------------------------------------------
reload monitor
deny0=$(cross_vm deny)
brokered0=$(brokered)
expect_error "monitor mode" "No such file or directory"
[ "$(cross_vm deny)" -eq $((deny0 + 1)) ] ||
  fail "monitor mode: the connect was not decided (counted) as a cross-vm deny" "$W/metrics"
[ "$(brokered)" -eq "$brokered0" ] || fail "monitor mode: the connect was brokered" "$W/metrics"
# The enforced deny of step 3 and the monitored one of step 5, as the spool holds them.
ENFORCED="VERDICT_DENY enforced=true $WEB $DB $SOCK"
MONITORED="VERDICT_DENY enforced=false $WEB $DB $SOCK"
poll_until 30 spool_has "$MONITORED" ||
  fail "monitor mode: no audit record '$MONITORED' in the spool within 30 s" "$W/spool.txt" \
    "$W/spool.err"
spool_has "$ENFORCED" || fail "the spool lacks step 3's record '$ENFORCED'" "$W/spool.txt"
pass "monitor mode: decided (cross-vm deny counted), audited ('$MONITORED'), not enforced:" \
  "'$(sed -n 1p "$W/run.err")'"

# ----- done ------------------------------------------------------------------------------------
kill -TERM "$PG_PID"
wait_exit "$PG_PID" 30 || fail "postgres in $DB did not stop within 30 s of SIGTERM"
[ "$WAIT_RC" -eq 0 ] || fail "postgres in $DB exited $WAIT_RC after SIGTERM" "$W/postgres.err"
remove_vm "$WEB"
remove_vm "$DB"
stop_agent || fail "the agent did not stop within 30 s of SIGTERM"
pass "postgres stopped, VMs removed, agent stopped"
echo "$E2E_NAME: $E2E_PASSED passed, 0 failed ($((SECONDS - E2E_STARTED)) s)"
