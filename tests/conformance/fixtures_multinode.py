"""Multi-node models: the pods of a LeaderWorkerSet group, each in a network of its own.

A model with ``nodes > 1`` renders as one LeaderWorkerSet (examples/multi-model.yaml, model
gpt-oss: two nodes of four GPUs). Its group's pods are read from the leader and worker
templates (``harness.pod_template``: ``<lws>/leader``, ``<lws>/worker``), each with the env
LeaderWorkerSet's webhook injects (``harness.lws_env``: the leader's address, the group's
size, the pod's index) put first, as the webhook does, so the kubelet's ``$(VAR)``
expansion of the args sees it.

Each pod gets its own network namespace; the two are joined by a veth pair (the pods'
network, each pod's default route pointing at the other, so a program that picks "its" IP
by the route to the outside, as Ray and vLLM do, picks the pod IP) and each has its own
``/etc/hosts`` (a private mount namespace), in which the leader's address as
LeaderWorkerSet gives it (``<lws>-<group>.<lws>.<namespace>``, the LeaderWorkerSet's headless
Service being the pods' subdomain) resolves to the leader pod, as cluster DNS answers for
it, and the pod's own name to its IP; and its own hostname, the pod's name (a UTS
namespace), as the kubelet sets them. Nothing else resolves the leader's address: a worker
can only reach its leader through it. Needs root (``ip netns``, ``unshare``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from harness import Manifest, ProcessSpec, Running, run_quiet

MULTINODE_EXAMPLE = "multi-model.yaml"
#: the example's multi-node model
MULTINODE_MODEL = "gpt-oss"
#: The environment of images/vllm-ray/Dockerfile (the default vLLM image plus Ray).
VLLM_RAY_ENV = "vllm-ray"


def multinode_variant(path: Path, **changes: Any) -> list[Manifest]:
    """The render of a copy of the example whose multi-node model has ``changes`` (fields
    of the model's spec, e.g. ``gpus=8, nodes=2``), written to ``path``."""
    documents = harness.example_documents(MULTINODE_EXAMPLE)
    stack = harness.example_stack(documents)
    (model,) = [m for m in stack["spec"]["models"] if m["name"] == MULTINODE_MODEL]
    model.update(changes)
    harness.write_documents(path, documents)
    return harness.render_example(path)


def model_lws(manifests: Sequence[Manifest], model: str = MULTINODE_MODEL) -> Manifest:
    """The LeaderWorkerSet that serves ``model``."""
    found = [
        m
        for m in harness.of_kind(manifests, "LeaderWorkerSet")
        if m["metadata"]["labels"].get("aistack.dev/model") == model
    ]
    assert len(found) == 1, f"expected one LeaderWorkerSet for {model}, found {len(found)}"
    return found[0]


def gpu_count(container: Mapping[str, Any]) -> int:
    return int(container["resources"]["limits"]["nvidia.com/gpu"])


@dataclass
class PodPair:
    """Two network namespaces joined by one veth pair: the leader and the worker pod."""

    leader_ns: str
    worker_ns: str
    leader_ip: str
    worker_ip: str
    created: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> PodPair:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
            raise RuntimeError(
                "the multi-node tests start each pod in its own network namespace and need "
                "root with `ip` and `unshare` (iproute2, util-linux)"
            )
        tag = f"{os.getpid() % 100000}"
        subnet = 16 + os.getpid() % 200
        pair = cls(
            leader_ns=f"aistack-vl-{tag}",
            worker_ns=f"aistack-vw-{tag}",
            leader_ip=f"10.234.{subnet}.1",
            worker_ip=f"10.234.{subnet}.2",
        )
        try:
            a, b = f"vla{tag}"[:15], f"vlb{tag}"[:15]
            for ns in (pair.leader_ns, pair.worker_ns):
                run_quiet("ip", "netns", "add", ns)
                pair.created.append(ns)
            run_quiet("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            for ns, dev, ip, peer in (
                (pair.leader_ns, a, pair.leader_ip, pair.worker_ip),
                (pair.worker_ns, b, pair.worker_ip, pair.leader_ip),
            ):
                inns = ["ip", "netns", "exec", ns]
                run_quiet("ip", "link", "set", dev, "netns", ns)
                run_quiet(*inns, "ip", "addr", "add", f"{ip}/30", "dev", dev)
                run_quiet(*inns, "ip", "link", "set", dev, "up")
                run_quiet(*inns, "ip", "link", "set", "lo", "up")
                # A default route, so that a node-IP probe (a UDP "connect" to a public
                # address; nothing is sent) picks the pod IP, as in a cluster.
                run_quiet(*inns, "ip", "route", "add", "default", "via", peer)
        except BaseException:
            pair.delete()
            raise
        return pair

    def delete(self) -> None:
        """Kill what still runs in the pods, then remove their networks."""
        for ns in self.created:
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in self.created:
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
        self.created.clear()


@pytest.fixture
def pods() -> Iterator[PodPair]:
    pair = PodPair.create()
    yield pair
    pair.delete()


@pytest.fixture(scope="session")
def vllm_ray_env() -> Path:
    """The vLLM + Ray environment (built once, cached)."""
    return envs.ensure_env(VLLM_RAY_ENV)


def pod_hosts(
    path: Path, lws: Manifest, pod: harness.LwsPod, pod_ip: str, leader_ip: str, group: int = 0
) -> Path:
    """The ``/etc/hosts`` of ``pod`` (:func:`harness.etc_hosts`): the group's leader address,
    as LeaderWorkerSet names it, resolves to the leader pod (cluster DNS), and the pod's own
    name to its IP, as the kubelet writes it for a pod with a hostname and subdomain."""
    name = lws["metadata"]["name"]
    namespace = lws["metadata"].get("namespace", "default")
    names = dict.fromkeys(harness.lws_leader_names(name, namespace, group), leader_ip)
    own = f"{pod.name}.{name}.{namespace}.svc.{harness.CLUSTER_DOMAIN}"
    names.update({pod.name: pod_ip, own: pod_ip})
    path.parent.mkdir(parents=True, exist_ok=True)
    return harness.etc_hosts(path, names)


def in_pod(netns: str, hostname: str, etc_hosts: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run as in a pod: in network namespace ``netns``, with its own hostname (a
    UTS namespace: the pod's name, as the kubelet sets it) and ``etc_hosts`` as its
    ``/etc/hosts`` (a private mount namespace)."""
    script = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'
    return [
        "ip", "netns", "exec", netns,
        "unshare", "--mount", "--uts", "--propagation", "private",
        "sh", "-c", script, str(etc_hosts), hostname, *argv,
    ]  # fmt: skip


def pod_process(
    manifests: Sequence[Manifest], pod: harness.LwsPod, *, pod_ip: str, workdir: Path
) -> ProcessSpec:
    """The container of a LeaderWorkerSet pod as a host process: its template's container,
    LeaderWorkerSet's env first, ``status.podIP`` the pod's IP."""
    return harness.container_process(
        manifests,
        pod.template,
        workdir=workdir,
        field_refs={"status.podIP": pod_ip},
        injected_env=pod.env,
    )


def start_in_pod(
    spec: ProcessSpec,
    pod: harness.LwsPod,
    *,
    name: str,
    netns: str,
    etc_hosts: Path,
    log_dir: Path,
    extra_env: Mapping[str, str],
    argv: Sequence[str] | None = None,
) -> Running:
    """``spec`` (or ``argv`` with its env) started as pod ``pod`` (:func:`in_pod`), its
    output in ``log_dir/<name>.log``; ``extra_env`` holds the test-side settings, ``PATH``
    among them (the image's programs)."""
    command = list(argv if argv is not None else spec.argv)
    return harness.start(
        spec,
        name=name,
        bin_dir=None,
        log_dir=log_dir,
        extra_env=extra_env,
        argv=in_pod(netns, pod.name, etc_hosts, command),
    )


def wait_until(
    running: Sequence[Running],
    until: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    may_exit: bool = False,
) -> None:
    """Poll ``until`` for at most ``timeout`` seconds; fail with the logs if a process of
    ``running`` exits meanwhile (unless ``may_exit``) or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        if not may_exit:
            for r in running:
                assert r.alive(), f"{r.name} exited ({what}):\n{r.log_tail()}"
        time.sleep(0.5)
    tails = "\n".join(f"{r.name}:\n{r.log_tail()}" for r in running)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what}\n{tails}")
