"""MLflow: the rendered tracking servers, started for real from ``aistack render``.

``mlflow_server`` is the ``<stack>-mlflow`` Deployment of examples/quickstart.yaml (SQLite
and artifacts on its data volume, here a temporary directory), run with the MLflow of the
default image (envs/mlflow.txt). Other components' tests send their traces to it.

One test-only translation beyond the harness': the container listens on ``--host 0.0.0.0``,
which in a pod means "the pod's addresses". Here every server shares the machine, so the
server listens on the address the :class:`HostMap` gives its Service instead (two
rendered MLflow servers on port 5000 can then run at once). Nothing else is changed.

The rendered container asks for ``readOnlyRootFilesystem: true``: the server then runs in a
private mount namespace where every mount is read-only (this machine's root, the MLflow
environment with it) but its writable volumes' directories
(:func:`harness.read_only_root_argv`), and, as in the pod, without ``TMPDIR``: Python's
temporary files go to ``/tmp``, i.e. to the ``/tmp`` volume's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from harness import HostMap, Manifest, ProcessSpec, Running

from aistack import names

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
STORES_SCRIPT = REPO_ROOT / "hack" / "conformance-stores.sh"
MLFLOW_CONTAINER = "mlflow"
#: envs/<name>.txt: the default image's package set, and the -full image's.
PLAIN_ENV = "mlflow"
FULL_ENV = "mlflow-full"


# --------------------------------------------------------------------------- render helpers


def stack_of(manifests: Sequence[Manifest]) -> tuple[str, str]:
    """``(stack name, namespace)`` of a render, read from the MLflow Deployment's labels."""
    for m in harness.of_kind(manifests, "Deployment"):
        containers = m["spec"]["template"]["spec"]["containers"]
        if any(c["name"] == MLFLOW_CONTAINER for c in containers):
            stack = m["metadata"]["labels"]["app.kubernetes.io/instance"]
            return stack, m["metadata"]["namespace"]
    raise LookupError("no MLflow Deployment in the render")


def env_values(manifests: Sequence[Manifest], name: str) -> dict[str, str]:
    """``{"<workload>/<container>": value}`` of every plain env var ``name`` in the render."""
    out: dict[str, str] = {}
    for m in manifests:
        if m.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        for c in m["spec"]["template"]["spec"]["containers"]:
            for var in c.get("env", []):
                if var["name"] == name and "value" in var:
                    out[f"{m['metadata']['name']}/{c['name']}"] = var["value"]
    return out


def rendered_env(container: Mapping[str, Any], name: str) -> str:
    for var in container.get("env", []):
        if var["name"] == name:
            return str(var["value"])
    raise LookupError(f"no env {name} in container {container['name']}")


def trace_experiment_id(manifests: Sequence[Manifest]) -> str:
    """The experiment the rendered OTLP exporters name (``x-mlflow-experiment-id``)."""
    found = set()
    for value in env_values(manifests, "OTEL_EXPORTER_OTLP_TRACES_HEADERS").values():
        for pair in value.split(","):
            key, _, val = pair.partition("=")
            if key.strip().lower() == "x-mlflow-experiment-id":
                found.add(val.strip())
    if len(found) != 1:
        raise LookupError(f"expected one rendered x-mlflow-experiment-id, found {found}")
    return found.pop()


def bind_to_pod_address(argv: Sequence[str], address: str) -> list[str]:
    """``--host 0.0.0.0`` (all the pod's addresses) -> the Service's loopback address."""
    out = list(argv)
    i = out.index("--host")
    if out[i + 1] != "0.0.0.0":
        raise AssertionError(f"the rendered server listens on {out[i + 1]}, not 0.0.0.0")
    out[i + 1] = address
    return out


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the server


