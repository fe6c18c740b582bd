"""vLLM across nodes with its own multi-node mode (``multiNode.backend: vllm``, the default,
on the stock image): every pod of a LeaderWorkerSet group runs ``vllm serve`` with the
group's size (``--nnodes``), its rank (``--node-rank $(LWS_WORKER_INDEX)``) and the leader's
address (``--master-addr $(LWS_LEADER_ADDRESS)``, ``--master-port``); the workers add
``--headless``. The env LeaderWorkerSet injects (``harness.lws_env``) is put first in each
container's env, as its webhook does, and ``$(VAR)`` expanded from it as the kubelet does.

- **vLLM's check, every pod** (:func:`test_vllm_accepts_every_pod_of_the_group`): for the
  layouts TP x PP = 8 x 2 (``gpus: 8, nodes: 2``) and 4 x 4 (``gpus: 4, nodes: 4``) of the
  example's gpt-oss (64 attention heads, 8 KV heads, 36 layers: each divides), the rendered
  leader argv and each worker's (index 1..N-1), judged by vllm_check.py in the vLLM
  environment (the stock image: no Ray): parser, serve validation, engine config, and what
  ``vllm serve`` would launch, decided by vLLM's own ``ServeSubcommand.cmd``: the leader one
  API server; a worker ``run_headless``, whose own checks and ``headless=True`` engine
  config run for real, up to its headless multiprocessing executor. Asserted: nnodes = the
  group's size, node rank = the pod's index, master address = the leader's address as
  LeaderWorkerSet gives it, master port 29501, TP = GPUs per node, PP = nodes, executor
  ``mp``, world size TP x PP and, per node, as many worker processes as the pod has GPUs.
- **The real processes** (:func:`test_group_starts_its_distributed_executor`): the
  example's leader and worker (TP 4 x PP 2) run their rendered ``vllm serve`` in separate
  network namespaces (fixtures_multinode: the leader's address resolves to the leader pod
  in each pod's ``/etc/hosts``), with LeaderWorkerSet's env. On this machine (CPU only,
  the CUDA build of vLLM that the image has) they get exactly this far, and the test
  asserts each step from their logs:

  1. the leader's API server parses and validates the args, builds the engine config
     (``Inferred data_parallel_rank 0 from node_rank 0``) and starts its engine core; the
     engine's multiprocessing executor logs itself the group's leader with the rendered
     layout: ``DP group leader: node_rank=0, node_rank_within_dp=0, master_addr=<leader's
     address>, mq_connect_ip=<pod IP> (local), world_size=8, local_world_size=4``, binds
     its cross-node message queue on the pod IP (``VLLM_HOST_IP``, rendered from
     ``status.podIP``) and starts its four worker processes, global ranks 0-3;
  2. the worker runs ``run_headless``: ``Launching vLLM (v0.34.0) headless multiproc
     executor, with head node address <leader's address>:29501 for torch.distributed
     process group``, and starts its four worker processes, global ranks 4-7;
  3. **where it stops**: every worker process fails in ``CPUWorker.__init__`` at
     ``torch.ops._C.init_cpu_memory_env`` (``AttributeError``): vLLM's CPU kernels
     (``vllm._C`` of a CPU build) are not in the image's CUDA build, and no GPU is here for
     its CUDA worker. That is before ``init_device``, i.e. before torch.distributed's
     rendezvous at ``--master-addr:--master-port``: no process listens on 29501 and the
     worker never connects to the leader, so the name resolution of the leader's address
     and the cross-node rendezvous are not exercised here (a GPU cluster's part). Both
     pods then exit non-zero (the leader ``Engine core initialization failed``, the worker
     ``WorkerProc initialization failed``), as a pod of a group would be restarted.

  Test-side settings a GPU pod does not need (CPU platform only):
  ``VLLM_TARGET_DEVICE=cpu`` and ``CUDA_VISIBLE_DEVICES=""`` (vllm_check's), and
  ``VLLM_CPU_OMP_THREADS_BIND=nobind`` (vLLM's CPU platform binds each worker's OpenMP
  threads to a NUMA node of its own by default and refuses four workers on this one-node
  machine before starting any); ``HF_HUB_OFFLINE=1`` with the model's config and a small
  tokenizer seeded in the rendered ``HF_HOME`` (the API server loads the tokenizer before
  it starts the engine; no weights are read before the stop); ``VLLM_RPC_BASE_PATH``, a
  short directory under ``/tmp`` per pod, where vLLM puts its ZeroMQ IPC sockets (by
  default the temporary directory, which in a pod is the short ``/tmp``, but here the
  pod's host directory, too long for a Unix socket's 107 characters).

Needs root (``ip netns``, ``unshare``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from fixtures_multinode import (
    MULTINODE_EXAMPLE,
    PodPair,
    gpu_count,
    model_lws,
    multinode_variant,
    pod_hosts,
    pod_process,
    start_in_pod,
    wait_until,
)
from fixtures_vllm import (
    CheckJob,
    CheckResult,
    model_and_revision,
    seed_hf_cache,
    serve_args,
    vllm_check_batch,
)
from harness import Manifest, Running

MODEL = "gpt-oss"
MASTER_PORT = 29501
#: (GPUs per node, nodes) of the layouts vLLM's check judges: TP x PP = 8 x 2 and 4 x 4.
LAYOUTS = [(8, 2), (4, 4)]

#: Test-side env of the real processes (see the module docstring).
CPU_TEST_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
}

#: Where every worker process stops on this machine (see the module docstring).
STOP = "torch.ops._C.init_cpu_memory_env"
STOP_ERROR = "AttributeError: '_OpNamespace' '_C' object has no attribute 'init_cpu_memory_env'"

#: A small tokenizer (``tokenizers`` serialization) the API server can load: written by the
#: vLLM environment's ``tokenizers`` into a snapshot directory.
TOKENIZER_SCRIPT = """
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers
snapshot = Path(sys.argv[1])
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(61)}}
tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer.save(str(snapshot / "tokenizer.json"))
(snapshot / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast",
    "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
}))
"""


def _pod_ip(index: int) -> str:
    return f"10.235.0.{index + 1}"


@dataclass
class Checked:
    #: per layout ``(gpus, nodes)``: each pod's name and what vLLM settled on for its argv
    layouts: dict[tuple[int, int], list[tuple[str, dict[str, Any]]]]
    #: the live checks' results (:data:`LIVE`)
    live: dict[str, CheckResult]


#: Variants of the 8 x 2 layout's pods that vLLM must refuse, at the stage named, with the
#: message quoted: the check reaches each of its stages for these args.
LIVE = {
    # The pod without LeaderWorkerSet's env: $(LWS_WORKER_INDEX) stays as written.
    "without-lws-env": ("parse", "argument --node-rank/-r: invalid"),
    # A worker of an index the group does not have.
    "rank-out-of-range": ("engine_config", "`--node-rank` must be between 0 and 1"),
    # A worker asked for an API server besides --headless: ServeSubcommand.cmd refuses it.
    "headless-api-server": ("launch", "cannot be used with --headless"),
}


def _live_jobs(manifests: list[Manifest], workdir: Path) -> dict[str, CheckJob]:
    lws = model_lws(manifests, MODEL)
    leader, worker = harness.lws_pods(manifests, lws["metadata"]["name"])
    bare = harness.container_process(
        manifests, leader.template, workdir=workdir, field_refs={"status.podIP": _pod_ip(0)}
    )
    spec = pod_process(manifests, worker, pod_ip=_pod_ip(1), workdir=workdir)
    args = serve_args(spec)
    rank = args.index("--node-rank") + 1
    return {
        "without-lws-env": CheckJob(serve_args(bare), dict(bare.env)),
        "rank-out-of-range": CheckJob([*args[:rank], "2", *args[rank + 1 :]], dict(spec.env)),
        "headless-api-server": CheckJob([*args, "--api-server-count", "1"], dict(spec.env)),
    }


@pytest.fixture(scope="module")
def checked(suite_dir: Path, vllm_env: Path) -> Checked:
    """vLLM's check of every pod's rendered argv in each layout, and of :data:`LIVE` (one
    vLLM process for all, one ``HF_HOME``: every pod's volumes in one directory)."""
    workdir = suite_dir / "multinode-vllm-check"
    jobs: list[CheckJob] = []
    keys: list[tuple[tuple[int, int], str]] = []
    live: dict[str, CheckJob] = {}
    for gpus, nodes in LAYOUTS:
        manifests = multinode_variant(
            workdir / f"stack-{gpus}x{nodes}.yaml", gpus=gpus, nodes=nodes
        )
        lws = model_lws(manifests, MODEL)
        pods = harness.lws_pods(manifests, lws["metadata"]["name"])
        assert len(pods) == nodes
        for pod in pods:
            spec = pod_process(manifests, pod, pod_ip=_pod_ip(pod.index), workdir=workdir / "pod")
            args = serve_args(spec)
            seed_hf_cache(Path(spec.env["HF_HOME"]), *model_and_revision(args))
            jobs.append(CheckJob(args, dict(spec.env)))
            keys.append(((gpus, nodes), pod.name))
        if (gpus, nodes) == LAYOUTS[0]:
            live = _live_jobs(manifests, workdir / "pod")
    results = vllm_check_batch([*jobs, *live.values()], home=workdir / "home")
    out = Checked(layouts={}, live=dict(zip(live, results[len(jobs) :], strict=True)))
    for (layout, name), job, result in zip(keys, jobs, results, strict=False):
        assert result.ok, (
            f"vLLM rejects the args of {name} ({layout[0]} GPUs x {layout[1]} nodes) at "
            f"{result.stage}: {result.error}\nargs: {job.args}\n{result.output}"
        )
        out.layouts.setdefault(layout, []).append((name, result.values))
    return out


@pytest.mark.parametrize(("gpus", "nodes"), LAYOUTS, ids=[f"tp{g}-pp{n}" for g, n in LAYOUTS])
def test_vllm_accepts_every_pod_of_the_group(checked: Checked, gpus: int, nodes: int) -> None:
    lws_name = f"multi-vllm-{MODEL}-lws"
    leader_address = harness.lws_leader_address(lws_name, "default", 0)
    pods = checked.layouts[(gpus, nodes)]
    assert [name for name, _ in pods] == [f"{lws_name}-0"] + [
        f"{lws_name}-0-{i}" for i in range(1, nodes)
    ]
    for index, (name, values) in enumerate(pods):
        settled = {
            "nnodes": values["nnodes"],
            "node_rank": values["node_rank"],
            "master_addr": values["master_addr"],
            "master_port": values["master_port"],
            "tensor_parallel_size": values["tensor_parallel_size"],
            "pipeline_parallel_size": values["pipeline_parallel_size"],
            "distributed_executor_backend": values["distributed_executor_backend"],
            "world_size": values["world_size"],
            "local_world_size": values["local_world_size"],
            "served_model_name": values["served_model_name"],
        }
        assert settled == {
            "nnodes": nodes,
            "node_rank": index,
            "master_addr": leader_address,
            "master_port": MASTER_PORT,
            "tensor_parallel_size": gpus,
            "pipeline_parallel_size": nodes,
            "distributed_executor_backend": "mp",
            "world_size": gpus * nodes,
            # each node runs one worker process per GPU of its pod
            "local_world_size": gpus,
            "served_model_name": MODEL,
        }, name
        launch = values["launch"]
        if index == 0:
            # The leader serves the API, in this process, and drives the whole group.
            assert launch == {"kind": "api_server", "api_server_count": None, "parallel": None}
            assert values["node_rank_within_dp"] == 0
            continue
        # A worker: no API server; run_headless starts the multiprocessing executor of its
        # node, with the config only it builds (headless=True), in the same layout.
        assert launch["kind"] == "headless_multiproc_executor", (name, launch)
        assert launch["api_server_count"] == 0
        parallel = launch["parallel"]
        assert parallel["nnodes"] == nodes and parallel["node_rank"] == index, parallel
        assert parallel["node_rank_within_dp"] == index, parallel
        assert parallel["master_addr"] == leader_address, parallel
        assert parallel["master_port"] == MASTER_PORT, parallel
        assert parallel["world_size"] == gpus * nodes, parallel
        assert parallel["local_world_size"] == gpus, parallel


@pytest.mark.parametrize("case", sorted(LIVE))
def test_vllm_multinode_checks_are_live(checked: Checked, case: str) -> None:
    stage, message = LIVE[case]
    result = checked.live[case]
    assert not result.ok, (case, result.values.get("launch"))
    assert (result.stage, message in result.error) == (stage, True), (case, result.error)


# --------------------------------------------------------------------------- processes


def _seed_tokenizer(hf_home: Path, model: str, revision: str | None) -> None:
    """The model's config and :data:`TOKENIZER_SCRIPT`'s tokenizer in the cache."""
    seed_hf_cache(hf_home, model, revision)
    repo = hf_home / "hub" / ("models--" + model.replace("/", "--"))
    (snapshot,) = (repo / "snapshots").iterdir()
    subprocess.run(
        [str(envs.python("vllm")), "-c", TOKENIZER_SCRIPT, str(snapshot)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _worker_ranks(log: str) -> set[int]:
    """The global ranks of the vLLM worker processes a log shows (``VllmWorker-<rank>``)."""
    return {int(r) for r in re.findall(r"\(VllmWorker-(\d+) pid=\d+\)", log)}


def _stopped_ranks(log: str) -> set[int]:
    """The ranks whose worker process failed at :data:`STOP` with :data:`STOP_ERROR`."""
    out = set()
    for rank in _worker_ranks(log):
        lines = [ln for ln in log.splitlines() if ln.startswith(f"(VllmWorker-{rank} ")]
        text = "\n".join(lines)
        if STOP in text and STOP_ERROR in text:
            out.add(rank)
    return out


def test_group_starts_its_distributed_executor(
    pods: PodPair, suite_dir: Path, log_dir: Path, vllm_env: Path
) -> None:
    workdir = suite_dir / "multinode-vllm"
    manifests = harness.render_example(harness.example(MULTINODE_EXAMPLE))
    lws = model_lws(manifests, MODEL)
    name = lws["metadata"]["name"]
    leader_pod, worker_pod = harness.lws_pods(manifests, name)
    gpus = gpu_count(harness.container(manifests, leader_pod.template))
    nodes = harness.lws_size(manifests, name)
    assert (gpus, nodes) == (4, 2)
    leader_address = harness.lws_leader_address(name, lws["metadata"]["namespace"], 0)
    bin_dir = envs.bin_dir("vllm")
    extra = {**CPU_TEST_ENV, "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}

    started: list[Running] = []
    rpc_dirs: list[Path] = []
    t0 = time.monotonic()
    try:
        for pod, ip, ns in (
            (leader_pod, pods.leader_ip, pods.leader_ns),
            (worker_pod, pods.worker_ip, pods.worker_ns),
        ):
            spec = pod_process(manifests, pod, pod_ip=ip, workdir=workdir / pod.name)
            etc_hosts = pod_hosts(workdir / pod.name / "hosts", lws, pod, ip, pods.leader_ip)
            args = serve_args(spec)
            # what the kubelet ran: LeaderWorkerSet's env expanded into the rendered args
            assert args[args.index("--node-rank") + 1] == str(pod.index)
            assert args[args.index("--master-addr") + 1] == leader_address
            _seed_tokenizer(Path(spec.env["HF_HOME"]), *model_and_revision(args))
            argv = [str(bin_dir / "vllm"), *spec.argv[1:]]
            rpc = Path(tempfile.mkdtemp(prefix="vrpc", dir="/tmp"))
            rpc_dirs.append(rpc)
            started.append(
                start_in_pod(
                    spec,
                    pod,
                    name=f"vllm-{pod.name}",
                    netns=ns,
                    etc_hosts=etc_hosts,
                    log_dir=log_dir,
                    extra_env={**extra, "VLLM_RPC_BASE_PATH": str(rpc)},
                    argv=argv,
                )
            )
        leader, worker = started
        ranks = {leader.name: set(range(gpus)), worker.name: set(range(gpus, 2 * gpus))}

        def stopped() -> bool:
            return all(_stopped_ranks(r.log.read_text(errors="replace")) == ranks[r.name]
                       for r in started)  # fmt: skip

        def ended() -> bool:
            return stopped() or not any(r.alive() for r in started)

        wait_until(started, ended, 150, "every worker process at its stop", may_exit=True)
        t_stop = time.monotonic() - t0
        tails = "\n".join(f"{r.name}:\n{r.log_tail(80)}" for r in started)
        assert stopped(), f"the pods ended elsewhere than at {STOP}:\n{tails}"
        # Both pods exit on their own then, non-zero (as a group's pod would be restarted).
        wait_until(started, lambda: not any(r.alive() for r in started), 60, "both exit",
                   may_exit=True)  # fmt: skip
        codes = {r.name: r.process.returncode for r in started}
        print(f"multinode-vllm: workers stopped at {t_stop:.0f} s, pods exited {codes} "
              f"at {time.monotonic() - t0:.0f} s")  # fmt: skip
    finally:
        for r in started:
            r.stop()
        pods.delete()
        for rpc in rpc_dirs:
            shutil.rmtree(rpc, ignore_errors=True)

    leader_log = leader.log.read_text(errors="replace")
    worker_log = worker.log.read_text(errors="replace")
    assert all(code != 0 for code in codes.values()), codes

    # 1. The leader: engine config, then its executor as the group's leader, its message
    # queue on the pod IP, four worker processes (ranks 0-3), each stopped at the CPU op.
    assert "Inferred data_parallel_rank 0 from node_rank 0" in leader_log
    assert (
        f"DP group leader: node_rank=0, node_rank_within_dp=0, master_addr={leader_address}, "
        f"mq_connect_ip={pods.leader_ip} (local), world_size={gpus * nodes}, "
        f"local_world_size={gpus}"
    ) in leader_log, leader_log[-4000:]
    assert _worker_ranks(leader_log) == ranks[leader.name]
    assert "Engine core initialization failed" in leader_log
    # 2. The worker: headless, its executor pointed at the leader's address and master
    # port, four worker processes (ranks 4-7), each stopped at the CPU op.
    assert "Inferred data_parallel_rank 0 from node_rank 1" in worker_log
    assert (
        "headless multiproc executor, with head node address "
        f"{leader_address}:{MASTER_PORT} for torch.distributed process group"
    ) in worker_log, worker_log[-4000:]
    assert _worker_ranks(worker_log) == ranks[worker.name]
    assert "WorkerProc initialization failed" in worker_log
    # 3. Nothing got as far as torch.distributed: no rendezvous was attempted.
    for log in (leader_log, worker_log):
        assert "distributed_init_method=" not in log
        assert "init_distributed_environment" not in log
