"""LeaderWorkerSet (LWS) on the e2e cluster: the real controller and its webhooks.

``hack/local-cluster.sh`` runs LWS's controller (``lws-controller-manager``, built from
the ``sigs.k8s.io/lws`` module at ``LWS_VERSION`` in hack/versions.env) beside the control
plane, with its CRD and its admission webhooks, which the API server calls on 127.0.0.1.
These tests check what a multi-node model relies on, with one LeaderWorkerSet of two
groups (a leader and a worker each, one GPU per pod) on the simulated GPU nodes:

- the pods are created, scheduled on GPU nodes and Running/Ready, with the labels, the
  annotations and the environment (``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE``,
  ``LWS_WORKER_INDEX``) that LWS's pod webhook gives them, beside the StatefulSets and the
  headless Service LWS makes; the LeaderWorkerSet's status says every group is ready;
- with ``restartPolicy: RecreateGroupOnPodRestart``, deleting a worker recreates its whole
  group (its leader too) and leaves the other group alone;
- a changed template rolls the groups one at a time (the highest index first; a group
  starts only when the one before is ready on the new revision), as a watch of the pods
  shows.

And that the copy of LWS's CRD the unit tests validate rendered LeaderWorkerSets with
(tests/schemas) is the one the cluster serves. On clusters without LWS (kind, most existing
ones) the tests skip; on the local cluster LWS must be there.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
CRD_COPY = REPO_ROOT / "tests" / "schemas" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml.gz"
DEADLINE = 60  # seconds for anything LWS does (a few on the local cluster)
NAME = "llm"
REPLICAS = 2  # groups
SIZE = 2  # pods per group: the leader and one worker
LABEL = "leaderworkerset.sigs.k8s.io/"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled on the local (simulated) nodes


# --------------------------------------------------------------------------- #
# the LeaderWorkerSet
# --------------------------------------------------------------------------- #
def template(role: str, model: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"role": role}},
        "spec": {
            "nodeSelector": GPU_SELECTOR,
            "tolerations": [GPU_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "env": [{"name": "MODEL", "value": model}],
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }],
        },
    }  # fmt: skip


def leaderworkerset(model: str = "m1") -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": REPLICAS,
            "leaderWorkerTemplate": {
                "size": SIZE,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": template("leader", model),
                "workerTemplate": template("worker", model),
            },
        },
    }


def leader(group: int) -> str:
    return f"{NAME}-{group}"


def worker(group: int, index: int = 1) -> str:
    return f"{NAME}-{group}-{index}"


def lws_label(pod: dict[str, Any], key: str) -> str:
    """The pod's label leaderworkerset.sigs.k8s.io/<key> ("" if it has none)."""
    return str(pod["metadata"].get("labels", {}).get(LABEL + key, ""))


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """type -> (status, reason)."""
    return {
        c["type"]: (c["status"], c.get("reason", ""))
        for c in obj.get("status", {}).get("conditions", [])
    }


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running and Ready, and not being deleted."""
    status = pod.get("status", {})
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return (
        status.get("phase") == "Running"
        and ready == "True"
        and not pod["metadata"].get("deletionTimestamp")
    )


def group_ready(pods: dict[str, dict[str, Any]], group: int, revision: str = "") -> bool:
    """The group's leader and worker are there and ready (on ``revision`` if given)."""
    members = [pods.get(leader(group)), pods.get(worker(group))]
    return all(
        p is not None
        and pod_ready(p)
        and (not revision or lws_label(p, "template-revision-hash") == revision)
        for p in members
    )


def uid(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def owner_uid(obj: dict[str, Any]) -> str:
    (owner,) = [o for o in obj["metadata"].get("ownerReferences", []) if o.get("controller")]
    return str(owner["uid"])


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in items}


