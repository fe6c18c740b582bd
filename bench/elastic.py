"""The elastic-serving benchmark: the gateway's hold and KEDA's reaction, with the real programs.

    make bench-elastic                               # both parts (about 10 minutes on 2 CPUs)
    .venv/bin/python bench/elastic.py --part hold --wakes 5      # a quicker look at one part

hold     The real LiteLLM gateway rendered from examples/autoscaling.yaml (the conformance
         suite's harness: its rendered command, config and hold hook, in front of stand-in
         model servers). ``--wakes`` times: stop ``coder``'s stand-in, send a chat for
         ``coder`` (in a thread), wait until the gateway's /metrics says it holds one
         request for ``coder``, start the stand-in again; timed from the stand-in's start
         and from its first /health answer to the held request's answer.
scale    A local cluster with the real KEDA, the real Prometheus scraping a stand-in for
         vLLM's gauges every second, and the operator (``aistack run``) reconciling a stack
         whose ``chat`` scales 1..4 on requests waiting (target 2). ``--events`` times: the
         stand-in's waiting value goes 0 -> 3; timed from the moment Prometheus first
         returns 3 as KEDA asks for it (the query at the current time truncated to the
         second) to the Deployment's spec.replicas going 1 -> 2 (and to the new Pod's
         creationTimestamp); then back to 0 and a wait for 1 replica. Meanwhile, the
         operator's writes to that Deployment: its log's ``applied Deployment/...`` lines
         and the owner of spec.replicas in the Deployment's managedFields.

Results: a table on stdout and bench/results/<label>.json (default ``elastic``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# The e2e helpers (keda_infra, the operator process) and the conformance harness (the
# rendered gateway, the stand-ins); e2e first: its conftest is the one keda_infra imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_gateway  # type: ignore[import-not-found]
import harness  # type: ignore[import-not-found]
import keda_infra  # type: ignore[import-not-found]
import test_elastic  # type: ignore[import-not-found]
from operator_process import OperatorProcess  # type: ignore[import-not-found]

from bench import machine  # the same machine description as `make bench`

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

HELD_GAUGE = "aistack_gateway_held_requests"
SLEEPER = "coder"  # examples/autoscaling.yaml's model that may sleep
SCALED = "chat"  # test_elastic's stack: 1..4 replicas, target 2 waiting per replica
WAITING = 3  # above the target of 2: two replicas wanted
#: KEDA's polling interval as rendered (the issue's goal: within it plus 5 s).
POLLING_INTERVAL_S = 15
OPERATOR_MANAGER = "aistack-operator"


def log(msg: str) -> None:
    print(f"[bench-elastic {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """count, median, p95 (nearest rank), min and max, in seconds (3 decimals)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


# --------------------------------------------------------------------------- the hold


def held(gateway: Any, model: str) -> float | None:
    """What the gateway's /metrics says it holds for ``model``."""
    code, out = harness.http(gateway.url + "/metrics")
    if code != 200:
        return None
    found = [
        float(s.value)
        for s in harness.prometheus_samples(out.decode())
        if s.name == HELD_GAUGE and s.labels.get("model") == model
    ]
    return found[0] if len(found) == 1 else None


def health_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def one_wake(gateway: Any, workdir: Path, log_dir: Path, hosts: Any) -> dict[str, float]:
    """Stop the sleeper's stand-in, hold a chat for it, start the stand-in; the times."""
    asleep = gateway.stand_ins.pop(SLEEPER)
    asleep.running.stop()
    answer: dict[str, Any] = {}
    body = {"model": SLEEPER, "messages": [{"role": "user", "content": "hello"}]}

    def ask() -> None:
        answer["reply"] = gateway.post("/v1/chat/completions", body)
        answer["at"] = time.monotonic()

    asker = threading.Thread(target=ask, daemon=True)
    sent = time.monotonic()
    asker.start()
    while held(gateway, SLEEPER) != 1:
        if time.monotonic() - sent > 30 or not asker.is_alive():
            raise RuntimeError(f"the gateway did not hold the request: {answer}\n"
                               f"{gateway.running.log_tail(40)}")  # fmt: skip
        time.sleep(0.05)
    held_at = time.monotonic()
    svc, dep = next(
        (s, d)
        for s, d in fixtures_gateway.model_servers(gateway.manifests)
        if s["metadata"]["name"] == asleep.service
    )
    started = time.monotonic()
    woken = fixtures_gateway.start_standin(
        gateway.manifests, svc, dep, hosts=hosts, workdir=workdir, log_dir=log_dir, wait=False
    )
    gateway.stand_ins[SLEEPER] = woken
    health_url = f"http://{woken.address}:{woken.port}/health"
    healthy: float | None = None
    while asker.is_alive() or healthy is None:
        if healthy is None and health_answers(health_url):
            healthy = time.monotonic()
        if time.monotonic() - started > 60:
            raise RuntimeError("the held request was not answered in 60 s")
        time.sleep(0.005)
    code, reply = answer["reply"]
    if code != 200 or reply.get("model") != SLEEPER:
        raise RuntimeError(f"the held request failed: {code} {reply}")
    at = float(answer["at"])
    return {
        "held_after_s": round(held_at - sent, 3),
        "from_start_s": round(at - started, 3),
        "from_health_s": round(at - healthy, 3),
        "health_after_start_s": round(healthy - started, 3),
        "held_for_s": round(at - sent, 3),
    }


