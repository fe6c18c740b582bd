"""hack/local-cluster.sh keeps its control plane running while it starts it.

On a loaded machine kube-controller-manager gives up (and exits) when the API
server's /healthz is not ok within about 10 s, and kwokctl, which forks the
components, never starts one again. ``up`` and ``start`` therefore supervise the
components while they wait: one that exits is started again. On the deadline
they fail with one error naming the component that does not work, with its last
log lines.

Each test starts its own small cluster (unique name, work dir under tmp_path)
and always runs ``down``; none uses the session's ``cluster`` fixture. The
slow or broken components come from the script's test-only hooks
``AISTACK_TEST_<COMPONENT>_BINARY``: a wrapper run instead of the real binary.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "local-cluster.sh"
UP_TIMEOUT = 120  # --timeout of up/start (seconds); a quiet machine needs about 10
CALL_TIMEOUT = UP_TIMEOUT + 120  # subprocess limit: tools check, lock wait, teardown
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
)


def _env() -> dict[str, str]:
    """The environment without any test hook a caller may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TEST_")}


@functools.cache
def _bin_dir() -> Path:
    out = subprocess.run(
        [str(SCRIPT), "bin-dir"], capture_output=True, text=True, check=True, timeout=60
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class LocalCluster:
    name: str
    workdir: Path
    kubeconfig: Path
    created: bool = False
    outputs: list[str] = field(default_factory=list)

    @property
    def cluster_dir(self) -> Path:
        return self.workdir / "clusters" / self.name

    def pid_file(self, component: str) -> Path:
        return self.cluster_dir / "pids" / f"{component}.pid"

    def run(
        self, action: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if action == "up":
            self.created = True
        cmd = [str(SCRIPT), action, "--name", self.name, "--workdir", str(self.workdir), *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**_env(), **(env or {})},
            timeout=CALL_TIMEOUT,
            check=False,
        )
        self.outputs.append(f"$ {' '.join(cmd)}\n(exit {proc.returncode})\n{proc.stderr}")
        return proc

    def up(
        self, *args: str, env: dict[str, str] | None = None, timeout: int = UP_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "up", "--kubeconfig", str(self.kubeconfig), "--timeout", str(timeout), *args, env=env
        )

    def kubectl(self, *args: str) -> str:
        proc = subprocess.run(
            [str(_bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def live_pid(self, component: str) -> int | None:
        """The pid in the component's pid file, if that process lives (not a zombie)."""
        return _live_pid(self.pid_file(component), self.cluster_dir)

    def assert_working(self, nodes: bool) -> None:
        """The default ServiceAccount exists, the nodes are Ready, every component runs."""
        self.kubectl("-n", "default", "get", "serviceaccount", "default")
        if nodes:
            items = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
            assert len(items) == 3
            for node in items:
                ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
                assert ready == "True", node["metadata"]["name"]
        for component in COMPONENTS:
            assert self.live_pid(component), f"{component} does not run"


def _live_pid(pid_file: Path, cluster_dir: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except (OSError, ValueError):
        return None
    return pid if f"{cluster_dir}/".encode() in cmdline else None


class FirstInstanceKiller(threading.Thread):
    """SIGKILLs the first live process named by a pid file, as soon as there is one."""

    def __init__(self, cluster: LocalCluster, component: str, limit: float = UP_TIMEOUT) -> None:
        super().__init__(daemon=True)
        self.cluster, self.component, self.limit = cluster, component, limit
        self.killed: int | None = None
        self.after_s: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._done.is_set() and time.monotonic() - start < self.limit:
            pid = self.cluster.live_pid(self.component)
            if pid:
                os.kill(pid, signal.SIGKILL)
                self.killed, self.after_s = pid, time.monotonic() - start
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


@pytest.fixture
def new_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster to `up` (not started yet); `down` always runs afterwards."""
    cluster = LocalCluster(
        name=f"lc-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "kwok",
        kubeconfig=tmp_path / "kubeconfig",
    )
    try:
        yield cluster
    finally:
        if cluster.created:
            down = cluster.run("down", "--kubeconfig", str(cluster.kubeconfig))
            assert down.returncode == 0, "\n".join(cluster.outputs)[-8000:]
            assert not cluster.cluster_dir.exists()


def _wrapper(path: Path, real: Path, body: str) -> Path:
    """An executable Python script that runs `body`, then execs `real` with its arguments.

    `--version` goes straight to `real`: kwokctl asks every binary for its version.
    """
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"REAL = {str(real)!r}\n"
        "ARGS = sys.argv[1:]\n"
        "if ARGS != ['--version']:\n"
        + "".join(f"    {line}\n" for line in body.strip().splitlines())
        + "os.execv(REAL, [REAL, *ARGS])\n"
    )
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("component", ["kube-controller-manager", "kube-apiserver"])
def test_component_killed_during_up_and_start_is_started_again(
    new_cluster: LocalCluster, component: str
) -> None:
    """SIGKILL the first instance of a component during `up`, then during `start`."""
    killer = FirstInstanceKiller(new_cluster, component)
    killer.start()
    try:
        up = new_cluster.up()
    finally:
        killer.stop()
    assert killer.killed, f"{component} was never seen running during up"
    assert up.returncode == 0, up.stderr[-5000:]
    assert f"{component} is not running" in up.stderr, up.stderr[-5000:]
    new_pid = new_cluster.live_pid(component)
    assert new_pid and new_pid != killer.killed
    new_cluster.assert_working(nodes=True)

    # stop/start (the fault tests' control-plane outage) get the same supervision.
    stop = new_cluster.run("stop")
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert not any(new_cluster.live_pid(c) for c in COMPONENTS)
    killer = FirstInstanceKiller(new_cluster, component)
    killer.start()
    try:
        start = new_cluster.run("start", "--timeout", str(UP_TIMEOUT))
    finally:
        killer.stop()
    assert killer.killed, f"{component} was never seen running during start"
    assert start.returncode == 0, start.stderr[-5000:]
    assert f"{component} is not running" in start.stderr, start.stderr[-5000:]
    assert new_cluster.live_pid(component) not in (None, killer.killed)
    new_cluster.assert_working(nodes=True)


def test_up_survives_an_api_server_that_is_slow_to_become_healthy(
    new_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The API server's /healthz fails until kube-controller-manager has given up.

    That is the failure reported on a loaded machine (etcd too slow for the API
    server's health checks for longer than kube-controller-manager waits), made
    deterministic: a helper beside etcd stops it (SIGSTOP) as soon as the API
    server serves, so /healthz fails, and lets it go on (SIGCONT) once
    kube-controller-manager has logged that it gives up on the API server (at
    most 60 s).
    """
    etcd = _wrapper(
        tmp_path / "etcd-frozen",
        _bin_dir() / "etcd",
        """
import signal
# Run as <cluster dir>/bin/etcd (kwokctl's link to this file).
logs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))), "logs")
def seen(text, *names):
    for name in names:
        try:
            with open(os.path.join(logs, name), errors="replace") as f:
                if text in f.read():
                    return True
        except OSError:
            pass
    return False
etcd, child = os.getpid(), os.fork()
if child:
    os.waitpid(child, 0)  # the helper below is orphaned: no zombie under etcd
elif os.fork():
    os._exit(0)
else:
    deadline = time.monotonic() + 60
    while not seen("Serving securely", "kube-apiserver.log") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(etcd, signal.SIGSTOP)
    print("test helper: etcd stopped; the API server is serving", flush=True)
    kcm = ("kube-controller-manager.log", "kube-controller-manager.previous.log")
    while not seen("apiserver being healthy", *kcm) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(etcd, signal.SIGCONT)
    print("test helper: etcd continued", flush=True)
    os._exit(0)
""",
    )
    up = new_cluster.up("--nodes", "none", env={"AISTACK_TEST_ETCD_BINARY": str(etcd)})
    assert up.returncode == 0, up.stderr[-5000:]
    assert "kube-controller-manager is not running" in up.stderr, up.stderr[-5000:]
    logs = new_cluster.cluster_dir / "logs"
    previous = (logs / "kube-controller-manager.previous.log").read_text(errors="replace")
    assert "apiserver being healthy" in previous  # it did give up on the API server
    new_cluster.assert_working(nodes=False)


def test_up_names_the_component_that_never_starts(
    new_cluster: LocalCluster, tmp_path: Path
) -> None:
    """kube-controller-manager exits at once, every time: one error naming it, with its log."""
    crash = _wrapper(
        tmp_path / "kcm-crash",
        _bin_dir() / "kube-controller-manager",
        """
print("test wrapper: kube-controller-manager cannot start (simulated crash)", file=sys.stderr)
sys.exit(1)
""",
    )
    start = time.monotonic()
    up = new_cluster.up(
        "--nodes",
        "none",
        env={"AISTACK_TEST_KUBE_CONTROLLER_MANAGER_BINARY": str(crash)},
        timeout=40,
    )
    elapsed = time.monotonic() - start
    assert up.returncode != 0
    errors = [line for line in up.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, up.stderr[-5000:]
    assert "kube-controller-manager is not working (it is not running" in errors[0], errors
    after = up.stderr[up.stderr.index(errors[0]) :]
    assert "kube-controller-manager.log" in after or "kube-controller-manager.previous" in after
    assert "simulated crash" in after  # its last log lines
    for other in ("etcd", "kube-apiserver", "kube-scheduler", "kwok-controller"):
        assert f"{other}.log" not in after, f"unrelated log of {other} printed:\n{after}"
    assert "started again" in errors[0]  # it was restarted until the deadline
    assert elapsed < 40 + 60, elapsed