def all_ready(cluster: Any, namespace: str) -> dict[str, dict[str, Any]] | None:
    """The pods, once every group is ready and whole (each worker's StatefulSet belongs to
    the leader there is now, each worker to that StatefulSet) and the LeaderWorkerSet's
    status says so; else None."""
    pods = by_name(cluster.get_json("pods", "-n", namespace)["items"])
    if len(pods) != REPLICAS * SIZE or not all(group_ready(pods, g) for g in range(REPLICAS)):
        return None
    sets = by_name(cluster.get_json("statefulsets", "-n", namespace)["items"])
    for g in range(REPLICAS):
        workers = sets.get(leader(g))
        if workers is None or owner_uid(workers) != uid(pods[leader(g)]):
            return None
        if owner_uid(pods[worker(g)]) != uid(workers):
            return None
    lws = cluster.get_json("leaderworkerset", NAME, "-n", namespace)
    status = lws.get("status", {})
    if (
        status.get("readyReplicas") != REPLICAS
        or status.get("updatedReplicas") != REPLICAS
        or conditions(lws).get("Available") != ("True", "AllGroupsReady")
        or conditions(lws).get("UpdateInProgress", ("False", ""))[0] != "False"
    ):
        return None
    return pods


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def lws_cluster(cluster: Any) -> Any:
    """The cluster, where LWS is installed (the local cluster always has it)."""
    if cluster.kubectl("get", "crd", CRD, check=False).returncode != 0:
        if cluster.kind == "local":
            pytest.fail(
                "the local cluster has no LeaderWorkerSet CRD (local-cluster.sh installs it)"
            )
        pytest.skip(f"LeaderWorkerSet is not installed in the {cluster.kind} cluster")
    return cluster


@pytest.fixture
def groups(lws_cluster: Any, namespace: str, gpu_nodes: list[str]) -> dict[str, dict[str, Any]]:
    """The LeaderWorkerSet applied in ``namespace``; its pods once all groups are ready."""
    lws_cluster.apply(leaderworkerset(), namespace=namespace)
    pods: dict[str, dict[str, Any]] = lws_cluster.wait_until(
        lambda: all_ready(lws_cluster, namespace), timeout=DEADLINE, interval=0.3,
        message=f"LeaderWorkerSet {NAME}: {REPLICAS} groups of {SIZE} pods ready",
    )  # fmt: skip
    return pods


