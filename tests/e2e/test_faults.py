"""Faults injected for real on the local cluster.

- The operator is killed with SIGKILL at random moments while 50 stacks are being created,
  edited and deleted, 20 times; after every restart everything converges: no child
  missing, none extra, no orphan of a deleted stack, every status true to the cluster.
- The whole control plane (etcd, API server, controllers) is stopped and started
  mid-rollout, 3 times: the operator reconnects by itself and, within 30 s of the API
  server being back, every child is as desired and every status true to the cluster,
  logging nothing worse than warnings.

``AISTACK_E2E_SEED`` replays a run (the seed is in every failure message);
``AISTACK_E2E_KILLS`` changes the number of kills.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import OperatorProcess

from aistack.api.v1alpha1 import AIStack
from aistack.render import render

KILLS = int(os.environ.get("AISTACK_E2E_KILLS", "20"))
STACKS = 50
SEED = int(os.environ.get("AISTACK_E2E_SEED") or random.randrange(1, 10**6))
CONVERGE_TIMEOUT = 120.0
BACK_WITHIN = 30.0
CHILDREN = (
    "deployments,services,configmaps,persistentvolumeclaims,networkpolicies,poddisruptionbudgets"
)
POOL_LABEL = "aistack.dev/e2e-pool"

pytestmark = pytest.mark.slow


def pool_nodes(pool: str) -> list[dict[str, Any]]:
    """Two roomy GPU nodes and a CPU node, so that 100 model replicas fit."""

    def node(name: str, gpus: int) -> dict[str, Any]:
        resources = {"cpu": "2000", "memory": "64Ti", "pods": "1000", "ephemeral-storage": "64Ti"}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        labels = {"type": "kwok", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {**labels, POOL_LABEL: pool},
            },
            "spec": {"taints": taints} if gpus else {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [{"type": "Hostname", "address": name}],
            },
        }

    return [node(f"{pool}-gpu-0", 64), node(f"{pool}-gpu-1", 64), node(f"{pool}-cpu-0", 0)]


@pytest.fixture(scope="module")
def pool(cluster: Any) -> Iterator[str]:
    if not cluster.simulated_nodes:
        pytest.skip("needs simulated (kwok) nodes")
    name = f"faults-{uuid.uuid4().hex[:4]}"
    nodes = pool_nodes(name)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": nodes}))  # fmt: skip
    for n in nodes:
        cluster.kubectl("wait", "--for=condition=Ready", f"node/{n['metadata']['name']}",
                        "--timeout=60s")  # fmt: skip
    yield name
    cluster.kubectl("delete", "node", *[n["metadata"]["name"] for n in nodes], check=False)


@pytest.fixture(scope="module")
def fault_ns(cluster: Any) -> Iterator[str]:
    name = f"e2e-faults-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=60, message="the default ServiceAccount",
    )  # fmt: skip
    yield name
    # Wait, so that later tests do not share the machine with 50 stacks being collected.
    cluster.kubectl("delete", "namespace", name, "--timeout=180s", check=False, timeout=200)


def stack_doc(name: str, pool: str, model_replicas: int = 1, gateway_replicas: int = 1) -> Any:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": name},
        "spec": {
            "models": [{"name": "m", "source": "microsoft/Phi-3.5-mini-instruct", "gpus": 1,
                        "replicas": model_replicas, "nodeSelector": {POOL_LABEL: pool}}],
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
            "gateway": {"replicas": gateway_replicas},
        },
    }  # fmt: skip


class World:
    """What the stacks should be, and how far the cluster is from it."""

    def __init__(self, cluster: Any, ns: str, pool: str, rng: random.Random) -> None:
        self.cluster, self.ns, self.pool, self.rng = cluster, ns, pool, rng
        self.live: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.serial = 0

    def apply(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=text, timeout=180)
        for d in docs:
            self.live[d["metadata"]["name"]] = d
            self.deleted.discard(d["metadata"]["name"])

    def create(self, n: int) -> None:
        docs = []
        for _ in range(n):
            self.serial += 1
            docs.append(stack_doc(f"s{self.serial:03d}", self.pool))
        self.apply(docs)

    def churn(self) -> str:
        """Create, edit and delete a few stacks at once."""
        names = sorted(self.live)
        edits = self.rng.sample(names, k=min(len(names), self.rng.randint(1, 4)))
        docs = []
        for name in edits:
            doc = json.loads(json.dumps(self.live[name]))
            spec = doc["spec"]
            if self.rng.random() < 0.5:
                spec["models"][0]["replicas"] = 3 - spec["models"][0]["replicas"]  # 1 <-> 2
            else:
                spec["gateway"]["replicas"] = 3 - spec["gateway"]["replicas"]
            docs.append(doc)
        gone = self.rng.sample([n for n in names if n not in edits], k=self.rng.randint(0, 2))
        if gone:
            self.cluster.kubectl("delete", "aistack", *gone, "-n", self.ns, "--wait=false")
            for name in gone:
                self.live.pop(name)
                self.deleted.add(name)
        self.apply(docs)
        new = max(0, STACKS - len(self.live))
        self.create(new)
        return f"edited {len(edits)}, deleted {len(gone)}, created {new}"

    def problems(self, ready: bool = True) -> list[str]:
        """Everything that is not as it should be (empty when converged). With ``ready``
        False, a stack need not be Ready, only its status true to the cluster: Ready
        exactly when all its Deployments are."""
        out: list[str] = []
        items = self.cluster.get_json(CHILDREN, "-n", self.ns, "-l", "aistack.dev/stack")["items"]
        observed: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for o in items:
            owner = o["metadata"]["labels"]["aistack.dev/stack"]
            key = (o["kind"], o["metadata"]["name"])
            if key in observed.setdefault(owner, {}):
                out.append(f"{owner}: {key} twice")
            observed[owner][key] = o
        for owner in sorted(set(observed) - set(self.live)):
            out.append(f"orphans of {owner}: {sorted(observed[owner])}")
        stacks = {
            s["metadata"]["name"]: s
            for s in self.cluster.get_json("aistacks", "-n", self.ns)["items"]
        }
        for name in sorted(self.deleted & set(stacks)):
            out.append(f"{name}: deleted, but still there")
        for name, doc in sorted(self.live.items()):
            want = {(m["kind"], m["metadata"]["name"]): m for m in render(
                AIStack.model_validate({**doc, "metadata": {"name": name, "namespace": self.ns}}),
                {"m": True},
            )}  # fmt: skip
            have = observed.get(name, {})
            if missing := sorted(set(want) - set(have)):
                out.append(f"{name}: missing {missing}")
            if extra := sorted(set(have) - set(want)):
                out.append(f"{name}: extra {extra}")
            for key, m in want.items():
                if key[0] == "Deployment" and key in have:
                    got, want_n = have[key]["spec"].get("replicas"), m["spec"]["replicas"]
                    if got != want_n:
                        out.append(f"{name}: {key[1]} has {got} replicas, not {want_n}")
            stack = stacks.get(name)
            status = (stack or {}).get("status", {})
            deploys = [have[k] for k in want if k[0] == "Deployment" and k in have]
            all_ready = all(deployment_ready(d) for d in deploys)
            if stack is None:
                out.append(f"{name}: not found")
            elif status.get("observedGeneration") != stack["metadata"]["generation"]:
                out.append(f"{name}: status is for generation {status.get('observedGeneration')}")
            elif ready and status.get("phase") != "Ready":
                out.append(f"{name}: phase {status.get('phase')}, Deployments ready: {all_ready}")
            elif ready and status.get("modelsReady") != "1/1":
                out.append(f"{name}: modelsReady {status.get('modelsReady')}")
            elif (status.get("phase") == "Ready") != all_ready:
                out.append(f"{name}: phase {status.get('phase')}, Deployments ready: {all_ready}")
        return out

    def converge(self, timeout: float, what: str, ready: bool = True) -> float:
        start = time.monotonic()
        last: list[str] = []
        while time.monotonic() - start < timeout:
            last = self.problems(ready)
            if not last:
                return time.monotonic() - start
            time.sleep(1)
        raise AssertionError(
            f"no convergence {timeout:.0f}s after {what} (seed {SEED}): "
            f"{len(last)} problems, e.g. {last[:8]}"
        )


def deployment_ready(d: dict[str, Any]) -> bool:
    want = d["spec"].get("replicas", 1)
    status = d.get("status", {})
    return bool(
        status.get("observedGeneration", 0) >= d["metadata"]["generation"]
        and status.get("readyReplicas", 0) >= want
        and status.get("updatedReplicas", 0) >= want
    )


def log_problems(log: str) -> list[str]:
    """Log lines worse than a warning (kopf logs `[... ERROR ...]`, Python `Traceback`)."""
    bad = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
    return [line for line in log.splitlines() if bad.search(line)]


def test_sigkill_at_random_moments_loses_nothing(
    cluster: Any, pool: str, fault_ns: str, operator: OperatorProcess,
    record_property: Any,
) -> None:  # fmt: skip
    rng = random.Random(SEED)
    world = World(cluster, fault_ns, pool, rng)
    world.create(STACKS)
    times = []
    for kill in range(KILLS):
        # The first kill lands during the creation of all 50.
        what = world.churn() if kill else f"created {STACKS}"
        time.sleep(rng.uniform(0, 2.0))
        operator.stop(signal.SIGKILL)
        operator.start()
        times.append(world.converge(CONVERGE_TIMEOUT, f"kill {kill + 1} ({what})"))
    for path in sorted(Path(operator.log_dir).glob("operator-*.log")):
        text = path.read_text(errors="replace")
        assert "Traceback" not in text, f"{path.name}:\n{text[-3000:]}"
    summary = {"seed": SEED, "kills": KILLS, "stacks": STACKS, "deleted": len(world.deleted),
               "converge_max_s": round(max(times), 1), "converge_mean_s":
               round(sum(times) / len(times), 1)}  # fmt: skip
    record_property("faults", summary)
    print(f"\nSIGKILL: {yaml.safe_dump(summary, default_flow_style=True).strip()}")


def test_control_plane_restarts_mid_rollout_converge_within_30s(
    cluster: Any, pool: str, fault_ns: str, operator: OperatorProcess,
    record_property: Any,
) -> None:  # fmt: skip
    rng = random.Random(SEED + 1)
    world = World(cluster, fault_ns, pool, rng)
    for s in cluster.get_json("aistacks", "-n", fault_ns)["items"]:  # as the last test left them
        name, spec = s["metadata"]["name"], s["spec"]
        world.live[name] = stack_doc(name, pool, spec["models"][0].get("replicas", 1),
                                     spec["gateway"].get("replicas", 1))  # fmt: skip
    world.serial = 1000
    world.converge(CONVERGE_TIMEOUT, "taking over the stacks left by the previous test")
    # Only this test's lines count.
    since = len(operator.log())
    started = operator.starts
    times: list[float] = []
    for restart in range(3):
        world.create(5)  # a rollout: new stacks, their pods not yet Ready
        for name in rng.sample(sorted(world.live), k=3):
            doc = json.loads(json.dumps(world.live[name]))
            doc["spec"]["gateway"]["replicas"] = 3 - doc["spec"]["gateway"]["replicas"]
            world.apply([doc])
        time.sleep(rng.uniform(0.2, 1.5))
        cluster.control_plane("stop")
        time.sleep(3)
        cluster.control_plane("start")
        # Within 30 s: every child as desired, every status true to the cluster. Not "all
        # Ready": after a restart the local cluster's own controllers (Deployment, kwok)
        # sometimes take minutes to make pods again, and the status must say so.
        what = f"control plane restart {restart + 1}"
        times.append(world.converge(BACK_WITHIN, what, ready=False))
    assert (
        operator.starts == started and operator.proc is not None and operator.proc.poll() is None
    ), "the operator must ride out the outage without a restart"
    worse = log_problems(operator.log()[since:])
    assert not worse, "\n".join(worse[:20])
    summary = {"restarts": 3, "converge_max_s": round(max(times), 1)}
    record_property("control_plane", summary)
    print(f"\ncontrol plane: {summary}")
