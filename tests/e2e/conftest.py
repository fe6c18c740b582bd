"""Fixtures for the end-to-end tests: a real Kubernetes API server.

Which cluster is used is chosen with ``--cluster`` or ``AISTACK_E2E_CLUSTER``:

``local``
    A control plane started on this machine by ``hack/local-cluster.sh``
    (etcd, kube-apiserver, kube-controller-manager, kube-scheduler as host
    processes via kwokctl's binary runtime; nodes and pods simulated by kwok,
    including two GPU nodes).  Needs no Docker.  The tools are built on first
    use by ``hack/build-tools.sh`` (slow once, cached afterwards).
``kind``
    A kind cluster from pytest-kind's ``kind_cluster`` fixture (needs Docker).
``existing``
    Whatever ``$KUBECONFIG`` (or ``~/.kube/config``) points at.

Default: ``local`` (``make test`` and CI pin it too); other kinds only when asked.

If the cluster cannot be started the tests error out; they are never skipped
for that reason.  Tests that need GPU nodes or the local control plane (fault
injection) are skipped on clusters without them (kind, most existing clusters).
In strict mode (``--strict-e2e``, ``AISTACK_E2E_STRICT=1``, on whenever ``CI=true``)
every such skip is a failure instead, so a run cannot pass by skipping; the run
ends with a line saying how many e2e tests ran, passed, failed and were skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
E2E_DIR = Path(__file__).resolve().parent
CLUSTER_KINDS = ("local", "kind", "existing")

# Deadline for `hack/local-cluster.sh up`, which includes a build of the tools
# when they are not cached yet (tens of minutes on 2 CPUs).
LOCAL_UP_TIMEOUT = float(os.environ.get("AISTACK_E2E_UP_TIMEOUT", "3600"))


# --------------------------------------------------------------------------- #
# Options and markers
# --------------------------------------------------------------------------- #
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test against a real Kubernetes API server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def strict_mode(config: pytest.Config) -> bool:
    """Whether a skipped e2e test fails the run (see the module docstring)."""
    try:
        opt = config.getoption("--strict-e2e")
    except ValueError:
        opt = None
    if opt:
        return True
    env = os.environ.get("AISTACK_E2E_STRICT", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return os.environ.get("CI", "").strip().lower() == "true"


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(str(item.path)).resolve().parents


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and _is_e2e(item) and strict_mode(item.config):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in strict e2e mode, which counts a skip as a failure: {reason} "
            "(AISTACK_E2E_STRICT=0 allows skips)"
        )


_E2E_OUTCOMES: dict[str, set[str]] = {"passed": set(), "failed": set(), "skipped": set()}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "e2e/" not in report.nodeid:
        return
    if report.when == "call" and report.passed:
        _E2E_OUTCOMES["passed"].add(report.nodeid)
    elif report.failed:
        _E2E_OUTCOMES["failed"].add(report.nodeid)
    elif report.skipped:
        _E2E_OUTCOMES["skipped"].add(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    failed = _E2E_OUTCOMES["failed"]
    passed = _E2E_OUTCOMES["passed"] - failed
    skipped = _E2E_OUTCOMES["skipped"] - failed - passed
    ran = len(passed) + len(failed)
    terminalreporter.write_line(
        f"aistack e2e: {ran} tests ran ({len(passed)} passed, {len(failed)} failed), "
        f"{len(skipped)} skipped; cluster {_selected_cluster_kind(config)}, strict mode "
        f"{'on' if strict_mode(config) else 'off'}"
    )


def _selected_cluster_kind(config: pytest.Config) -> str:
    try:
        kind = config.getoption("--cluster")
    except ValueError:  # conftest not loaded early enough to add the option
        kind = None
    kind = kind or os.environ.get("AISTACK_E2E_CLUSTER") or ""
    kind = kind.strip().lower() or "local"
    if kind not in CLUSTER_KINDS:
        raise pytest.UsageError(
            f"AISTACK_E2E_CLUSTER/--cluster must be one of {CLUSTER_KINDS}, got {kind!r}"
        )
    return kind


# --------------------------------------------------------------------------- #
# Cluster handle
# --------------------------------------------------------------------------- #
class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        cmd = " ".join(self.cmd) if isinstance(self.cmd, (list, tuple)) else self.cmd
        return (
            f"kubectl failed (exit {self.returncode}): {cmd}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


@dataclass
class Cluster:
    """A Kubernetes cluster the tests talk to."""

    kind: str  # local | kind | existing
    kubeconfig: str  # path (a KUBECONFIG value for `existing`)
    kubectl_path: str
    name: str = ""
    #: True when nodes come from hack/nodes.yaml (gpu-node-0/1, cpu-node-0).
    simulated_nodes: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    #: kwok's work dir of a local cluster (its control plane can be stopped and started).
    workdir: str = ""

    def control_plane(self, action: str) -> None:
        """Stop or start the whole control plane of a local cluster (etcd included)."""
        if self.kind != "local":
            pytest.skip("stopping the control plane needs the local (kwok) cluster")
        proc = subprocess.run(
            [str(HACK_DIR / "local-cluster.sh"), action, "--name", self.name,
             "--workdir", self.workdir],
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {action} failed:\n{proc.stderr[-3000:]}")

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (operator, helm, ...) aimed at this cluster."""
        env = {**os.environ, **self.extra_env, "KUBECONFIG": self.kubeconfig}
        bin_dir = str(Path(self.kubectl_path).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        kubeconfig: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (or against `kubeconfig` if given)."""
        env = self.env
        if kubeconfig is not None:
            env["KUBECONFIG"] = kubeconfig
        cmd = [self.kubectl_path, *args]
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def get_json(self, *args: str, **kwargs: Any) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", **kwargs).stdout)

    def apply(self, manifest: str | dict, namespace: str | None = None) -> str:
        """`kubectl apply -f -` with a YAML/JSON string or a dict."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, input=text).stdout

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Each CRD (by name) has condition Established=True.

        Polled, not `kubectl wait --for=condition`: that fails at once while a new CRD's
        status still has `conditions: null`.
        """
        path = '{.status.conditions[?(@.type=="Established")].status}'
        for crd in crds:
            wait_until(
                lambda crd=crd: self.kubectl(
                    "get", "crd", crd, "-o", f"jsonpath={path}", check=False
                ).stdout.strip() == "True",
                timeout=timeout, interval=0.2, message=f"CRD {crd} established",
            )  # fmt: skip

    @staticmethod
    def wait_until(
        predicate: Callable[[], Any],
        timeout: float = 60,
        interval: float = 1.0,
        message: str = "condition",
    ) -> Any:
        """See :func:`wait_until`; here so tests need not import conftest."""
        return wait_until(predicate, timeout=timeout, interval=interval, message=message)

    def gpu_nodes(self) -> list[str]:
        """Names of the nodes that advertise allocatable nvidia.com/gpu."""
        nodes = self.get_json("nodes")["items"]
        return sorted(
            n["metadata"]["name"]
            for n in nodes
            if int(n.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", "0") or 0) > 0
        )


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 1.0,
    message: str = "condition",
) -> Any:
    """Call `predicate` until it returns a truthy value; return that value.

    Raises AssertionError after `timeout` seconds, with the last value or
    exception in the message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except (subprocess.SubprocessError, KeyError, ValueError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {message}; last: {last!r}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- #
# local: hack/local-cluster.sh, always torn down
# --------------------------------------------------------------------------- #
class _LocalTeardown:
    """Runs `local-cluster.sh down` once: from the fixture, atexit or a signal."""

    def __init__(self, name: str, workdir: Path, kubeconfig: Path) -> None:
        self.args = [
            str(HACK_DIR / "local-cluster.sh"),
            "down",
            "--name",
            name,
            "--workdir",
            str(workdir),
            "--kubeconfig",
            str(kubeconfig),
        ]
        self._done = False
        self._lock = threading.Lock()
        self._old_handlers: dict[int, Any] = {}

    def install(self) -> None:
        atexit.register(self)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(ValueError, OSError):
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self()
        old = self._old_handlers.get(signum, signal.SIG_DFL)
        signal.signal(signum, old)
        if callable(old):
            old(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    def __call__(self) -> subprocess.CompletedProcess[str] | None:
        with self._lock:
            if self._done:
                return None
            self._done = True
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, old)
        return subprocess.run(self.args, capture_output=True, text=True, timeout=180, check=False)


def _unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _local_cluster(tmp_path_factory: pytest.TempPathFactory):
    yield from local_cluster(tmp_path_factory.mktemp("local-cluster"), _unique_name("aistack-e2e"))


def local_cluster(base: Path, name: str, *up_args: str) -> Iterator[Cluster]:
    """``hack/local-cluster.sh up UP_ARGS`` in ``base`` (a generator for a fixture: the
    cluster, then ``down`` however the tests end)."""
    workdir = base / "kwok"
    kubeconfig = base / "kubeconfig"
    log_path = base / "up.log"
    teardown = _LocalTeardown(name, workdir, kubeconfig)
    teardown.install()
    try:
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    [
                        str(HACK_DIR / "local-cluster.sh"),
                        "up",
                        *up_args,
                        "--name",
                        name,
                        "--workdir",
                        str(workdir),
                        "--kubeconfig",
                        str(kubeconfig),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=LOCAL_UP_TIMEOUT,
                    check=False,
                )
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {LOCAL_UP_TIMEOUT:.0f}s"
        if rc != 0 or not kubeconfig.exists():
            tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-60:])
            pytest.fail(
                f"local cluster {name} ({' '.join(['up', *up_args])}) did not start ({rc}); "
                f"log {log_path}:\n{tail}",
                pytrace=False,
            )
        bin_dir = subprocess.run(
            [str(HACK_DIR / "build-tools.sh"), "--print-bin-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        yield Cluster(
            kind="local",
            kubeconfig=str(kubeconfig),
            kubectl_path=str(Path(bin_dir) / "kubectl"),
            name=name,
            simulated_nodes=True,
            workdir=str(workdir),
        )
    finally:
        result = teardown()
        if result is not None and result.returncode != 0:
            # Surfaces as a teardown error of the `cluster` fixture.
            raise RuntimeError(
                f"tearing down local cluster {name} failed:\n{result.stdout}\n{result.stderr}"
            )


def _kind_cluster(request: pytest.FixtureRequest):
    try:
        import pytest_kind  # noqa: F401  (imported only when kind is selected)
    except ImportError as exc:
        pytest.fail(f"--cluster=kind needs the pytest-kind plugin: {exc}", pytrace=False)
    kc = request.getfixturevalue("kind_cluster")
    kc.ensure_kubectl()
    yield Cluster(
        kind="kind",
        kubeconfig=str(kc.kubeconfig_path),
        kubectl_path=str(kc.kubectl_path),
        name=kc.name,
    )


def _existing_cluster():
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    kubectl = os.environ.get("AISTACK_KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        pytest.fail("--cluster=existing needs kubectl on PATH (or AISTACK_KUBECTL)", pytrace=False)
    yield Cluster(kind="existing", kubeconfig=kubeconfig, kubectl_path=kubectl)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The Kubernetes cluster under test (see the module docstring)."""
    kind = _selected_cluster_kind(request.config)
    if kind == "local":
        gen = _local_cluster(tmp_path_factory)
    elif kind == "kind":
        gen = _kind_cluster(request)
    else:
        gen = _existing_cluster()
    handle = next(gen)
    try:
        # Whatever the kind, the API server must answer before any test runs.
        try:
            wait_until(
                lambda: handle.kubectl("get", "--raw", "/readyz", timeout=20).returncode == 0,
                timeout=60,
                message=f"the API server of the {kind} cluster to be ready",
            )
        except AssertionError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield handle
    finally:
        gen.close()  # runs the generator's finally: teardown


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Shortcut for ``cluster.kubectl``."""
    return cluster.kubectl


@pytest.fixture
def gpu_nodes(cluster: Cluster) -> list[str]:
    """Names of GPU nodes. Required on the local cluster; skips elsewhere if none."""
    nodes = cluster.gpu_nodes()
    if cluster.simulated_nodes:
        assert nodes == ["gpu-node-0", "gpu-node-1"], f"simulated GPU nodes missing: {nodes}"
    elif not nodes:
        pytest.skip(f"no node advertises nvidia.com/gpu in the {cluster.kind} cluster")
    return nodes


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:6]}" if base else _unique_name("e2e")
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "app.kubernetes.io/created-by=aistack-e2e")
    try:
        # Pods are refused until the namespace's default ServiceAccount exists.
        wait_until(
            lambda: (
                cluster.kubectl(
                    "get", "serviceaccount", "default", "-n", name, check=False
                ).returncode
                == 0
            ),
            timeout=60,
            interval=0.5,
            message=f"ServiceAccount default in namespace {name}",
        )
        yield name
    finally:
        cluster.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    env = os.environ.get("AISTACK_E2E_CLUSTER")
    try:
        opt = config.getoption("--cluster")
    except ValueError:
        opt = None
    choice = opt or env
    strict = "on" if strict_mode(config) else "off"
    return [f"aistack e2e cluster: {choice or 'local'}; strict mode (skips fail): {strict}"]


