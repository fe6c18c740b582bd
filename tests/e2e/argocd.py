"""A real Argo CD for the GitOps tests: its application-controller and repo-server (built
from Argo CD's Go module by ``hack/build-tools.sh --argocd``), Redis (Debian's
redis-server, installed by ``hack/gitops-deps.sh``) and a git daemon on loopback serving a
repository the tests commit to. Argo CD's own CRDs come from the same module.

The controller runs outside the cluster, as Argo CD's own local development does
(``ARGOCD_FAKE_IN_CLUSTER``): the in-cluster destination ``https://kubernetes.default.svc``
is then the cluster of its kubeconfig. No argocd-server runs (no UI, no API): the tests
read Argo CD's verdicts from the Applications' status, where the controller writes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack"
NAMESPACE = "argocd"


def argocd_bin_dir() -> Path:
    out = subprocess.run(
        [str(HACK / "build-tools.sh"), "--argocd", "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(
            f"Argo CD is not built: run hack/build-tools.sh --argocd\n{out.stderr}"
        )
    return Path(out.stdout.strip().splitlines()[-1])


def module_dir() -> Path:
    """Argo CD's module source (for its CRDs), from the Go module cache."""
    out = subprocess.run(
        ["go", "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", "github.com/argoproj/argo-cd/v3"],
        cwd=HACK / "argocdbuild", capture_output=True, text=True, check=True,
        env={**os.environ, "GOTOOLCHAIN": _versions()["ARGOCD_GOTOOLCHAIN"]},
    )  # fmt: skip
    return Path(out.stdout.strip())


def _versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (HACK / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


class GitRepo:
    """A git repository served by ``git daemon`` on loopback; commits are made in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "aistack"
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}/aistack"
        self.proc: subprocess.Popen[bytes] | None = None

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com",
               "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.com"}  # fmt: skip
        out = subprocess.run(
            ["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def start(self, log: Path) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
             f"--base-path={self.root}", "--listen=127.0.0.1", f"--port={self.port}",
             str(self.root)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def write(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def remove(self, rel: str) -> None:
        self.git("rm", "-q", "-r", rel)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class ArgoCD:
    """Redis, a repo-server and an application-controller, for one cluster."""

    cluster: Any
    workdir: Path
    #: Extra argocd-cm data (the health checks go here).
    settings: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bin_dir(self) -> Path:
        return argocd_bin_dir()

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def _wait_port(self, name: str, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited at start:\n{self.log(name)[-4000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.5)
        raise AssertionError(f"{name} does not listen on {port}:\n{self.log(name)[-4000:]}")

    def install(self) -> None:
        """Argo CD's CRDs, its namespace, settings and the default project."""
        crds = module_dir() / "manifests" / "crds"
        for name in ("application-crd.yaml", "appproject-crd.yaml"):
            self.cluster.kubectl("apply", "--server-side", "-f", str(crds / name))
        self.cluster.wait_established("applications.argoproj.io", "appprojects.argoproj.io")
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        labels = {"app.kubernetes.io/part-of": "argocd"}
        self.cluster.apply({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "argocd-cm", "namespace": NAMESPACE,
                         "labels": labels | {"app.kubernetes.io/name": "argocd-cm"}},
            "data": {
                # Poll git often: the tests commit and wait for Argo CD to see it.
                "timeout.reconciliation": "10s",
                "timeout.reconciliation.jitter": "0s",
                **self.settings,
            },
        })  # fmt: skip
        self.cluster.apply({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "argocd-secret", "namespace": NAMESPACE,
                         "labels": labels | {"app.kubernetes.io/name": "argocd-secret"}},
            "stringData": {"server.secretkey": os.urandom(16).hex()},
        })  # fmt: skip
        self.cluster.apply({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        })  # fmt: skip

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis = shutil.which("redis-server")
        assert redis, "redis-server is missing: run hack/gitops-deps.sh"
        redis_port, repo_port = free_port(), free_port()
        self._spawn("redis", [redis, "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], dict(os.environ))  # fmt: skip
        self._wait_port("redis", redis_port)
        env = {
            **self.cluster.env,
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "ARGOCD_GPG_ENABLED": "false",
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
        }
        # The repo-server renders Helm charts with the helm on PATH (the cluster's tools).
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env['PATH']}"
        self._spawn("repo-server", [
            str(self.bin_dir / "argocd-repo-server"), "--port", str(repo_port),
            "--metrics-port", str(free_port()), "--redis", f"127.0.0.1:{redis_port}",
            "--disable-tls", "--client-ca-path=", "--loglevel", "info",
        ], env)  # fmt: skip
        self._wait_port("repo-server", repo_port)
        self._spawn("application-controller", [
            str(self.bin_dir / "argocd-application-controller"),
            "--kubeconfig", self.cluster.kubeconfig, "--namespace", NAMESPACE,
            "--repo-server", f"127.0.0.1:{repo_port}", "--repo-server-plaintext",
            "--redis", f"127.0.0.1:{redis_port}", "--metrics-port", str(free_port()),
            "--status-processors", "4", "--operation-processors", "4",
            "--app-resync", "10", "--app-resync-jitter", "0",
            "--self-heal-timeout-seconds", "2", "--loglevel", "info",
            # Argo CD 3 keeps each resource's health out of the Application (the UI reads
            # it from Redis); this puts it back where the tests can read it.
            "--persist-resource-health",
        ], env)  # fmt: skip
        time.sleep(2)
        if self.procs["application-controller"].poll() is not None:
            raise AssertionError(self.log("application-controller")[-4000:])

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            _stop(proc)
        self.procs.clear()

    # ------------------------------------------------------------ reading Argo CD

    def app(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.cluster.get_json("application", name, "-n", NAMESPACE)
        return got

    def refresh(self, name: str) -> None:
        """Ask for a refresh now, as ``argocd app get --refresh`` does."""
        self.cluster.kubectl("annotate", "application", name, "-n", NAMESPACE, "--overwrite",
                             "argocd.argoproj.io/refresh=normal")  # fmt: skip


@contextlib.contextmanager
def running(cluster: Any, workdir: Path, settings: dict[str, str]) -> Iterator[ArgoCD]:
    argo = ArgoCD(cluster, workdir, settings)
    argo.install()
    try:
        argo.start()
        yield argo
    finally:
        argo.stop()