class Watch:
    """``kubectl get KIND -w -o json --output-watch-events`` in the background: every
    version of the objects after the current ones (which it lists first, as ADDED)."""

    def __init__(self, cluster: Any, namespace: str, kind: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [cluster.kubectl_path, "get", kind, "-n", namespace, "-w", "-o", "json",
             "--output-watch-events"],
            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:  # an event per line (or pretty, over several)
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # not complete yet
                buffer = buffer.lstrip()[end:]
                with self._lock:
                    self.events.append((event["type"], event["object"]))

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._thread.join(10)


@contextlib.contextmanager
def watching(cluster: Any, namespace: str, kind: str, current: int) -> Iterator[Watch]:
    """A Watch, returned once it has listed the ``current`` objects (so it misses nothing
    after them)."""
    watch = Watch(cluster, namespace, kind)
    try:
        cluster.wait_until(
            lambda: len(watch.snapshot()) >= current, timeout=30, interval=0.1,
            message=f"kubectl's watch of {kind} to list the {current} there are",
        )  # fmt: skip
        yield watch
    finally:
        watch.close()


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #
def test_groups_run_with_lws_labels_env_and_status(
    lws_cluster: Any, namespace: str, gpu_nodes: list[str], groups: dict[str, dict[str, Any]]
) -> None:
    """Two groups of a leader and a worker, on GPU nodes, labelled and given LWS's
    environment by its pod webhook; the StatefulSets, the Service and the status."""
    assert sorted(groups) == sorted(
        [leader(0), worker(0), leader(1), worker(1)]
    )  # pods named by the StatefulSets: llm-<group>, llm-<group>-<worker>
    revisions = {lws_label(p, "template-revision-hash") for p in groups.values()}
    assert len(revisions) == 1, revisions
    keys = set()
    for g in range(REPLICAS):
        for index, name in enumerate([leader(g), worker(g)]):
            pod = groups[name]
            meta, spec = pod["metadata"], pod["spec"]
            labels = meta["labels"]
            assert labels[LABEL + "name"] == NAME
            assert labels[LABEL + "group-index"] == str(g)
            assert labels[LABEL + "worker-index"] == str(index)
            assert labels["role"] == ("leader" if index == 0 else "worker")  # its template's
            assert len(labels[LABEL + "group-key"]) == 40  # a SHA-1, the same in a group
            keys.add(labels[LABEL + "group-key"])
            assert meta["annotations"][LABEL + "size"] == str(SIZE)
            if index:
                assert meta["annotations"][LABEL + "leader-name"] == leader(g)
            assert spec["subdomain"] == NAME  # the headless Service
            assert spec["nodeName"] in gpu_nodes
            (container,) = spec["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env == {
                "LWS_LEADER_ADDRESS": f"{leader(g)}.{NAME}.{namespace}",
                "LWS_GROUP_SIZE": str(SIZE),
                "LWS_WORKER_INDEX": str(index),
                "MODEL": "m1",  # the template's own variable is kept
            }, name
        assert lws_label(groups[leader(g)], "group-key") == lws_label(
            groups[worker(g)], "group-key"
        )
    assert len(keys) == REPLICAS

    sets = by_name(lws_cluster.get_json("statefulsets", "-n", namespace)["items"])
    assert sorted(sets) == [NAME, leader(0), leader(1)]
    assert sets[NAME]["spec"]["replicas"] == REPLICAS  # the leaders
    for g in range(REPLICAS):
        assert sets[leader(g)]["spec"]["replicas"] == SIZE - 1  # the group's workers
        assert owner_uid(sets[leader(g)]) == uid(groups[leader(g)])
    service = lws_cluster.get_json("service", NAME, "-n", namespace)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {LABEL + "name": NAME}

    lws = lws_cluster.get_json("leaderworkerset", NAME, "-n", namespace)
    status = lws["status"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    assert status["hpaPodSelector"] == f"{LABEL}name={NAME},{LABEL}worker-index=0"
    assert conditions(lws)["Available"] == ("True", "AllGroupsReady")
    assert conditions(lws)["Progressing"][0] == "False"


def test_deleting_a_worker_recreates_its_group(
    lws_cluster: Any, namespace: str, groups: dict[str, dict[str, Any]]
) -> None:
    """RecreateGroupOnPodRestart: the worker of group 0 goes, so does its leader; both come
    back (new pods) and group 1 is not touched."""
    before = {name: uid(pod) for name, pod in groups.items()}
    lws_cluster.kubectl("delete", "pod", worker(0), "-n", namespace, "--wait=false")

    def recreated() -> dict[str, dict[str, Any]] | None:
        pods = all_ready(lws_cluster, namespace)
        if pods and uid(pods[leader(0)]) != before[leader(0)]:
            return pods
        return None

    after: dict[str, dict[str, Any]] = lws_cluster.wait_until(
        recreated, timeout=DEADLINE, interval=0.3, message="group 0 recreated and ready"
    )
    assert uid(after[worker(0)]) != before[worker(0)]
    assert uid(after[leader(1)]) == before[leader(1)]
    assert uid(after[worker(1)]) == before[worker(1)]
    events = lws_cluster.wait_until(
        lambda: lws_cluster.get_json(
            "events", "-n", namespace, "--field-selector", "reason=RecreateGroupOnPodRestart"
        )["items"],
        timeout=DEADLINE, interval=0.5, message="LWS's RecreateGroupOnPodRestart event",
    )  # fmt: skip
    assert events[0]["involvedObject"]["kind"] == "LeaderWorkerSet"
    assert worker(0) in events[0]["message"] and leader(0) in events[0]["message"]


@dataclass
class Replay:
    #: groups in the order their (old) leader began to go
    started: list[int] = field(default_factory=list)
    #: group -> first event at which its leader on the new revision is ready,
    leader_ready: dict[int, int] = field(default_factory=dict)
    #: its worker on the new revision exists,
    worker_made: dict[int, int] = field(default_factory=dict)
    #: and the whole group is ready on the new revision
    group_ready: dict[int, int] = field(default_factory=dict)
    #: moments (after the listing) when no group had a ready leader
    no_leader: list[str] = field(default_factory=list)


def going(kind: str, pod: dict[str, Any]) -> bool:
    return kind == "DELETED" or bool(pod["metadata"].get("deletionTimestamp"))


def on(pod: dict[str, Any] | None, revision: str) -> bool:
    return pod is not None and lws_label(pod, "template-revision-hash") == revision


def replay(events: list[tuple[str, dict[str, Any]]], listed: int, revision: str) -> Replay:
    """The pods' watch events, in order (the first ``listed`` are the pods there were)."""
    pods: dict[str, dict[str, Any]] = {}
    out = Replay()
    for i, (kind, pod) in enumerate(events):
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = pod
        for g in range(REPLICAS):
            if name == leader(g) and going(kind, pod) and g not in out.started:
                out.started.append(g)
            lead, work = pods.get(leader(g)), pods.get(worker(g))
            if g not in out.leader_ready and on(lead, revision) and lead and pod_ready(lead):
                out.leader_ready[g] = i
            if g not in out.worker_made and on(work, revision):
                out.worker_made[g] = i
            if g not in out.group_ready and group_ready(pods, g, revision):
                out.group_ready[g] = i
        leaders_up = [g for g in range(REPLICAS) if pod_ready(pods.get(leader(g)) or {})]
        if i >= listed - 1 and not leaders_up:
            out.no_leader.append(f"event {i}: {kind} {name}")
    return out


def test_template_change_rolls_groups_one_at_a_time(
    lws_cluster: Any, namespace: str, groups: dict[str, dict[str, Any]]
) -> None:
    """A new template: group 1 is replaced first, group 0 only once group 1's new leader is
    ready and its new worker made, so one leader serves all along (maxUnavailable 1); the
    status says that an update is in progress, then that it is done.

    LWS v0.8.0 counts a group as ready when its leader pod is ready and its worker
    StatefulSet has all its pods on the group's revision (StatefulsetReady: replicas and
    revisions, not readyReplicas): it does not wait for the workers to be Ready before it
    moves to the next group, and on the simulated nodes, where a pod is Ready within
    milliseconds, it sometimes does not need to. So the test waits for what LWS waits for.
    """
    old = lws_label(groups[leader(0)], "template-revision-hash")
    listed = REPLICAS * SIZE
    with (
        watching(lws_cluster, namespace, "pods", listed) as pod_watch,
        watching(lws_cluster, namespace, "leaderworkersets", 1) as lws_watch,
    ):
        lws_cluster.apply(leaderworkerset(model="m2"), namespace=namespace)

        def rolled() -> dict[str, dict[str, Any]] | None:
            pods = all_ready(lws_cluster, namespace)
            revisions = {lws_label(p, "template-revision-hash") for p in (pods or {}).values()}
            return pods if pods and old not in revisions else None

        after: dict[str, dict[str, Any]] = lws_cluster.wait_until(
            rolled, timeout=DEADLINE, interval=0.3, message="every group on the new template"
        )
        (new,) = {lws_label(p, "template-revision-hash") for p in after.values()}
        # The watches catch up with what the polls saw.
        lws_cluster.wait_until(
            lambda: len(replay(pod_watch.snapshot(), listed, new).group_ready) == REPLICAS,
            timeout=30, interval=0.2, message="the pods' watch to see every group updated",
        )  # fmt: skip
        lws_cluster.wait_until(
            lambda: conditions(lws_watch.snapshot()[-1][1]).get("UpdateInProgress", ("",))[0]
            == "False",
            timeout=30, interval=0.2, message="the LeaderWorkerSet's watch to see the update end",
        )  # fmt: skip
        pod_events, lws_events = pod_watch.snapshot(), lws_watch.snapshot()

    assert new != old
    for pod in after.values():
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MODEL"] == "m2"
    seen = replay(pod_events, listed, new)
    assert seen.started == [1, 0], seen
    group_0_goes = next(
        i for i, (kind, p) in enumerate(pod_events)
        if p["metadata"]["name"] == leader(0) and going(kind, p)
    )  # fmt: skip
    assert seen.leader_ready[1] < group_0_goes, seen
    assert seen.worker_made[1] < group_0_goes, seen
    assert seen.no_leader == [], seen

    updating = [conditions(o).get("UpdateInProgress") for _, o in lws_events]
    assert ("True", "GroupsUpdating") in updating, updating
    assert updating[-1] == ("False", "GroupsUpdating"), updating
    final = lws_events[-1][1]["status"]
    assert (final["readyReplicas"], final["updatedReplicas"]) == (REPLICAS, REPLICAS)


def test_crd_copy_is_what_the_cluster_serves(lws_cluster: Any) -> None:
    """tests/schemas holds LWS's CRD for the unit tests (validation of rendered
    LeaderWorkerSets): it must be the one the cluster's LWS serves."""
    copy = yaml.load(gzip.decompress(CRD_COPY.read_bytes()), Loader=yaml.CSafeLoader)
    served = lws_cluster.get_json("crd", CRD)
    for key in ("group", "names", "scope", "versions"):
        assert served["spec"][key] == copy["spec"][key], key