def measure_hold(wakes: int, base: Path) -> dict[str, Any]:
    suite_dir = base / "conformance"
    log_dir = suite_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    hosts = harness.HostMap(suite_dir / "hosts")
    manifests = harness.render_example(harness.example("autoscaling.yaml"))
    log("starting the rendered LiteLLM gateway (examples/autoscaling.yaml)")
    workdir = suite_dir / "gateway-elastic"
    t0 = time.monotonic()
    gateway = fixtures_gateway.start_gateway(manifests, hosts=hosts, workdir=workdir,
                                             log_dir=log_dir)  # fmt: skip
    log(f"gateway up in {time.monotonic() - t0:.1f} s")
    runs: list[dict[str, float]] = []
    try:
        for i in range(wakes):
            runs.append(one_wake(gateway, workdir, log_dir, hosts))
            log(f"wake {i + 1}/{wakes}: {runs[-1]}")
    finally:
        gateway.stop()
    return {
        "wakes": runs,
        "from_start": summary([r["from_start_s"] for r in runs]),
        "from_health": summary([r["from_health_s"] for r in runs]),
        "health_after_start": summary([r["health_after_start_s"] for r in runs]),
        "logs": str(log_dir),
    }


# --------------------------------------------------------------------------- KEDA


class Watch:
    """spec.replicas of a Deployment, read every 0.1 s with the Kubernetes client."""

    def __init__(self, kubeconfig: str, namespace: str, name: str) -> None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace, self.name = namespace, name

    def deployment(self) -> Any:
        return self.apps.read_namespaced_deployment(self.name, self.namespace)

    def replicas(self) -> int:
        return int(self.deployment().spec.replicas)

    def pods(self) -> dict[str, float]:
        """This Deployment's pods: name -> creationTimestamp (Unix seconds)."""
        selector = ",".join(f"{k}={v}" for k, v in
                            self.deployment().spec.selector.match_labels.items())  # fmt: skip
        pods: list[Any] = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector
        ).items
        return {str(p.metadata.name): p.metadata.creation_timestamp.timestamp() for p in pods}

    def replicas_owners(self) -> list[str]:
        """The field managers that own spec.replicas."""
        owners = []
        for entry in self.deployment().metadata.managed_fields or []:
            fields = entry.fields_v1 or {}
            if "f:replicas" in fields.get("f:spec", {}):
                owners.append(f"{entry.manager} ({entry.operation})")
        return owners


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Polls ``predicate`` until true; the wall-clock time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Scaled:
    """One autoscaled model measured: how to raise and lower its metric, and its query."""

    model: str
    deployment: str
    query: str
    high: float
    low_replicas: int
    raise_: Callable[[], None]
    lower: Callable[[], None]


def one_scale_up(e: Any, watch: Watch, m: Scaled, jitter: float) -> dict[str, Any]:
    # Back-to-back events would start at the same point of KEDA's polling loop each time
    # (an event and its scale-down take a whole number of intervals): a random wait makes
    # them sample every point of it.
    time.sleep(random.uniform(0, jitter))
    before = watch.replicas()
    pods_before = set(watch.pods())
    set_at = time.time()
    m.raise_()
    seen: dict[str, float] = {}

    def prometheus_has_it() -> bool:
        now = time.time()
        if "now" not in seen and e.prometheus.value(m.query) == m.high:
            seen["now"] = now
        if e.prometheus.value(m.query, at=int(now)) == m.high:
            seen["keda"] = now
            return True
        return False

    wait_for(prometheus_has_it, 30, "Prometheus to return the new value", interval=0.05)
    scaled_at = wait_for(lambda: watch.replicas() > before, 120, "spec.replicas to increase")
    wait_for(lambda: len(set(watch.pods()) - pods_before) > 0, 60, "the new pod", interval=0.2)
    new_pods = {n: t for n, t in watch.pods().items() if n not in pods_before}
    pod_at = min(new_pods.values())
    keda_at = seen["keda"]
    return {
        "replicas": [before, watch.replicas()],
        "prometheus_after_set_s": round(seen.get("now", keda_at) - set_at, 3),
        "keda_value_after_set_s": round(keda_at - set_at, 3),
        "replicas_after_value_s": round(scaled_at - keda_at, 3),
        # creationTimestamp has whole seconds: up to a second early.
        "pod_created_after_value_s": round(pod_at - keda_at, 3),
    }


