#!/usr/bin/env bash
# Installs every Debian 12 package Shuttle needs to build, test and demo. Safe to run again:
# when everything is already installed it changes nothing and does not touch the network.
set -euo pipefail
PACKAGES=(
  cmake make g++ pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libyaml-cpp-dev libsqlite3-dev sqlite3 libssl-dev openssl
  libgtest-dev libgmock-dev libbenchmark-dev
  libseccomp-dev libpq-dev iproute2 procps curl
  postgresql socat  # the sample-application e2e test, the demo and the cross-VM IPC benchmark
  prometheus python3-yaml  # the deploy/ e2e test (it runs its own Prometheus, not the service)
  clang-format clang-tidy
)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
