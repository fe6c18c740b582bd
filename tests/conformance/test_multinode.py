"""vLLM across nodes: the rendered leader and worker Deployments of a multi-node model group
(examples/multi-model.yaml, model gpt-oss: two nodes of four GPUs) run their rendered shell
scripts for real, with the package set of the image multi-node models need
(images/vllm-ray/Dockerfile: the default vLLM image plus Ray, ``envs/vllm-ray.txt``).

The default vLLM image has no Ray (:func:`test_default_vllm_image_has_no_ray`), so a model
with ``nodes > 1`` names an image with Ray; which one is the stack's choice, and the test
does not read the image string, only the scripts, env and resources around it.

Each pod gets its own network namespace; the two are joined by a veth pair (the pods'
network, each pod's default route pointing at the other, so Ray picks the pod IP as its node
IP) and each has its own ``/etc/hosts`` (a private mount namespace), in which the group's
headless Service resolves to the leader pod, as cluster DNS answers for it (Ray's C++ side
resolves names itself; see fixtures_ray). Nothing else resolves the Service: the worker can
only join through it. A fake ``vllm`` first on ``PATH`` records the leader's final
``exec vllm serve ...`` instead of serving (no GPU here). The test asserts:

- the leader starts a Ray head and waits for its nodes (no ``vllm serve`` while alone);
- the worker joins the head through the group Service: the head sees every node of the
  group alive, each at its pod IP with the rendered GPU count;
- the recorded ``vllm serve`` args pass vLLM's own check (vllm_check.py, in the vLLM + Ray
  environment: a ``ray`` executor backend needs Ray) with tensor parallel = GPUs per node,
  pipeline parallel = nodes, ``--distributed-executor-backend ray``.

Test-side settings the cluster does not need: ``RAY_TMPDIR`` (the pod's short ``/tmp``, for
Ray's Unix sockets), a small object-store proportion (shared machine) and
``GRPC_DNS_RESOLVER=native`` (gRPC resolves through ``/etc/hosts``). Needs root (``ip
netns``, ``unshare``), like the Ray fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import envs
import harness
import pytest
from fixtures_ray import with_hosts
from fixtures_vllm import VLLM_ENV, model_and_revision, seed_hf_cache, vllm_check
from harness import Running, run_quiet

from aistack.components import DEFAULT_IMAGES, VERSIONS

#: The environment of images/vllm-ray/Dockerfile (the default vLLM image plus Ray).
VLLM_RAY_ENV = "vllm-ray"
DOCKERFILE = Path(__file__).resolve().parents[2] / "images" / "vllm-ray" / "Dockerfile"

EXAMPLE = "multi-model.yaml"
STACK = "multi"
NAMESPACE = "default"
MODEL = "gpt-oss"
GROUP = f"{STACK}-vllm-{MODEL}-g0"
LEADER = f"{GROUP}-leader"
WORKER = f"{GROUP}-worker"

#: Test-side env (see the module docstring).
RAY_TEST_ENV = {"RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "0.05", "GRPC_DNS_RESOLVER": "native"}

FAKE_VLLM = """#!/bin/sh
# Test-only stand-in for the vllm CLI: records its argv (JSON) and stays up like a server.
exec "$VLLM_FAKE_PYTHON" -c 'import json, sys, time
open(sys.argv[1], "w").write(json.dumps(sys.argv[2:]))
time.sleep(3600)' "$VLLM_FAKE_RECORD" "$@"
"""

#: Run on the leader pod: the Ray cluster as its head sees it.
NODES_SCRIPT = """
import json, ray
ray.init(address="auto", logging_level="ERROR")
print("NODES " + json.dumps([
    {"alive": n["Alive"], "ip": n["NodeManagerAddress"], "gpus": n["Resources"].get("GPU", 0)}
    for n in ray.nodes()
]))
"""


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
                "the multi-node test starts each pod in its own network namespace and needs "
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
                # A default route, so that Ray's node-IP probe (a UDP "connect" to a public
                # address; nothing is sent) picks the pod IP, as in a cluster.
                run_quiet(*inns, "ip", "route", "add", "default", "via", peer)
        except BaseException:
            pair.delete()
            raise
        return pair

    def delete(self) -> None:
        """Kill what still runs in the pods (Ray's daemons), then remove their networks."""
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


@dataclass
class Pod:
    running: Running
    #: the pod's /tmp for Ray (RAY_TMPDIR)
    ray_tmp: Path


def _start_pod(
    manifests: list[harness.Manifest],
    deployment: str,
    *,
    netns: str,
    pod_ip: str,
    etc_hosts: Path,
    fake_bin: Path,
    record: Path,
    workdir: Path,
    log_dir: Path,
) -> Pod:
    spec = harness.container_process(
        manifests, deployment, workdir=workdir, field_refs={"status.podIP": pod_ip}
    )
    assert spec.argv[:2] == ["/bin/bash", "-c"], spec.argv
    tmp = Path(tempfile.mkdtemp(prefix="vray", dir="/tmp"))
    extra = {
        **RAY_TEST_ENV,
        "RAY_TMPDIR": str(tmp),
        # the fake vllm first on PATH, then the image's programs (ray, python3)
        "PATH": f"{fake_bin}:{envs.bin_dir(VLLM_RAY_ENV)}:/usr/local/bin:/usr/bin:/bin",
        "VLLM_FAKE_PYTHON": str(envs.python(VLLM_RAY_ENV)),
        "VLLM_FAKE_RECORD": str(record),
    }
    running = harness.start(
        spec,
        name=deployment,
        bin_dir=None,
        log_dir=log_dir,
        extra_env=extra,
        argv=with_hosts(["ip", "netns", "exec", netns], spec.argv, etc_hosts),
    )
    return Pod(running, tmp)


def _ray_nodes(pods: PodPair, leader: Pod, etc_hosts: Path, home: Path) -> list[dict[str, object]]:
    """The nodes of the leader's Ray cluster, asked on the leader pod (``address="auto"``)."""
    home.mkdir(parents=True, exist_ok=True)
    env = harness.base_env(envs.bin_dir(VLLM_RAY_ENV), home)
    env.update(RAY_TEST_ENV, RAY_TMPDIR=str(leader.ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    argv = [str(envs.python(VLLM_RAY_ENV)), "-c", NODES_SCRIPT]
    proc = subprocess.run(
        with_hosts(["ip", "netns", "exec", pods.leader_ns], argv, etc_hosts),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NODES ")]
    assert lines, f"could not list the Ray nodes:\n{proc.stdout}\n{proc.stderr}"
    nodes: list[dict[str, object]] = json.loads(lines[-1][len("NODES ") :])
    return nodes


def _http_in(netns: str, url: str) -> int:
    """The status of a GET of ``url`` from inside ``netns`` (0 when nothing answered)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except OSError:\n"
        "    print(0)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script, url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return int(out.stdout.strip() or 0)


def _wait(pods: list[Pod], until: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        for pod in pods:
            r = pod.running
            assert r.alive(), f"{r.name} exited ({what}):\n{r.log_tail()}"
        time.sleep(0.5)
    tails = "\n".join(f"{p.running.name}:\n{p.running.log_tail()}" for p in pods)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what}\n{tails}")


def test_multinode_group_forms_and_serves_with_ray(
    pods: PodPair, suite_dir: Path, log_dir: Path, vllm_ray_env: Path
) -> None:
    manifests = harness.render_example(harness.example(EXAMPLE))
    leader_c = harness.container(manifests, LEADER)
    worker_c = harness.container(manifests, WORKER)
    gpus = int(leader_c["resources"]["limits"]["nvidia.com/gpu"])
    assert int(worker_c["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    nodes = 1 + int(harness.workload(manifests, WORKER)["spec"]["replicas"])
    # Both pods run one image (Ray refuses nodes of different versions).
    assert leader_c["image"] == worker_c["image"]

    workdir = suite_dir / "multinode"
    fake_bin = workdir / "fake-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    (fake_bin / "vllm").write_text(FAKE_VLLM)
    (fake_bin / "vllm").chmod(0o755)
    record = workdir / "vllm-argv.json"
    record.unlink(missing_ok=True)

    # The group's headless Service (no cluster IP): its names resolve to the leader pod.
    service = harness.find(manifests, "Service", GROUP)
    assert service["spec"].get("clusterIP") == "None", service["spec"]
    fqdn = f"{GROUP}.{NAMESPACE}.svc.{harness.CLUSTER_DOMAIN}"
    names = (GROUP, f"{GROUP}.{NAMESPACE}", f"{GROUP}.{NAMESPACE}.svc", fqdn)
    etc_hosts = harness.etc_hosts(workdir / "hosts", dict.fromkeys(names, pods.leader_ip))

    started: list[Pod] = []
    t0 = time.monotonic()
    try:
        leader = _start_pod(
            manifests,
            LEADER,
            netns=pods.leader_ns,
            pod_ip=pods.leader_ip,
            workdir=workdir / "leader",
            etc_hosts=etc_hosts,
            fake_bin=fake_bin,
            record=record,
            log_dir=log_dir,
        )
        started.append(leader)
        # The leader waits for its nodes: no vllm serve while it is alone.
        waiting = f"waiting for {nodes} Ray nodes"
        _wait(started, lambda: waiting in leader.running.log_tail(200), 120, waiting)
        assert not record.exists(), "the leader ran vllm serve before its worker joined"
        t_head = time.monotonic() - t0

        worker = _start_pod(
            manifests,
            WORKER,
            netns=pods.worker_ns,
            pod_ip=pods.worker_ip,
            workdir=workdir / "worker",
            etc_hosts=etc_hosts,
            fake_bin=fake_bin,
            record=record,
            log_dir=log_dir,
        )
        started.append(worker)
        _wait(started, record.exists, 180, "the leader's vllm serve after the worker joined")
        t_serve = time.monotonic() - t0
        argv = json.loads(record.read_text())

        # The worker joined through the Service and stays in: every node alive, at its pod
        # IP, with the rendered GPU count (declared: no GPU here).
        seen = _ray_nodes(pods, leader, etc_hosts, workdir / "nodes-home")
        assert sorted((n["ip"], n["alive"], n["gpus"]) for n in seen) == sorted(
            [(pods.leader_ip, True, float(gpus)), (pods.worker_ip, True, float(gpus))]
        ), seen
        assert worker.running.alive(), worker.running.log_tail()
        # The worker's rendered probes answer, asked at the pod's IP from its own network
        # namespace (as the kubelet asks from the node).
        probes = harness.probe_urls(manifests, WORKER, pods.worker_ip)
        assert [kind for kind, _ in probes] == ["readinessProbe", "livenessProbe"], probes
        for kind, url in probes:
            # Within the probe's initial delay, as the kubelet would wait.
            deadline = time.monotonic() + 30
            while (code := _http_in(pods.worker_ns, url)) != 200 and time.monotonic() < deadline:
                time.sleep(2)
            assert code == 200, (kind, url, code, worker.running.log_tail())
        print(
            f"multinode: head waiting at {t_head:.0f} s, vllm serve at {t_serve:.0f} s, "
            f"nodes listed at {time.monotonic() - t0:.0f} s"
        )
    finally:
        for pod in reversed(started):
            pod.running.stop()
        pods.delete()
        for pod in started:
            shutil.rmtree(pod.ray_tmp, ignore_errors=True)
        print(f"multinode: pods stopped at {time.monotonic() - t0:.0f} s")

    assert argv[0] == "serve", argv
    args = argv[1:]
    spec = harness.container_process(
        manifests, LEADER, workdir=workdir / "check", field_refs={"status.podIP": pods.leader_ip}
    )
    model, revision = model_and_revision(args)
    seed_hf_cache(Path(spec.env["HF_HOME"]), model, revision)
    result = vllm_check(args, spec.env, home=workdir / "check" / "home", environment=VLLM_RAY_ENV)
    print(f"multinode: vllm_check done at {time.monotonic() - t0:.0f} s")
    assert result.ok, f"vLLM rejects the leader's args at {result.stage}: {result.error}"
    assert result.values["tensor_parallel_size"] == gpus
    assert result.values["pipeline_parallel_size"] == nodes
    assert result.values["distributed_executor_backend"] == "ray"
    assert result.values["served_model_name"] == MODEL


def test_default_vllm_image_has_no_ray(vllm_env: Path) -> None:
    # The default image's package set (envs/vllm.txt) has no Ray: multi-node models need an
    # image with it (images/vllm-ray), as the docs say.
    proc = subprocess.run(
        [str(envs.python(VLLM_ENV)), "-c", "import ray"], capture_output=True, text=True
    )
    assert proc.returncode != 0, "the vLLM environment imports ray"
    assert "No module named 'ray'" in proc.stderr, proc.stderr


def _dockerfile_args() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def test_vllm_ray_image_matches_the_stack_and_its_environment() -> None:
    # The Dockerfile builds on the default vLLM image at the stack's vLLM version and adds
    # the stack's Ray version; envs/vllm-ray.txt (what the test above runs) pins the same.
    args = _dockerfile_args()
    assert args["VLLM_VERSION"] == VERSIONS["vllm"] == envs.pinned(VLLM_RAY_ENV, "vllm")
    assert args["RAY_VERSION"] == VERSIONS["ray"] == envs.pinned(VLLM_RAY_ENV, "ray")
    base = re.search(r"^FROM (\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert base is not None
    image = base.group(1).replace("${VLLM_VERSION}", args["VLLM_VERSION"])
    assert image == DEFAULT_IMAGES["vllm"]
    assert envs.files("vllm")[0] in envs.files(VLLM_RAY_ENV)
