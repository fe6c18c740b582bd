"""The real-API tier: the reconciler and the API client against a real kube-apiserver and
etcd (the local control plane ``hack/build-tools.sh`` builds), without kopf, as envtest
does for Go operators. A snapshot of what the watches would show is read from the API
server itself; each test calls the reconcile and checks what the API server then holds.

One control plane per session (``hack/local-cluster.sh``, its simulated nodes included,
so that Deployments become ready), the CRDs installed, a namespace per test.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from aistack.components import DEFAULT_IMAGES, RenderConfig
from aistack.controller import Reconciler, StackView, licensing_for
from aistack.kinds import CHILD_KINDS, crd_established
from aistack.kube import Kube, load_client
from aistack.names import STACK_LABEL

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "hack" / "local-cluster.sh"


@dataclass
class Api:
    kubeconfig: str
    kubectl: str
    kube: Kube

    def run(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run(
            [self.kubectl, "--kubeconfig", self.kubeconfig, *args],
            input=input, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return out.stdout

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """The CRD has Established=True (polled: `kubectl wait --for=condition` fails at
        once while a new CRD's status has `conditions: null`)."""
        deadline = time.monotonic() + timeout
        while not crd_established(self.get("crd", crd) or {}):
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {crd} not established after {timeout}s")
            time.sleep(0.2)

    def apply(self, doc: dict[str, Any]) -> None:
        self.run(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(doc)
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        out = self.run(*args, *(["-n", namespace] if namespace else []))
        return yaml.safe_load(out) if out.strip() else None

    def view(self, namespace: str, name: str) -> StackView:
        """What kopf's caches would hold for the stack: read from the API server."""
        stack = self.get("aistack", name, namespace)
        # A list's items carry no kind; a watch's events do, and so do kopf's caches.
        children = [
            {"apiVersion": f"{k.group}/{k.version}".lstrip("/"), "kind": k.kind, **obj}
            for k in CHILD_KINDS
            if not k.optional or self.kube.serves(k.kind)
            for obj in self.kube.list(k.kind, namespace)
            if (obj["metadata"].get("labels") or {}).get(STACK_LABEL) == name
        ]
        selector = f"{STACK_LABEL}={name}"
        pods = yaml.safe_load(
            self.run("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
        )
        return StackView(stack, children, pods["items"], self.kube.list("LicensePolicy"))


def _bin_dir() -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "--check"], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail("the control plane is not built: run hack/build-tools.sh", pytrace=False)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("control-plane")
    name = f"aistack-it-{uuid.uuid4().hex[:6]}"
    kubeconfig = base / "kubeconfig"
    where = ["--name", name, "--workdir", str(base / "kwok"), "--kubeconfig", str(kubeconfig)]
    kubectl = str(Path(_bin_dir()) / "kubectl")
    subprocess.run([str(CLUSTER), "up", *where], check=True, capture_output=True, timeout=600)
    try:
        api = Api(str(kubeconfig), kubectl, Kube(load_client(str(kubeconfig))))
        api.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            api.wait_established(yaml.safe_load(path.read_text())["metadata"]["name"])
        yield api
    finally:
        subprocess.run([str(CLUSTER), "down", *where], capture_output=True, timeout=180)


@pytest.fixture
def namespace(api: Api) -> Iterator[str]:
    ns = f"it-{uuid.uuid4().hex[:6]}"
    api.run("create", "namespace", ns)
    yield ns
    api.run("delete", "namespace", ns, "--wait=false")


@pytest.fixture
def reconciler(api: Api) -> Reconciler:
    """The operator's reconcile, as ``aistack run`` builds it, without kopf around it."""
    licensing, judge = licensing_for(api.kube, None, tuple(DEFAULT_IMAGES.values()))
    # As `aistack run` finds the cluster: the local control plane runs LeaderWorkerSet,
    # and has no Prometheus Operator.
    config = RenderConfig(
        leaderworkersets=api.kube.serves("LeaderWorkerSet"), monitoring_crds=False
    )
    return Reconciler(api.kube, licensing, config=config, judge_record=judge)
