#!/usr/bin/env bash
# What `make gitops` needs besides Argo CD itself (hack/build-tools.sh --argocd): Redis,
# which Argo CD's controller and repo-server cache in (Debian's redis-server; the tests
# start their own on a free loopback port), and git with its daemon (the tests' git
# server). Installs what is missing with apt-get (as root), idempotently: a second run
# takes a moment.
#
# Usage: hack/gitops-deps.sh [-h]
set -euo pipefail

log() { printf '[gitops-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

case ${1:-} in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; die "unknown argument: $1" ;;
esac

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v git >/dev/null || missing+=(git)
# git daemon ships with git on Debian; check it runs.
if command -v git >/dev/null && ! git daemon --help >/dev/null 2>&1; then missing+=(git-daemon-run); fi

if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: run as root, or apt-get install ${missing[*]}"
  log "installing ${missing[*]} (apt-get)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
  # The package may start a server of its own on 6379; the tests start theirs.
  if command -v service >/dev/null; then service redis-server stop >/dev/null 2>&1 || true; fi
fi
command -v redis-server >/dev/null || die "redis-server still missing after apt-get"
log "ready: $(redis-server --version | cut -d' ' -f1-3), $(git --version)"
