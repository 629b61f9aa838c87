#!/usr/bin/env bash
# The `make demo` walk-through: starts a controller on a temporary data dir (fresh CA,
# kernel-chosen ports), applies the example policy, lists it, explains one allowed and one
# denied interaction, validates a broken file; then enrolls an agent with a join token, shows
# the policy pushed to it, creates VMs web, db and other, and shows a call that the policy denies
# and one it allows; then the sample application (issue 5): Debian's PostgreSQL in VM db, a
# policy that lets psql in VM web reach it and refuses VM other, psql from web answered through
# the agent's brokered connect, psql from other refused, the audit log and the metrics that
# changed; then removes the VMs, stops both daemons and removes everything it made. Needs root
# (the agent makes namespaces) and PostgreSQL (scripts/install-deps.sh). Safe to run again.
#
# usage: scripts/demo.sh BUILD_DIR
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${1:-build}
case "$BUILD_DIR" in
  /*) ;;
  *) BUILD_DIR="$PWD/$BUILD_DIR" ;;
esac
CONTROLLER="$BUILD_DIR/controller/main/shuttle-controller"
AGENT="$BUILD_DIR/agent/main/shuttle-agent"
PROBE="$BUILD_DIR/tests/e2e/ipc_probe"
CTL="$BUILD_DIR/cli/shuttlectl"
EXAMPLES=deploy/examples  # relative, so that file names in the output read as in the repo
for bin in "$CONTROLLER" "$AGENT" "$PROBE" "$CTL"; do
  [ -x "$bin" ] || { echo "demo: $bin is not built (run: make build)" >&2; exit 1; }
done
# Debian's PostgreSQL server and client (the newest installed major version).
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
  sort -V | tail -n 1)
for bin in initdb postgres pg_isready psql; do
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/$bin" ] ||
    { echo "demo: PostgreSQL's $bin is not installed (run: scripts/install-deps.sh)" >&2; exit 1; }
done

cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shuttle-demo.XXXXXX")
# The probe runs inside VMs, whose /tmp, /run and /dev are private: put it where they can see it
# (the build tree itself may be under /tmp).
BIN=$(mktemp -d /var/tmp/shuttle-demo-bin.XXXXXX)
chmod 0755 "$BIN"
cp "$PROBE" "$BIN/ipc_probe"
PROBE="$BIN/ipc_probe"
DATA="$WORK/data"
PID=""
AGENT_PID=""
SERVER_PID=""
PG_PID=""
VMS="web db other"
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (the agent creates namespaces)" >&2; exit 1; }

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ -n "$PG_PID" ]; then
    kill -TERM "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
  fi
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    for vm in $VMS; do
      "$CTL" --agent-socket "$WORK/agent.sock" vm rm "$vm" >/dev/null 2>&1 || true
    done
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK" "$BIN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
step_no=0
step() {
  step_no=$((step_no + 1))
  printf '\n%s== %d. %s%s\n' "$BOLD" "$step_no" "$1" "$PLAIN"
  shift
  for line in "$@"; do printf '   %s\n' "$line"; done
}

# Shows the command as a person would type it (SHUTTLE_CONTROLLER is exported), then runs it.
ctl() {
  printf '%s$ shuttlectl --data-dir %s %s%s\n' "$BOLD" "$DATA" "$*" "$PLAIN"
  "$CTL" --data-dir "$DATA" "$@"
}

step "Start the controller" \
  "A fresh data dir: on first start the controller creates its CA, its server certificate and" \
  "an admin client certificate in DATA/pki/. gRPC is mTLS only; both ports are picked by the" \
  "kernel (port 0) and written to a port file."
printf '%s$ shuttle-controller --data-dir %s --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --port-file %s%s\n' \
  "$BOLD" "$DATA" "$WORK/ports" "$PLAIN"
"$CONTROLLER" --data-dir "$DATA" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --port-file "$WORK/ports" 2>"$WORK/controller.log" &
PID=$!
for _ in $(seq 1 300); do  # 30 s at most
  [ -s "$WORK/ports" ] && break
  if ! kill -0 "$PID" 2>/dev/null; then
    cat "$WORK/controller.log" >&2
    echo "demo: the controller exited during start-up" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$WORK/ports" ] || { echo "demo: the controller wrote no port file in 30 s" >&2; exit 1; }
GRPC_PORT=$(sed -n 's/^grpc=//p' "$WORK/ports")
METRICS_PORT=$(sed -n 's/^metrics=//p' "$WORK/ports")
export SHUTTLE_CONTROLLER="127.0.0.1:$GRPC_PORT"
echo "controller pid $PID: gRPC on $SHUTTLE_CONTROLLER, metrics on 127.0.0.1:$METRICS_PORT"
echo "PKI in $DATA/pki:" "$(cd "$DATA/pki" && echo *)"
echo "shuttlectl reads \$SHUTTLE_CONTROLLER=$SHUTTLE_CONTROLLER and authenticates with pki/admin.pem"

step "Apply the example policy" \
  "deploy/examples/webapp.yaml: nginx + php-fpm in VM web may reach PostgreSQL in VM db;" \
  "nothing else crosses. The controller validates it, stores it as revision 1 and bumps the" \
  "fleet version."
ctl policy apply -f "$EXAMPLES/webapp.yaml"

step "List the policies" "Every live policy with its revision, mode and rule count."
ctl policy ls

step "Explain an interaction that is allowed" \
  "php-fpm in VM web connects to PostgreSQL's socket in VM db: rule php-to-postgres-socket," \
  "which names the program, wins; the VM-wide deny that also matched is listed as losing."
ctl explain --vm web --program /usr/sbin/php-fpm8.2 --kind unix-connect \
  --object /run/postgresql/.s.PGSQL.5432 --object-vm db

step "Explain an interaction that is denied" \
  "Another program in VM web tries the same socket: only rule others-no-postgres matches it."
ctl explain --vm web --program /usr/bin/python3 --kind unix-connect \
  --object /run/postgresql/.s.PGSQL.5432 --object-vm db

step "Validate a broken policy file" \
  "deploy/examples/bad-policy.yaml has mistakes: every one is reported at once as" \
  "file:line:col: field: message, and shuttlectl exits 1 (expected here; nothing is stored)."
set +e
ctl policy validate -f "$EXAMPLES/bad-policy.yaml" 2>&1  # keep its stderr line in order
rc=$?
set -e
echo "(shuttlectl exited $rc, as expected for an invalid file)"


# Waits (bounded) until the agent's /metrics shows at least $2 ACKed pushes.
wait_acks() {
  local port=$1 want=$2 n=0
  for _ in $(seq 1 300); do  # 30 s at most
    n=$(curl -s "127.0.0.1:$port/metrics" | sed -n 's/^shuttle_agent_policy_pushes_total{result="ack"} //p')
    n=${n%.*}
    [ -n "$n" ] && [ "$n" -ge "$want" ] && return 0
    sleep 0.1
  done
  echo "demo: the agent did not ACK push number $want in 30 s" >&2
  return 1
}

step "Create a join token and start an agent" \
  "The agent enrolls once: it sends a CSR with the single-use token, gets a certificate naming" \
  "its host id, and from then on talks mTLS. The controller pushes it the rules for its VMs."
ctl token create --host demo-host --ttl 10m -o json > "$WORK/token.json"
TOKEN=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' "$WORK/token.json")
[ -n "$TOKEN" ] || { cat "$WORK/token.json" >&2; echo "demo: no token" >&2; exit 1; }
echo "token: ${TOKEN:0:12}... (single use, bound to host demo-host, expires in 10m)"
printf '%s$ shuttle-agent --host-id demo-host --controller %s --join-token ... --controller-ca %s/pki/ca.pem%s\n' \
  "$BOLD" "$SHUTTLE_CONTROLLER" "$DATA" "$PLAIN"
"$AGENT" --host-id demo-host --controller "$SHUTTLE_CONTROLLER" --join-token "$TOKEN" \
  --controller-ca "$DATA/pki/ca.pem" --data-dir "$WORK/agent" --socket "$WORK/agent.sock" \
  --journal "$WORK/inflight" --metrics-listen 127.0.0.1:0 --port-file "$WORK/agent.ports" \
  2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 300); do
  [ -s "$WORK/agent.ports" ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent.log" >&2; echo "demo: agent exited" >&2; exit 1; }
  sleep 0.1
done
[ -s "$WORK/agent.ports" ] || { echo "demo: the agent wrote no port file in 30 s" >&2; exit 1; }
AGENT_METRICS=$(sed -n 's/^metrics=//p' "$WORK/agent.ports")
wait_acks "$AGENT_METRICS" 1
export SHUTTLE_AGENT_SOCKET="$WORK/agent.sock"
ctl hosts

step "Create VMs web, db and other on the agent" \
  "Each VM: its own mount, IPC, network, UTS and PID namespaces, an overlay root whose writes" \
  "stay in the VM, private /tmp, /run, /dev. The agent tells the controller, which pushes the" \
  "rules for these VMs (same fleet version, new content) and the agent ACKs."
ctl vm create web
ctl vm create db
ctl vm create other
wait_acks "$AGENT_METRICS" 2
ctl vm ls

step "A program in VM db serves PostgreSQL's socket path; a client in db reaches it" \
  "Within one VM everything is allowed unless a rule says otherwise: the connect is" \
  "intercepted, decided (intra-vm, allow) and continues in db's own namespaces."
"$CTL" run --vm db -- sh -c "mkdir -p /run/postgresql && exec $PROBE server unix /run/postgresql/.s.PGSQL.5432" \
  > "$WORK/server.out" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do grep -q READY "$WORK/server.out" && break; sleep 0.1; done
cat "$WORK/server.out"
ctl run --vm db -- "$PROBE" client unix /run/postgresql/.s.PGSQL.5432

step "A program in VM web tries the same socket: denied" \
  "Rule others-no-postgres (VM web may not reach db's PostgreSQL except through php-fpm)" \
  "decides; the agent fails the connect with EACCES."
set +e
ctl run --vm web -- "$PROBE" client unix /run/postgresql/.s.PGSQL.5432
rc=$?
set -e
echo "(the client exited $rc: denied, as the policy says)"

# ----- issue 5: the sample application across VMs -----------------------------------------------
SOCK_DIR=/run/postgresql
PGDATA_VM=/var/lib/postgresql/shuttle-demo  # in db's overlay: neither the host nor web sees it

step "PostgreSQL in VM db (Debian's $(basename "$(dirname "$PG_BIN")"))" \
  "The probe server goes; the real server takes its socket path. initdb writes the cluster into" \
  "db's overlay root; postgres runs as user postgres, in the foreground under shuttlectl run," \
  "with its socket in db's private $SOCK_DIR. psql inside db reaches it (intra-vm, allowed)."
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
"$CTL" run --vm db -- sh -c "rm -f $SOCK_DIR/.s.PGSQL.5432 && chown postgres:postgres $SOCK_DIR"
# The command line, and of initdb's chatter only its verdict.
ctl run --vm db --user postgres -- "$PG_BIN/initdb" -D "$PGDATA_VM" -U postgres --auth=trust \
  --no-sync -E UTF8 --locale=C.UTF-8 | sed -n '1p;/^Success/p'
printf '%s$ shuttlectl run --vm db --user postgres -- postgres -D %s -c listen_addresses= &%s\n' \
  "$BOLD" "$PGDATA_VM" "$PLAIN"
"$CTL" run --vm db --user postgres -- "$PG_BIN/postgres" -D "$PGDATA_VM" -c listen_addresses= \
  -c unix_socket_directories="$SOCK_DIR" -c cluster_name=demo-db -c fsync=off \
  >"$WORK/postgres.log" 2>&1 </dev/null &
PG_PID=$!
for _ in $(seq 1 300); do  # 30 s at most
  "$CTL" run --vm db -- "$PG_BIN/pg_isready" -q -h "$SOCK_DIR" && break
  kill -0 "$PG_PID" 2>/dev/null ||
    { cat "$WORK/postgres.log" >&2; echo "demo: postgres exited" >&2; exit 1; }
  sleep 0.1
done
ctl run --vm db -- "$PG_BIN/psql" -X -h "$SOCK_DIR" -U postgres -c 'select version()'

step "A policy for psql: web may reach db's PostgreSQL, other may not" \
  "Rule web-psql-to-postgres names the program, so it beats webapp's others-no-postgres (VM" \
  "only); explain shows it before anything runs. The controller pushes the new fleet version and" \
  "the agent enforces it at once: no VM, server or agent restarts."
cat >"$WORK/demo-psql.yaml" <<POLICY
name: demo-psql
description: "psql in VM web may use PostgreSQL in VM db; VM other may not"
rules:
  - name: web-psql-to-postgres
    subject: { vm: web, program: $PG_BIN/psql }
    kind: unix-connect
    object: { vm: db, path: $SOCK_DIR/.s.PGSQL.5432 }
    action: allow
  - name: other-no-postgres
    subject: { vm: other }
    kind: unix-connect
    object: { vm: db, path: $SOCK_DIR/* }
    action: deny
POLICY
sed 's/^/   | /' "$WORK/demo-psql.yaml"
ctl policy apply -f "$WORK/demo-psql.yaml" | tee "$WORK/apply.out"
FLEET_VERSION=$(sed -n 's/.*fleet version \([0-9]*\)$/\1/p' "$WORK/apply.out")
[ -n "$FLEET_VERSION" ] || { echo "demo: policy apply printed no fleet version" >&2; exit 1; }
v=""
for _ in $(seq 1 300); do  # 30 s at most
  v=$(curl -s "127.0.0.1:$AGENT_METRICS/metrics" | sed -n 's/^shuttle_agent_policy_version //p')
  [ "${v%.*}" = "$FLEET_VERSION" ] && break
  sleep 0.1
done
[ "${v%.*}" = "$FLEET_VERSION" ] ||
  { echo "demo: the agent did not take version $FLEET_VERSION in 30 s" >&2; exit 1; }
echo "(the agent enforces fleet version $FLEET_VERSION)"
ctl explain --vm web --program "$PG_BIN/psql" --kind unix-connect \
  --object "$SOCK_DIR/.s.PGSQL.5432" --object-vm db

# The counters this part moves, before it runs.
agent_counters() {
  curl -s "127.0.0.1:$AGENT_METRICS/metrics" |
    grep -E '^shuttle_agent_(decisions_total|brokered_total|audit_uploaded_total)[{ ]' || true
}
agent_counters >"$WORK/metrics.before"

step "psql in VM web: answered by PostgreSQL in VM db" \
  "psql connects to its default socket path. The agent intercepts the connect, decides" \
  "cross-vm allow, opens the socket inside db as the caller and hands psql the connected" \
  "descriptor: from then on the bytes flow through the kernel, no process copies them."
if ! ctl run --vm web -- "$PG_BIN/psql" -X -h "$SOCK_DIR" -U postgres -c \
  "select 'hello from ' || current_setting('cluster_name') || ' in VM db' as answer"; then
  echo "demo: psql in web was not answered (is brokering of allowed cross-VM connects built?)" >&2
  exit 1
fi

step "psql in VM other: refused" \
  "Rule other-no-postgres decides cross-vm deny; the connect fails with EACCES and psql says" \
  "so. Nothing reached the server."
set +e
ctl run --vm other -- "$PG_BIN/psql" -X -h "$SOCK_DIR" -U postgres -c 'select 1' 2>&1
rc=$?
set -e
echo "(psql exited $rc: refused, as the policy says)"

step "The audit log" \
  "The agent spooled every cross-VM decision on disk and uploaded it; the controller stores it" \
  "and shuttlectl audit queries it (also --follow, --vm, --host, --since, --verdict): the probe" \
  "denied in web, psql allowed from web, psql denied from other, each with its rule."
# audit_has VERDICT VM: the controller holds such a record from demo-host.
audit_has() {
  "$CTL" audit --host demo-host --verdict "$1" --vm "$2" -o json 2>/dev/null |
    grep -q "\"subjectVm\": *\"$2\""
}
# The upload is batched (up to ~200 ms) and retried: wait, bounded, until the records are stored.
for _ in $(seq 1 100); do
  audit_has deny web && audit_has allow web && audit_has deny other && break
  sleep 0.1
done
ctl audit --host demo-host

step "The agent's metrics" \
  "Every intercepted call is counted by kind, scope and verdict, every brokered crossing by" \
  "kind, scope and result. The counters that moved since psql ran from web and other:"
agent_counters >"$WORK/metrics.after"
awk 'NR == FNR { before[$1] = $2; next }
     { was = ($1 in before) ? before[$1] : 0 }
     $2 != was { printf "   %s  %s -> %s\n", $1, was, $2 }' \
  "$WORK/metrics.before" "$WORK/metrics.after"

step "Remove the VMs and stop the agent" "vm rm leaves no mount, process or namespace behind."
kill -TERM "$PG_PID" 2>/dev/null || true
wait "$PG_PID" 2>/dev/null || true
PG_PID=""
echo "postgres in db stopped"
ctl vm rm web
ctl vm rm db
ctl vm rm other
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true
AGENT_PID=""
echo "agent stopped"

step "Stop the controller" "SIGTERM: the controller drains in-flight calls and exits 0."
kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
PID=""
echo "controller exited with status $rc"
rm -rf "$WORK"
echo "removed $WORK"
[ "$rc" -eq 0 ] || { echo "demo: the controller did not stop cleanly" >&2; exit 1; }
printf '\n%sDemo complete.%s Next: make test, docs/operator-guide.md, shuttlectl --help\n' \
  "$BOLD" "$PLAIN"
