#!/usr/bin/env bash
# Build the local e2e toolchain from source via the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#   kwok, kwokctl                                                     (sigs.k8s.io/kwok)
#   helm                                                              (helm.sh/helm/v3)
# and, with --lint, the manifest linters that hack/lint-manifests.sh runs:
#   kube-score                                                        (github.com/zegl/kube-score)
#   checkov                  (PyPI, in a virtualenv of its own; kube-linter's module is not
#                             served by the Go module proxy, checkov covers its checks)
# and, with --promtool, Prometheus' rule checker that `make promtool-rules` runs:
#   promtool                                                          (github.com/prometheus/prometheus)
# and, with --argocd, the Argo CD that `make gitops` runs (through the wrapper module
# hack/argocdbuild; Argo CD's go.mod needs Go 1.27, which the go command takes from the
# module proxy as toolchain ${ARGOCD_GOTOOLCHAIN}):
#   argocd, and argocd-application-controller and argocd-repo-server  (github.com/argoproj/argo-cd/v3)
#   linked to it (Argo CD's one binary acts by the name it is called by), and the module's
#   git-verify-wrapper.sh, which the repo-server runs
# and, with --lws, the LeaderWorkerSet controller that hack/local-cluster.sh runs beside
# the control plane (through the wrapper module hack/lwsbuild):
#   lws-controller-manager (the module's cmd/ package)                (sigs.k8s.io/lws)
#   and, from the same module, its CRD (config/crd/bases) and its webhook configuration
#   (config/webhook, a kustomization), copied beside bin/ into config/
# and, with --keda, the KEDA that `hack/local-cluster.sh up --keda` runs beside the control
# plane (through the wrapper module hack/kedabuild; KEDA's go.mod needs Go 1.27.4, which the
# go command takes from the module proxy as toolchain ${KEDA_GOTOOLCHAIN}):
#   keda-operator (cmd/operator) and keda-metrics-apiserver (cmd/adapter)
#                                                                     (github.com/kedacore/keda/v2)
#   and, from the same module, its CRDs (config/crd/bases), copied beside bin/ into config/
# and, with --prometheus, the Prometheus server that tests/e2e/keda_infra.py runs:
#   prometheus                                                        (github.com/prometheus/prometheus)
# and, with --ollama, the Ollama (the CPU model engine) that the conformance suite runs:
#   ollama, with its CPU backend (cgo: needs a C/C++ compiler)        (github.com/ollama/ollama)
#   and the headers its module zip leaves out (Go module zips drop vendor/ directories, so
#   llama/llama.cpp/vendor is missing): nlohmann/json, stb_image.h and miniaudio.h, each from
#   a PyPI distribution pinned with its checksum (see OLLAMA_HEADERS); kept beside bin/ in
#   include/
# Versions are pinned in hack/versions.env (the linters' below, unless versions.env
# sets them). Nothing is downloaded at run time other than Go modules (and checkov's
# PyPI packages, and the PyPI files Ollama's headers come from).
#
# Binaries go to a per-version cache directory:
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/k8s-<v>_etcd-<v>_kwok-<v>_helm-<v>/bin
# The linters have a cache directory of their own, so bumping one never rebuilds the
# control plane:
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/lint_kube-score-<v>_checkov-<v>/bin
# and so has promtool:
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/promtool-<v>/bin
# and so has Argo CD:
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/argocd-<v>/bin
# and so has LWS (its manifests in .../lws-<v>/config):
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/lws-<v>/bin
# and so has KEDA (its CRDs in .../keda-<v>/config):
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/keda-<v>/bin
# and so has the Prometheus server:
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/prometheus-<v>/bin
# and so has Ollama (the headers it needs in .../ollama-<v>/include):
#   ${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}/ollama-<v>/bin
# A tool is rebuilt only when its binary is missing or its --version output
# does not match the pin, so a second run takes seconds.
#
# Usage: hack/build-tools.sh [--lint|--promtool|--argocd|--lws|--keda|--prometheus|--ollama]
#                            [--print-bin-dir] [--check] [--force]
#                            [--update-modules] [-h]
#   (no option)        build what is missing; the last line of stdout is the bin dir
#   --lint             act on the manifest linters (kube-score, checkov) instead of the
#                      control plane: build them, or with --print-bin-dir / --check
#   --promtool         act on promtool instead of the control plane: build it (about 2
#                      minutes on 2 CPUs with cold Go caches, including the module
#                      downloads), or with --print-bin-dir / --check
#   --argocd           act on Argo CD instead of the control plane: build it (5-15 minutes
#                      on 2 CPUs with cold Go caches), or with --print-bin-dir / --check
#   --lws              act on LeaderWorkerSet instead of the control plane: build it (about
#                      2 minutes on 2 CPUs with cold Go caches), or with --print-bin-dir /
#                      --check; with --update-modules, regenerate hack/lwsbuild
#   --keda             act on KEDA instead of the control plane: build it (about 8 minutes
#                      on 2 CPUs with cold Go caches, including 2.1 GiB of module downloads
#                      and the Go 1.27.4 toolchain), or with --print-bin-dir / --check; with
#                      --update-modules, regenerate hack/kedabuild
#   --prometheus       act on the Prometheus server instead of the control plane: build it
#                      (about 3 minutes on 2 CPUs with cold Go caches, including the module
#                      downloads), or with --print-bin-dir / --check
#   --ollama           act on Ollama instead of the control plane: build it (about 6 minutes
#                      on 2 CPUs with cold Go caches, most of it compiling ggml's and
#                      llama.cpp's C/C++ through cgo; needs gcc/g++ and pip, see
#                      OLLAMA_HEADERS), or with --print-bin-dir / --check
#   --print-bin-dir    print the bin dir and exit (builds nothing)
#   --check            exit 0 if every tool is present at the pinned version, else 1
#   --force            rebuild everything
#   --update-modules   regenerate hack/k8sbuild and hack/etcdbuild go.mod/go.sum
#                      (with --lws: hack/lwsbuild; with --keda: hack/kedabuild) from the
#                      pinned versions (needs the module proxy), then build what is missing
#                      (binaries are keyed by version)
#
# Environment:
#   AISTACK_TOOLS_CACHE   cache root (default $HOME/.cache/aistack-operator/tools)
#   AISTACK_BUILD_JOBS    go build -p value (default: number of CPUs)
#   GO                    go command to use (default: go)
#   PYTHON                python for checkov's virtualenv (default: python3)
# Go's module and build caches stay in their default locations so they are reused.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
# Manifest linters (--lint). Kept here until versions.env names them; it wins if it does.
# kube-score: newest release the module proxy serves. checkov: newest on PyPI.
: "${KUBE_SCORE_VERSION:=v1.20.0}"
: "${CHECKOV_VERSION:=3.3.30}"

