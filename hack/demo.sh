#!/usr/bin/env bash
# The demo behind `make demo` / `make demo-down`.
#
# Usage:
#   hack/demo.sh up       start (or refresh) the demo cluster, install the CRDs,
#                         apply examples/quickstart.yaml into namespace "demo",
#                         (re)start the operator in the background, show the result
#   hack/demo.sh down     stop the operator, delete the cluster, leave no process behind
#   hack/demo.sh status   show what is running
#   hack/demo.sh backend  print which cluster `up` uses (local or kind) and exit
#
# The kubeconfig is always written to .demo/kubeconfig in the repository:
#   export KUBECONFIG=$PWD/.demo/kubeconfig
#
# Environment:
#   AISTACK_DEMO_CLUSTER   local | kind   (default: local, wherever it runs: host
#                          processes started by hack/local-cluster.sh, with two simulated
#                          8-GPU nodes and the license webhook. kind only when asked: its
#                          nodes have no GPUs (GPU pods stay Pending) and its API server
#                          cannot reach the operator on the host, so no webhook runs and
#                          the closing refusal is not shown; the demo says so)
#   AISTACK_DEMO_WAIT      seconds to wait for the operator's objects (default: 60)
# Files in .demo/: kubeconfig, operator.log, operator.pid, cluster (which backend), kwok/ (local cluster state)
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HACK_DIR/.." && pwd)
DEMO_DIR="$REPO_ROOT/.demo"
export KUBECONFIG="$DEMO_DIR/kubeconfig"
NAME=aistack-demo
NS=demo
PID_FILE="$DEMO_DIR/operator.pid"
OPERATOR_LOG="$DEMO_DIR/operator.log"
AISTACK="$REPO_ROOT/.venv/bin/aistack"
WAIT=${AISTACK_DEMO_WAIT:-60}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf '[demo] %s\n' "$*" >&2; }
die() { warn "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }


backend() {
  if [[ -f $DEMO_DIR/cluster ]]; then cat "$DEMO_DIR/cluster"; return; fi
  # The same demo wherever it runs: the local cluster unless kind is asked for by name.
  case ${AISTACK_DEMO_CLUSTER:-local} in
    local|kind) echo "${AISTACK_DEMO_CLUSTER:-local}" ;;
    *) die "AISTACK_DEMO_CLUSTER must be local or kind" ;;
  esac
}

use_kubectl() {
  # Prefer the kubectl built by hack/build-tools.sh (matches the server version).
  local bin
  bin=$("$HACK_DIR/build-tools.sh" --print-bin-dir)
  if [[ -x $bin/kubectl ]]; then export PATH="$bin:$PATH"; fi
  command -v kubectl >/dev/null || die "no kubectl (run hack/build-tools.sh)"
}

# --------------------------------------------------------------------------- cluster
cluster_up() {
  local kind; kind=$(backend)
  mkdir -p "$DEMO_DIR"
  case $kind in
    local)
      say "Starting the local cluster '$NAME' (no Docker; first run builds the tools)"
      "$HACK_DIR/local-cluster.sh" up --name "$NAME" --workdir "$DEMO_DIR/kwok" --kubeconfig "$KUBECONFIG" >/dev/null
      ;;
    kind)
      say "Starting the kind cluster '$NAME'"
      if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
        kind create cluster --name "$NAME" --kubeconfig "$KUBECONFIG" --wait 120s
      else
        kind get kubeconfig --name "$NAME" >"$KUBECONFIG"
      fi
      warn "kind nodes have no GPUs: GPU workloads of the demo will stay Pending"
      ;;
  esac
  echo "$kind" >"$DEMO_DIR/cluster"
  use_kubectl
}

cluster_down() {
  local kind; kind=$(backend)
  case $kind in
    local)
      "$HACK_DIR/local-cluster.sh" down --name "$NAME" --workdir "$DEMO_DIR/kwok" --kubeconfig "$KUBECONFIG"
      ;;
    kind)
      if command -v kind >/dev/null; then kind delete cluster --name "$NAME"; fi
      rm -f "$KUBECONFIG"
      ;;
  esac
  rm -f "$DEMO_DIR/cluster"
}

