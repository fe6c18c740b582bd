#!/usr/bin/env bash
# Install the external stores the MLflow conformance test runs against, for real:
#   PostgreSQL      Debian's `postgresql` package (initdb, pg_ctl, postgres)
#   versitygw       the Versity S3 gateway (Apache-2.0), an S3-compatible object store
#                   server, built from the Go module proxy with its POSIX backend
# The test (tests/conformance/test_mlflow.py) starts both as throwaway servers on loopback.
# Idempotent: PostgreSQL is installed only when its binaries are missing; versitygw is built
# once into a per-version cache directory and reused.
#
# Usage: hack/conformance-stores.sh [--print-pg-bin-dir] [--print-versitygw] [--check] [-h]
#   (no option)         install what is missing; prints the PostgreSQL bin dir and the
#                       versitygw binary, one a line
#   --print-pg-bin-dir  print PostgreSQL's bin dir (empty if not installed) and exit
#   --print-versitygw   print the versitygw binary's path (built or not) and exit
#   --check             exit 0 if both are installed, else 1
#
# Environment:
#   AISTACK_CONFORMANCE_CACHE  cache root (default $HOME/.cache/aistack-conformance)
#   GO                         go command to use (default: go)
set -euo pipefail

VERSITYGW_VERSION=v1.8.0

GO=${GO:-go}
CACHE_ROOT=${AISTACK_CONFORMANCE_CACHE:-$HOME/.cache/aistack-conformance}
VERSITYGW_BIN="$CACHE_ROOT/tools/versitygw-$VERSITYGW_VERSION/versitygw"

log() { printf '[conformance-stores] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# The newest PostgreSQL server's bin dir (Debian keeps them under /usr/lib/postgresql/<v>).
pg_bin_dir() {
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null \
    | sort -V | tail -n 1)
  if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then echo "$dir"; fi
}

install_postgres() {
  if [[ -n "$(pg_bin_dir)" ]]; then return; fi
  [[ $(id -u) -eq 0 ]] || die "PostgreSQL is missing: run as root, or apt-get install postgresql"
  log "installing PostgreSQL (apt-get install postgresql)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    postgresql >&2; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
  fi
  # The package starts a cluster of its own; the suite starts throwaway ones instead.
  if command -v pg_ctlcluster >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
    done
  fi
  [[ -n "$(pg_bin_dir)" ]] || die "postgresql installed, but no initdb/pg_ctl found"
}

build_versitygw() {
  if [[ -x "$VERSITYGW_BIN" ]]; then return; fi
  log "building versitygw $VERSITYGW_VERSION (Go module proxy; a few minutes, once)"
  local dir
  dir=$(dirname "$VERSITYGW_BIN")
  mkdir -p "$dir"
  local started=$SECONDS
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$dir.partial" \
    "$GO" install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  mv "$dir.partial/versitygw" "$VERSITYGW_BIN"
  rmdir "$dir.partial" 2>/dev/null || true
  log "versitygw built in $((SECONDS - started)) s"
}

MODE=install
while [[ $# -gt 0 ]]; do
  case "$1" in
    --print-pg-bin-dir) MODE=print-pg ;;
    --print-versitygw) MODE=print-gw ;;
    --check) MODE=check ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

case "$MODE" in
  print-pg) pg_bin_dir ;;
  print-gw) echo "$VERSITYGW_BIN" ;;
  check) [[ -n "$(pg_bin_dir)" && -x "$VERSITYGW_BIN" ]] ;;
  install)
    install_postgres
    build_versitygw
    pg_bin_dir
    echo "$VERSITYGW_BIN"
    ;;
esac