GO=${GO:-go}
JOBS=${AISTACK_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
CACHE_ROOT=${AISTACK_TOOLS_CACHE:-$HOME/.cache/aistack-operator/tools}
KEY="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN_DIR="$CACHE_ROOT/$KEY/bin"

KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
PYTHON=${PYTHON:-python3}

# Never let the go command fetch a toolchain; build static binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS=-buildvcs=false

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

FORCE=0 UPDATE=0 MODE=build LINT=0 PROMTOOL=0 ARGOCD=0 LWS=0 KEDA=0 PROMETHEUS=0 OLLAMA=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --lint) LINT=1 ;;
    --promtool) PROMTOOL=1 ;;
    --argocd) ARGOCD=1 ;;
    --lws) LWS=1 ;;
    --keda) KEDA=1 ;;
    --prometheus) PROMETHEUS=1 ;;
    --ollama) OLLAMA=1 ;;
    --print-bin-dir) MODE=print ;;
    --check) MODE=check ;;
    --force) FORCE=1 ;;
    --update-modules) UPDATE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

if (( LINT + PROMTOOL + ARGOCD + LWS + KEDA + PROMETHEUS + OLLAMA > 1 )); then
  die "--lint, --promtool, --argocd, --lws, --keda, --prometheus and --ollama are separate tool sets: give one"
fi
if [[ $LINT == 1 ]]; then
  [[ $UPDATE == 0 ]] || die "--update-modules is for the control plane; --lint has no wrapper modules"
  KEY="lint_kube-score-${KUBE_SCORE_VERSION}_checkov-${CHECKOV_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $PROMTOOL == 1 ]]; then
  [[ $UPDATE == 0 ]] || die "--update-modules is for the control plane; --promtool has no wrapper module"
  KEY="promtool-${PROMETHEUS_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $ARGOCD == 1 ]]; then
  [[ $UPDATE == 0 ]] || die "--update-modules is for the control plane; hack/argocdbuild is kept by hand (see its go.mod)"
  KEY="argocd-${ARGOCD_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $LWS == 1 ]]; then
  KEY="lws-${LWS_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $KEDA == 1 ]]; then
  KEY="keda-${KEDA_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $PROMETHEUS == 1 ]]; then
  [[ $UPDATE == 0 ]] || die "--update-modules is for the control plane; --prometheus has no wrapper module"
  KEY="prometheus-${PROMETHEUS_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
elif [[ $OLLAMA == 1 ]]; then
  [[ $UPDATE == 0 ]] || die "--update-modules is for the control plane; --ollama has no wrapper module"
  KEY="ollama-${OLLAMA_VERSION}"
  BIN_DIR="$CACHE_ROOT/$KEY/bin"
fi
# LWS's manifests from its module (config/crd/bases, config/webhook), beside bin/.
LWS_CONFIG_DIR="$CACHE_ROOT/$KEY/config"
LWS_CRD=leaderworkerset.x-k8s.io_leaderworkersets.yaml
# KEDA's CRDs from its module (config/crd/bases), beside bin/; the ScaledObject's is one.
KEDA_CONFIG_DIR="$CACHE_ROOT/$KEY/config"
KEDA_CRD=keda.sh_scaledobjects.yaml

if [[ $MODE == print ]]; then
  echo "$BIN_DIR"
  exit 0
fi