# --------------------------------------------------------------------------- operator
operator_pid() {
  # Prints the pid of the running demo operator, if any (checked against its command line).
  local pid
  [[ -f $PID_FILE ]] || return 1
  pid=$(tr -dc '0-9' <"$PID_FILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "aistack" && echo "$pid"
}

operator_available() {
  [[ -x $AISTACK ]] && "$AISTACK" run --help >/dev/null 2>&1
}

# Hook: how the operator runs in the demo. Change here when its CLI changes.
start_operator() {
  if ! operator_available; then
    say "Operator: not part of this build yet (no '.venv/bin/aistack run'); showing the cluster only"
    return 0
  fi
  stop_operator
  local metrics_port
  metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # ml: the namespace of examples/argocd's stacks.
  local args=(run --namespace "$NS" --namespace ml --metrics-port "$metrics_port")
  if [[ $(backend) == local ]]; then
    # The local API server runs on this host, so it can call the license webhook on
    # 127.0.0.1; the operator maintains the webhook configuration itself.
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    args+=(--webhook-port "$port" --webhook-addr 127.0.0.1 --webhook-host 127.0.0.1
           --webhook-managed aistack-demo.aistack.dev)
  fi
  say "Starting the operator: .venv/bin/aistack ${args[*]} (log: .demo/operator.log; metrics: http://127.0.0.1:$metrics_port/metrics)"
  # setsid: own process group, so `down` can stop it and anything it spawned.
  (
    cd "$REPO_ROOT"
    KUBECONFIG="$KUBECONFIG" setsid "$AISTACK" "${args[@]}" >>"$OPERATOR_LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
  )
  sleep 2
  if ! operator_pid >/dev/null; then
    warn "the operator exited right away; last lines of .demo/operator.log:"
    tail -n 30 "$OPERATOR_LOG" >&2 || true
    rm -f "$PID_FILE"
    return 1
  fi
}

stop_operator() {
  local pid i
  pid=$(operator_pid) || { rm -f "$PID_FILE"; return 0; }
  say "Stopping the operator (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "operator did not stop in 10s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

# --------------------------------------------------------------------------- content
aistack_resource() {
  # The plural of the AIStack kind as served, if its CRD is installed.
  kubectl api-resources --no-headers 2>/dev/null | awk 'tolower($NF) == "aistack" {print $1; exit}'
}

install_crds() {
  shopt -s nullglob
  local files=("$REPO_ROOT"/crds/*.yaml "$REPO_ROOT"/crds/*.yml)
  shopt -u nullglob
  if [[ ${#files[@]} -eq 0 ]]; then
    say "CRDs: crds/ has no manifests yet; skipping"
    return 0
  fi
  say "Installing CRDs from crds/"
  local f
  for f in "${files[@]}"; do
    kubectl apply --server-side --force-conflicts -f "$f"
  done
  # Polled: `kubectl wait --for=condition` fails at once while a new CRD's status still
  # has `conditions: null`.
  local crd i
  for crd in $(for f in "${files[@]}"; do kubectl get -f "$f" -o name; done); do
    for i in $(seq 1 300); do
      [[ $(kubectl get "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}') == True ]] && break
      [[ $i == 300 ]] && die "$crd is not established after 60 s"
      sleep 0.2
    done
  done
}

apply_quickstart() {
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local qs="$REPO_ROOT/examples/quickstart.yaml"
  if [[ ! -f $qs ]]; then
    say "Example: examples/quickstart.yaml does not exist yet; skipping"
    return 0
  fi
  if ! operator_pid >/dev/null; then
    # A license webhook left by an operator that is gone would refuse the apply
    # (it fails closed); the operator recreates it when it starts.
    kubectl delete validatingwebhookconfiguration aistack-demo.aistack.dev --ignore-not-found >/dev/null
  fi
  say "Applying examples/quickstart.yaml to namespace $NS"
  kubectl apply -n "$NS" -f "$qs" || warn "applying the quickstart failed (are the CRDs installed?)"
}

wait_for_objects() {
  operator_pid >/dev/null || return 0
  local deadline=$((SECONDS + WAIT))
  say "Waiting up to ${WAIT}s for the operator to create the stack"
  while ((SECONDS < deadline)); do
    if [[ -n $(kubectl get deploy,statefulset -n "$NS" -l app.kubernetes.io/part-of=aistack -o name 2>/dev/null) ]] \
      && ! kubectl get pods -n "$NS" --no-headers 2>/dev/null | grep -qv ' Running '; then
      return 0
    fi
    sleep 2
  done
  warn "not everything is running after ${WAIT}s; see .demo/operator.log"
}

show() {
  local res
  res=$(aistack_resource || true)
  echo
  if [[ -n $res ]]; then
    say "kubectl get $res -n $NS"
    kubectl get "$res" -n "$NS" 2>&1 || true
  else
    say "No AIStack resource type installed yet"
  fi
  echo
  say "kubectl get deploy,statefulset,svc,cm,pvc -n $NS -l app.kubernetes.io/part-of=aistack"
  kubectl get deploy,statefulset,svc,cm,pvc -n "$NS" -l app.kubernetes.io/part-of=aistack 2>&1 || true
  echo
  say "kubectl get pods -n $NS -o wide"
  kubectl get pods -n "$NS" -o wide 2>&1 || true
  echo
  say "Nodes and their GPUs"
  kubectl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,TAINTS:.spec.taints[*].key'
  echo
  local pid op; pid=$(operator_pid || true)
  if [[ -n $pid ]]; then op="running (pid $pid), log .demo/operator.log"; else op="not running"; fi
  cat <<EOF
Look around:
  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(command -v kubectl)"):\$PATH   # kubectl matching the cluster
  kubectl get ${res:-all} -n $NS
Operator: $op
Try the license gate (a non-commercial model is refused at apply time):
  .venv/bin/aistack license check CohereForAI/c4ai-command-r-plus
  kubectl patch ais quickstart -n $NS --type=json -p '[{"op":"add","path":"/spec/models/-","value":{"name":"command-r","source":"CohereForAI/c4ai-command-r-plus"}}]'
Stop everything: make demo-down   (or hack/demo.sh down)
EOF
  if [[ $(backend) == local ]]; then
    echo "Note: nodes and pods are simulated (kwok): pods become Running, but no container runs."
  else
    echo "Note: on kind no license webhook runs (kind's API server cannot reach the operator on"
    echo "this host), so the patch above is admitted, not refused: the operator then keeps the"
    echo "model from running (LicenseCompliant=False, scaled to 0). kind nodes have no GPUs, so"
    echo "GPU pods stay Pending. For the demo as documented: make demo-down; make demo (local)."
  fi
}

cmd_up() {
  cluster_up
  install_crds
  apply_quickstart
  start_operator || warn "continuing without the operator"
  wait_for_objects
  show
}

cmd_down() {
  stop_operator
  if [[ -f $DEMO_DIR/cluster || -d $DEMO_DIR/kwok ]]; then
    say "Deleting the demo cluster"
    cluster_down
  else
    say "No demo cluster"
  fi
  rm -f "$KUBECONFIG"
  say "Demo stopped (operator log kept in .demo/operator.log)"
}

cmd_status() {
  [[ -f $KUBECONFIG ]] || { echo "demo: not running"; return 1; }
  use_kubectl
  show
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  backend) backend ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
