#!/usr/bin/env bash
# A real Kubernetes control plane on the host, without Docker: kwokctl's
# "binary" runtime runs etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok-controller as local processes (binaries built by
# hack/build-tools.sh). Nodes and pods are simulated by kwok: the nodes in
# hack/nodes.yaml become Ready, scheduled pods become Running/Ready, but no
# container ever runs.
#
# Usage:
#   hack/local-cluster.sh up     [--name NAME] [--kubeconfig PATH] [--workdir DIR] [--nodes FILE] [--timeout SECONDS]
#   hack/local-cluster.sh down   [--name NAME] [--kubeconfig PATH] [--workdir DIR]
#   hack/local-cluster.sh status [--name NAME] [--workdir DIR]
#   hack/local-cluster.sh stop   [--name NAME] [--workdir DIR]
#   hack/local-cluster.sh start  [--name NAME] [--workdir DIR] [--timeout SECONDS]
#   hack/local-cluster.sh bin-dir          print the directory with kubectl, kwokctl, helm, ...
#
#   up      builds the tools if needed, creates (or resumes) the cluster, waits
#           until the API server is ready and the default ServiceAccount exists,
#           applies the default StorageClass (hack/storage.yaml: PVCs get bound
#           by kube-controller-manager's hostPath provisioner) and the simulated
#           nodes, and waits until the nodes are Ready. Writes a
#           self-contained kubeconfig to --kubeconfig. Safe to run again on a
#           running cluster (re-applies nodes, rewrites the kubeconfig).
#   down    deletes the cluster, makes sure none of its processes is left, and
#           removes its work dir (and --kubeconfig if given).
#   status  prints the cluster's state; exit 0 when its API server is ready.
#   stop    stops every component (etcd, API server, controllers, kwok) and keeps
#           their data: an outage of the whole control plane, for fault tests.
#   start   starts a stopped cluster again on the same ports (the kubeconfig stays
#           valid) and waits until its API server is ready.
#
# Options / environment:
#   --name NAME          AISTACK_CLUSTER_NAME       (default: aistack-local)
#   --kubeconfig PATH    AISTACK_KUBECONFIG         (default: <workdir>/kubeconfig)
#   --workdir DIR        AISTACK_KWOK_WORKDIR       kwok's work dir (KWOK_WORKDIR) for this
#                        cluster: config, pki, etcd data, logs, pids.
#                        (default: ${AISTACK_CLUSTERS_DIR:-$HOME/.cache/aistack-operator/clusters}/NAME)
#   --nodes FILE         AISTACK_NODES_FILE         (default: hack/nodes.yaml; "none" = no nodes)
#   --timeout SECONDS    AISTACK_CLUSTER_TIMEOUT    readiness deadline for up (default: 180)
#   --audit-policy FILE  AISTACK_AUDIT_POLICY       kube-apiserver audit policy; the audit log
#                        is written to <workdir>/clusters/NAME/logs/audit.log (default: none)
#   --no-qps-limits      AISTACK_NO_QPS_LIMITS=1    lift the client QPS limits of the controller
#                        manager and scheduler and the API server's in-flight limits (for
#                        benchmarks: the cluster's own controllers must not be the bottleneck)
#   AISTACK_TOOLS_CACHE  passed through to hack/build-tools.sh
#
# Every component listens on 127.0.0.1 only. Ports are picked by kwokctl (free
# ports below 32768); creations are serialised with a lock so clusters started
# in parallel (each with its own work dir) never pick the same ports.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

CMD=${1:-}
[[ -n $CMD ]] || { usage >&2; exit 2; }
shift