# Prometheus' Go module versions encode the release: v0.316.0 is Prometheus 3.16.0
# (v0.<major*100+minor>.<patch>); promtool reports the release.
prometheus_release() {
  local v=${PROMETHEUS_VERSION#v0.} n
  n=${v%%.*}
  echo "$((n / 100)).$((n % 100)).${v#*.}"
}

# --- version checks ---------------------------------------------------------
# Prints nothing; returns 0 when $BIN_DIR/$1 exists and reports the pinned version.
tool_ok() {
  local name=$1 bin="$BIN_DIR/$1" out
  if [[ $name == lws-manifests ]]; then
    # Copied with the binary, from the same module version (see build_lws).
    [[ -s $LWS_CONFIG_DIR/crd/bases/$LWS_CRD && -s $LWS_CONFIG_DIR/webhook/kustomization.yaml \
      && $(cat "$LWS_CONFIG_DIR/.version" 2>/dev/null) == "$LWS_VERSION" ]]
    return
  fi
  if [[ $name == keda-manifests ]]; then
    # Copied with the binaries, from the same module version (see install_keda_manifests).
    [[ -s $KEDA_CONFIG_DIR/crd/bases/$KEDA_CRD \
      && $(cat "$KEDA_CONFIG_DIR/.version" 2>/dev/null) == "$KEDA_VERSION" ]]
    return
  fi
  [[ -x $bin ]] || return 1
  case $name in
    kube-apiserver|kube-controller-manager|kube-scheduler)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == "Kubernetes ${KUBE_VERSION}" ]] ;;
    kubectl)
      out=$("$bin" version --client 2>&1) || return 1
      [[ $out == *"Client Version: ${KUBE_VERSION}"* ]] ;;
    etcd)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == *"etcd Version: ${ETCD_VERSION#v}"* ]] ;;
    kwok|kwokctl)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == *"${KWOK_VERSION#v}"* ]] ;;
    helm)
      out=$("$bin" version --short 2>&1) || return 1
      [[ $out == "${HELM_VERSION}"* ]] ;;
    kube-score)
      out=$("$bin" version 2>&1) || return 1
      [[ $out == "kube-score version: ${KUBE_SCORE_VERSION#v},"* ]] ;;
    argocd)
      out=$("$bin" version --client --short 2>&1) || return 1
      [[ $out == "argocd: ${ARGOCD_VERSION}+"* ]] ;;
    argocd-application-controller|argocd-repo-server)
      [[ $(readlink "$bin") == argocd ]] ;;
    lws-controller-manager)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == "Version: ${LWS_VERSION}"$'\n'* ]] ;;
    git-verify-wrapper.sh)
      [[ -x $bin ]] ;;
    keda-operator|keda-metrics-apiserver)
      # Neither has a --version flag (both log "KEDA Version: ${KEDA_VERSION#v}" once they
      # reach a cluster); the build information Go writes into every binary names the
      # module version its main package came from (-trimpath leaves the ldflags out of it).
      out=$("$GO" version -m "$bin" 2>&1) || return 1
      [[ $out == *$'\tmod\tgithub.com/kedacore/keda/v2\t'"${KEDA_VERSION}"$'\t'* ]] ;;
    ollama)
      # `ollama --version` asks the server at OLLAMA_HOST for its version first; with none
      # there it prints "Warning: could not connect to a running Ollama instance" and
      # "Warning: client version is <v>", exit 0. The discard port: nothing serves there, and
      # a server that did would only add an "ollama version is <its v>" line.
      out=$(OLLAMA_HOST=127.0.0.1:9 "$bin" --version 2>&1) || return 1
      grep -qxF "Warning: client version is ${OLLAMA_VERSION#v}" <<<"$out" \
        || grep -qxF "ollama version is ${OLLAMA_VERSION#v}" <<<"$out" ;;
    prometheus)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == "prometheus, version $(prometheus_release) "* ]] ;;
    promtool)
      out=$("$bin" --version 2>&1) || return 1
      [[ $out == "promtool, version $(prometheus_release) "* ]] ;;
    checkov)
      # `checkov --version` takes seconds (it imports everything); the installed
      # distribution's metadata says the same at once.
      out=$("$(dirname "$(readlink -f "$bin")")/python" -c \
        'import importlib.metadata as m; print(m.version("checkov"))' 2>&1) || return 1
      [[ $out == "${CHECKOV_VERSION}" ]] ;;
    *) return 1 ;;
  esac
}

if [[ $LINT == 1 ]]; then
  ALL_TOOLS=(kube-score checkov)
elif [[ $PROMTOOL == 1 ]]; then
  ALL_TOOLS=(promtool)
elif [[ $ARGOCD == 1 ]]; then
  ALL_TOOLS=(argocd argocd-application-controller argocd-repo-server git-verify-wrapper.sh)
elif [[ $LWS == 1 ]]; then
  ALL_TOOLS=(lws-controller-manager lws-manifests)
elif [[ $KEDA == 1 ]]; then
  ALL_TOOLS=(keda-operator keda-metrics-apiserver keda-manifests)
elif [[ $PROMETHEUS == 1 ]]; then
  ALL_TOOLS=(prometheus)
elif [[ $OLLAMA == 1 ]]; then
  ALL_TOOLS=(ollama)
else
  ALL_TOOLS=("${KUBE_BINS[@]}" etcd kwok kwokctl helm)
fi

if [[ $MODE == check ]]; then
  for t in "${ALL_TOOLS[@]}"; do tool_ok "$t" || { log "missing or wrong version: $t"; exit 1; }; done
  echo "$BIN_DIR"
  exit 0
fi

command -v "$GO" >/dev/null || die "go not found (need Go >= 1.26)"
if [[ $LINT == 1 ]]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needed for checkov's virtualenv)"
fi

