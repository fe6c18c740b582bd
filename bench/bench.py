"""The benchmark: the operator against the raw `kubectl apply --server-side` limit.

    make bench                      # everything: 20 single-stack runs, N = 10, 100, 1000
    .venv/bin/python bench/bench.py --sizes 10,100 --runs 5 --idle 30

Every measurement runs on a fresh local control plane (hack/local-cluster.sh, simulated
nodes from bench/nodes.yaml, audit log on, client QPS limits of the cluster's own
controllers lifted), once with the operator and once with the limit:

operator  `kubectl apply --server-side` of the AIStacks; the operator (with its license
          webhook) creates the children; done when every AIStack reports Ready=True.
limit     `kubectl apply --server-side` of exactly the manifests `aistack render` gives
          for the same stacks; done when every Deployment has all replicas ready.

Both are timed from the moment kubectl starts to (a) every child existing and (b) ready,
as seen by watches this process holds. API requests are counted from the API server's
audit log by user agent, not from the operator's own logging. Results: a table on
stdout, bench/results/<label>.json and bench/results/<label>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analysis
from aistack.kinds import crd_established
from aistack.limits import DEFAULT_RESYNC

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HACK = ROOT / "hack"
STACK_LABEL = "aistack.dev/stack"
NAMESPACE = "bench"

#: The stack every measurement uses: two models, Ray, MLflow and the gateway (defaults).
STACK_SPEC: dict[str, Any] = {
    "models": [
        {"name": "chat", "source": "mistralai/Mistral-7B-Instruct-v0.3", "gpus": 1},
        {"name": "phi", "source": "microsoft/Phi-3.5-mini-instruct", "gpus": 1},
    ],
}

WATCHED = {
    "Deployment": "/apis/apps/v1/deployments",
    "Service": "/api/v1/services",
    "ConfigMap": "/api/v1/configmaps",
    "PersistentVolumeClaim": "/api/v1/persistentvolumeclaims",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/networkpolicies",
}
STACKS_PATH = "/apis/aistack.dev/v1alpha1/aistacks"
LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stack_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": name, "namespace": namespace},
        "spec": STACK_SPEC,
    }


def stack_names(n: int) -> list[str]:
    return [f"s{i:04d}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """A fresh local control plane for one measurement."""

    name: str
    workdir: Path
    bin_dir: Path = field(init=False)
    kubeconfig: Path = field(init=False)

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"
        self.bin_dir = Path(
            subprocess.run(
                [str(HACK / "local-cluster.sh"), "bin-dir"], capture_output=True, text=True
            ).stdout.strip()
        )

    def audit_lines(self) -> Iterator[str]:
        """Every line of the audit log, rotated parts included (the API server rotates it
        when it grows large, as it does with a thousand stacks)."""
        logs = self.workdir / "clusters" / self.name / "logs"
        for path in sorted(logs.glob("audit*.log")):
            with path.open() as f:
                yield from f

    def _script(self, *args: str) -> None:
        cmd = [str(HACK / "local-cluster.sh"), *args, "--name", self.name]
        cmd += ["--workdir", str(self.workdir), "--kubeconfig", str(self.kubeconfig)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")

    def up(self) -> None:
        self._script(
            "up", "--nodes", str(BENCH / "nodes.yaml"),
            "--audit-policy", str(BENCH / "audit-policy.yaml"), "--no-qps-limits",
        )  # fmt: skip

    def down(self) -> None:
        self._script("down")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input, capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


@contextlib.contextmanager
def fresh_cluster(name: str, keep: bool = False) -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix=f"aistack-{name}-"))
    cluster = Cluster(name, workdir)
    log(f"starting cluster {name}")
    try:
        cluster.up()
        yield cluster
    finally:
        if not keep:
            log(f"stopping cluster {name}")
            try:
                cluster.down()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- watches


class Http:
    """The kubeconfig's credentials on a plain urllib3 pool (watch streams, lists)."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes

        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=config
        )
        self.server = config.host
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=config.ssl_ca_cert,
            cert_file=config.cert_file,
            key_file=config.key_file,
        )

    def get(self, path: str, **query: str) -> Any:
        resp = self.pool.request("GET", self.server + path, fields=query, timeout=60)
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {resp.data[:300]!r}")
        return json.loads(resp.data)

    def stream(self, path: str, **query: str) -> Any:
        return self.pool.request(
            "GET", self.server + path, fields=query, preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=None),
        )  # fmt: skip


