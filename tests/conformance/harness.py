"""Start what ``aistack render`` produced as host processes, the way a kubelet would.

Everything a test starts is read from the rendered manifests: the container's command and
args, its env (plain values, Secret references filled with test values, field references),
``$(VAR)`` expansion as Kubernetes does it, ConfigMap volumes written to files, and its
probes. Three test-only translations stand in for what a cluster provides, and nothing else
is changed:

- **Mounts.** Each volumeMount's ``mountPath`` becomes a host directory; an arg or env value
  that starts with a mount path is rewritten to the host directory (``/etc/litellm/...``).
- **Service DNS.** :class:`HostMap` gives every rendered Service its own ``127.0.0.N`` and
  makes every Python process started here resolve the Service's in-cluster names (short,
  ``.ns``, ``.ns.svc``, ``.ns.svc.<domain>``) to it, through a ``sitecustomize`` module on
  ``PYTHONPATH``. All four programs are Python, so this reaches every client they open.
- **Users.** Processes run as this user unless a test asks for the pod's ``runAsUser``.

A LeaderWorkerSet's pods are read from its templates (``<lws>/leader``, ``<lws>/worker``),
with the env LeaderWorkerSet's pod webhook injects into every container (:func:`lws_env`)
put first, as the webhook does, before ``$(VAR)`` expansion.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
EXAMPLES = REPO_ROOT / "examples"
CLUSTER_DOMAIN = "cluster.local"

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- render


def aistack_cli() -> list[str]:
    """The ``aistack`` command of the environment running the tests."""
    script = Path(sys.executable).parent / "aistack"
    return [str(script)] if script.exists() else [sys.executable, "-m", "aistack.cli"]


def render_example(
    path: str | Path, *, deny: Sequence[str] = (), namespace: str = ""
) -> list[Manifest]:
    """What ``aistack render -f PATH`` prints, parsed (``deny``: models rendered as blocked)."""
    argv = [*aistack_cli(), "render", "-f", str(path)]
    for model in deny:
        argv += ["--deny", model]
    if namespace:
        argv += ["-n", namespace]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        # The CLI says why on stderr (an API rule the stack breaks): the test should too.
        raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def example(name: str) -> Path:
    return EXAMPLES / name


def example_documents(name: str) -> list[Manifest]:
    """Every document of an example, in order (a LicensePolicy may come before the
    AIStack)."""
    return [doc for doc in yaml.safe_load_all(example(name).read_text()) if doc]


def example_stack(documents: Sequence[Manifest]) -> Manifest:
    """The one AIStack among an example's documents (the object itself: a variant edits it
    in place and writes all the documents back with :func:`write_documents`)."""
    stacks = [doc for doc in documents if doc.get("kind") == "AIStack"]
    if len(stacks) != 1:
        raise AssertionError(f"expected one AIStack, found {len(stacks)}")
    return stacks[0]


def write_documents(path: Path, documents: Sequence[Manifest]) -> Path:
    """``documents`` as one multi-document YAML file (what ``aistack render -f`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(list(documents), sort_keys=False))
    return path


def find(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    for m in manifests:
        if m.get("kind") == kind and m["metadata"]["name"] == name:
            return m
    raise LookupError(f"no {kind} {name} in the render")


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")


def workload(manifests: Iterable[Manifest], name: str) -> Manifest:
    """The Deployment, StatefulSet or LeaderWorkerSet called ``name`` (a LeaderWorkerSet
    also as ``<lws>/leader`` or ``<lws>/worker``)."""
    base = name.split("/", 1)[0]
    for m in manifests:
        if m.get("kind") in WORKLOAD_KINDS and m["metadata"]["name"] == base:
            if base != name and m["kind"] != "LeaderWorkerSet":
                break
            return m
    raise LookupError(f"no workload {name} in the render")


#: The roles of a LeaderWorkerSet's pods, as :func:`pod_template` names them.
LWS_ROLES = ("leader", "worker")


def pod_template(manifests: Iterable[Manifest], name: str) -> dict[str, Any]:
    """The pod template of workload ``name``: a Deployment's or StatefulSet's, or for
    ``<lws>/leader`` and ``<lws>/worker`` a LeaderWorkerSet's leader or worker template (the
    leader's is the worker template when the LeaderWorkerSet has no leaderTemplate, as
    LeaderWorkerSet itself falls back)."""
    m = workload(manifests, name)
    if m["kind"] != "LeaderWorkerSet":
        template: dict[str, Any] = m["spec"]["template"]
        return template
    _, _, role = name.partition("/")
    if role not in LWS_ROLES:
        raise LookupError(f"name a LeaderWorkerSet's pod as {name}/leader or {name}/worker")
    lwt = m["spec"]["leaderWorkerTemplate"]
    if role == "leader" and lwt.get("leaderTemplate"):
        leader: dict[str, Any] = lwt["leaderTemplate"]
        return leader
    worker: dict[str, Any] = lwt["workerTemplate"]
    return worker


def pod_spec(manifests: Iterable[Manifest], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(manifests, name)["spec"]
    return spec


# --------------------------------------------------------------------------- LeaderWorkerSet

#: The env vars LeaderWorkerSet (v0.8.0) injects into every container of a group's pods, in
#: its order (``pkg/utils/pod/pod_utils.go``, ``AddLWSVariables``).
LWS_LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
LWS_GROUP_SIZE = "LWS_GROUP_SIZE"
LWS_WORKER_INDEX = "LWS_WORKER_INDEX"


def lws_leader_address(lws_name: str, namespace: str, group: int) -> str:
    """The group's leader as LeaderWorkerSet names it to every pod of the group:
    ``<lws>-<group>.<subdomain>.<namespace>``, the subdomain being the LeaderWorkerSet's
    headless Service, named after it (the default ``subdomainPolicy: Shared``; the render
    sets no other). Cluster DNS resolves it, through the pod's search path, to the leader
    pod's IP (:func:`lws_leader_names`)."""
    return f"{lws_name}-{group}.{lws_name}.{namespace}"


def lws_leader_names(lws_name: str, namespace: str, group: int) -> list[str]:
    """Every spelling of :func:`lws_leader_address` cluster DNS answers for a pod of the
    namespace with the leader pod's IP (the search path adds ``.svc`` and
    ``.svc.<domain>``): what a test's ``/etc/hosts`` maps to the leader pod."""
    address = lws_leader_address(lws_name, namespace, group)
    return [address, f"{address}.svc", f"{address}.svc.{CLUSTER_DOMAIN}"]


def lws_env(
    lws_name: str, namespace: str, group: int, index: int, size: int
) -> list[dict[str, str]]:
    """The env LeaderWorkerSet's pod webhook gives every container of pod ``index`` (0: the
    leader, 1..size-1: the workers) of group ``group``: container env entries, in the order
    the webhook puts them first in each container's env (:func:`with_injected_env`)."""
    return [
        {"name": LWS_LEADER_ADDRESS, "value": lws_leader_address(lws_name, namespace, group)},
        {"name": LWS_GROUP_SIZE, "value": str(size)},
        {"name": LWS_WORKER_INDEX, "value": str(index)},
    ]


def with_injected_env(
    env: Sequence[Mapping[str, Any]], injected: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """A container's ``env`` after a webhook put ``injected`` first: the injected entries in
    their order, then the container's own but those of an injected name (LeaderWorkerSet's
    ``addEnvVarsIfNotExists``: its values win)."""
    names = {e["name"] for e in injected}
    return [dict(e) for e in injected] + [dict(e) for e in env if e["name"] not in names]


def lws_size(manifests: Iterable[Manifest], lws_name: str) -> int:
    """The pods in each group of LeaderWorkerSet ``lws_name`` (leader included)."""
    lws = workload(manifests, lws_name)
    return int(lws["spec"]["leaderWorkerTemplate"].get("size", 1))


@dataclass(frozen=True)
class LwsPod:
    """One pod of a LeaderWorkerSet group, as LeaderWorkerSet creates it."""

    #: ``<lws>/leader`` or ``<lws>/worker`` (its template, see :func:`pod_template`)
    template: str
    #: the pod's name: ``<lws>-<group>`` for the leader, ``<lws>-<group>-<index>`` else
    name: str
    index: int
    #: the env LeaderWorkerSet injects (:func:`lws_env`)
    env: tuple[dict[str, str], ...]

    @property
    def leader(self) -> bool:
        return self.index == 0


def lws_pods(manifests: Sequence[Manifest], lws_name: str, group: int = 0) -> list[LwsPod]:
    """The pods of group ``group`` of LeaderWorkerSet ``lws_name``: the leader, then the
    workers by index."""
    lws = workload(manifests, lws_name)
    namespace = lws["metadata"].get("namespace", "default")
    size = lws_size(manifests, lws_name)
    out = []
    for index in range(size):
        role = "leader" if index == 0 else "worker"
        name = f"{lws_name}-{group}" + (f"-{index}" if index else "")
        env = tuple(lws_env(lws_name, namespace, group, index, size))
        out.append(LwsPod(template=f"{lws_name}/{role}", name=name, index=index, env=env))
    return out


def container(manifests: Iterable[Manifest], name: str, container_name: str | None = None) -> Any:
    """The pod's first container, or the container or init container ``container_name``."""
    spec = pod_spec(manifests, name)
    containers = spec["containers"]
    if container_name is None:
        return containers[0]
    for c in [*containers, *spec.get("initContainers", [])]:
        if c["name"] == container_name:
            return c
    raise LookupError(f"no container {container_name} in {name}")


# --------------------------------------------------------------------------- processes


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, unknown ones are left
    as written, ``$$`` is a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


@dataclass
class ProcessSpec:
    """A container turned into a host process."""

    argv: list[str]
    env: dict[str, str]
    #: container mountPath -> host directory
    mounts: dict[str, Path] = field(default_factory=dict)
    #: the pod's runAsUser, if any (used only when a test asks for it)
    run_as_user: int | None = None
    workdir: Path | None = None

    def host_path(self, container_path: str) -> Path:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if container_path == mount or container_path.startswith(mount.rstrip("/") + "/"):
                rest = container_path[len(mount) :].lstrip("/")
                return self.mounts[mount] / rest
        raise LookupError(f"{container_path} is on no mounted volume")


def _rewrite(value: str, mounts: Mapping[str, Path]) -> str:
    """Mount paths in ``value`` -> host directories: a value that is a path, ``KEY=path``,
    or a URI with a local path (``sqlite:////mlflow/mlflow.db``, ``file:///data``)."""
    for mount in sorted(mounts, key=len, reverse=True):
        pattern = rf"(^|=|:///?)({re.escape(mount.rstrip('/'))})(?=/|$)"
        new = re.sub(pattern, lambda m, h=str(mounts[mount]): m.group(1) + h, value, count=1)
        if new != value:
            return new
    return value


def container_process(
    manifests: Sequence[Manifest],
    deployment: str,
    container_name: str | None = None,
    *,
    workdir: Path,
    secrets: Mapping[tuple[str, str], str] | None = None,
    secret_env_from: Mapping[str, Mapping[str, str]] | None = None,
    field_refs: Mapping[str, str] | None = None,
    injected_env: Sequence[Mapping[str, Any]] = (),
) -> ProcessSpec:
    """The rendered container ``deployment``/``container_name`` as a :class:`ProcessSpec`
    (``deployment``: any name :func:`pod_template` takes, e.g. ``<lws>/worker``).

    ``secrets`` gives test values to ``secretKeyRef`` (``(secret, key) -> value``),
    ``secret_env_from`` to ``envFrom.secretRef`` (``secret -> {key: value}``) and
    ``field_refs`` to ``fieldRef`` (``fieldPath -> value``, e.g. ``status.podIP``). A
    reference without a test value is an error: the rendered pod could not start either.
    ``injected_env``: env entries an admission webhook puts first in the container's env
    (:func:`lws_env` for a LeaderWorkerSet's pod; :func:`with_injected_env`), so they are
    there for ``$(VAR)`` expansion as in the pod the kubelet starts.
    """
    secrets = secrets or {}
    secret_env_from = secret_env_from or {}
    field_refs = field_refs or {}
    spec = pod_spec(manifests, deployment)
    c = container(manifests, deployment, container_name)
    workdir.mkdir(parents=True, exist_ok=True)

    # Volumes -> host directories.
    volume_dirs: dict[str, Path] = {}
    for vol in spec.get("volumes", []):
        target = workdir / "volumes" / vol["name"]
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol:
            cm = find(manifests, "ConfigMap", vol["configMap"]["name"])
            for key, text in cm.get("data", {}).items():
                (target / key).write_text(text)
        volume_dirs[vol["name"]] = target
    mounts: dict[str, Path] = {}
    for mount in c.get("volumeMounts", []):
        base = volume_dirs[mount["name"]]
        if mount.get("subPath"):
            base = base / mount["subPath"]
        mounts[mount["mountPath"]] = base

    # Environment, in order, as the kubelet builds it.
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        ref = src.get("secretRef")
        if ref is None:
            raise NotImplementedError(f"envFrom source {src} in {deployment}")
        if ref["name"] not in secret_env_from:
            raise KeyError(f"{deployment}: no test value for envFrom Secret {ref['name']}")
        env.update(secret_env_from[ref["name"]])
    for var in with_injected_env(c.get("env", []), injected_env):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            key = (source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
            if key not in secrets:
                raise KeyError(f"{deployment}: no test value for Secret key {key}")
            env[var["name"]] = secrets[key]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in field_refs:
                raise KeyError(f"{deployment}: no test value for fieldRef {path}")
            env[var["name"]] = field_refs[path]
        else:
            raise NotImplementedError(f"valueFrom {source} in {deployment}")
    env = {k: _rewrite(v, mounts) for k, v in env.items()}

    argv = [expand(a, env) for a in [*c.get("command", []), *c.get("args", [])]]
    argv = [_rewrite(a, mounts) for a in argv]
    security = spec.get("securityContext", {})
    return ProcessSpec(
        argv=argv,
        env=env,
        mounts=mounts,
        run_as_user=security.get("runAsUser"),
        workdir=workdir,
    )


def probe_urls(
    manifests: Sequence[Manifest], deployment: str, host: str, container_name: str | None = None
) -> list[tuple[str, str]]:
    """``(probe kind, URL)`` for every httpGet probe of the container, ports resolved."""
    c = container(manifests, deployment, container_name)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    out = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not probe:
            continue
        get = probe.get("httpGet")
        if get is None:
            raise NotImplementedError(f"{deployment} {kind} is not httpGet: {probe}")
        port = get["port"]
        port = ports[port] if isinstance(port, str) else port
        out.append((kind, f"http://{host}:{port}{get.get('path', '/')}"))
    return out


# --------------------------------------------------------------------------- DNS


_SITECUSTOMIZE = '''\
"""Test-only: resolve in-cluster Service names to loopback addresses (aistack conformance)."""
import json as _json
import os as _os
import socket as _socket

_path = _os.environ.get("AISTACK_TEST_HOSTS")
if _path:
    with open(_path) as _f:
        _HOSTS = {k.lower(): v for k, v in _json.load(_f).items()}
    _getaddrinfo = _socket.getaddrinfo
    _gethostbyname = _socket.gethostbyname
    _gethostbyname_ex = _socket.gethostbyname_ex

    def _lookup(host):
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str):
            return _HOSTS.get(host.lower().rstrip("."))
        return None

    def getaddrinfo(host, *args, **kwargs):
        return _getaddrinfo(_lookup(host) or host, *args, **kwargs)

    def gethostbyname(host):
        return _lookup(host) or _gethostbyname(host)

    def gethostbyname_ex(host):
        ip = _lookup(host)
        return (host, [], [ip]) if ip else _gethostbyname_ex(host)

    _socket.getaddrinfo = getaddrinfo
    _socket.gethostbyname = gethostbyname
    _socket.gethostbyname_ex = gethostbyname_ex
'''


def etc_hosts(path: Path, names: Mapping[str, str]) -> Path:
    """An ``/etc/hosts`` with this machine's entries and ``names`` (name -> address), for
    programs that resolve names outside Python (glibc, uvloop, gRPC's core); a test mounts it
    over ``/etc/hosts`` in a private mount namespace."""
    lines = [Path("/etc/hosts").read_text().rstrip("\n"), "# aistack conformance (test-only)"]
    by_ip: dict[str, list[str]] = {}
    for name, ip in sorted(names.items()):
        by_ip.setdefault(ip, []).append(name)
    lines += [f"{ip} {' '.join(ns)}" for ip, ns in sorted(by_ip.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def run_quiet(*argv: str) -> None:
    """Run a set-up command (``ip netns ...``); its output only shows when it fails."""
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


class HostMap:
    """Loopback addresses for the rendered Services, resolvable by every Python child."""

    def __init__(self, directory: Path, first: int = 2) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.hosts_file = directory / "hosts.json"
        self._next = first
        self.names: dict[str, str] = {}
        self._write()

    def _write(self) -> None:
        self.hosts_file.write_text(json.dumps(self.names, indent=1, sort_keys=True))

    def add(self, service: str, namespace: str, ip: str | None = None) -> str:
        """Give ``service`` an address (a new ``127.0.0.N`` unless ``ip``); returns it."""
        fqdn = f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"
        if fqdn in self.names:
            return self.names[fqdn]
        if ip is None:
            ip = f"127.0.0.{self._next}"
            self._next += 1
        for name in (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", fqdn):
            self.names[name] = ip
        self._write()
        return ip

    def add_services(self, manifests: Iterable[Manifest]) -> None:
        for svc in of_kind(manifests, "Service"):
            self.add(svc["metadata"]["name"], svc["metadata"].get("namespace", "default"))

    def ip(self, name: str) -> str:
        return self.names[name.lower().rstrip(".")]

    def etc_hosts(self, path: Path) -> Path:
        """Every name of this map as an ``/etc/hosts`` (see :func:`etc_hosts`)."""
        return etc_hosts(path, self.names)

    def env(self) -> dict[str, str]:
        return {"AISTACK_TEST_HOSTS": str(self.hosts_file), "PYTHONPATH": str(self.directory)}


# --------------------------------------------------------------------------- running


class ProcessFailed(AssertionError):
    pass


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_http(
        self,
        url: str,
        *,
        timeout: float = 120,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Poll ``url`` until it answers ``status``; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(
                    f"{self.name} exited with {self.process.returncode} while waiting for "
                    f"{url}:\n{self.log_tail()}"
                )
            code, body = http(url, headers=headers, timeout=5)
            if code == status:
                return body
            last = f"HTTP {code}: {body[:200]!r}" if code else body.decode(errors="replace")
            time.sleep(0.5)
        raise ProcessFailed(
            f"{self.name}: {url} did not answer {status} in {timeout:.0f} s ({last}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def http(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """``(status, body)``; status 0 with the error text when nothing answered."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err).encode()


@dataclass(frozen=True)
class Sample:
    """One sample of a Prometheus exposition: its name (``_total``, ``_bucket`` ... included),
    labels, value and its metric's type (``counter``, ``gauge``, ``histogram`` ...)."""

    name: str
    labels: dict[str, str]
    value: float
    type: str


def prometheus_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (prometheus_client's parser: a body that
    is not Prometheus text fails here)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        Sample(s.name, dict(s.labels), s.value, family.type)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scrape(url: str, *, headers: Mapping[str, str] | None = None) -> list[Sample]:
    """``GET url`` (a ``/metrics`` endpoint), which must answer 200, parsed."""
    code, body = http(url, headers=headers)
    assert code == 200, (url, code, body[:400])
    return prometheus_samples(body.decode())


def base_env(bin_dir: Path | None, home: Path) -> dict[str, str]:
    """A clean environment, like a container's: no variables of the test runner leak in."""
    path = "/usr/local/bin:/usr/bin:/bin"
    if bin_dir is not None:
        path = f"{bin_dir}:{path}"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home)}


def start(
    spec: ProcessSpec,
    *,
    name: str,
    bin_dir: Path | None,
    log_dir: Path,
    hosts: HostMap | None = None,
    extra_env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    as_pod_user: bool = False,
) -> Running:
    """Start ``spec`` (or ``argv`` with its env) with ``bin_dir`` first on ``PATH``.

    ``extra_env`` is for test-side settings the cluster would not need (it is named in the
    test that uses it). ``as_pod_user`` runs the process as the pod's ``runAsUser``.
    """
    home = (spec.workdir or log_dir) / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = base_env(bin_dir, home)
    if hosts is not None:
        env.update(hosts.env())
    env.update(spec.env)
    env.update(extra_env or {})
    command = list(argv if argv is not None else spec.argv)
    if bin_dir is not None and command and not os.path.isabs(command[0]):
        resolved = shutil.which(command[0], path=env["PATH"])
        if resolved:
            command[0] = resolved
    if as_pod_user and spec.run_as_user is not None and os.geteuid() == 0:
        uid = str(spec.run_as_user)
        for path in [spec.workdir or log_dir, *spec.mounts.values()]:
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(path)], check=True)
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(home),
            start_new_session=True,
        )
    return Running(name=name, process=process, log=log)


def run_to_completion(
    spec: ProcessSpec,
    *,
    name: str,
    bin_dir: Path | None,
    log_dir: Path,
    hosts: HostMap | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> tuple[int, str]:
    """Run ``spec`` until it exits, as an init container runs: ``(exit status, output)``.
    Its output is also in ``log_dir/<name>.log``."""
    running = start(
        spec, name=name, bin_dir=bin_dir, log_dir=log_dir, hosts=hosts, extra_env=extra_env
    )
    try:
        code = running.process.wait(timeout)
    except subprocess.TimeoutExpired:
        running.stop()
        raise ProcessFailed(
            f"{name} did not finish in {timeout:.0f} s:\n{running.log_tail()}"
        ) from None
    return code, running.log.read_text(errors="replace")


# --------------------------------------------------------------------------- read-only root

#: Filesystems a container runtime provides itself (not the image's): left as they are.
RUNTIME_FILESYSTEMS = ("/proc", "/sys", "/dev")


def read_only_root(container: Mapping[str, Any]) -> bool:
    """Whether the rendered container asks for ``readOnlyRootFilesystem: true``."""
    return bool(container.get("securityContext", {}).get("readOnlyRootFilesystem", False))


def writable_mounts(
    manifests: Sequence[Manifest], deployment: str, spec: ProcessSpec, container_name: str
) -> dict[str, Path]:
    """``mountPath -> host directory`` of the container's writable volumes: every mount
    but ``readOnly`` ones and ConfigMap, Secret and projected volumes (always read-only)."""
    volumes = {v["name"]: v for v in pod_spec(manifests, deployment).get("volumes", [])}
    out: dict[str, Path] = {}
    for mount in container(manifests, deployment, container_name).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if mount.get("readOnly") or {"configMap", "secret", "projected"} & volume.keys():
            continue
        out[mount["mountPath"]] = spec.mounts[mount["mountPath"]]
    return out


def _mount_points(mountinfo: str) -> list[str]:
    """Mount points of a ``/proc/<pid>/mountinfo``, in its order, escapes decoded."""
    out = []
    for line in mountinfo.splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        out.append(point)
    return out


def _runtime_filesystem(point: str) -> bool:
    return any(point == fs or point.startswith(fs + "/") for fs in RUNTIME_FILESYSTEMS)


def read_only_root_argv(argv: Sequence[str], writable: Mapping[str, Path]) -> list[str]:
    """``argv`` run in a private mount namespace where everything is read-only (the root,
    every other mount, this machine's Python environments with them: the "image") except
    ``writable`` (``mountPath -> host directory``, see :func:`writable_mounts`): each of
    those host directories is bound onto itself, writable. ``/proc``, ``/sys`` and ``/dev``
    stay as they are (a runtime provides its own). Needs root with ``unshare`` and
    ``mount``; :func:`writable_mount_points` shows the result for a running process."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise RuntimeError(
            "a container with readOnlyRootFilesystem runs in a private mount namespace with "
            "a read-only root: that needs root with unshare and mount (util-linux)"
        )
    points = _mount_points(Path("/proc/self/mountinfo").read_text())
    steps = ["set -e"]
    for point in dict.fromkeys(p for p in points if not _runtime_filesystem(p)):
        steps.append(f"mount -o remount,bind,ro {shlex.quote(point)}")
    for path in dict.fromkeys(str(p) for p in writable.values()):
        q = shlex.quote(path)
        steps += [f"mount --bind {q} {q}", f"mount -o remount,bind,rw {q}"]
    steps.append('exec "$@"')
    script = "\n".join(steps) + "\n"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def writable_mount_points(pid: int) -> list[str]:
    """The mounts process ``pid`` sees writable, but ``/proc``, ``/sys`` and ``/dev``."""
    out = []
    text = Path(f"/proc/{pid}/mountinfo").read_text()
    for line, point in zip(text.splitlines(), _mount_points(text), strict=True):
        options = line.split()[5].split(",")
        if "rw" in options and not _runtime_filesystem(point):
            out.append(point)
    return out


_WRITE_PROBE = """
import errno, json, os, sys
out = {}
for directory in sys.argv[1:]:
    path = os.path.join(directory, ".aistack-write-probe")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        out[directory] = errno.errorcode.get(err.errno, str(err.errno))
    else:
        os.unlink(path)
        out[directory] = "written"
print(json.dumps(out))
"""


def write_attempts(pid: int, directories: Sequence[str | Path], python: Path) -> dict[str, str]:
    """Create (and remove) a file in each directory from inside process ``pid``'s mount
    namespace: ``{directory: "written" or the errno's name, e.g. "EROFS"}``."""
    proc = subprocess.run(
        ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", str(python), "-I", "-c", _WRITE_PROBE]
        + [str(d) for d in directories],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"write probe failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, str] = json.loads(proc.stdout)
    return out
