"""The CPU engine: the real Ollama, built from its Go module at the default image's version
(``hack/build-tools.sh --ollama``), started from what ``aistack render`` wrote for
examples/cpu.yaml's stack with its model on a PVC (a Hugging Face pull needs the internet).

The model is a tiny GGUF with random weights (tiny_gguf.py) on the host directory that
stands for the model's PVC. The rendered init container's script imports it into the
rendered store (``OLLAMA_MODELS`` on the cache volume) under the served name; the rendered
server serves it, with a read-only root as rendered, and answers its probes; the real
LiteLLM gateway, started from the rendered config, routes a chat completion to it. Both
Ollama processes run as the pod's user (``runAsUser``), with a read-only root filesystem
but for the pod's writable volumes.

Test-side translations beyond the harness' (see harness.py):

- **The Modelfile's path.** The rendered Modelfile (the import container's
  ``AISTACK_MODELFILE``) names the GGUF file by its path in the pod, under the PVC's mount;
  here that mount path becomes its host directory, as the harness does for args and env
  values that start with one.
- **The pod's temporary directory.** The script writes its Modelfile to ``$TMPDIR`` (else
  ``/tmp``, the rendered emptyDir); here ``TMPDIR`` names that volume's host directory (as
  for the gateway).

Ollama listens where the rendered env says (``0.0.0.0:8000``), so the gateway reaches it on
the address the HostMap gives the model's Service.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import pytest
import yaml
from fixtures_gateway import Gateway, start_gateway, stopping
from harness import HostMap, Manifest, ProcessSpec, Running
from tiny_gguf import write_tiny_gguf

from aistack.components import VERSIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "cpu-vllm-tiny"
MODEL_FILE = "tiny/model.gguf"
PVC_MOUNT = "/mnt/models"


@functools.cache
def ollama_bin_dir() -> Path:
    """The Ollama the suite runs (built once, cached by version): the build's last line of
    output is its bin dir."""
    build = [str(REPO_ROOT / "hack" / "build-tools.sh"), "--ollama"]
    out = subprocess.run(build, check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def cpu_stack_document() -> dict[str, Any]:
    """examples/cpu.yaml with its model on a PVC (a GGUF file whose license it declares)."""
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "cpu.yaml").read_text())
    doc["metadata"]["namespace"] = "cpu"
    doc["spec"]["models"] = [
        {
            "name": "tiny",
            "source": f"pvc://models/{MODEL_FILE}",
            "license": "Apache-2.0",
            "maxModelLen": 256,
        }
    ]
    doc["spec"]["monitoring"] = {"enabled": True}
    return doc


@dataclass
class Ollama:
    manifests: list[Manifest]
    server: ProcessSpec
    running: Running
    import_output: str
    store: Path

    def url(self, path: str) -> str:
        port = self.server.env["OLLAMA_HOST"].rpartition(":")[2]
        return f"http://127.0.0.1:{port}{path}"


def _modelfile_on_host(spec: ProcessSpec) -> None:
    """The Modelfile's ``FROM <mount path>/...`` -> the mount's host directory."""
    lines = spec.env["AISTACK_MODELFILE"].splitlines(keepends=True)
    host = str(spec.mounts[PVC_MOUNT])
    spec.env["AISTACK_MODELFILE"] = "".join(
        f"FROM {host}{line[len('FROM ') + len(PVC_MOUNT) :]}"
        if line.startswith(f"FROM {PVC_MOUNT}/")
        else line
        for line in lines
    )


def _as_in_the_pod(manifests: list[Manifest], spec: ProcessSpec, container: str) -> list[str]:
    """The container's argv as its pod runs it: a read-only root but for its writable
    volumes, as the pod's user (``runAsUser``)."""
    rendered = harness.container(manifests, DEPLOYMENT, container)
    assert harness.read_only_root(rendered), f"{container} should have a read-only root"
    uid = spec.run_as_user
    assert uid is not None and uid != 0
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *spec.argv]
    return harness.read_only_root_argv(
        as_user, harness.writable_mounts(manifests, DEPLOYMENT, spec, container)
    )