def deployment_ready(obj: dict[str, Any]) -> bool:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    return (
        want > 0
        and int(status.get("observedGeneration", 0)) >= int(obj["metadata"].get("generation", 0))
        and int(status.get("readyReplicas", 0)) == want
        and int(status.get("updatedReplicas", 0)) == want
    )


def stack_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if int(status.get("observedGeneration", -1)) != int(obj["metadata"].get("generation", 0)):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


class Watcher:
    """Watches children and stacks; remembers when each first existed and became ready."""

    def __init__(self, http: Http, stacks: bool) -> None:
        self.http = http
        self.lock = threading.Condition()
        self.first_seen: dict[tuple[str, str, str], float] = {}
        self.ready_at: dict[tuple[str, str, str], float] = {}
        self._stop = False
        paths = dict(WATCHED)
        if stacks:
            paths["AIStack"] = STACKS_PATH
        self.threads = [
            threading.Thread(target=self._run, args=(kind, path), daemon=True)
            for kind, path in paths.items()
        ]
        self._synced = threading.Barrier(len(self.threads) + 1)
        for t in self.threads:
            t.start()
        self._synced.wait(timeout=60)

    def _record(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (kind, meta.get("namespace", ""), meta["name"])
        ready = (
            deployment_ready(obj)
            if kind == "Deployment"
            else stack_ready(obj)
            if kind == "AIStack"
            else False
        )
        with self.lock:
            self.first_seen.setdefault(key, now)
            if ready:
                self.ready_at.setdefault(key, now)
            self.lock.notify_all()

    def _run(self, kind: str, path: str) -> None:
        query = {} if kind == "AIStack" else {"labelSelector": STACK_LABEL}
        listing = self.http.get(path, **query)
        now = time.monotonic()
        for item in listing.get("items", []):
            self._record(kind, item, now)
        version = listing["metadata"]["resourceVersion"]
        self._synced.wait(timeout=60)
        while not self._stop:
            resp = self.http.stream(
                path, watch="true", resourceVersion=version, allowWatchBookmarks="true",
                timeoutSeconds="3600", **query,
            )  # fmt: skip
            try:
                for line in resp:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        listing = self.http.get(path, **query)
                        version = listing["metadata"]["resourceVersion"]
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(kind, obj, time.monotonic())
            except Exception as exc:  # the stream broke (e.g. the cluster stops): resume
                if self._stop:
                    return
                log(f"watch of {kind} broke ({exc}); resuming")
                time.sleep(0.5)
            finally:
                resp.release_conn()

    def wait_for(
        self, keys: Sequence[tuple[str, str, str]], which: str, timeout: float
    ) -> float | None:
        """The latest first-seen (or ready) time over ``keys``; None on timeout."""
        table = self.first_seen if which == "exists" else self.ready_at
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                missing = [k for k in keys if k not in table]
                if not missing:
                    return max(table[k] for k in keys)
                left = deadline - time.monotonic()
                if left <= 0:
                    log(f"timed out: {len(missing)} of {len(keys)} not {which}, e.g. {missing[0]}")
                    return None
                self.lock.wait(timeout=min(left, 1.0))

    def stop(self) -> None:
        self._stop = True


# --------------------------------------------------------------------------- operator


class Operator:
    """`aistack run` with its license webhook, as in a real install (one replica)."""

    def __init__(self, cluster: Cluster, log_path: Path, resync: float = DEFAULT_RESYNC) -> None:
        exe = Path(sys.executable).parent / "aistack"
        port = _free_port()
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(exe), "run", "--webhook-port", str(port), "--webhook-addr", "127.0.0.1",
                 "--webhook-host", "127.0.0.1", "--webhook-managed", "bench.aistack.dev",
                 "--resync-interval", str(resync), "--metrics-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(cluster)
        except BaseException:
            self.stop()  # never leave an operator behind
            raise

    def _wait_ready(self, cluster: Cluster) -> None:
        # Ready when the API server admits a stack through the webhook (dry run).
        probe = json.dumps(stack_manifest("probe", "default"))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                cluster.kubectl("get", "validatingwebhookconfiguration", "bench.aistack.dev")
                cluster.kubectl(
                    "apply", "--server-side", "--dry-run=server", "-f", "-", input=probe
                )
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- measurements


def rendered(names: Sequence[str], namespace: str) -> list[dict[str, Any]]:
    """What `aistack render` gives for these stacks (the limit applies exactly this)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.dump_all([stack_manifest(n, namespace) for n in names], f, Dumper=DUMPER)
    exe = Path(sys.executable).parent / "aistack"
    out = subprocess.run(
        [str(exe), "render", "-f", f.name], capture_output=True, text=True, check=True
    ).stdout
    os.unlink(f.name)
    return [m for m in yaml.load_all(out, Loader=LOADER) if m]


def key(m: dict[str, Any]) -> tuple[str, str, str]:
    return (m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"])


def apply_shards(cluster: Cluster, docs: Sequence[dict[str, Any]], shards: int) -> float:
    """`kubectl apply --server-side` of ``docs`` split over ``shards`` parallel kubectls;
    returns the monotonic time at which they were started."""
    shards = max(1, min(shards, len(docs)))
    files = []
    for i in range(shards):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.dump_all(list(docs[i::shards]), f, Dumper=DUMPER)
        files.append(f.name)
    kubectl = str(cluster.bin_dir / "kubectl")
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [kubectl, "apply", "--server-side", "-f", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=cluster.env,
        )
        for name in files
    ]
    for p, name in zip(procs, files, strict=True):
        _, err = p.communicate(timeout=3600)
        os.unlink(name)
        if p.returncode != 0:
            raise RuntimeError(f"kubectl apply failed: {err.decode()[-2000:]}")
    return start


@dataclass
class Run:
    exists: float | None
    ready: float | None
    wall_start: float
    wall_end: float


def one_run(
    cluster: Cluster,
    watcher: Watcher,
    docs: Sequence[dict[str, Any]],
    children: Sequence[tuple[str, str, str]],
    ready_keys: Sequence[tuple[str, str, str]],
    shards: int,
    timeout: float,
) -> Run:
    wall_start = time.time()
    start = apply_shards(cluster, docs, shards)
    exists = watcher.wait_for(children, "exists", timeout)
    ready = watcher.wait_for(ready_keys, "ready", timeout)
    return Run(
        exists=None if exists is None else exists - start,
        ready=None if ready is None else ready - start,
        wall_start=wall_start,
        wall_end=time.time(),
    )


def prepare(cluster: Cluster, namespaces: Sequence[str], with_crds: bool) -> None:
    if with_crds:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        deadline = time.monotonic() + 60  # polled: `kubectl wait` fails on `conditions: null`
        while not all(
            map(crd_established, json.loads(cluster.kubectl("get", "crd", "-o", "json"))["items"])
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the CRDs are not established after 60 s")
            time.sleep(0.2)
    for ns in namespaces:
        cluster.kubectl("create", "namespace", ns)
    for ns in namespaces:  # the namespace's ServiceAccount: admission of pods needs it
        deadline = time.monotonic() + 60
        while True:
            try:
                cluster.kubectl("-n", ns, "get", "serviceaccount", "default")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def measure_single(mode: str, runs: int, out: Path) -> dict[str, Any]:
    """``runs`` stacks one after the other, each in its own namespace, in one cluster."""
    namespaces = [f"single-{i}" for i in range(runs)]
    with fresh_cluster(f"bench-{mode}-1") as cluster:
        prepare(cluster, namespaces, with_crds=mode == "operator")
        operator = Operator(cluster, out / "operator-single.log") if mode == "operator" else None
        watcher = Watcher(Http(cluster.kubeconfig), stacks=operator is not None)
        results = []
        try:
            for ns in namespaces:
                manifests = rendered(["s0001"], ns)
                children = [key(m) for m in manifests]
                if operator is not None:
                    docs = [stack_manifest("s0001", ns)]
                    ready_keys = [("AIStack", ns, "s0001")]
                else:
                    docs = manifests
                    ready_keys = [k for k in children if k[0] == "Deployment"]
                run = one_run(cluster, watcher, docs, children, ready_keys, 1, 120)
                log(f"single {mode} {ns}: exists {run.exists}s, ready {run.ready}s")
                results.append(run)
        finally:
            watcher.stop()
            if operator is not None:
                operator.stop()
    exists = [r.exists for r in results if r.exists is not None]
    ready = [r.ready for r in results if r.ready is not None]
    return {
        "mode": mode,
        "runs": runs,
        "completed": len(ready),
        "exists": exists,
        "ready": ready,
        "exists_p50": analysis.percentile(exists, 50) if exists else None,
        "exists_p95": analysis.percentile(exists, 95) if exists else None,
        "ready_p50": analysis.percentile(ready, 50) if ready else None,
        "ready_p95": analysis.percentile(ready, 95) if ready else None,
    }


def measure_many(
    mode: str,
    n: int,
    shards: int,
    idle: float,
    timeout: float,
    out: Path,
    resync: float = DEFAULT_RESYNC,
) -> dict[str, Any]:
    """``n`` stacks created at once; with the operator, then ``idle`` quiet seconds, in
    which the operator's resync runs every ``resync`` seconds."""
    names = stack_names(n)
    manifests = rendered(names, NAMESPACE)
    children = [key(m) for m in manifests]
    with fresh_cluster(f"bench-{mode}-{n}") as cluster:
        prepare(cluster, [NAMESPACE], with_crds=mode == "operator")
        operator = (
            Operator(cluster, out / f"operator-{n}.log", resync) if mode == "operator" else None
        )
        watcher = Watcher(Http(cluster.kubeconfig), stacks=operator is not None)
        try:
            cpu_before = operator.cpu_seconds() if operator else 0.0
            if operator is not None:
                docs = [stack_manifest(s, NAMESPACE) for s in names]
                ready_keys = [("AIStack", NAMESPACE, s) for s in names]
            else:
                docs = manifests
                ready_keys = [k for k in children if k[0] == "Deployment"]
            run = one_run(cluster, watcher, docs, children, ready_keys, shards, timeout)
            log(f"{n} stacks, {mode}: exists {run.exists}s, ready {run.ready}s")
            result: dict[str, Any] = {
                "mode": mode, "stacks": n, "children": len(children), "shards": shards,
                "exists": run.exists, "ready": run.ready,
            }  # fmt: skip
            agents = analysis.OPERATOR_AGENTS if operator else (analysis.KUBECTL_AGENT,)
            time.sleep(2)  # the last requests of the run reach the audit log
            requests = analysis.read_audit(cluster.audit_lines(), agents)
            created = analysis.window(requests, run.wall_start, run.wall_end)
            result["requests"] = analysis.by_verb(created)
            result["requests_per_stack"] = {
                verb: count / n for verb, count in analysis.by_verb(created).items()
            }
            result["requests_by_resource"] = analysis.by_resource_verb(created)
            breakdown = analysis.write_breakdown(created, len(children))
            result["writes"] = {
                "child_writes": breakdown.child_writes,
                "children": breakdown.children,
                "writes_per_child": breakdown.writes_per_child,
                "status_writes": breakdown.status_writes,
                "status_writes_per_stack": breakdown.status_writes / n,
                "event_writes": breakdown.event_writes,
                "other_writes": breakdown.other_writes,
                "repeat_child_writes": dict(list(breakdown.repeat_child_writes.items())[:20]),
            }
            if operator is not None:
                result["operator_cpu_seconds"] = operator.cpu_seconds() - cpu_before
                result["operator_peak_rss_mb"] = operator.peak_rss_mb()
                if idle > 0 and run.ready is not None:
                    log(f"{n} stacks: {idle:.0f}s idle, everything converged")
                    start = time.time()
                    time.sleep(idle)
                    end = time.time()
                    time.sleep(2)
                    quiet = analysis.window(
                        analysis.read_audit(cluster.audit_lines(), agents), start, end
                    )
                    result["idle_seconds"] = idle
                    result["idle_requests"] = analysis.by_resource_verb(quiet)
                    result["idle_writes"] = sum(1 for r in quiet if r.write)
                    # Reads in the quiet window, watches aside (they end every few
                    # minutes whatever the operator does): an upper bound on what the
                    # resync costs, per stack per hour at the default interval.
                    reads = sum(1 for r in quiet if not r.write and r.verb != "watch")
                    result["resync_interval"] = resync
                    result["idle_reads"] = reads
                    result["resync_reads_per_stack_hour"] = (
                        reads / n / (idle / resync) * (3600 / DEFAULT_RESYNC)
                    )
            return result
        finally:
            watcher.stop()
            if operator is not None:
                operator.stop()


# --------------------------------------------------------------------------- report


def _idle_rows(n: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if "idle_writes" in op:
        rows.append(
            {"name": f"{n} stacks, writes in {op['idle_seconds']:.0f}s idle",
             "operator": float(op["idle_writes"]), "unit": "", "goal": "0",
             "met": op["idle_writes"] == 0}
        )  # fmt: skip
    if "resync_reads_per_stack_hour" in op:
        rows.append(
            {"name": f"{n} stacks, API reads per stack per hour from the resync "
             f"(every {DEFAULT_RESYNC:.0f} s; measured every {op['resync_interval']:g} s)",
             "operator": op["resync_reads_per_stack_hour"], "unit": ""}
        )  # fmt: skip
    return rows


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    single = results.get("single", {})
    op, lim = single.get("operator"), single.get("limit")
    if op and lim:
        p50 = analysis.ratio(op["exists_p50"], lim["exists_p50"])
        rows += [
            {"name": "1 stack, children exist, p50", "operator": op["exists_p50"],
             "limit": lim["exists_p50"], "goal": "<= 1.2x",
             "met": None if p50 is None else p50 <= 1.2},
            {"name": "1 stack, children exist, p95", "operator": op["exists_p95"],
             "limit": lim["exists_p95"]},
            {"name": "1 stack, Ready, p50", "operator": op["ready_p50"], "limit": lim["ready_p50"]},
            {"name": "1 stack, Ready, p95", "operator": op["ready_p95"], "limit": lim["ready_p95"]},
        ]  # fmt: skip
    for n, pair in sorted(results.get("many", {}).items(), key=lambda kv: int(kv[0])):
        op, lim = pair.get("operator"), pair.get("limit")
        if not op:
            continue
        rows += _idle_rows(n, op)  # the operator's alone (also with --only operator)
        if not lim:
            continue
        r = analysis.ratio(op["ready"], lim["ready"])
        goal, met = None, None
        if int(n) == 100:
            goal, met = "<= 1.5x", None if r is None else r <= 1.5
        if int(n) == 1000:
            goal, met = "<= 180s", op["ready"] is not None and op["ready"] <= 180
        rows += [
            {"name": f"{n} stacks, children exist", "operator": op["exists"],
             "limit": lim["exists"]},
            {"name": f"{n} stacks, all Ready", "operator": op["ready"], "limit": lim["ready"],
             "goal": goal, "met": met},
            {"name": f"{n} stacks, operator peak RSS", "operator": op["operator_peak_rss_mb"],
             "unit": " MB", "goal": "<= 300 MB" if int(n) == 1000 else None,
             "met": op["operator_peak_rss_mb"] <= 300 if int(n) == 1000 else None},
            {"name": f"{n} stacks, operator CPU", "operator": op["operator_cpu_seconds"]},
        ]  # fmt: skip
        if "writes" in op and "writes" in lim:
            rows += [
                {"name": f"{n} stacks, writes per child",
                 "operator": op["writes"]["writes_per_child"],
                 "limit": lim["writes"]["writes_per_child"], "unit": "", "goal": "<= 1",
                 "met": op["writes"]["writes_per_child"] <= 1},
                {"name": f"{n} stacks, status writes per stack",
                 "operator": op["writes"]["status_writes_per_stack"], "unit": ""},
            ]  # fmt: skip
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    single = results.get("single", {})
    for mode in ("operator", "limit"):
        s = single.get(mode)
        if s and s["exists_p50"] is not None:
            series.setdefault(mode, {}).setdefault("exists", []).append((1, s["exists_p50"]))
            series[mode].setdefault("ready", []).append((1, s["ready_p50"]))
    for n, pair in results.get("many", {}).items():
        for mode, r in pair.items():
            for what in ("exists", "ready"):
                if r.get(what) is not None:
                    series.setdefault(mode, {}).setdefault(what, []).append((int(n), r[what]))
    titles = {"exists": "every child exists", "ready": "everything Ready"}
    for ax, what in zip(axes, ("exists", "ready"), strict=True):
        for mode, style in (("operator", "o-"), ("limit", "s--")):
            points = sorted(series.get(mode, {}).get(what, []))
            if points:
                label = "aistack-operator" if mode == "operator" else "kubectl apply (limit)"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("stacks created at once (1 = single-stack p50)")
        ax.set_ylabel("seconds from kubectl apply")
        ax.set_title(f"time until {titles[what]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"aistack-operator benchmark ({results['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="single-stack runs (default 20)")
    parser.add_argument(
        "--sizes", default="10,100,1000", help="stack counts created at once (default 10,100,1000)"
    )
    parser.add_argument("--idle", type=float, default=120, help="idle seconds measured (120)")
    parser.add_argument(
        "--idle-at", type=int, metavar="N", help="stack count after which idle is measured "
        "(default: the largest of --sizes)",
    )  # fmt: skip
    parser.add_argument(
        "--resync", type=float, default=10.0, metavar="SECONDS",
        help="the operator's --resync-interval while measured (10: many resyncs in --idle)",
    )  # fmt: skip
    parser.add_argument("--shards", type=int, default=4, help="parallel kubectl applies (4)")
    parser.add_argument("--timeout", type=float, default=1800, help="per measurement (1800 s)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    parser.add_argument("--label", default="latest", help="results file name (latest)")
    parser.add_argument("--only", choices=["operator", "limit"], help="measure one side only")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print a results file as Markdown; run nothing"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(analysis.markdown(summary_rows(json.loads(args.report.read_text()))))
        return 0
    # A kill runs the cleanups (clusters down, operator stopped) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = [args.only] if args.only else ["limit", "operator"]
    idle_at = args.idle_at if args.idle_at is not None else max(sizes, default=0)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="aistack-bench-logs-"))
    results: dict[str, Any] = {
        "command": " ".join(["bench/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "stack": STACK_SPEC,
        "single": {},
        "many": {},
    }
    started = time.monotonic()
    json_path = args.out / f"{args.label}.json"

    def save() -> None:  # after every measurement: a long run that breaks keeps its figures
        results["seconds"] = round(time.monotonic() - started, 1)
        results["summary"] = summary_rows(results)
        json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

    if args.runs > 0:
        for mode in modes:
            results["single"][mode] = measure_single(mode, args.runs, logs)
            save()
    for n in sizes:
        for mode in modes:
            results["many"].setdefault(str(n), {})[mode] = measure_many(
                mode,
                n,
                args.shards,
                args.idle if mode == "operator" and n == idle_at else 0,
                args.timeout,
                logs,
                args.resync,
            )
            save()
    save()
    rows = results["summary"]
    png_path = args.out / f"{args.label}.png"
    plot(results, png_path)
    print(analysis.table(rows))
    print(f"\nresults: {json_path}, {png_path}; operator logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
