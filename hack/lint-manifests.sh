#!/usr/bin/env bash
# Lint the manifests the project ships (`make lint-manifests`): every example stack's render
# (`aistack render`) and the chart's main variants (`helm template`), with kube-score and
# checkov. What is linted and every accepted finding (with its reason) are in
# hack/manifest-lint.yaml; any other finding is printed and fails the run.
# See docs/manifest-lint.md.
#
# Usage: hack/lint-manifests.sh [-v] [--keep DIR]
#   -v          also list the accepted findings
#   --keep DIR  write the renders to DIR and keep them
#
# Builds the linters on first use (hack/build-tools.sh --lint); helm comes from
# hack/build-tools.sh (`make cluster-tools`).
#
# Environment:
#   PYTHON   python with the operator installed (default: .venv/bin/python)
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HACK_DIR")
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

log() { printf '[lint-manifests] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac

PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || die "$PY not found: run \`make venv\` (or set PYTHON)"

HELM="$("$HACK_DIR/build-tools.sh" --print-bin-dir)/helm"
[[ -x $HELM ]] || die "helm is not built: run \`make cluster-tools\`"
LINT_BIN=$("$HACK_DIR/build-tools.sh" --lint | tail -n 1)

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
cd "$ROOT"
exec "$PY" "$HACK_DIR/lint_manifests.py" --helm "$HELM" \
  --kube-score "$LINT_BIN/kube-score" --checkov "$LINT_BIN/checkov" \
  --kube-version "v1.$minor" "$@"