@pytest.fixture(scope="module")
def pod_dir() -> Iterator[Path]:
    """Where the pod's volumes and the Ollama binary are, for a user that is not root: a
    directory every user may enter (pytest's temporary root is its owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="aistack-ollama-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ollama(pod_dir: Path, log_dir: Path) -> Iterator[Ollama]:
    bin_dir = pod_dir / "bin"
    bin_dir.mkdir()
    shutil.copy2(ollama_bin_dir() / "ollama", bin_dir / "ollama")  # the image's /usr/bin
    workdir = pod_dir / "pod"
    path = harness.write_documents(workdir / "stack.yaml", [cpu_stack_document()])
    manifests = harness.render_example(path)

    importer = harness.container_process(manifests, DEPLOYMENT, "import-model", workdir=workdir)
    server = harness.container_process(manifests, DEPLOYMENT, "ollama", workdir=workdir)
    assert importer.mounts == server.mounts  # one pod: the same volumes
    write_tiny_gguf(importer.host_path(f"{PVC_MOUNT}/{MODEL_FILE}"))
    _modelfile_on_host(importer)
    tmp = {"TMPDIR": str(importer.mounts["/tmp"])}
    # The pod's volumes are its user's (fsGroup).
    uid = importer.run_as_user
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(workdir)], check=True)

    started = time.monotonic()
    running = harness.start(
        importer, name="ollama-import", bin_dir=bin_dir, log_dir=log_dir, extra_env=tmp,
        argv=_as_in_the_pod(manifests, importer, "import-model"),
    )  # fmt: skip
    try:
        code = running.process.wait(300)
    except subprocess.TimeoutExpired:
        running.stop()
        raise
    output = running.log.read_text(errors="replace")
    assert code == 0, f"the import container exited {code}:\n{running.log_tail()}"
    print(f"ollama import: {time.monotonic() - started:.1f} s")

    serving = harness.start(
        server, name="ollama", bin_dir=bin_dir, log_dir=log_dir, extra_env=tmp,
        argv=_as_in_the_pod(manifests, server, "ollama"),
    )  # fmt: skip
    try:
        for _kind, url in harness.probe_urls(manifests, DEPLOYMENT, "127.0.0.1", "ollama"):
            serving.wait_http(url, timeout=60)
        # The rendered store's path, on the cache volume's host directory.
        store = Path(server.env["OLLAMA_MODELS"])
        assert store.is_relative_to(server.mounts["/cache"]), store
        yield Ollama(manifests, server, serving, output, store)
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def cpu_gateway(
    ollama: Ollama, hosts: HostMap, suite_dir: Path, log_dir: Path
) -> Iterator[Gateway]:
    gateway = start_gateway(
        ollama.manifests, hosts=hosts, workdir=suite_dir / "gateway-cpu", log_dir=log_dir
    )
    assert gateway.stand_ins == {}, "no stand-in: the model server is the real Ollama"
    yield from stopping(gateway)


def test_the_built_ollama_is_the_default_images_version() -> None:
    out = subprocess.run(
        [str(ollama_bin_dir() / "ollama"), "--version"], capture_output=True, text=True
    )
    assert VERSIONS["ollama"] in out.stdout + out.stderr


def test_the_import_container_creates_the_model_under_its_served_name(ollama: Ollama) -> None:
    manifest = ollama.store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    assert manifest.is_file(), sorted(str(p) for p in ollama.store.rglob("*"))[:20]
    layers = json.loads(manifest.read_text())["layers"]
    assert "application/vnd.ollama.image.model" in {layer["mediaType"] for layer in layers}
    # num_ctx from maxModelLen reached the model's parameters.
    params = [x for x in layers if x["mediaType"] == "application/vnd.ollama.image.params"]
    assert params, layers
    digest = params[0]["digest"].replace(":", "-")
    assert json.loads((ollama.store / "blobs" / digest).read_text())["num_ctx"] == 256


def test_the_server_answers_its_probes_and_lists_the_model(ollama: Ollama) -> None:
    urls = harness.probe_urls(ollama.manifests, DEPLOYMENT, "127.0.0.1", "ollama")
    assert {kind for kind, _ in urls} == {"startupProbe", "readinessProbe", "livenessProbe"}
    for _kind, url in urls:
        code, body = harness.http(url)
        assert code == 200, (url, body)
    code, body = harness.http(ollama.url("/v1/models"))
    assert code == 200, body
    # Ollama lists the model with its tag; the gateway lists the route by its name.
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny:latest"]


def test_the_server_runs_as_the_pods_user_and_keeps_to_its_volumes(ollama: Ollama) -> None:
    pid = ollama.running.process.pid
    status = Path(f"/proc/{pid}/status").read_text()
    (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
    assert set(uids) == {str(ollama.server.run_as_user)}, uids
    writable = harness.writable_mount_points(pid)
    volumes = {str(p) for p in ollama.server.mounts.values()}
    assert writable and set(writable) <= volumes, writable
    # What the import container wrote is the pod user's.
    assert {p.stat().st_uid for p in ollama.store.rglob("*")} == {ollama.server.run_as_user}


def test_ollama_serves_no_metrics_and_gets_no_monitor(ollama: Ollama) -> None:
    code, _body = harness.http(ollama.url("/metrics"))
    assert code == 404
    monitors = harness.of_kind(ollama.manifests, "PodMonitor")
    assert "cpu-model-server" not in {m["metadata"]["name"] for m in monitors}


def test_a_chat_through_the_gateway_reaches_ollama(cpu_gateway: Gateway) -> None:
    code, body = cpu_gateway.get("/v1/models")
    assert code == 200, body
    assert [m["id"] for m in body["data"]] == ["tiny"]
    request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    code, body = cpu_gateway.post("/v1/chat/completions", request)
    assert code == 200, body
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert body["model"] == "tiny"
    assert body["usage"]["completion_tokens"] >= 1