__all__: Sequence[str] = ["Cluster", "KubectlError", "wait_until"]


# --------------------------------------------------------------------------- #
# The project's CRDs, installed once per cluster
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        cluster.wait_established(name)


# --------------------------------------------------------------------------- #
# The operator, as `aistack run` on the host (one per test module)
# --------------------------------------------------------------------------- #
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def governed_operator(cluster: Any, log_dir: Path, *args: str) -> Iterator[OperatorProcess]:
    """The operator with its license webhook, reachable by the API server on 127.0.0.1,
    and ``args`` besides; the webhook's configuration is removed after it."""
    webhook = f"e2e-{uuid.uuid4().hex[:6]}.aistack.dev"
    op = OperatorProcess(
        cluster.env,
        log_dir,
        ["--webhook-port", str(free_port()), "--webhook-addr", "127.0.0.1",
         "--webhook-host", "127.0.0.1", "--webhook-managed", webhook, *args],
    )  # fmt: skip
    op.start()
    try:
        cluster.wait_until(
            lambda: cluster.kubectl(
                "get", "validatingwebhookconfiguration", webhook, check=False
            ).returncode == 0,
            timeout=30, message="the webhook configuration",
        )  # fmt: skip
        yield op
    finally:
        op.stop()
        # Fail-closed webhooks outlive their server: remove it, or every later AIStack
        # write would be refused.
        cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, check=False)
        cluster.kubectl("delete", "mutatingwebhookconfiguration", webhook, check=False)


@pytest.fixture(scope="module")
def governed(
    cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with its license webhook (see ``governed_operator``)."""
    with governed_operator(cluster, tmp_path_factory.mktemp("governed")) as op:
        yield op


@pytest.fixture(scope="module")
def operator(
    cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.env, tmp_path_factory.mktemp("operator"))
    op.start()
    try:
        yield op
    finally:
        op.stop()


# --------------------------------------------------------------------------- #
# LicensePolicies for one test
# --------------------------------------------------------------------------- #
@pytest.fixture
def policy(cluster: Any) -> Iterator[Callable[..., str]]:
    """Apply LicensePolicies for one test (the same ``name`` again replaces one); all are
    removed afterwards."""
    made: list[str] = []

    def apply(name: str | None = None, **spec: Any) -> str:
        name = name or f"e2e-{uuid.uuid4().hex[:6]}"
        cluster.apply({"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
                       "metadata": {"name": name}, "spec": spec})  # fmt: skip
        made.append(name)
        return name

    yield apply
    for name in made:
        cluster.kubectl("delete", "licensepolicy", name, "--ignore-not-found", check=False)
