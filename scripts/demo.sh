#!/usr/bin/env bash
# The `make demo` walk-through: starts a controller on a temporary data dir (fresh CA,
# kernel-chosen ports), applies the example policy, lists it, explains one allowed and one
# denied interaction, validates a broken file; then enrolls an agent with a join token, shows
# the policy pushed to it, creates VMs web and db, and shows a call that the policy denies and
# one it allows, with the agent's metrics; then removes the VMs, stops both daemons and removes
# everything it made. Needs root (the agent makes namespaces). Safe to run again.
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
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (the agent creates namespaces)" >&2; exit 1; }

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    for vm in web db; do
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

step "Create VMs web and db on the agent" \
  "Each VM: its own mount, IPC, network, UTS and PID namespaces, an overlay root whose writes" \
  "stay in the VM, private /tmp, /run, /dev. The agent tells the controller, which pushes the" \
  "rules for these VMs (same fleet version, new content) and the agent ACKs."
ctl vm create web
ctl vm create db
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
  "decides; the agent fails the connect with EACCES. (Brokering an allowed web -> db connect" \
  "into VM db, as php-to-postgres-socket allows, is the next step of the project.)"
set +e
ctl run --vm web -- "$PROBE" client unix /run/postgresql/.s.PGSQL.5432
rc=$?
set -e
echo "(the client exited $rc: denied, as the policy says)"

step "The audit log" \
  "The agent spooled the cross-VM decision on disk and uploaded it; the controller stores it and" \
  "shuttlectl audit queries it (also --follow, --vm, --host, --since, --verdict)."
# The upload is batched (up to ~200 ms) and retried: wait, bounded, until the record is stored.
for _ in $(seq 1 100); do
  "$CTL" audit --host demo-host --verdict deny -o json 2>/dev/null | grep -q '"subjectVm": *"web"' && break
  sleep 0.1
done
ctl audit --host demo-host

step "The agent's metrics" "Every intercepted call is counted by kind, scope and verdict."
curl -s "127.0.0.1:$AGENT_METRICS/metrics" | grep -E '^shuttle_agent_(decisions_total|policy_version|audit_uploaded_total)'

step "Remove the VMs and stop the agent" "vm rm leaves no mount, process or namespace behind."
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
ctl vm rm web
ctl vm rm db
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