# --- wrapper modules ---------------------------------------------------------
update_k8s_module() {
  local dir="$HACK_DIR/k8sbuild" kv=${KUBE_VERSION#v} gomod m
  log "regenerating $dir/go.mod for k8s.io/kubernetes ${KUBE_VERSION}"
  printf 'module aistack.local/k8sbuild\n\ngo 1.26.0\n' > "$dir/go.mod"
  : > "$dir/go.sum"
  # k8s.io/kubernetes requires every staging repo at v0.0.0 and replaces it
  # with ./staging/...; a wrapper module must replace each with its published
  # v0.<minor>.<patch>. The list comes from the go.mod the proxy serves.
  gomod=$(cd "$dir" && "$GO" mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" \
    | python3 -c 'import sys,json; print(json.load(sys.stdin)["GoMod"])')
  for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*|\1|p' "$gomod"); do
    (cd "$dir" && "$GO" mod edit "-replace=$m=$m@v0.${kv#1.}")
  done
  (cd "$dir" && GOFLAGS=-mod=mod "$GO" get -tool \
    "k8s.io/kubernetes/cmd/kube-apiserver@${KUBE_VERSION}" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@${KUBE_VERSION}" \
    "k8s.io/kubernetes/cmd/kube-scheduler@${KUBE_VERSION}" \
    "k8s.io/kubernetes/cmd/kubectl@${KUBE_VERSION}")
}

update_etcd_module() {
  local dir="$HACK_DIR/etcdbuild"
  log "regenerating $dir/go.mod for go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
  printf 'module aistack.local/etcdbuild\n\ngo 1.26.0\n' > "$dir/go.mod"
  : > "$dir/go.sum"
  # server/go.mod has replace lines, so `go install ...@version` is refused;
  # as a dependency of this module its replaces are ignored.
  (cd "$dir" && GOFLAGS=-mod=mod "$GO" get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
}

update_lws_module() {
  local dir="$HACK_DIR/lwsbuild"
  log "regenerating $dir/go.mod for sigs.k8s.io/lws ${LWS_VERSION}"
  mkdir -p "$dir"
  printf 'module aistack.local/lwsbuild\n\ngo 1.26.0\n' > "$dir/go.mod"
  : > "$dir/go.sum"
  # LWS's go.mod has no replace lines, but `go install sigs.k8s.io/lws/cmd@version` would
  # name the binary "cmd" and also reads the module's version list (for a deprecation
  # notice); as a dependency of this module only the pinned version is fetched, and every
  # dependency is the one LWS's own go.mod selects, checked against go.sum.
  (cd "$dir" && GOFLAGS=-mod=mod "$GO" get -tool "sigs.k8s.io/lws/cmd@${LWS_VERSION}")
}

update_keda_module() {
  local dir="$HACK_DIR/kedabuild" gomod edits
  log "regenerating $dir/go.mod for github.com/kedacore/keda/v2 ${KEDA_VERSION}"
  # KEDA's go.mod says go 1.27.4: the go command takes that toolchain from the module proxy.
  export GOTOOLCHAIN=$KEDA_GOTOOLCHAIN
  mkdir -p "$dir"
  printf 'module aistack.local/kedabuild\n\ngo %s\n' "${KEDA_GOTOOLCHAIN#go}" > "$dir/go.mod"
  : > "$dir/go.sum"
  # KEDA's go.mod has replace (and exclude) lines, so `go install ...@version` is refused,
  # and as a dependency of this module they would be ignored: copied here, they apply, and
  # every other dependency is the one KEDA's go.mod selects, checked against go.sum. The
  # lines come from the go.mod the proxy serves, read by `go mod edit -json`.
  gomod=$(cd "$dir" && "$GO" mod download -json "github.com/kedacore/keda/v2@${KEDA_VERSION}" \
    | python3 -c 'import sys,json; print(json.load(sys.stdin)["GoMod"])')
  mapfile -t edits < <("$GO" mod edit -json "$gomod" | python3 -c '
import json, sys
d = json.load(sys.stdin)
at = lambda m: m["Path"] + ("@" + m["Version"] if m.get("Version") else "")
for r in d.get("Replace") or []:
    print("-replace=" + at(r["Old"]) + "=" + at(r["New"]))
for e in d.get("Exclude") or []:
    print("-exclude=" + at(e))')
  if (( ${#edits[@]} )); then (cd "$dir" && "$GO" mod edit "${edits[@]}"); fi
  (cd "$dir" && GOFLAGS=-mod=mod "$GO" get -tool \
    "github.com/kedacore/keda/v2/cmd/operator@${KEDA_VERSION}" \
    "github.com/kedacore/keda/v2/cmd/adapter@${KEDA_VERSION}")
}

# module_version DIR MODULE -> version the wrapper module selects
module_version() { (cd "$1" && "$GO" list -mod=readonly -m -f '{{.Version}}' "$2"); }

if [[ $UPDATE == 1 && $LWS == 1 ]]; then
  update_lws_module
elif [[ $UPDATE == 1 && $KEDA == 1 ]]; then
  update_keda_module
elif [[ $UPDATE == 1 ]]; then
  update_k8s_module
  update_etcd_module
fi

# --- build -------------------------------------------------------------------
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.$KEY.lock"
if ! flock -n 9; then
  log "another build of $KEY is running; waiting for it"
  flock 9
fi
mkdir -p "$BIN_DIR"
STAGE=$(mktemp -d "$CACHE_ROOT/$KEY/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

need() {  # need TOOL... -> true if any must be (re)built
  local t
  [[ $FORCE == 1 ]] && return 0
  for t in "$@"; do tool_ok "$t" || return 0; done
  return 1
}

install_staged() {  # atomically move staged binaries into BIN_DIR
  local t
  for t in "$@"; do mv -f "$STAGE/$t" "$BIN_DIR/$t"; done
}

timed() {  # timed LABEL CMD... ; logs wall-clock seconds
  local label=$1 start=$SECONDS; shift
  "$@"
  log "$label built in $((SECONDS - start))s"
}

build_kube() {
  local dir="$HACK_DIR/k8sbuild" got minor date x p
  got=$(module_version "$dir" k8s.io/kubernetes) || die "hack/k8sbuild is broken; try --update-modules"
  [[ $got == "$KUBE_VERSION" ]] || die "hack/k8sbuild pins k8s.io/kubernetes $got, versions.env says $KUBE_VERSION; run hack/build-tools.sh --update-modules"
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  # Reproducible build date: the release time recorded by the module proxy.
  date=$(cd "$dir" && "$GO" list -mod=readonly -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
  date=${date:-1970-01-01T00:00:00Z}
  # Same keys as upstream's kube::version::ldflags. Without them the binaries
  # report v0.0.0-master, kubectl warns about skew and kwokctl treats them as
  # an unknown version.
  x=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $p.gitVersion=${KUBE_VERSION} -X $p.gitMajor=1 -X $p.gitMinor=${minor}"
    x+=" -X $p.gitTreeState=clean -X $p.gitCommit=unknown -X $p.buildDate=${date}"
  done
  log "building ${KUBE_BINS[*]} ${KUBE_VERSION} (go build -p $JOBS; 7-11 minutes on 2 CPUs when Go's build cache is cold)"
  # One invocation for all four: shared packages compile once, with full parallelism.
  (cd "$dir" && "$GO" build -mod=readonly -p "$JOBS" -trimpath -ldflags "-s -w$x" -o "$STAGE/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  install_staged "${KUBE_BINS[@]}"
}

build_etcd() {
  local dir="$HACK_DIR/etcdbuild" got
  got=$(module_version "$dir" go.etcd.io/etcd/server/v3) || die "hack/etcdbuild is broken; try --update-modules"
  [[ $got == "$ETCD_VERSION" ]] || die "hack/etcdbuild pins etcd $got, versions.env says $ETCD_VERSION; run hack/build-tools.sh --update-modules"
  log "building etcd ${ETCD_VERSION}"
  # -o is needed: the package's default binary name would be "v3".
  (cd "$dir" && "$GO" build -mod=readonly -p "$JOBS" -trimpath -ldflags "-s -w" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3)
  install_staged etcd
}

build_kwok() {
  log "building kwok, kwokctl ${KWOK_VERSION}"
  # kwok's go.mod has no replace lines, so go install pkg@version works.
  # KubeVersion only sets kwokctl's default; local-cluster.sh passes it explicitly too.
  GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" "sigs.k8s.io/kwok/cmd/kwokctl@${KWOK_VERSION}"
  install_staged kwok kwokctl
}

build_helm() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  log "building helm ${HELM_VERSION}"
  # ldflags as in helm's Makefile (k8s version used by lint/capabilities).
  GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  install_staged helm
}

build_kube_score() {
  log "building kube-score ${KUBE_SCORE_VERSION}"
  # Its go.mod has no replace lines, so go install pkg@version works.
  GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath \
    -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION#v}" \
    "github.com/zegl/kube-score/cmd/kube-score@${KUBE_SCORE_VERSION}"
  install_staged kube-score
}

build_promtool() {
  local release date
  release=$(prometheus_release)
  # Reproducible build date: the release time recorded by the module proxy.
  date=$("$GO" list -m -f '{{if .Time}}{{.Time.UTC.Format "20060102-15:04:05"}}{{end}}' \
    "github.com/prometheus/prometheus@${PROMETHEUS_VERSION}" 2>/dev/null) || date=""
  log "building promtool ${release} (github.com/prometheus/prometheus ${PROMETHEUS_VERSION}; about 2 minutes on 2 CPUs when Go's caches are cold)"
  # The module has no replace lines, so go install pkg@version works. ldflags as in
  # Prometheus' .promu.yml (the release, not the module version, is what --version says).
  # -tags remove_all_sd leaves out every service-discovery plugin (plugins/plugin_*.go):
  # we only check rules, metrics and rule tests, and without the cloud SDKs a cold build
  # takes about 2 minutes instead of over 10 (and downloads half the modules).
  GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${release} -X github.com/prometheus/common/version.Revision=unknown -X github.com/prometheus/common/version.Branch=unknown -X github.com/prometheus/common/version.BuildDate=${date:-unknown}" \
    "github.com/prometheus/prometheus/cmd/promtool@${PROMETHEUS_VERSION}"
  install_staged promtool
}

build_argocd() {
  local dir="$HACK_DIR/argocdbuild" got date p=github.com/argoproj/argo-cd/v3/common
  # Argo CD's go.mod says go 1.27.0: the go command fetches that toolchain from the
  # module proxy (as a module; about 10 seconds on a new machine).
  export GOTOOLCHAIN=$ARGOCD_GOTOOLCHAIN
  got=$(module_version "$dir" github.com/argoproj/argo-cd/v3) || die "hack/argocdbuild is broken"
  [[ $got == "$ARGOCD_VERSION" ]] || die "hack/argocdbuild pins Argo CD $got, versions.env says $ARGOCD_VERSION; edit hack/argocdbuild/go.mod"
  date=$(cd "$dir" && "$GO" list -mod=readonly -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' github.com/argoproj/argo-cd/v3)
  log "building argocd ${ARGOCD_VERSION} (toolchain ${ARGOCD_GOTOOLCHAIN}; 5-15 minutes on 2 CPUs when Go's caches are cold)"
  # ldflags as in Argo CD's Makefile, so `argocd version` reports the release.
  (cd "$dir" && "$GO" build -mod=readonly -p "$JOBS" -trimpath \
    -ldflags "-s -w -X $p.version=${ARGOCD_VERSION#v} -X $p.buildDate=${date:-1970-01-01T00:00:00Z} -X $p.gitCommit=unknown -X $p.gitTreeState=clean" \
    -o "$STAGE/argocd" github.com/argoproj/argo-cd/v3/cmd)
  install_staged argocd
  ln -sfn argocd "$BIN_DIR/argocd-application-controller"
  ln -sfn argocd "$BIN_DIR/argocd-repo-server"
  # The repo-server runs this script of Argo CD's for every revision (its image has it
  # on PATH); it comes with the module.
  install -m 0755 "$(cd "$dir" && "$GO" list -mod=readonly -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)/hack/git-verify-wrapper.sh" "$BIN_DIR/"
}

# lws_module FIELD: a field ("Dir", "Info") of what `go mod download -json` says about the
# sigs.k8s.io/lws that hack/lwsbuild selects (downloaded into Go's module cache first if
# needed).
lws_module() {
  (cd "$HACK_DIR/lwsbuild" && "$GO" mod download -json sigs.k8s.io/lws) |
    sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

build_lws() {
  local dir="$HACK_DIR/lwsbuild" got date commit p=sigs.k8s.io/lws/pkg/version
  got=$(module_version "$dir" sigs.k8s.io/lws) || die "hack/lwsbuild is broken; try hack/build-tools.sh --lws --update-modules"
  [[ $got == "$LWS_VERSION" ]] || die "hack/lwsbuild pins sigs.k8s.io/lws $got, versions.env says $LWS_VERSION; run hack/build-tools.sh --lws --update-modules"
  # Reproducible build date and the release's commit, as the module proxy records them.
  date=$(cd "$dir" && "$GO" list -mod=readonly -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' sigs.k8s.io/lws)
  commit=$(sed -n 's/.*"Hash":"\([0-9a-f]*\)".*/\1/p' "$(lws_module Info)" 2>/dev/null) || commit=""
  log "building lws-controller-manager ${LWS_VERSION} (sigs.k8s.io/lws/cmd; about 2 minutes on 2 CPUs when Go's caches are cold)"
  # ldflags as in LWS's Makefile, so --version reports the release.
  (cd "$dir" && "$GO" build -mod=readonly -p "$JOBS" -trimpath \
    -ldflags "-s -w -X $p.GitVersion=${LWS_VERSION} -X $p.GitCommit=${commit:-unknown} -X $p.BuildDate=${date:-1970-01-01T00:00:00Z}" \
    -o "$STAGE/lws-controller-manager" sigs.k8s.io/lws/cmd)
  install_staged lws-controller-manager
}

install_lws_manifests() {
  # The CRD and the webhook configuration (a kustomization: the webhooks, the patches that
  # limit the pod webhooks to LWS's pods, a Service) of the module the binary is built
  # from; hack/local-cluster.sh derives the configuration it applies from them.
  local src
  src=$(lws_module Dir)
  [[ -n $src && -f $src/config/crd/bases/$LWS_CRD && -f $src/config/webhook/kustomization.yaml ]] \
    || die "no config/crd/bases/$LWS_CRD or config/webhook in sigs.k8s.io/lws ${LWS_VERSION} (${src:-go mod download failed})"
  log "copying LWS's CRD and webhook configuration from $src"
  mkdir -p "$STAGE/config/crd/bases"
  cp "$src/config/crd/bases/$LWS_CRD" "$STAGE/config/crd/bases/"
  cp -R "$src/config/webhook" "$STAGE/config/"
  chmod -R u+w "$STAGE/config"  # the module cache is read-only
  echo "$LWS_VERSION" >"$STAGE/config/.version"
  rm -rf "$LWS_CONFIG_DIR"
  mv "$STAGE/config" "$LWS_CONFIG_DIR"
}

# keda_module FIELD: a field ("Dir", "Time") of what `go mod download -json` says about the
# github.com/kedacore/keda/v2 that hack/kedabuild selects (downloaded into Go's module cache
# first if needed).
keda_module() {
  (cd "$HACK_DIR/kedabuild" && GOTOOLCHAIN=$KEDA_GOTOOLCHAIN "$GO" mod download -json github.com/kedacore/keda/v2) |
    sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

build_keda() {
  local dir="$HACK_DIR/kedabuild" got p=github.com/kedacore/keda/v2
  # KEDA's go.mod says go 1.27.4: the go command fetches that toolchain from the module
  # proxy (as a module; about 10 seconds on a new machine).
  export GOTOOLCHAIN=$KEDA_GOTOOLCHAIN
  got=$(module_version "$dir" "$p") || die "hack/kedabuild is broken; try hack/build-tools.sh --keda --update-modules"
  [[ $got == "$KEDA_VERSION" ]] || die "hack/kedabuild pins $p $got, versions.env says $KEDA_VERSION; run hack/build-tools.sh --keda --update-modules"
  log "building keda-operator, keda-metrics-apiserver ${KEDA_VERSION} (toolchain ${KEDA_GOTOOLCHAIN}; about 8 minutes on 2 CPUs when Go's caches are cold)"
  # ldflags as in KEDA's Makefile (GO_LDFLAGS), with the release as its images have it
  # (VERSION without the v), so both log "KEDA Version: ${KEDA_VERSION#v}" when they start;
  # the module proxy records no commit for the release. KEDA has no build tags that leave
  # scalers out: every scaler (the cloud SDKs, database drivers, ...) is compiled in.
  # Both in one go build, so the packages they share compile once.
  mkdir -p "$STAGE/keda"
  (cd "$dir" && "$GO" build -mod=readonly -p "$JOBS" -trimpath \
    -ldflags "-s -w -X $p/version.Version=${KEDA_VERSION#v} -X $p/version.GitCommit=unknown" \
    -o "$STAGE/keda/" "$p/cmd/operator" "$p/cmd/adapter")
  # The packages are cmd/operator and cmd/adapter; KEDA's images name them so.
  mv "$STAGE/keda/operator" "$STAGE/keda-operator"
  mv "$STAGE/keda/adapter" "$STAGE/keda-metrics-apiserver"
  install_staged keda-operator keda-metrics-apiserver
}

install_keda_manifests() {
  # KEDA's CRDs (ScaledObject, ScaledJob, TriggerAuthentication, ClusterTriggerAuthentication,
  # CloudEventSource, ClusterCloudEventSource) of the module the binaries are built from.
  local src
  src=$(keda_module Dir)
  [[ -n $src && -f $src/config/crd/bases/$KEDA_CRD ]] \
    || die "no config/crd/bases/$KEDA_CRD in github.com/kedacore/keda/v2 ${KEDA_VERSION} (${src:-go mod download failed})"
  log "copying KEDA's CRDs from $src"
  mkdir -p "$STAGE/config/crd/bases"
  cp "$src"/config/crd/bases/*.yaml "$STAGE/config/crd/bases/"
  chmod -R u+w "$STAGE/config"  # the module cache is read-only
  echo "$KEDA_VERSION" >"$STAGE/config/.version"
  rm -rf "$KEDA_CONFIG_DIR"
  mv "$STAGE/config" "$KEDA_CONFIG_DIR"
}

build_prometheus() {
  local release date
  release=$(prometheus_release)
  date=$("$GO" list -m -f '{{if .Time}}{{.Time.UTC.Format "20060102-15:04:05"}}{{end}}' \
    "github.com/prometheus/prometheus@${PROMETHEUS_VERSION}" 2>/dev/null) || date=""
  log "building prometheus ${release} (github.com/prometheus/prometheus ${PROMETHEUS_VERSION}; about 3 minutes on 2 CPUs when Go's caches are cold)"
  # Exactly as promtool (build_promtool): go install from the module (no replace lines),
  # ldflags as in Prometheus' .promu.yml, and -tags remove_all_sd: no service-discovery
  # plugins (the cloud SDKs), so only static_configs (and file_sd) are there, which is all
  # tests/e2e/keda_infra.py uses. Without the builtinassets tag the web UI is not embedded
  # (it would be read from web/ui/static); the HTTP API, which KEDA queries, is complete.
  GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${release} -X github.com/prometheus/common/version.Revision=unknown -X github.com/prometheus/common/version.Branch=unknown -X github.com/prometheus/common/version.BuildDate=${date:-unknown}" \
    "github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_VERSION}"
  install_staged prometheus
}

# The files of llama/llama.cpp/vendor that the cgo build includes and Ollama's module zip
# lacks (the go command leaves every vendor/ directory out of a module zip). Each comes from
# a PyPI distribution, pinned to a version and the sha256 of the file pip downloads, so the
# same bytes arrive on any machine that reaches PyPI, with no root, apt or system package:
#   nlohmann/json.hpp, json_fwd.hpp  nlohmann-json 3.12.0 (the library's include/ tree, as
#       repackaged on PyPI): JSON for Modern C++ 3.12.0, the release Ollama v0.17.4 vendors
#       (as one amalgamated json.hpp; this is the same release in its per-file form).
#   stb/stb_image.h  libstb 0.8.0's sdist (src/third_party/stb): stb_image v2.30,
#       byte-for-byte the file Ollama v0.17.4 vendors.
#   miniaudio/miniaudio.h  miniaudio 1.71's sdist (the Python binding's copy): miniaudio
#       0.11.25; Ollama v0.17.4 vendors a 0.11.24 development snapshot, which no release
#       carries. Only audio input of multimodal models (mtmd) uses it.
# Debian's nlohmann-json3-dev and libstb-dev were the other candidates: they need apt (and
# root for apt-get update), and their versions follow the Debian release (bookworm: json
# 3.11.2, stb_image 2.27), so they pin nothing.
# Fields: PyPI requirement | file pip downloads | its sha256 | path in it | path in include/
OLLAMA_HEADERS=(
  "nlohmann-json==3.12.0|nlohmann_json-3.12.0-py3-none-any.whl|5f6132720fb25d0d70bf0742f8397b49a540dcc193e7312a914f6aa49f054810|nlohmann_json/include/nlohmann|nlohmann"
  "libstb==0.8.0|libstb-0.8.0.tar.gz|dc51a22f4eec2f06e09104bc15869e07373ecc83056a2355cacd177f30a657d8|libstb-0.8.0/src/third_party/stb/stb_image.h|stb/stb_image.h"
  "miniaudio==1.71|miniaudio-1.71.tar.gz|ff51e2887bb673e2e757752b586b3dc924d59aa5fbcae9bbc45f4a111bd3262b|miniaudio-1.71/miniaudio/miniaudio.h|miniaudio/miniaudio.h"
)

# A python with pip for the downloads: $PYTHON, else the repo's .venv (make venv).
pip_python() {
  local py
  for py in "$PYTHON" "$HACK_DIR/../.venv/bin/python"; do
    if "$py" -m pip --version >/dev/null 2>&1; then echo "$py"; return; fi
  done
  die "Ollama's headers come from PyPI: need pip (PYTHON=<python with pip>, apt-get install python3-pip, or make venv)"
}

ollama_headers() {  # -> the include dir with nlohmann/, stb/ and miniaudio/, made if needed
  local inc="$CACHE_ROOT/$KEY/include" work="$STAGE/headers" stamp py entry req file sum from to
  local binary
  stamp=$(printf '%s\n' "${OLLAMA_HEADERS[@]}")
  if [[ $FORCE == 0 && -f $inc/.sources && $(cat "$inc/.sources") == "$stamp" ]]; then
    echo "$inc"; return
  fi
  py=$(pip_python)
  rm -rf "$work" && mkdir -p "$work/include"
  for entry in "${OLLAMA_HEADERS[@]}"; do
    IFS='|' read -r req file sum from to <<<"$entry"
    log "fetching $to from PyPI ($req)"
    # The sdists by --no-binary of their own name (pip must not take a wheel instead; what it
    # installs to read their metadata may come as wheels).
    if [[ $file == *.whl ]]; then binary=(--only-binary :all:); else binary=(--no-binary "${req%%==*}"); fi
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps "${binary[@]}" \
      -d "$work" "$req" >&2 || die "pip could not download $req"
    echo "$sum  $work/$file" | sha256sum -c --quiet - >&2 || die "$file: checksum mismatch"
    mkdir -p "$work/x" "$(dirname "$work/include/$to")"
    if [[ $file == *.whl ]]; then
      "$py" -m zipfile -e "$work/$file" "$work/x"
    else
      tar -xzf "$work/$file" -C "$work/x" "$from"
    fi
    [[ -e $work/x/$from ]] || die "$file has no $from"
    cp -R "$work/x/$from" "$work/include/$to"
  done
  [[ -s $work/include/nlohmann/json_fwd.hpp ]] || die "no nlohmann/json_fwd.hpp in the headers"
  printf '%s\n' "$stamp" >"$work/include/.sources"
  rm -rf "$inc" && mv "$work/include" "$inc"
  echo "$inc"
}

build_ollama() {
  local inc
  # cgo runs the C and C++ compilers the go command would (CC, CXX; else gcc, g++).
  if ! command -v "${CC:-gcc}" >/dev/null || ! command -v "${CXX:-g++}" >/dev/null; then
    die "Ollama's cgo build needs ${CC:-gcc} and ${CXX:-g++} (Debian: apt-get install g++)"
  fi
  inc=$(ollama_headers)
  log "building ollama ${OLLAMA_VERSION} (github.com/ollama/ollama, CPU backend; about 6 minutes on 2 CPUs when Go's caches are cold)"
  # As its Dockerfile and release scripts build it (scripts/env.sh's GOFLAGS: -ldflags -w -s,
  # the version, server.mode=release; go build -trimpath -buildmode=pie), from the module:
  # cgo compiles ggml's CPU backend (generic x86-64/arm64 code: the image also ships CPU
  # libraries per instruction set, which only make it faster) and llama.cpp's C++ sources.
  # No -tags mlx: that is the GPU (MLX CUDA) engine. CGO_ENABLED=1 for this build only.
  CGO_ENABLED=1 CGO_CPPFLAGS="-I$inc" GOBIN="$STAGE" "$GO" install -p "$JOBS" -trimpath -buildmode=pie \
    -ldflags "-w -s -X github.com/ollama/ollama/version.Version=${OLLAMA_VERSION#v} -X github.com/ollama/ollama/server.mode=release" \
    "github.com/ollama/ollama@${OLLAMA_VERSION}"
  install_staged ollama
}

build_checkov() {
  # A virtualenv records its own path, so it is made where it stays (beside bin/), anew;
  # bin/checkov links to its entry point. A half-made one fails tool_ok and is made again.
  local venv="$CACHE_ROOT/$KEY/checkov-venv"
  log "installing checkov ${CHECKOV_VERSION} from PyPI (1-3 minutes the first time)"
  rm -rf "$venv" "$BIN_DIR/checkov"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
  ln -s ../checkov-venv/bin/checkov "$BIN_DIR/checkov"
}

TOTAL_START=$SECONDS
if [[ $LINT == 1 ]]; then
  if need kube-score; then timed "kube-score" build_kube_score; fi
  if need checkov; then timed "checkov" build_checkov; fi
elif [[ $PROMTOOL == 1 ]]; then
  if need promtool; then timed "promtool" build_promtool; fi
elif [[ $ARGOCD == 1 ]]; then
  if need "${ALL_TOOLS[@]}"; then timed "argocd" build_argocd; fi
elif [[ $LWS == 1 ]]; then
  if need lws-controller-manager; then timed "lws-controller-manager" build_lws; fi
  if need lws-manifests; then install_lws_manifests; fi
elif [[ $KEDA == 1 ]]; then
  if need keda-operator keda-metrics-apiserver; then timed "keda" build_keda; fi
  if need keda-manifests; then install_keda_manifests; fi
elif [[ $PROMETHEUS == 1 ]]; then
  if need prometheus; then timed "prometheus" build_prometheus; fi
elif [[ $OLLAMA == 1 ]]; then
  if need ollama; then timed "ollama" build_ollama; fi
else
  if need "${KUBE_BINS[@]}"; then timed "kubernetes" build_kube; fi
  if need etcd; then timed "etcd" build_etcd; fi
  if need kwok kwokctl; then timed "kwok" build_kwok; fi
  if need helm; then timed "helm" build_helm; fi
fi

for t in "${ALL_TOOLS[@]}"; do
  tool_ok "$t" || die "$t in $BIN_DIR does not report the pinned version after the build"
done
log "all tools ready in $((SECONDS - TOTAL_START))s: $BIN_DIR"
echo "$BIN_DIR"
