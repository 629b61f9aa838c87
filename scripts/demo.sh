#!/usr/bin/env bash
# The `make demo` walk-through of the policy plane: starts a controller on a temporary data dir
# (fresh CA, kernel-chosen ports), applies the example policy, lists it, explains one allowed
# and one denied interaction, validates a broken file, then stops the controller and removes
# everything it made. Safe to run again; leaves nothing behind.
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
CTL="$BUILD_DIR/cli/shuttlectl"
EXAMPLES=deploy/examples  # relative, so that file names in the output read as in the repo
for bin in "$CONTROLLER" "$CTL"; do
  [ -x "$bin" ] || { echo "demo: $bin is not built (run: make build)" >&2; exit 1; }
done

cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shuttle-demo.XXXXXX")
DATA="$WORK/data"
PID=""

cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
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