NAME=${AISTACK_CLUSTER_NAME:-aistack-local}
KUBECONFIG_OUT=${AISTACK_KUBECONFIG:-}
WORKDIR=${AISTACK_KWOK_WORKDIR:-}
NODES_FILE=${AISTACK_NODES_FILE:-$HACK_DIR/nodes.yaml}
TIMEOUT=${AISTACK_CLUSTER_TIMEOUT:-180}
AUDIT_POLICY=${AISTACK_AUDIT_POLICY:-}
NO_QPS_LIMITS=${AISTACK_NO_QPS_LIMITS:-}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=$2; shift ;;
    --name=*) NAME=${1#*=} ;;
    --kubeconfig) KUBECONFIG_OUT=$2; shift ;;
    --kubeconfig=*) KUBECONFIG_OUT=${1#*=} ;;
    --workdir) WORKDIR=$2; shift ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --nodes) NODES_FILE=$2; shift ;;
    --nodes=*) NODES_FILE=${1#*=} ;;
    --timeout) TIMEOUT=$2; shift ;;
    --timeout=*) TIMEOUT=${1#*=} ;;
    --audit-policy) AUDIT_POLICY=$2; shift ;;
    --audit-policy=*) AUDIT_POLICY=${1#*=} ;;
    --no-qps-limits) NO_QPS_LIMITS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[[ $NAME =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "invalid cluster name: $NAME (lowercase letters, digits, '-')"

abspath() { local d; d=$(dirname -- "$1"); mkdir -p -- "$d"; printf '%s/%s\n' "$(cd -- "$d" && pwd)" "$(basename -- "$1")"; }

WORKDIR=$(abspath "${WORKDIR:-${AISTACK_CLUSTERS_DIR:-$HOME/.cache/aistack-operator/clusters}/$NAME}")
[[ -n $KUBECONFIG_OUT ]] && KUBECONFIG_OUT=$(abspath "$KUBECONFIG_OUT")
if [[ -n $AUDIT_POLICY ]]; then
  [[ -f $AUDIT_POLICY ]] || die "audit policy $AUDIT_POLICY does not exist"
  AUDIT_POLICY=$(abspath "$AUDIT_POLICY")
fi
CLUSTER_DIR="$WORKDIR/clusters/$NAME"
KWOK_KUBECONFIG="$CLUSTER_DIR/kubeconfig.yaml"

# kwokctl reads KWOK_WORKDIR; it must never touch ~/.kwok or ~/.kube/config.
export KWOK_WORKDIR="$WORKDIR"

tools() {
  # Builds what is missing (seconds when everything is cached); last line = bin dir.
  BIN_DIR=$("$HACK_DIR/build-tools.sh" | tail -n 1)
  [[ -x $BIN_DIR/kwokctl ]] || die "build-tools.sh did not produce $BIN_DIR/kwokctl"
  # Built kubectl first on PATH: kwokctl looks kubectl up in PATH (and would
  # try to download one otherwise); the Debian/other kubectl may be too old.
  export PATH="$BIN_DIR:$PATH"
}

tools_if_built() {
  BIN_DIR=$("$HACK_DIR/build-tools.sh" --print-bin-dir)
  export PATH="$BIN_DIR:$PATH"
  [[ -x $BIN_DIR/kwokctl ]]
}

kc() { "$BIN_DIR/kubectl" --kubeconfig "$KWOK_KUBECONFIG" "$@"; }

# wait_for DESCRIPTION DEADLINE_EPOCH CMD... : retry CMD every second until it succeeds.
wait_for() {
  local what=$1 deadline=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 1
  done
}

write_config() {
  local cfg="$WORKDIR/kwokctl.yaml"
  cat >"$cfg" <<EOF
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: ${KUBE_VERSION}
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: ${KWOK_VERSION}
  securePort: true
  kubeAuthorization: true
  kubeAdmission: true
  kubeApiserverBinary: $BIN_DIR/kube-apiserver
  kubeControllerManagerBinary: $BIN_DIR/kube-controller-manager
  kubeSchedulerBinary: $BIN_DIR/kube-scheduler
  kubectlBinary: $BIN_DIR/kubectl
  kwokControllerBinary: $BIN_DIR/kwok
  etcdBinary: $BIN_DIR/etcd
${AUDIT_POLICY:+  kubeAuditPolicy: $AUDIT_POLICY}
${NO_QPS_LIMITS:+  disableQPSLimits: true}
componentsPatches:
  # Room for thousands of Services (kwokctl's default range has 254 addresses).
  - name: kube-apiserver
    extraArgs:
      - key: service-cluster-ip-range
        value: 10.96.0.0/16
  # In-tree hostPath provisioner: PVCs of the "standard" class (hack/storage.yaml)
  # get bound instead of staying Pending for lack of a provisioner.
  # One instance each: no leader election, so that after a restart (local-cluster.sh
  # stop/start) they work at once instead of waiting out their predecessor's lease.
  - name: kube-controller-manager
    extraArgs:
      - key: enable-hostpath-provisioner
        value: "true"
      - key: leader-elect
        value: "false"
  - name: kube-scheduler
    extraArgs:
      - key: leader-elect
        value: "false"
EOF
  echo "$cfg"
}

dump_logs() {
  local f
  for f in "$CLUSTER_DIR"/logs/*.log; do
    [[ -f $f ]] || continue
    log "---- last lines of $f"
    tail -n 20 "$f" >&2 || true
  done
}

cmd_up() {
  local start=$SECONDS deadline cfg
  tools
  mkdir -p "$WORKDIR"
  deadline=$(( $(date +%s) + TIMEOUT ))
  cfg=$(write_config)

  log "creating cluster $NAME (kube ${KUBE_VERSION}, work dir $WORKDIR)"
  # Port choice happens inside `kwokctl create` (it skips ports that are in
  # use); holding a lock until the components listen keeps parallel creations
  # from choosing the same ports.
  local lock="${TMPDIR:-/tmp}/aistack-operator-kwokctl.lock"
  # flock -o: the components kwokctl starts must not inherit the lock's fd
  # (they would hold the lock for the cluster's lifetime).
  # --kubeconfig "": do not merge into ~/.kube/config; we write our own below.
  if ! flock -o -w "$TIMEOUT" "$lock" \
    kwokctl create cluster --name "$NAME" --config "$cfg" --runtime binary \
      --kubeconfig "" --wait "${TIMEOUT}s" --timeout "${TIMEOUT}s" >&2; then
    dump_logs
    die "kwokctl create cluster failed (or $lock stayed locked for ${TIMEOUT}s)"
  fi

  [[ -f $KWOK_KUBECONFIG ]] || die "kwokctl wrote no kubeconfig at $KWOK_KUBECONFIG"
  # kwokctl only logs a readiness timeout, so check ourselves.
  if ! wait_for "API server /readyz" "$deadline" kc get --raw /readyz; then
    dump_logs; die "API server of $NAME is not ready"
  fi
  # The default ServiceAccount proves kube-controller-manager is working.
  if ! wait_for "ServiceAccount default/default" "$deadline" kc -n default get serviceaccount default; then
    dump_logs; die "kube-controller-manager did not create the default ServiceAccount"
  fi

  log "applying the default StorageClass from $HACK_DIR/storage.yaml"
  kc apply -f "$HACK_DIR/storage.yaml" >&2

  if [[ $NODES_FILE != none ]]; then
    log "applying nodes from $NODES_FILE"
    kc apply -f "$NODES_FILE" >&2
    local node
    for node in $(kc get -f "$NODES_FILE" -o name); do
      if ! wait_for "$node Ready" "$deadline" kc wait --for=condition=Ready "$node" --timeout=5s; then
        kc get nodes -o wide >&2 || true
        dump_logs; die "$node did not become Ready"
      fi
    done
  fi

  if [[ -n $KUBECONFIG_OUT ]]; then
    # Self-contained (certificates embedded), so it stays valid wherever it is copied.
    (umask 077; kc config view --flatten --raw >"$KUBECONFIG_OUT.tmp")
    mv -f "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
  fi
  log "cluster $NAME is ready in $((SECONDS - start))s"
  kc get nodes -L nvidia.com/gpu.product \
    -o custom-columns='NAME:.metadata.name,STATUS:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory' >&2 || true
  log "kubeconfig: ${KUBECONFIG_OUT:-$KWOK_KUBECONFIG}"
  log "kubectl:    $BIN_DIR/kubectl"
  echo "${KUBECONFIG_OUT:-$KWOK_KUBECONFIG}"
}

# Processes belonging to this cluster: pid files written by kwokctl, plus any
# process whose command line points into this cluster's work dir.
cluster_pids() {
  local f pid
  {
    for f in "$CLUSTER_DIR"/pids/*.pid; do
      [[ -f $f ]] || continue
      pid=$(tr -dc '0-9' <"$f")
      [[ -n $pid ]] && echo "$pid"
    done
    pgrep -f -- "$CLUSTER_DIR/" 2>/dev/null || true
  } | sort -u | while read -r pid; do
    [[ $pid == "$$" ]] && continue
    # Only count live processes that really refer to this cluster's work dir
    # (guards against a recycled pid).
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$CLUSTER_DIR/"; then
      echo "$pid"
    fi
  done
}

cmd_down() {
  local pids left i
  if [[ ! -d $CLUSTER_DIR ]]; then
    log "no cluster $NAME in $WORKDIR"
  else
    pids=$(cluster_pids | tr '\n' ' ')
    local hostpaths=""
    if tools_if_built && [[ -f $KWOK_KUBECONFIG ]]; then
      # Directories the hostPath provisioner made for PVs that still exist.
      hostpaths=$(kc get pv --request-timeout=5s -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null \
        | grep '^/tmp/hostpath_pv/' || true)
    fi
    if tools_if_built; then
      log "deleting cluster $NAME"
      # kwokctl removes a context from --kubeconfig (default ~/.kube/config; an
      # empty value is an error), so point it at a file that does not exist.
      kwokctl delete cluster --name "$NAME" --kubeconfig "$WORKDIR/.no-kubeconfig" >&2 \
        || log "kwokctl delete cluster failed; cleaning up by hand"
    else
      log "tools not built; cleaning up $NAME by hand"
    fi
    # Make sure nothing survives (kwokctl stops components by pid file).
    for i in $(seq 1 40); do
      left=""
      for pid in $pids; do kill -0 "$pid" 2>/dev/null && left+="$pid "; done
      [[ -z $left ]] && break
      if (( i == 30 )); then log "still running: $left; sending SIGKILL"; kill -KILL $left 2>/dev/null || true
      elif (( i == 1 )); then kill -TERM $left 2>/dev/null || true; fi
      sleep 0.5
    done
    left=$(cluster_pids | tr '\n' ' ')
    [[ -z $left ]] || die "processes of cluster $NAME still running: $left"
    local d
    for d in $hostpaths; do rmdir -- "$d" 2>/dev/null || true; done
  fi
  rm -rf -- "$CLUSTER_DIR"
  rm -f -- "$WORKDIR/kwokctl.yaml"
  # The work dir itself may be shared with other files (e.g. a test's tmp dir).
  rmdir -- "$WORKDIR/clusters" 2>/dev/null || true
  rmdir -- "$WORKDIR" 2>/dev/null || true
  [[ -n $KUBECONFIG_OUT ]] && rm -f -- "$KUBECONFIG_OUT"
  log "cluster $NAME is down"
}

cmd_status() {
  if [[ ! -f $KWOK_KUBECONFIG ]]; then
    echo "cluster $NAME: not created (work dir $WORKDIR)"
    return 1
  fi
  tools_if_built || die "tools are not built; run hack/build-tools.sh"
  echo "cluster $NAME: work dir $WORKDIR"
  echo "kubeconfig: $KWOK_KUBECONFIG"
  local pids; pids=$(cluster_pids | tr '\n' ' ')
  echo "processes: ${pids:-none}"
  if kc get --raw /readyz >/dev/null 2>&1; then
    echo "api server: ready ($(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}'))"
    kc get nodes -o custom-columns='NAME:.metadata.name,STATUS:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu' || true
    return 0
  fi
  echo "api server: not ready"
  return 1
}

cmd_stop() {
  [[ -f $KWOK_KUBECONFIG ]] || die "cluster $NAME: not created (work dir $WORKDIR)"
  tools
  log "stopping cluster $NAME (data kept)"
  kwokctl stop cluster --name "$NAME" >&2
}

cmd_start() {
  [[ -f $KWOK_KUBECONFIG ]] || die "cluster $NAME: not created (work dir $WORKDIR)"
  tools
  local deadline=$(( $(date +%s) + TIMEOUT ))
  log "starting cluster $NAME"
  kwokctl start cluster --name "$NAME" >&2
  if ! wait_for "API server /readyz" "$deadline" kc get --raw /readyz; then
    dump_logs; die "API server of $NAME is not ready"
  fi
  log "cluster $NAME is running"
}

case $CMD in
  up) cmd_up ;;
  stop) cmd_stop ;;
  start) cmd_start ;;
  down) cmd_down ;;
  status) cmd_status ;;
  bin-dir) "$HACK_DIR/build-tools.sh" --print-bin-dir ;;
  -h|--help|help) usage ;;
  *) usage >&2; die "unknown command: $CMD" ;;
esac
