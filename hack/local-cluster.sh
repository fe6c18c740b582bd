#!/usr/bin/env bash
# A real Kubernetes control plane on the host, without Docker: kwokctl's
# "binary" runtime runs etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok-controller as local processes (binaries built by
# hack/build-tools.sh). Nodes and pods are simulated by kwok: the nodes in
# hack/nodes.yaml become Ready, scheduled pods become Running/Ready, but no
# container ever runs. Beside the control plane runs the LeaderWorkerSet (LWS)
# controller, lws-controller-manager (hack/build-tools.sh --lws), with its CRD and
# its admission webhooks served on 127.0.0.1; and, with --keda, KEDA (keda-operator and
# keda-metrics-apiserver, hack/build-tools.sh --keda) with its CRDs, serving the external
# metrics API through the API server.
#
# Usage:
#   hack/local-cluster.sh up     [--name NAME] [--kubeconfig PATH] [--workdir DIR] [--nodes FILE] [--timeout SECONDS] [--keda]
#   hack/local-cluster.sh down   [--name NAME] [--kubeconfig PATH] [--workdir DIR]
#   hack/local-cluster.sh status [--name NAME] [--workdir DIR]
#   hack/local-cluster.sh stop   [--name NAME] [--workdir DIR]
#   hack/local-cluster.sh start  [--name NAME] [--workdir DIR] [--timeout SECONDS] [--keda]
#   hack/local-cluster.sh bin-dir          print the directory with kubectl, kwokctl, helm, ...
#
#   up      builds the tools if needed, creates (or resumes) the cluster, waits
#           until the API server is ready and the default ServiceAccount exists,
#           applies the default StorageClass (hack/storage.yaml: PVCs get bound
#           by kube-controller-manager's hostPath provisioner) and the simulated
#           nodes, and waits until the nodes are Ready. Starts LWS (see below).
#           Writes a self-contained kubeconfig to --kubeconfig. Safe to run again
#           on a running cluster (re-applies nodes and LWS's CRD and webhook
#           configuration, rewrites the kubeconfig; a running LWS is kept).
#           While it waits it supervises the components: one that exits (e.g.
#           kube-controller-manager giving up on a slow API server on a loaded
#           machine) is started again, with the same command line, by
#           `kwokctl start cluster`. On the deadline it fails with one error that
#           names the component that is not working and shows its last log lines.
#   down    deletes the cluster, makes sure none of its processes is left, and
#           removes its work dir (and --kubeconfig if given).
#   status  prints the cluster's state (LWS's too); exit 0 when its API server is ready.
#   stop    stops every component (etcd, API server, controllers, kwok, LWS) and
#           keeps their data: an outage of the whole control plane, for fault tests.
#   start   starts a stopped cluster again on the same ports (the kubeconfig stays
#           valid) and waits until its API server is ready, every component runs
#           and LWS's webhooks answer, supervising them like up (and KEDA, when
#           --keda is given or up --keda set it up).
#
# LWS: once the API server is ready, up (and start) apply LWS's CRD and its
# Mutating/ValidatingWebhookConfigurations (derived from the module's config/webhook:
# the same webhooks and objectSelectors, with clientConfig.url
# https://127.0.0.1:PORT/... and a self-signed certificate as caBundle instead of a
# Service), and run lws-controller-manager as a process of the cluster (its own cert
# management and leader election off, webhook, metrics and health endpoints on free
# 127.0.0.1 ports, the cluster's admin kubeconfig). Its files are in
# <workdir>/clusters/NAME/lws/, its log in logs/lws-controller-manager.log and its pid
# in pids/lws-controller-manager.pid, like the other components; it is supervised the
# same way, and ready when the API server gets answers from its webhooks (server-side
# dry runs of a LeaderWorkerSet and of one of its pods). Needs openssl and python3.
#
# KEDA (only with --keda; without it nothing of the following happens): once the API
# server is ready, up (and start) apply KEDA's CRDs and run keda-operator and
# keda-metrics-apiserver as processes of the cluster, supervised like LWS, in
# <workdir>/clusters/NAME/keda/ (logs/keda-*.log, pids/keda-*.pid):
#   - namespace keda (KEDA's cluster object and "pod" namespace), leader election off;
#   - one certificate (its own CA) in keda/certs/ for the operator's gRPC metrics service
#     and the metrics API server, which talk mutual TLS (--cert-dir of both; KEDA's own
#     certificate rotation off): SANs 127.0.0.1 and keda-metrics-apiserver.keda.svc;
#   - the operator's gRPC metrics service, metrics and health on free 127.0.0.1 ports; the
#     metrics API server's HTTPS port on 127.0.0.1 (its /metrics port is KEDA's ":PORT",
#     every address);
#   - the APIService v1beta1.external.metrics.k8s.io, its caBundle that CA, pointing at the
#     Service keda/keda-metrics-apiserver of type ExternalName 127.0.0.1 with the metrics
#     API server's port: the API server's aggregator sends to an ExternalName Service's
#     name and the APIService's port (a ClusterIP would need routing, which this cluster
#     has not; --enable-aggregator-routing would need Endpoints on a non-loopback address),
#     and checks the certificate for keda-metrics-apiserver.keda.svc;
#   - kube-controller-manager's --horizontal-pod-autoscaler-sync-period=2s (default 15s),
#     only for a cluster created by up --keda, so the HPAs KEDA makes act within seconds.
# KEDA is ready when the API server serves external.metrics.k8s.io/v1beta1 (through
# the metrics API server) and the operator's /readyz answers.
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
#   --keda               AISTACK_KEDA=1             up/start: run KEDA too (see above; builds it
#                        with hack/build-tools.sh --keda if needed)
#   AISTACK_TOOLS_CACHE  passed through to hack/build-tools.sh
#
# For tests only (tests/e2e/test_local_cluster.py; never set them otherwise):
#   AISTACK_TEST_ETCD_BINARY, AISTACK_TEST_KUBE_APISERVER_BINARY,
#   AISTACK_TEST_KUBE_CONTROLLER_MANAGER_BINARY, AISTACK_TEST_KUBE_SCHEDULER_BINARY,
#   AISTACK_TEST_KWOK_CONTROLLER_BINARY
#                        an executable that up's cluster runs instead of that
#                        component's binary (read when the cluster is created): a
#                        wrapper that delays or breaks the component, to prove the
#                        supervision and the error. It must answer --version like
#                        the real binary (kwokctl asks) and exec it with "$@".
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
KEDA=${AISTACK_KEDA:-}
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
    --keda) KEDA=1 ;;
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
# LeaderWorkerSet: the component's name (binary, pid file, log) and its files.
LWS=lws-controller-manager
LWS_DIR="$CLUSTER_DIR/lws"
LWS_CRD=leaderworkersets.leaderworkerset.x-k8s.io
LWS_BIN_DIR=""
# KEDA (--keda): its two components (binary, pid file, log) and its files.
KEDA_OPERATOR=keda-operator
KEDA_ADAPTER=keda-metrics-apiserver
KEDA_DIR="$CLUSTER_DIR/keda"
KEDA_BIN_DIR=""