def scale_back(e: Any, watch: Watch, m: Scaled) -> None:
    m.lower()
    wait_for(lambda: e.prometheus.value(m.query, at=int(time.time())) == 0, 30, "0 in Prometheus")
    wait_for(lambda: watch.replicas() == m.low_replicas, 180, "the scale-down", interval=0.5)
    low = (m.low_replicas, m.low_replicas)
    wait_for(lambda: test_elastic.replicas(e, m.model) == low, 120, "back down", interval=0.5)
    wait_for(lambda: len(watch.pods()) == m.low_replicas, 120, "pods gone", interval=0.5)


def trigger_query(e: Any, name: str, contains: str) -> tuple[str, dict[str, Any]]:
    wait_for(
        lambda: e.cluster.kubectl("get", "scaledobject", name, "-n", e.namespace,
                                  check=False).returncode == 0,
        120, f"the ScaledObject {name}", interval=1,
    )  # fmt: skip
    scaled_object: dict[str, Any] = e.cluster.get_json("scaledobject", name, "-n", e.namespace)
    trigger = next(
        t for t in scaled_object["spec"]["triggers"] if contains in t["metadata"]["query"]
    )
    return str(trigger["metadata"]["query"]), scaled_object


def measure_model(e: Any, m: Scaled, events: int, polling: int, jitter: bool) -> dict[str, Any]:
    watch = Watch(e.cluster.kubeconfig, e.namespace, m.deployment)
    applied = f"applied Deployment/{m.deployment} "

    def requests() -> int:
        return len([w for w in e.operator.writes() if f"/deployments/{m.deployment}" in w])

    applied_before, requests_before = e.operator.log().count(applied), requests()
    owners_before = watch.replicas_owners()
    runs: list[dict[str, Any]] = []
    owners_during: set[str] = set()
    for i in range(events):
        runs.append(one_scale_up(e, watch, m, polling if jitter else 0))
        owners_during.update(watch.replicas_owners())
        log(f"{m.model} event {i + 1}/{events}: {runs[-1]}")
        scale_back(e, watch, m)
        owners_during.update(watch.replicas_owners())
    return {
        "deployment": m.deployment,
        "query": m.query,
        "value": m.high,
        "polling_interval_s": polling,
        "random_wait_before_each_event_s": [0, polling if jitter else 0],
        "events": runs,
        "replicas_after_value": summary([r["replicas_after_value_s"] for r in runs]),
        "pod_created_after_value": summary([r["pod_created_after_value_s"] for r in runs]),
        "keda_value_after_set": summary([r["keda_value_after_set_s"] for r in runs]),
        "operator_applies": e.operator.log().count(applied) - applied_before,
        "operator_write_requests": requests() - requests_before,
        "replicas_owners_before": owners_before,
        "replicas_owners": sorted(owners_during),
        "operator_owns_replicas": any(o.split(" ")[0] == OPERATOR_MANAGER for o in owners_during),
    }


@contextlib.contextmanager
def elastic_stack(base: Path) -> Iterator[Any]:
    """test_elastic's stack on a local cluster with KEDA, Prometheus and the operator."""
    name = f"aistack-bench-{uuid.uuid4().hex[:8]}"
    (base / "cluster").mkdir(parents=True, exist_ok=True)
    cluster_gen = keda_infra.keda_local_cluster(base / "cluster", name)
    log("starting a local cluster with KEDA (hack/local-cluster.sh up --keda)")
    cluster = next(cluster_gen)
    try:
        test_elastic.install_crds(cluster)
        namespace = f"bench-elastic-{uuid.uuid4().hex[:6]}"
        cluster.kubectl("create", "namespace", namespace)
        labels = {test_elastic.STACK_LABEL: test_elastic.STACK}
        chat = keda_infra.StandInExporter(namespace=namespace,
                                          pod=f"{test_elastic.STACK}-vllm-chat-0",
                                          labels=labels)  # fmt: skip
        chat.set(SCALED, waiting=0, running=0)
        gateway = keda_infra.StandInExporter(namespace=namespace,
                                             pod=f"{test_elastic.STACK}-gateway-0",
                                             labels=labels)  # fmt: skip
        gateway.hold(SLEEPER, 0)
        (base / "operator").mkdir(parents=True, exist_ok=True)
        with keda_infra.running_prometheus(base / "prometheus", [chat, gateway]) as prom:
            op = OperatorProcess(cluster.env, base / "operator")
            op.start()
            try:
                cluster.apply(test_elastic.the_stack(namespace, prom.url))
                yield test_elastic.Elastic(cluster, prom, chat, gateway, namespace, op)
            finally:
                op.stop()
    finally:
        with contextlib.suppress(StopIteration):
            next(cluster_gen)