@dataclass
class MLflowServer:
    """A rendered MLflow Deployment running as a host process."""

    manifests: list[Manifest]
    stack: str
    namespace: str
    deployment: str
    #: the in-cluster URL the render hands to clients (MLFLOW_TRACKING_URI)
    url: str
    #: the loopback address the HostMap gives the Service (and the server listens on)
    address: str
    port: int
    #: the experiment OTLP traces go to (the rendered x-mlflow-experiment-id)
    experiment_id: str
    component: str
    spec: ProcessSpec
    running: Running
    hosts: HostMap
    #: the rendered container's readOnlyRootFilesystem, which the server ran under
    read_only_root: bool = False
    #: mountPath -> host directory: what the server could write (with a read-only root)
    writable: dict[str, Path] = field(default_factory=dict)

    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        home = (self.spec.workdir or Path("/tmp")) / "client-home"
        home.mkdir(parents=True, exist_ok=True)
        env = harness.base_env(envs.bin_dir(self.component), home)
        env.update(self.hosts.env())
        env["MLFLOW_TRACKING_URI"] = self.url
        env.update(extra or {})
        return env

    def run_client(
        self, code: str, *, env: Mapping[str, str] | None = None, timeout: float = 180
    ) -> Any:
        """Run ``code`` with this server's MLflow (its own Python); it prints one JSON value."""
        return run_python(self.component, code, env=env or self.client_env(), timeout=timeout)


