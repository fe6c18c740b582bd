"""vLLM across nodes on Ray (``multiNode: {backend: ray}``): the rendered leader and worker
pods of a LeaderWorkerSet group run their rendered shell scripts for real, with the package
set of an image with Ray (images/vllm-ray/Dockerfile: the default vLLM image plus Ray,
``envs/vllm-ray.txt``). The stack is a copy of examples/multi-model.yaml whose gpt-oss (two
nodes of four GPUs) says ``multiNode: {backend: ray}`` and names such an image (the Ray
backend needs one: the default vLLM image has no Ray, :func:`test_default_vllm_image_has_no_ray`);
the test does not read the image string, only the scripts, env and resources around it.
The default backend (vLLM's own multi-node mode) is test_multinode_vllm.py's.

The pods are the group's leader (index 0) and worker (index 1), each with the env
LeaderWorkerSet injects (``harness.lws_env``), in a network namespace of its own with an
``/etc/hosts`` in which the leader address LeaderWorkerSet gives (``LWS_LEADER_ADDRESS``)
resolves to the leader pod (fixtures_multinode; Ray's C++ side resolves names itself, see
fixtures_ray). A fake ``vllm`` first on ``PATH`` records the leader's final
``exec vllm serve ...`` instead of serving (no GPU here). The test asserts:

- the leader starts a Ray head and waits for its nodes (no ``vllm serve`` while alone);
- the worker joins the head at ``$LWS_LEADER_ADDRESS``: the head sees every node of the
  group alive, each at its pod IP with the rendered GPU count, and the worker's rendered
  probes answer;
- the recorded ``vllm serve`` args pass vLLM's own check (vllm_check.py, in the vLLM + Ray
  environment: a ``ray`` executor backend needs Ray) with tensor parallel = GPUs per node,
  pipeline parallel = nodes (the group's size), ``--distributed-executor-backend ray``.

Test-side settings the cluster does not need: ``RAY_TMPDIR`` (the pod's short ``/tmp``, for
Ray's Unix sockets), a small object-store proportion (shared machine) and
``GRPC_DNS_RESOLVER=native`` (gRPC resolves through ``/etc/hosts``). Needs root (``ip
netns``, ``unshare``), like the Ray fixtures.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import envs
import harness
from fixtures_multinode import (
    VLLM_RAY_ENV,
    PodPair,
    gpu_count,
    in_pod,
    model_lws,
    multinode_variant,
    pod_hosts,
    pod_process,
    start_in_pod,
    wait_until,
)
from fixtures_vllm import VLLM_ENV, model_and_revision, seed_hf_cache, vllm_check
from harness import Running

from aistack.components import DEFAULT_IMAGES, VERSIONS

DOCKERFILE = Path(__file__).resolve().parents[2] / "images" / "vllm-ray" / "Dockerfile"

MODEL = "gpt-oss"
#: An image built from images/vllm-ray/Dockerfile, as a stack would name it.
RAY_IMAGE = "registry.example.com/vllm-openai-ray:v0.34.0-ray2.60.0"

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
class Pod:
    running: Running
    #: the pod's /tmp for Ray (RAY_TMPDIR)
    ray_tmp: Path
    pod: harness.LwsPod
    etc_hosts: Path


def _start_pod(
    manifests: list[harness.Manifest],
    pod: harness.LwsPod,
    *,
    netns: str,
    pod_ip: str,
    leader_ip: str,
    lws: harness.Manifest,
    fake_bin: Path,
    record: Path,
    workdir: Path,
    log_dir: Path,
) -> Pod:
    spec = pod_process(manifests, pod, pod_ip=pod_ip, workdir=workdir)
    assert spec.argv[:2] == ["/bin/bash", "-c"], spec.argv
    etc_hosts = pod_hosts(workdir / "hosts", lws, pod, pod_ip, leader_ip)
    tmp = Path(tempfile.mkdtemp(prefix="vray", dir="/tmp"))
    extra = {
        **RAY_TEST_ENV,
        "RAY_TMPDIR": str(tmp),
        # the fake vllm first on PATH, then the image's programs (ray, python3)
        "PATH": f"{fake_bin}:{envs.bin_dir(VLLM_RAY_ENV)}:/usr/local/bin:/usr/bin:/bin",
        "VLLM_FAKE_PYTHON": str(envs.python(VLLM_RAY_ENV)),
        "VLLM_FAKE_RECORD": str(record),
    }
    running = start_in_pod(
        spec,
        pod,
        name=f"ray-{pod.name}",
        netns=netns,
        etc_hosts=etc_hosts,
        log_dir=log_dir,
        extra_env=extra,
    )
    return Pod(running, tmp, pod, etc_hosts)


def _ray_nodes(pods: PodPair, leader: Pod, home: Path) -> list[dict[str, object]]:
    """The nodes of the leader's Ray cluster, asked on the leader pod (``address="auto"``)."""
    home.mkdir(parents=True, exist_ok=True)
    env = harness.base_env(envs.bin_dir(VLLM_RAY_ENV), home)
    env.update(RAY_TEST_ENV, RAY_TMPDIR=str(leader.ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    argv = [str(envs.python(VLLM_RAY_ENV)), "-c", NODES_SCRIPT]
    proc = subprocess.run(
        in_pod(pods.leader_ns, leader.pod.name, leader.etc_hosts, argv),
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


def test_multinode_group_forms_and_serves_with_ray(
    pods: PodPair, suite_dir: Path, log_dir: Path, vllm_ray_env: Path
) -> None:
    workdir = suite_dir / "multinode-ray"
    manifests = multinode_variant(
        workdir / "stack.yaml", multiNode={"backend": "ray"}, image=RAY_IMAGE
    )
    lws = model_lws(manifests, MODEL)
    name = lws["metadata"]["name"]
    leader_pod, worker_pod = harness.lws_pods(manifests, name)
    leader_c = harness.container(manifests, leader_pod.template)
    worker_c = harness.container(manifests, worker_pod.template)
    gpus = gpu_count(leader_c)
    assert gpu_count(worker_c) == gpus
    nodes = harness.lws_size(manifests, name)
    assert nodes == 2
    # Both pods run one image (Ray refuses nodes of different versions).
    assert leader_c["image"] == worker_c["image"]
    # The leader's address LeaderWorkerSet gives is under its shared headless Service
    # (the default subdomain policy), which is what the hosts file below stands for.
    policy = lws["spec"].get("networkConfig", {}).get("subdomainPolicy", "Shared")
    assert policy == "Shared", lws["spec"].get("networkConfig")

    fake_bin = workdir / "fake-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    (fake_bin / "vllm").write_text(FAKE_VLLM)
    (fake_bin / "vllm").chmod(0o755)
    record = workdir / "vllm-argv.json"
    record.unlink(missing_ok=True)

    started: list[Pod] = []
    t0 = time.monotonic()
    try:
        leader = _start_pod(
            manifests,
            leader_pod,
            netns=pods.leader_ns,
            pod_ip=pods.leader_ip,
            workdir=workdir / "leader",
            leader_ip=pods.leader_ip,
            lws=lws,
            fake_bin=fake_bin,
            record=record,
            log_dir=log_dir,
        )
        started.append(leader)
        runs = [leader.running]
        # The leader waits for its nodes: no vllm serve while it is alone.
        waiting = f"waiting for {nodes} Ray nodes"
        wait_until(runs, lambda: waiting in leader.running.log_tail(200), 120, waiting)
        assert not record.exists(), "the leader ran vllm serve before its worker joined"
        t_head = time.monotonic() - t0

        worker = _start_pod(
            manifests,
            worker_pod,
            netns=pods.worker_ns,
            pod_ip=pods.worker_ip,
            workdir=workdir / "worker",
            leader_ip=pods.leader_ip,
            lws=lws,
            fake_bin=fake_bin,
            record=record,
            log_dir=log_dir,
        )
        started.append(worker)
        runs.append(worker.running)
        wait_until(runs, record.exists, 180, "the leader's vllm serve after the worker joined")
        t_serve = time.monotonic() - t0
        argv = json.loads(record.read_text())

        # The worker joined at the leader's address and stays in: every node alive, at its
        # pod IP, with the rendered GPU count (declared: no GPU here).
        seen = _ray_nodes(pods, leader, workdir / "nodes-home")
        assert sorted((n["ip"], n["alive"], n["gpus"]) for n in seen) == sorted(
            [(pods.leader_ip, True, float(gpus)), (pods.worker_ip, True, float(gpus))]
        ), seen
        assert worker.running.alive(), worker.running.log_tail()
        # The worker's rendered probes answer, asked at the pod's IP from its own network
        # namespace (as the kubelet asks from the node).
        probes = harness.probe_urls(manifests, worker_pod.template, pods.worker_ip)
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
    spec = pod_process(manifests, leader_pod, pod_ip=pods.leader_ip, workdir=workdir / "check")
    model, revision = model_and_revision(args)
    seed_hf_cache(Path(spec.env["HF_HOME"]), model, revision)
    result = vllm_check(args, spec.env, home=workdir / "check" / "home", environment=VLLM_RAY_ENV)
    print(f"multinode: vllm_check done at {time.monotonic() - t0:.0f} s")
    assert result.ok, f"vLLM rejects the leader's args at {result.stage}: {result.error}"
    assert result.values["tensor_parallel_size"] == gpus
    assert result.values["pipeline_parallel_size"] == nodes
    assert result.values["distributed_executor_backend"] == "ray"
    assert result.values["served_model_name"] == MODEL
    # On Ray the nodes are Ray's: vLLM's own multi-node settings stay at one node.
    assert result.values["nnodes"] == 1
    assert result.values["launch"]["kind"] == "api_server"


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