def measure_scale(events: int, base: Path, jitter: bool = True) -> dict[str, Any]:
    """``chat`` 1 -> 2 on requests waiting, then ``coder`` 0 -> 1 on a held request."""
    with elastic_stack(base) as e:
        stack = test_elastic.STACK
        chat, coder = f"{stack}-vllm-{SCALED}", f"{stack}-vllm-{SLEEPER}"
        chat_query, chat_so = trigger_query(e, chat, "num_requests_waiting")
        coder_query, coder_so = trigger_query(e, coder, HELD_GAUGE)
        wait_for(lambda: test_elastic.replicas(e, SCALED) == (1, 1), 180, "chat at 1 replica",
                 interval=1)  # fmt: skip
        wait_for(lambda: test_elastic.replicas(e, SLEEPER) == (0, 0), 180, "coder asleep",
                 interval=1)  # fmt: skip
        time.sleep(5)  # the operator's first reconciles settle
        out: dict[str, Any] = {"scale_down_delay_s": test_elastic.DELAY_S}
        out[SCALED] = measure_model(
            e,
            Scaled(SCALED, chat, chat_query, WAITING, 1,
                   lambda: e.chat.set(SCALED, waiting=WAITING),
                   lambda: e.chat.set(SCALED, waiting=0)),
            events, int(chat_so["spec"].get("pollingInterval", 30)), jitter,
        )  # fmt: skip
        out[SLEEPER] = measure_model(
            e,
            Scaled(SLEEPER, coder, coder_query, 1, 0,
                   lambda: e.gateway.hold(SLEEPER, 1), lambda: e.gateway.hold(SLEEPER, 0)),
            events, int(coder_so["spec"].get("pollingInterval", 30)), jitter,
        )  # fmt: skip
        out["operator_log"] = str(e.operator.log_path)
        return out


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    rows = [("figure", "n", "median s", "p95 s", "max s", "goal")]
    hold = results.get("hold")
    if hold:
        for key, what in (("from_health", "hold: /health answers -> held answer"),
                          ("from_start", "hold: stand-in started -> held answer"),
                          ("health_after_start", "hold: stand-in started -> /health")):  # fmt: skip
            s = hold[key]
            goal = "< 1 s" if key != "health_after_start" else ""
            rows.append((what, str(s["count"]), str(s["median"]), str(s["p95"]), str(s["max"]),
                         goal))  # fmt: skip
    scale = results.get("scale") or {}
    for model, what in ((SCALED, f"{SCALED} 1->2"), (SLEEPER, f"{SLEEPER} 0->1")):
        if model not in scale:
            continue
        r = scale[model]
        limit = r["polling_interval_s"] + 5
        for key, figure in (
            ("replicas_after_value", "value in Prometheus -> spec.replicas"),
            ("pod_created_after_value", "value in Prometheus -> new Pod created"),
            ("keda_value_after_set", "exporter set -> value as KEDA reads it"),
        ):
            s = r[key]
            goal = f"<= {limit} s" if key != "keda_value_after_set" else ""
            rows.append((f"{what}: {figure}", str(s["count"]), str(s["median"]), str(s["p95"]),
                         str(s["max"]), goal))  # fmt: skip
        rows.append((f"{what}: operator applies / write requests", str(len(r["events"])),
                     f"{r['operator_applies']} / {r['operator_write_requests']}", "", "",
                     "0"))  # fmt: skip
        rows.append((f"{what}: aistack-operator owns spec.replicas", "",
                     str(r["operator_owns_replicas"]).lower(), "", "", "false"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "hold", "scale"), default="all")
    parser.add_argument("--wakes", type=int, default=20, help="held requests woken (20)")
    parser.add_argument("--events", type=int, default=10, help="scale-up events (10)")
    parser.add_argument(
        "--no-jitter", action="store_true",
        help="no random wait (0 to the polling interval) before each scale event",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    parser.add_argument("--label", default="elastic", help="results file name (elastic)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print a results file's table; run nothing"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(table(json.loads(args.report.read_text())))
        return 0
    results: dict[str, Any] = {
        "benchmark": "elastic",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
    }
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="aistack-bench-elastic-"))
    log(f"work directory and logs: {base}")
    if args.part in ("all", "hold"):
        results["hold"] = measure_hold(args.wakes, base / "hold")
    if args.part in ("all", "scale"):
        results["scale"] = measure_scale(args.events, base / "scale", not args.no_jitter)
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{args.label}.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table(results))
    print(f"\nresults: {json_path}; logs: {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