def run_python(component: str, code: str, *, env: Mapping[str, str], timeout: float) -> Any:
    proc = subprocess.run(
        [str(envs.python(component)), "-c", code],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def start_mlflow(
    manifests: list[Manifest],
    *,
    component: str,
    workdir: Path,
    log_dir: Path,
    hosts: HostMap,
    secrets: Mapping[tuple[str, str], str] | None = None,
    secret_env_from: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 240,
) -> MLflowServer:
    """Start the render's MLflow Deployment and wait until every rendered probe passes."""
    stack, namespace = stack_of(manifests)
    deployment = names.mlflow(stack)
    service = harness.find(manifests, "Service", deployment)
    address = hosts.add(deployment, namespace)
    spec = harness.container_process(
        manifests,
        deployment,
        MLFLOW_CONTAINER,
        workdir=workdir,
        secrets=secrets,
        secret_env_from=secret_env_from,
    )
    argv = bind_to_pod_address(spec.argv, address)
    read_only = harness.read_only_root(harness.container(manifests, deployment, MLFLOW_CONTAINER))
    writable: dict[str, Path] = {}
    extra_env: dict[str, str] = {}
    if read_only:
        writable = harness.writable_mounts(manifests, deployment, spec, MLFLOW_CONTAINER)
        argv = harness.read_only_root_argv(argv, writable)
        # The pod sets no TMPDIR (the harness' default is a directory of its own).
        if "/tmp" in spec.mounts:
            extra_env["TMPDIR"] = str(spec.host_path("/tmp"))
    running = harness.start(
        spec,
        name=f"{deployment}-{component}",
        bin_dir=envs.bin_dir(component),
        log_dir=log_dir,
        hosts=hosts,
        extra_env=extra_env,
        argv=argv,
    )
    try:
        for _kind, url in harness.probe_urls(manifests, deployment, address, MLFLOW_CONTAINER):
            running.wait_http(url, timeout=timeout)
    except BaseException:
        running.stop()
        raise
    port = service["spec"]["ports"][0]["port"]
    return MLflowServer(
        manifests=manifests,
        stack=stack,
        namespace=namespace,
        deployment=deployment,
        url=f"http://{deployment}.{namespace}.svc.{harness.CLUSTER_DOMAIN}:{port}",
        address=address,
        port=port,
        experiment_id=_experiment_id_or_default(manifests),
        component=component,
        spec=spec,
        running=running,
        hosts=hosts,
        read_only_root=read_only,
        writable=writable,
    )


def _experiment_id_or_default(manifests: Sequence[Manifest]) -> str:
    try:
        return trace_experiment_id(manifests)
    except LookupError:
        return ""  # a render without model servers names no trace experiment


@pytest.fixture(scope="session")
def mlflow_manifests() -> list[Manifest]:
    return harness.render_example(harness.example("quickstart.yaml"))


@pytest.fixture(scope="session")
def mlflow_server(
    mlflow_manifests: list[Manifest], hosts: HostMap, suite_dir: Path, log_dir: Path
) -> Iterator[MLflowServer]:
    """The quickstart's MLflow, started from the render (session scope).

    ``.url`` is the rendered in-cluster URL (the HostMap resolves it for Python children),
    ``.experiment_id`` the experiment the rendered OTLP exporters send traces to.
    """
    hosts.add_services(mlflow_manifests)
    server = start_mlflow(
        mlflow_manifests,
        component=PLAIN_ENV,
        workdir=suite_dir / "mlflow-quickstart",
        log_dir=log_dir,
        hosts=hosts,
    )
    yield server
    server.running.stop()


# --------------------------------------------------------------------------- external stores


@dataclass
class Stores:
    pg_bin: Path
    versitygw: Path


@pytest.fixture(scope="session")
def store_programs() -> Stores:
    """PostgreSQL and versitygw, installed (or found) by hack/conformance-stores.sh."""
    proc = subprocess.run(
        ["bash", str(STORES_SCRIPT)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise AssertionError(f"{STORES_SCRIPT.name} failed:\n{proc.stderr[-4000:]}")
    pg_bin, gw = proc.stdout.strip().splitlines()[-2:]
    return Stores(pg_bin=Path(pg_bin), versitygw=Path(gw))


def _as_user(argv: list[str], uid: int | None) -> list[str]:
    if uid is None:
        return argv
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str
    bin_dir: Path
    data: Path
    uid: int | None

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def psql(self, sql: str) -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        proc = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                self.database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise AssertionError(f"psql failed: {proc.stderr}")
        return proc.stdout


@pytest.fixture(scope="session")
def postgres(store_programs: Stores) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (initdb in a temp dir, password auth, loopback)."""
    # initdb refuses to run as root: then the cluster runs as an unprivileged user, in a
    # directory of its own that user can reach (pytest's base directory is private).
    uid = 65534 if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="aistack-conformance-pg-"))
    data = root / "data"
    pwfile = root / "pwfile"
    password = "conformance-pw"
    pwfile.write_text(password + "\n")
    if uid is not None:
        for path in (root, pwfile):
            shutil.chown(path, user=uid, group=uid)
    bin_dir = store_programs.pg_bin
    host = "127.0.0.1"
    port = free_port(host)
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        _check(
            _as_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "mlflow",
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                uid,
            )
        )
        options = f"-h {host} -p {port} -k {root} -c fsync=off"
        _check(
            _as_user(
                [
                    *pg_ctl,
                    "-l",
                    str(root / "postgres.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                uid,
            )
        )
        pg = Postgres(
            host=host,
            port=port,
            user="mlflow",
            password=password,
            database="postgres",
            bin_dir=bin_dir,
            data=data,
            uid=uid,
        )
        pg.psql("CREATE DATABASE mlflow")
        pg.database = "mlflow"
        yield pg
    finally:
        subprocess.run(_as_user([*pg_ctl, "-m", "fast", "stop"], uid), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _check(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


@dataclass
class ObjectStore:
    """A running versitygw (S3 API) on a loopback address, reached by a Service-like name."""

    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    running: Running

    def object_path(self, bucket: str, key: str) -> Path:
        """Where the POSIX backend keeps ``s3://bucket/key``."""
        return self.root / bucket / key


@pytest.fixture(scope="session")
def object_store(
    store_programs: Stores, hosts: HostMap, suite_dir: Path, log_dir: Path
) -> Iterator[ObjectStore]:
    """versitygw with its POSIX backend, as ``http://s3.storage.svc:<port>`` for clients."""
    root = suite_dir / "s3"
    (root / "data").mkdir(parents=True)
    address = hosts.add("s3", "storage")
    port = free_port(address)
    access, secret = "conformance-access", "conformance-secret-key"
    spec = ProcessSpec(argv=[], env={}, workdir=root)
    running = harness.start(
        spec,
        name="versitygw",
        bin_dir=None,
        log_dir=log_dir,
        argv=[
            str(store_programs.versitygw),
            "--access",
            access,
            "--secret",
            secret,
            "--port",
            f"{address}:{port}",
            "posix",
            str(root / "data"),
        ],
    )
    deadline = time.monotonic() + 60
    while True:
        if not running.alive():
            raise AssertionError(f"versitygw exited:\n{running.log_tail()}")
        try:
            socket.create_connection((address, port), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                running.stop()
                raise AssertionError(f"versitygw did not listen:\n{running.log_tail()}") from None
            time.sleep(0.3)
    store = ObjectStore(
        endpoint=f"http://s3.storage.svc:{port}",
        access_key=access,
        secret_key=secret,
        root=root / "data",
        running=running,
    )
    yield store
    running.stop()
