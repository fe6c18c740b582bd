#!/usr/bin/env bash
# Print the directory holding the Prometheus Operator's CRDs (one YAML file per CRD), as
# published in its Go module (github.com/prometheus-operator/prometheus-operator, folder
# example/prometheus-operator-crd) at PROMETHEUS_OPERATOR_VERSION (hack/versions.env).
#
# The module is downloaded through the Go module proxy into Go's module cache (read-only,
# checksummed by the Go checksum database); a second run downloads nothing. Only the CRD
# files are used, nothing is built. The e2e suite installs PodMonitor, ServiceMonitor and
# PrometheusRule from there.
#
# Environment: GO (go command, default go).
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
GO=${GO:-go}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

module="github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}"
# `go mod download` needs no go.mod when given module@version; run it outside any module.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
dir=$(cd "$workdir" && "$GO" mod download -json "$module" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
crds="$dir/example/prometheus-operator-crd"
if [[ -z "$dir" || ! -f "$crds/monitoring.coreos.com_podmonitors.yaml" ]]; then
  echo "prometheus-crds: no CRDs in $module (go mod download failed?)" >&2
  exit 1
fi
echo "$crds"