# kwokctl reads KWOK_WORKDIR; it must never touch ~/.kwok or ~/.kube/config.
export KWOK_WORKDIR="$WORKDIR"

tools() {
  # Builds what is missing (seconds when everything is cached); last line = bin dir.
  BIN_DIR=$("$HACK_DIR/build-tools.sh" | tail -n 1)
  [[ -x $BIN_DIR/kwokctl ]] || die "build-tools.sh did not produce $BIN_DIR/kwokctl"
  LWS_BIN_DIR=$("$HACK_DIR/build-tools.sh" --lws | tail -n 1)
  [[ -x $LWS_BIN_DIR/$LWS ]] || die "build-tools.sh --lws did not produce $LWS_BIN_DIR/$LWS"
  if [[ -n $KEDA ]]; then
    KEDA_BIN_DIR=$("$HACK_DIR/build-tools.sh" --keda | tail -n 1)
    [[ -x $KEDA_BIN_DIR/$KEDA_OPERATOR && -x $KEDA_BIN_DIR/$KEDA_ADAPTER ]] \
      || die "build-tools.sh --keda did not produce $KEDA_BIN_DIR/$KEDA_OPERATOR and $KEDA_ADAPTER"
  fi
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

# component_binary COMPONENT DEFAULT: the binary the cluster runs for COMPONENT:
# DEFAULT, or the test-only replacement in AISTACK_TEST_<COMPONENT>_BINARY.
component_binary() {
  local var bin
  var=AISTACK_TEST_$(tr 'a-z-' 'A-Z_' <<<"$1")_BINARY
  bin=${!var:-}
  if [[ -z $bin ]]; then echo "$2"; return; fi
  [[ -x $bin && -f $bin ]] || die "$var=$bin is not an executable file"
  bin=$(abspath "$bin")
  log "test hook $var: $1 runs $bin"
  echo "$bin"
}

write_config() {
  local cfg="$WORKDIR/kwokctl.yaml" etcd_bin apiserver_bin kcm_bin scheduler_bin kwok_bin kcm_keda=""
  etcd_bin=$(component_binary etcd "$BIN_DIR/etcd")
  apiserver_bin=$(component_binary kube-apiserver "$BIN_DIR/kube-apiserver")
  kcm_bin=$(component_binary kube-controller-manager "$BIN_DIR/kube-controller-manager")
  scheduler_bin=$(component_binary kube-scheduler "$BIN_DIR/kube-scheduler")
  kwok_bin=$(component_binary kwok-controller "$BIN_DIR/kwok")
  # --keda: the HPA controller syncs every 2 s instead of every 15 s, so an HPA that KEDA
  # makes follows its metric within seconds (tests wait less). Nothing changes without it.
  [[ -z $KEDA ]] || kcm_keda=$'\n      - key: horizontal-pod-autoscaler-sync-period\n        value: 2s'
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
  kubeApiserverBinary: $apiserver_bin
  kubeControllerManagerBinary: $kcm_bin
  kubeSchedulerBinary: $scheduler_bin
  kubectlBinary: $BIN_DIR/kubectl
  kwokControllerBinary: $kwok_bin
  etcdBinary: $etcd_bin
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
        value: "false"$kcm_keda
  - name: kube-scheduler
    extraArgs:
      - key: leader-elect
        value: "false"
EOF
  echo "$cfg"
}

# --------------------------------------------------------------------------- #
# Supervision.
#
# kwokctl's binary runtime forks the components (etcd, then kube-apiserver, then
# the rest, without waiting for one to answer before starting the next), writes
# their pids to clusters/NAME/pids/COMPONENT.pid and never looks at them again:
# a component that exits stays down. On a loaded machine kube-controller-manager
# exits when the API server's /healthz is not ok within about 10 s. So while up
# and start wait, every component is checked each second, and one that is gone
# is started again by `kwokctl start cluster`: it starts exactly the components
# whose pid file names no live process, with the command line from kwokctl's own
# config (clusters/NAME/kwok.yaml), and writes their pid files (so stop, start
# and down keep working). On the deadline, fail names the component at fault.
# --------------------------------------------------------------------------- #

# The components of the cluster write_config describes, in dependency order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)
declare -A RESTARTS=() NEXT_START=()
DEADLINE=0
KWOKCTL_PID=""   # a `kwokctl create/start cluster` running in the background
KWOKCTL_WHAT=""

now() { printf '%(%s)T' -1; }

# pid_in_file COMPONENT: prints the pid kwokctl last wrote for COMPONENT (nothing
# when it wrote none); whether that process lives is component_pid's question.
pid_in_file() {
  local f="$CLUSTER_DIR/pids/$1.pid" pid=""
  if [[ -f $f ]]; then read -r pid <"$f" 2>/dev/null || true; fi  # no newline at the end
  echo "$pid"
}

# component_pid COMPONENT: prints the pid of COMPONENT's live process (from
# kwokctl's pid file); fails when there is none. An exited process that is not
# reaped yet (a zombie, which kill -0 still finds) has an empty command line, a
# recycled pid one that does not point into this cluster's dir.
component_pid() {
  local pid args=()
  pid=$(pid_in_file "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  mapfile -d '' args 2>/dev/null </proc/"$pid"/cmdline || return 1
  [[ "${args[*]}" == *"$CLUSTER_DIR/"* ]] || return 1
  echo "$pid"
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
}

# reap_kwokctl: notices that the background kwokctl has exited; dies if it failed.
reap_kwokctl() {
  [[ -n $KWOKCTL_PID ]] || return 0
  kill -0 "$KWOKCTL_PID" 2>/dev/null && return 0
  local rc=0
  wait "$KWOKCTL_PID" || rc=$?
  KWOKCTL_PID=""
  (( rc == 0 )) || die "kwokctl $KWOKCTL_WHAT failed (exit $rc); its output is above"
}

# stop_kwokctl: ends the background kwokctl, if still running (only kwokctl: the
# components run in sessions of their own).
stop_kwokctl() {
  if [[ -n $KWOKCTL_PID ]] && kill -0 "$KWOKCTL_PID" 2>/dev/null; then
    kill "$KWOKCTL_PID" 2>/dev/null || true
    wait "$KWOKCTL_PID" 2>/dev/null || true
  fi
  KWOKCTL_PID=""
}

# finish_kwokctl: gives the background kwokctl (it returns once the API server
# serves) a few seconds to exit by itself, then ends it.
finish_kwokctl() {
  local i
  for i in $(seq 1 50); do
    reap_kwokctl
    [[ -n $KWOKCTL_PID ]] || return 0
    sleep 0.2
  done
  stop_kwokctl
}

# launch WHAT KWOKCTL-ARGS...: runs `kwokctl KWOKCTL-ARGS` in the background (it
# then blocks until the API server serves, which is when supervision matters
# most) and returns once it has started every component: each pid file names a
# live process or was written by this kwokctl. Restarts start only after that,
# so they never race with kwokctl's own starts.
launch() {
  KWOKCTL_WHAT=$1; shift
  local c pid missing
  declare -A before=()
  for c in "${COMPONENTS[@]}"; do before[$c]=$(pid_in_file "$c"); done
  trap stop_kwokctl EXIT
  # 9>&-: the components must not inherit the lock (they would hold it for the
  # cluster's lifetime).
  kwokctl "$@" 9>&- >&2 &
  KWOKCTL_PID=$!
  while :; do
    missing=""
    for c in "${COMPONENTS[@]}"; do
      pid=$(pid_in_file "$c")
      if [[ -z $pid ]] || { [[ $pid == "${before[$c]}" ]] && ! component_pid "$c" >/dev/null; }; then
        missing+="$c "
      fi
    done
    [[ -z $missing ]] && return 0
    reap_kwokctl
    [[ -n $KWOKCTL_PID ]] || return 0  # kwokctl is done; supervise starts what is missing
    (( $(now) < DEADLINE )) || fail "${missing%% *}" "kwokctl $KWOKCTL_WHAT to start it"
    sleep 0.2
  done
}

# supervise: starts again every component whose process has gone, backing off
# (2, 4, 8, 8, ... s) for one that keeps exiting; LWS too, once lws_up started it.
supervise() {
  reap_kwokctl
  lws_supervise
  keda_supervise
  local c t dead=() out rc=0
  t=$(now)
  for c in "${COMPONENTS[@]}"; do
    component_pid "$c" >/dev/null && continue
    (( t >= ${NEXT_START[$c]:-0} )) || continue
    dead+=("$c")
  done
  (( ${#dead[@]} )) || return 0
  for c in "${dead[@]}"; do
    RESTARTS[$c]=$(( ${RESTARTS[$c]:-0} + 1 ))
    NEXT_START[$c]=$(( t + (RESTARTS[$c] >= 3 ? 8 : 2 ** RESTARTS[$c]) ))
    log "$c is not running (it exited; log: $CLUSTER_DIR/logs/$c.log); starting it again (restart ${RESTARTS[$c]})"
    # kwokctl truncates a component's log when it starts it: keep the last one.
    if [[ -s $CLUSTER_DIR/logs/$c.log ]]; then
      cp -f "$CLUSTER_DIR/logs/$c.log" "$CLUSTER_DIR/logs/$c.previous.log" || true
    fi
    # kwokctl takes a zombie (kill -0 works) for running.
    rm -f "$CLUSTER_DIR/pids/$c.pid"
  done
  # --timeout: it waits (here: up to 10 s) until the API server serves.
  out=$(kwokctl start cluster --name "$NAME" --timeout 10s 9>&- 2>&1) || rc=$?
  if (( rc != 0 )); then
    printf '%s\n' "$out" >&2
    log "kwokctl start cluster failed (exit $rc); trying again"
  fi
}

# --------------------------------------------------------------------------- #
# LeaderWorkerSet: its controller, a process of the cluster started by this script
# (kwokctl knows nothing of it) once the API server is ready, with its pid file and
# log beside the other components'. Its admission webhooks (LWS's own and the pod
# webhook that labels LWS's pods and gives them LWS_LEADER_ADDRESS, LWS_GROUP_SIZE
# and LWS_WORKER_INDEX) are called by the API server at https://127.0.0.1:PORT with
# a self-signed certificate as their caBundle.
# --------------------------------------------------------------------------- #
LWS_SUPERVISED=0  # set by lws_up: from then on supervise starts LWS again when it exits

# lws_config_dir: the module's manifests, copied beside LWS's bin dir by build-tools.sh.
lws_config_dir() { echo "${LWS_BIN_DIR%/bin}/config"; }

# lws_free_ports N: N distinct free TCP ports on 127.0.0.1 (held at once while chosen).
lws_free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$1"
}

# lws_ports_free PORT...: true when every PORT can be bound on 127.0.0.1.
lws_ports_free() {
  python3 -c 'import socket, sys
for p in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(p)))' "$@" 2>/dev/null
}

# lws_certificate: a self-signed serving certificate for 127.0.0.1 (its own CA: the
# webhook configurations' caBundle), made once per cluster; controller-runtime's
# webhook server reads tls.crt and tls.key from its certDir.
lws_certificate() {
  [[ -s $LWS_DIR/tls.crt && -s $LWS_DIR/tls.key ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (needed for LWS's webhook certificate)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$LWS_DIR/tls.key.tmp" -out "$LWS_DIR/tls.crt.tmp" 2>/dev/null \
    || die "openssl could not make LWS's webhook certificate"
  mv -f "$LWS_DIR/tls.key.tmp" "$LWS_DIR/tls.key"
  mv -f "$LWS_DIR/tls.crt.tmp" "$LWS_DIR/tls.crt"
}

# lws_choose_ports: the webhook, metrics and health ports (LWS_WEBHOOK_PORT, ...): those
# of the cluster's last LWS when they are still free (or it still runs), else new ones;
# writes LWS's configuration file for them.
lws_choose_ports() {
  LWS_WEBHOOK_PORT="" LWS_METRICS_PORT="" LWS_HEALTH_PORT=""
  # shellcheck source=/dev/null
  [[ -f $LWS_DIR/ports.env ]] && source "$LWS_DIR/ports.env"
  if [[ -n $LWS_WEBHOOK_PORT && -f $LWS_DIR/config.yaml ]] && { component_pid "$LWS" >/dev/null \
      || lws_ports_free "$LWS_WEBHOOK_PORT" "$LWS_METRICS_PORT" "$LWS_HEALTH_PORT"; }; then
    return 0
  fi
  read -r LWS_WEBHOOK_PORT LWS_METRICS_PORT LWS_HEALTH_PORT < <(lws_free_ports 3)
  [[ -n $LWS_HEALTH_PORT ]] || die "python3 found no free ports for LWS"
  printf 'LWS_WEBHOOK_PORT=%s\nLWS_METRICS_PORT=%s\nLWS_HEALTH_PORT=%s\n' \
    "$LWS_WEBHOOK_PORT" "$LWS_METRICS_PORT" "$LWS_HEALTH_PORT" >"$LWS_DIR/ports.env"
  # LWS's Configuration (config.lws.x-k8s.io/v1alpha1, read by its --config): one
  # instance, so no leader election; no internal cert management (it would write the
  # certificate into a Secret and the caBundle into webhook configurations for its
  # Service); everything on 127.0.0.1.
  cat >"$LWS_DIR/config.yaml" <<EOF2
apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
webhook:
  host: 127.0.0.1
  port: $LWS_WEBHOOK_PORT
  certDir: $LWS_DIR
metrics:
  bindAddress: 127.0.0.1:$LWS_METRICS_PORT
health:
  healthProbeBindAddress: 127.0.0.1:$LWS_HEALTH_PORT
EOF2
}

# lws_webhooks: writes $LWS_DIR/webhooks.json, the webhook configurations to apply:
# the module's config/webhook as its kustomization builds it (the webhooks, with the
# patches that limit the pod webhooks to pods labelled leaderworkerset.sigs.k8s.io/name),
# named as LWS's release names them (lws-...), each clientConfig.service replaced by
# url https://127.0.0.1:PORT<its path> and the caBundle; the Service is left out.
lws_webhooks() {
  local ca
  ca=$(base64 -w0 <"$LWS_DIR/tls.crt")
  "$BIN_DIR/kubectl" kustomize "$(lws_config_dir)/webhook" >"$LWS_DIR/webhook-kustomize.yaml"
  # kubectl turns the YAML into JSON (one object after the other), python3 does the rest.
  "$BIN_DIR/kubectl" patch --local -f "$LWS_DIR/webhook-kustomize.yaml" --type merge -p '{}' -o json \
    | python3 -c '
import json, sys
base, ca = sys.argv[1:3]
text, decoder, i, items = sys.stdin.read(), json.JSONDecoder(), 0, []
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i == len(text):
        break
    obj, i = decoder.raw_decode(text, i)
    if obj["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        continue
    obj["metadata"]["name"] = "lws-" + obj["metadata"]["name"]
    for hook in obj["webhooks"]:
        service = hook["clientConfig"].pop("service")
        hook["clientConfig"] = {"url": base + service.get("path", "/"), "caBundle": ca}
    items.append(obj)
if sorted(o["kind"] for o in items) != ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]:
    sys.exit("LWS config/webhook: expected one Mutating- and one ValidatingWebhookConfiguration")
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout, indent=2)
' "https://127.0.0.1:$LWS_WEBHOOK_PORT" "$ca" >"$LWS_DIR/webhooks.json.tmp" \
    || die "could not derive LWS's webhook configuration from $(lws_config_dir)/webhook"
  mv -f "$LWS_DIR/webhooks.json.tmp" "$LWS_DIR/webhooks.json"
}

# lws_spawn: starts lws-controller-manager in a session of its own (like kwokctl's
# components: signals to this script's process group do not reach it), its log
# truncated (the last one kept as .previous.log), its pid in pids/.
lws_spawn() {
  local logf="$CLUSTER_DIR/logs/$LWS.log"
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  if [[ -s $logf ]]; then cp -f "$logf" "$CLUSTER_DIR/logs/$LWS.previous.log" || true; fi
  # 9>&-: it must not inherit the creation lock.
  setsid "$LWS_BIN_DIR/$LWS" --config "$LWS_DIR/config.yaml" --kubeconfig "$KWOK_KUBECONFIG" \
    --zap-log-level=info </dev/null >"$logf" 2>&1 9>&- &
  echo $! >"$CLUSTER_DIR/pids/$LWS.pid"
  disown $!  # no "Killed" notice from bash when it exits while this script runs
}

# lws_crd_established: LWS's CRD is served (about a second after it is created; polled
# here more often than wait_until does; `kubectl wait` fails at once while the CRD has
# no conditions yet).
lws_crd_established() {
  local i
  for i in $(seq 1 25); do
    [[ $(kc get crd "$LWS_CRD" --request-timeout=5s \
      -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) == True ]] && return 0
    sleep 0.2
  done
  return 1
}

# lws_up: LWS's CRD (established), its certificate, ports and webhook configurations,
# and its process unless it runs; lws_ready says when it serves.
lws_up() {
  mkdir -p "$LWS_DIR"
  command -v python3 >/dev/null || die "python3 not found (needed to set up LWS)"
  # Server-side: the CRD is too big for the last-applied annotation of a client-side apply.
  kc apply --server-side --force-conflicts -f "$(lws_config_dir)/crd/bases" >&2
  wait_until kube-apiserver "LWS's CRD to be established" lws_crd_established
  lws_certificate
  lws_choose_ports
  lws_webhooks
  kc apply --server-side --force-conflicts -f "$LWS_DIR/webhooks.json" >&2
  if component_pid "$LWS" >/dev/null; then
    log "$LWS runs (pid $(component_pid "$LWS")); webhooks on https://127.0.0.1:$LWS_WEBHOOK_PORT"
  else
    log "starting $LWS ${LWS_VERSION} (webhooks on https://127.0.0.1:$LWS_WEBHOOK_PORT, log $CLUSTER_DIR/logs/$LWS.log)"
    lws_spawn
  fi
  LWS_SUPERVISED=1
}

# lws_ready: the API server gets answers from LWS's webhooks: a server-side dry run
# (nothing is stored) of a LeaderWorkerSet, and of a pod of one, which the pod webhook
# must give LWS_WORKER_INDEX.
lws_ready() {
  kc create --dry-run=server --request-timeout=10s -o name -f - <<'EOF2' || return 1
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: lws-probe, namespace: default}
spec:
  leaderWorkerTemplate:
    size: 1
    workerTemplate:
      spec:
        containers: [{name: probe, image: probe}]
EOF2
  [[ $(kc create --dry-run=server --request-timeout=10s -f - \
    -o jsonpath='{.spec.containers[0].env[?(@.name=="LWS_WORKER_INDEX")].value}' <<'EOF2'
apiVersion: v1
kind: Pod
metadata:
  name: lws-probe-0
  namespace: default
  labels: {leaderworkerset.sigs.k8s.io/name: lws-probe, leaderworkerset.sigs.k8s.io/worker-index: "0"}
  annotations: {leaderworkerset.sigs.k8s.io/size: "1"}
spec:
  containers: [{name: probe, image: probe}]
EOF2
  ) == 0 ]]
}

# lws_supervise: starts LWS again when its process has gone (same backoff as supervise).
lws_supervise() {
  [[ $LWS_SUPERVISED == 1 ]] || return 0
  component_pid "$LWS" >/dev/null && return 0
  local t; t=$(now)
  (( t >= ${NEXT_START[$LWS]:-0} )) || return 0
  RESTARTS[$LWS]=$(( ${RESTARTS[$LWS]:-0} + 1 ))
  NEXT_START[$LWS]=$(( t + (RESTARTS[$LWS] >= 3 ? 8 : 2 ** RESTARTS[$LWS]) ))
  log "$LWS is not running (it exited; log: $CLUSTER_DIR/logs/$LWS.log); starting it again (restart ${RESTARTS[$LWS]})"
  lws_spawn
}

# lws_stop: ends LWS (SIGTERM; SIGKILL after 10 s), if it runs.
lws_stop() {
  local pid i
  pid=$(component_pid "$LWS") || return 0
  log "stopping $LWS (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    component_pid "$LWS" >/dev/null || return 0
    sleep 0.2
  done
  log "$LWS still runs after 10 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# --------------------------------------------------------------------------- #
# KEDA (--keda): keda-operator and keda-metrics-apiserver, processes of the cluster
# started by this script once the API server is ready, with pid files and logs beside
# the other components'. The operator serves the scalers' metrics over gRPC (mutual TLS)
# to the metrics API server, which the API server's aggregator calls for
# external.metrics.k8s.io (the HPAs that KEDA makes read their metrics from there).
# --------------------------------------------------------------------------- #
KEDA_SUPERVISED=0  # set by keda_up: from then on supervise starts KEDA again when it exits

# keda_config_dir: the module's CRDs, copied beside KEDA's bin dir by build-tools.sh.
keda_config_dir() { echo "${KEDA_BIN_DIR%/bin}/config"; }

# keda_certificates: KEDA's certificates in $KEDA_DIR/certs, made once per cluster: a CA
# (ca.crt; the APIService's caBundle) and one certificate signed by it (tls.crt, tls.key)
# for 127.0.0.1 and keda-metrics-apiserver.keda.svc (the name the aggregator checks),
# usable by server and client. The operator's gRPC server and the metrics API server's
# gRPC client both read ca.crt, tls.crt and tls.key from their --cert-dir and each checks
# the other's certificate against ca.crt (mutual TLS); the metrics API server serves HTTPS
# with the same pair. KEDA's own certificate rotation (a Secret, patched webhooks and
# APIService) stays off.
keda_certificates() {
  local d="$KEDA_DIR/certs"
  [[ -s $d/ca.crt && -s $d/tls.crt && -s $d/tls.key ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (needed for KEDA's certificates)"
  mkdir -p "$d"
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=keda-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$d/ca.key" -out "$d/ca.crt.tmp" &&
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=keda" \
      -keyout "$d/tls.key.tmp" -out "$d/tls.csr" &&
    openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt.tmp" -CAkey "$d/ca.key" -days 3650 \
      -set_serial "0x$(openssl rand -hex 8)" -out "$d/tls.crt.tmp" -extfile <(printf '%s\n' \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-metrics-apiserver.keda.svc,DNS:keda-operator.keda.svc")
  } 2>/dev/null || die "openssl could not make KEDA's certificates"
  rm -f "$d/tls.csr"
  mv -f "$d/tls.key.tmp" "$d/tls.key"
  mv -f "$d/tls.crt.tmp" "$d/tls.crt"
  mv -f "$d/ca.crt.tmp" "$d/ca.crt"
}

# keda_choose_ports: the operator's gRPC, metrics and health ports and the metrics API
# server's HTTPS and metrics ports (KEDA_GRPC_PORT, ...): those of the cluster's last KEDA
# when they are still free (or it still runs), else new ones.
keda_choose_ports() {
  KEDA_GRPC_PORT="" KEDA_OPERATOR_METRICS_PORT="" KEDA_OPERATOR_HEALTH_PORT=""
  KEDA_ADAPTER_PORT="" KEDA_ADAPTER_METRICS_PORT=""
  # shellcheck source=/dev/null
  [[ -f $KEDA_DIR/ports.env ]] && source "$KEDA_DIR/ports.env"
  if [[ -n $KEDA_ADAPTER_METRICS_PORT ]] && { component_pid "$KEDA_OPERATOR" >/dev/null \
      || component_pid "$KEDA_ADAPTER" >/dev/null || lws_ports_free "$KEDA_GRPC_PORT" \
      "$KEDA_OPERATOR_METRICS_PORT" "$KEDA_OPERATOR_HEALTH_PORT" "$KEDA_ADAPTER_PORT" \
      "$KEDA_ADAPTER_METRICS_PORT"; }; then
    return 0
  fi
  read -r KEDA_GRPC_PORT KEDA_OPERATOR_METRICS_PORT KEDA_OPERATOR_HEALTH_PORT KEDA_ADAPTER_PORT \
    KEDA_ADAPTER_METRICS_PORT < <(lws_free_ports 5)
  [[ -n $KEDA_ADAPTER_METRICS_PORT ]] || die "python3 found no free ports for KEDA"
  printf '%s\n' "KEDA_GRPC_PORT=$KEDA_GRPC_PORT" "KEDA_OPERATOR_METRICS_PORT=$KEDA_OPERATOR_METRICS_PORT" \
    "KEDA_OPERATOR_HEALTH_PORT=$KEDA_OPERATOR_HEALTH_PORT" "KEDA_ADAPTER_PORT=$KEDA_ADAPTER_PORT" \
    "KEDA_ADAPTER_METRICS_PORT=$KEDA_ADAPTER_METRICS_PORT" >"$KEDA_DIR/ports.env"
}

# keda_apiservice: writes $KEDA_DIR/apiservice.yaml: KEDA's namespace, the Service the
# APIService names and the APIService v1beta1.external.metrics.k8s.io. Nothing routes a
# ClusterIP here (no kube-proxy), but the aggregator sends a request for an ExternalName
# Service to https://<externalName>:<the APIService's port> (k8s.io/apiserver's
# ResolveCluster), checking the certificate for <service>.<namespace>.svc against the
# caBundle, and its availability check asks a ClusterIP Service for endpoints, not an
# ExternalName one. (With --enable-aggregator-routing it would take an endpoint of a
# ClusterIP Service instead, but an endpoint address may not be a loopback address.)
keda_apiservice() {
  cat >"$KEDA_DIR/apiservice.yaml" <<EOF2
apiVersion: v1
kind: Namespace
metadata: {name: keda}
---
apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: keda, labels: {app.kubernetes.io/part-of: keda-operator}}
spec:
  type: ExternalName
  externalName: 127.0.0.1
  ports: [{name: https, port: $KEDA_ADAPTER_PORT, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io, labels: {app.kubernetes.io/part-of: keda-operator}}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: keda-metrics-apiserver, namespace: keda, port: $KEDA_ADAPTER_PORT}
  caBundle: $(base64 -w0 <"$KEDA_DIR/certs/ca.crt")
EOF2
}

# keda_spawn COMPONENT ARGS...: starts KEDA's COMPONENT in a session of its own (like
# lws_spawn), with the environment KEDA's manifests give its pods: every namespace
# watched, its own namespace keda (also where cluster-wide objects' secrets are read).
keda_spawn() {
  local c=$1 logf="$CLUSTER_DIR/logs/$1.log"; shift
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  if [[ -s $logf ]]; then cp -f "$logf" "$CLUSTER_DIR/logs/$c.previous.log" || true; fi
  # 9>&-: it must not inherit the creation lock.
  WATCH_NAMESPACE="" POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda \
    setsid "$KEDA_BIN_DIR/$c" "$@" </dev/null >"$logf" 2>&1 9>&- &
  echo $! >"$CLUSTER_DIR/pids/$c.pid"
  disown $!  # no "Killed" notice from bash when it exits while this script runs
}

# keda_start COMPONENT: keda_spawn with COMPONENT's command line: the cluster's admin
# kubeconfig, everything on 127.0.0.1, the certificates of keda_certificates.
keda_start() {
  local certs="$KEDA_DIR/certs"
  case $1 in
    "$KEDA_OPERATOR")
      keda_spawn "$1" --kubeconfig "$KWOK_KUBECONFIG" --leader-elect=false \
        --enable-cert-rotation=false --cert-dir "$certs" \
        --enable-webhook-patching=false --enable-apiservice-patching=false \
        --metrics-service-bind-address "127.0.0.1:$KEDA_GRPC_PORT" \
        --metrics-bind-address "127.0.0.1:$KEDA_OPERATOR_METRICS_PORT" \
        --health-probe-bind-address "127.0.0.1:$KEDA_OPERATOR_HEALTH_PORT" \
        --zap-log-level=info --zap-encoder=console ;;
    "$KEDA_ADAPTER")
      # Not in a pod: the kubeconfigs of its client, its lister and its delegated
      # authentication and authorization are given (else it looks for in-cluster ones).
      keda_spawn "$1" --kubeconfig "$KWOK_KUBECONFIG" --lister-kubeconfig "$KWOK_KUBECONFIG" \
        --authentication-kubeconfig "$KWOK_KUBECONFIG" --authorization-kubeconfig "$KWOK_KUBECONFIG" \
        --bind-address 127.0.0.1 --secure-port "$KEDA_ADAPTER_PORT" --cert-dir "$certs" \
        --tls-cert-file "$certs/tls.crt" --tls-private-key-file "$certs/tls.key" \
        --metrics-service-address "127.0.0.1:$KEDA_GRPC_PORT" --port "$KEDA_ADAPTER_METRICS_PORT" ;;
  esac
}

# keda_crds_established: every CRD of KEDA is served.
keda_crds_established() {
  local i crd ok
  for i in $(seq 1 25); do
    ok=1
    for crd in "${KEDA_CRDS[@]}"; do
      [[ $(kc get crd "$crd" --request-timeout=5s \
        -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) == True ]] \
        || { ok=0; break; }
    done
    (( ok )) && return 0
    sleep 0.2
  done
  return 1
}

# keda_up: KEDA's CRDs (established), its namespace, certificates, ports, Service and
# APIService, and its processes unless they run; keda_ready says when it serves.
keda_up() {
  mkdir -p "$KEDA_DIR"
  command -v python3 >/dev/null || die "python3 not found (needed to set up KEDA)"
  # Server-side, like LWS's: the ScaledObject and ScaledJob CRDs are big.
  kc apply --server-side --force-conflicts -f "$(keda_config_dir)/crd/bases" >&2
  mapfile -t KEDA_CRDS < <(kc get -f "$(keda_config_dir)/crd/bases" -o name | sed 's|^.*/||')
  wait_until kube-apiserver "KEDA's CRDs to be established" keda_crds_established
  keda_certificates
  keda_choose_ports
  keda_apiservice
  kc apply --server-side --force-conflicts -f "$KEDA_DIR/apiservice.yaml" >&2
  if ! grep -q horizontal-pod-autoscaler-sync-period "$CLUSTER_DIR/kwok.yaml" 2>/dev/null; then
    log "note: cluster $NAME was created without --keda: its HPA controller syncs every 15 s, not 2 s"
  fi
  local c
  for c in "$KEDA_OPERATOR" "$KEDA_ADAPTER"; do
    if component_pid "$c" >/dev/null; then
      log "$c runs (pid $(component_pid "$c"))"
    else
      log "starting $c ${KEDA_VERSION} (log $CLUSTER_DIR/logs/$c.log)"
      keda_start "$c"
    fi
  done
  KEDA_SUPERVISED=1
}

# keda_operator_ready: the operator's health endpoint says it is ready.
keda_operator_ready() {
  [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$KEDA_OPERATOR_HEALTH_PORT/readyz" 2>/dev/null) == ok ]]
}

# keda_ready: the operator is ready and the API server serves external.metrics.k8s.io
# through the metrics API server (the APIService is Available).
keda_ready() {
  keda_operator_ready || return 1
  kc get --raw /apis/external.metrics.k8s.io/v1beta1 --request-timeout=10s >/dev/null
}

# keda_wait: waits (supervising) until keda_ready; on the deadline, fail names the
# operator when it is not ready, else the metrics API server.
keda_wait() {
  until keda_ready >/dev/null 2>&1; do
    supervise
    if (( $(now) >= DEADLINE )); then
      if keda_operator_ready; then
        fail "$KEDA_ADAPTER" "the API server to serve external.metrics.k8s.io through KEDA's metrics API server"
      fi
      fail "$KEDA_OPERATOR" "KEDA's operator to be ready (http://127.0.0.1:$KEDA_OPERATOR_HEALTH_PORT/readyz)"
    fi
    sleep 1
  done
}

# keda_supervise: starts a KEDA component again when its process has gone (same backoff
# as supervise).
keda_supervise() {
  [[ $KEDA_SUPERVISED == 1 ]] || return 0
  local c t
  for c in "$KEDA_OPERATOR" "$KEDA_ADAPTER"; do
    component_pid "$c" >/dev/null && continue
    t=$(now)
    (( t >= ${NEXT_START[$c]:-0} )) || continue
    RESTARTS[$c]=$(( ${RESTARTS[$c]:-0} + 1 ))
    NEXT_START[$c]=$(( t + (RESTARTS[$c] >= 3 ? 8 : 2 ** RESTARTS[$c]) ))
    log "$c is not running (it exited; log: $CLUSTER_DIR/logs/$c.log); starting it again (restart ${RESTARTS[$c]})"
    keda_start "$c"
  done
}

# keda_stop: ends KEDA's components (SIGTERM; SIGKILL after 10 s), those that run.
keda_stop() {
  local c pid i
  for c in "$KEDA_ADAPTER" "$KEDA_OPERATOR"; do
    pid=$(component_pid "$c") || continue
    log "stopping $c (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      component_pid "$c" >/dev/null || continue 2
      sleep 0.2
    done
    log "$c still runs after 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# keda_status: KEDA's line of status, for a cluster that up --keda set it up in.
keda_status() {
  [[ -f $KEDA_DIR/ports.env ]] || return 0
  local c pid state pids=""
  # shellcheck source=/dev/null
  source "$KEDA_DIR/ports.env"
  for c in "$KEDA_OPERATOR" "$KEDA_ADAPTER"; do
    if pid=$(component_pid "$c"); then pids+=", $c pid $pid"; else pids+=", $c not running"; fi
  done
  if keda_ready >/dev/null 2>&1; then state="ready"; else state="not ready"; fi
  echo "keda: $state (${KEDA_VERSION}$pids, external metrics https://127.0.0.1:$KEDA_ADAPTER_PORT, logs $CLUSTER_DIR/logs/keda-*.log)"
}

# fail COMPONENT WHAT: the one error on the deadline. COMPONENT is the one whose
# work WHAT is; the first component (in dependency order) that is not running is
# named instead, and etcd when the API server says that etcd fails.
fail() {
  local c=$1 what=$2 x reason out logf
  for x in "${COMPONENTS[@]}"; do
    if ! component_pid "$x" >/dev/null; then c=$x; break; fi
  done
  c=${c:-kube-apiserver}
  if component_pid "$c" >/dev/null; then
    reason="it is running"
    if [[ $c == kube-apiserver ]]; then
      out=$(kc get --raw '/readyz?verbose' --request-timeout=5s 2>&1 || true)
      if [[ $out == *'[-]etcd '* ]]; then c=etcd; reason="it runs, but the API server cannot use it"; fi
    fi
  else
    reason="it is not running"
  fi
  case ${RESTARTS[$c]:-0} in
    0) ;;
    1) reason+="; it exited once and was started again" ;;
    *) reason+="; it exited and was started again ${RESTARTS[$c]} times" ;;
  esac
  log "ERROR: cluster $NAME is not up after ${TIMEOUT}s: $c is not working ($reason); $CMD was waiting for $what"
  logf="$CLUSTER_DIR/logs/$c.log"
  [[ -s $logf ]] || logf="$CLUSTER_DIR/logs/$c.previous.log"
  if [[ -s $logf ]]; then
    log "last lines of $logf:"
    tail -n 25 "$logf" | sed 's/^/    /' >&2 || true
  else
    log "$c has written no log ($CLUSTER_DIR/logs/)"
  fi
  exit 1
}

# wait_until COMPONENT WHAT CMD...: runs CMD every second, supervising the
# components, until it succeeds; on the deadline, fail COMPONENT WHAT.
wait_until() {
  local c=$1 what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    supervise
    (( $(now) < DEADLINE )) || fail "$c" "$what"
    sleep 1
  done
}

node_ready() {
  [[ $(kc get "$1" --request-timeout=10s -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

cmd_up() {
  local start=$SECONDS cfg node
  tools
  mkdir -p "$WORKDIR"
  DEADLINE=$(( $(now) + TIMEOUT ))
  cfg=$(write_config)

  log "creating cluster $NAME (kube ${KUBE_VERSION}, work dir $WORKDIR)"
  # Port choice happens inside `kwokctl create` (it skips ports that are in
  # use); holding a lock until the components listen keeps parallel creations
  # from choosing the same ports.
  local lock="${TMPDIR:-/tmp}/aistack-operator-kwokctl.lock"
  exec 9>>"$lock"
  flock -w "$TIMEOUT" 9 || die "$lock stayed locked for ${TIMEOUT}s (another cluster being created)"
  # --kubeconfig "": do not merge into ~/.kube/config; we write our own below.
  launch "create cluster" create cluster --name "$NAME" --config "$cfg" --runtime binary \
    --kubeconfig "" --timeout "${TIMEOUT}s"
  [[ -f $KWOK_KUBECONFIG ]] || die "kwokctl wrote no kubeconfig at $KWOK_KUBECONFIG"

  wait_until kube-apiserver "the API server to be ready (/readyz)" \
    kc get --raw /readyz --request-timeout=10s
  # The default ServiceAccount proves kube-controller-manager is working.
  wait_until kube-controller-manager "the default ServiceAccount (kube-controller-manager creates it)" \
    kc -n default get serviceaccount default --request-timeout=10s
  wait_until "" "every component to run" all_running
  # Every component listens on its ports now.
  flock -u 9
  exec 9>&-
  finish_kwokctl

  # LWS starts while the nodes are applied; it is waited for after them.
  lws_up

  log "applying the default StorageClass from $HACK_DIR/storage.yaml"
  kc apply -f "$HACK_DIR/storage.yaml" >&2

  if [[ $NODES_FILE != none ]]; then
    log "applying nodes from $NODES_FILE"
    kc apply -f "$NODES_FILE" >&2
    for node in $(kc get -f "$NODES_FILE" -o name); do
      wait_until kwok-controller "$node to be Ready (kwok-controller makes it so)" node_ready "$node"
    done
  fi

  wait_until "$LWS" "LWS's webhooks to answer the API server" lws_ready
  if [[ -n $KEDA ]]; then
    keda_up
    keda_wait
  fi

  if [[ -n $KUBECONFIG_OUT ]]; then
    # Self-contained (certificates embedded), so it stays valid wherever it is copied.
    (umask 077; kc config view --flatten --raw >"$KUBECONFIG_OUT.tmp")
    mv -f "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
  fi
  local restarted="" c
  for c in "${!RESTARTS[@]}"; do restarted+=" $c (${RESTARTS[$c]}x)"; done
  log "cluster $NAME is ready in $((SECONDS - start))s${restarted:+; started again:$restarted}"
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
    # LWS (and KEDA) first, while the API server still answers them.
    keda_stop
    lws_stop
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
    # shellcheck disable=SC2086 # $left is a list of pids
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
    lws_status
    keda_status
    kc get nodes -o custom-columns='NAME:.metadata.name,STATUS:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu' || true
    return 0
  fi
  echo "api server: not ready"
  lws_status
  keda_status
  return 1
}

lws_status() {
  local pid state
  LWS_WEBHOOK_PORT=""
  # shellcheck source=/dev/null
  [[ -f $LWS_DIR/ports.env ]] && source "$LWS_DIR/ports.env"
  if pid=$(component_pid "$LWS"); then
    if lws_ready >/dev/null 2>&1; then state="ready"; else state="running, its webhooks do not answer"; fi
    echo "lws: $state (${LWS_VERSION}, pid $pid, webhooks https://127.0.0.1:$LWS_WEBHOOK_PORT, log $CLUSTER_DIR/logs/$LWS.log)"
  else
    echo "lws: not running (log $CLUSTER_DIR/logs/$LWS.log)"
  fi
}

cmd_stop() {
  [[ -f $KWOK_KUBECONFIG ]] || die "cluster $NAME: not created (work dir $WORKDIR)"
  tools
  log "stopping cluster $NAME (data kept)"
  keda_stop
  lws_stop
  kwokctl stop cluster --name "$NAME" >&2
}

cmd_start() {
  [[ -f $KWOK_KUBECONFIG ]] || die "cluster $NAME: not created (work dir $WORKDIR)"
  # KEDA comes back with the cluster when up --keda set it up.
  [[ -f $KEDA_DIR/ports.env ]] && KEDA=1
  tools
  DEADLINE=$(( $(now) + TIMEOUT ))
  log "starting cluster $NAME"
  launch "start cluster" start cluster --name "$NAME" --timeout "${TIMEOUT}s"
  wait_until kube-apiserver "the API server to be ready (/readyz)" \
    kc get --raw /readyz --request-timeout=10s
  wait_until "" "every component to run" all_running
  finish_kwokctl
  lws_up
  wait_until "$LWS" "LWS's webhooks to answer the API server" lws_ready
  if [[ -n $KEDA ]]; then
    keda_up
    keda_wait
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
