"""The LiteLLM gateway, started for real from ``aistack render``.

``start_gateway`` runs the rendered ``<stack>-gateway`` Deployment (command, args, env,
the ConfigMap as its config file) with the LiteLLM of the default image (envs/litellm.txt),
in front of stand-in model servers (standin.py) listening on the addresses the
:class:`HostMap` gives the model Services.

Test-side translations beyond the harness', each needed for something a pod has:

- **Name resolution.** The proxy runs on uvloop, whose resolver is libuv's (glibc), not
  Python's ``socket`` module, so the HostMap's Python hook does not reach it. The gateway
  therefore runs in a private mount namespace whose ``/etc/hosts`` names every rendered
  Service (what cluster DNS does for the pod).
- **The pod's user and mounts.** In that namespace the process runs as the pod's
  ``runAsUser`` (1000), the config volume is mounted read-only as the render says, and a
  directory on the way to the environment or the work directory that this user could not
  enter (a 0700 home or pytest's temporary root) is shown to it through an 0711 view.
- **The pod's temporary directory.** In the pod, Python's temporary directory is ``/tmp``,
  the rendered emptyDir; here ``TMPDIR`` names that volume's host directory (the mount
  translation, for a path the program picks itself).

The gateway listens where the rendered args say (``--port 4000`` on all addresses, as in
its pod), so one gateway runs at a time.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import envs
import harness
from harness import HostMap, Manifest, ProcessSpec, Running

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin.py"
GATEWAY_ENV = "litellm"
GATEWAY_CONTAINER = "gateway"
MODEL_SERVER_COMPONENT = "model-server"


# --------------------------------------------------------------------------- render helpers


def gateway_deployment(manifests: Sequence[Manifest]) -> Manifest:
    found = [
        m
        for m in harness.of_kind(manifests, "Deployment")
        if m["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
    ]
    if len(found) != 1:
        raise LookupError(f"expected one gateway Deployment, found {len(found)}")
    return found[0]


def gateway_config(manifests: Sequence[Manifest]) -> dict[str, Any]:
    """The LiteLLM config the rendered ConfigMap holds, parsed."""
    deployment = gateway_deployment(manifests)
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    cm = harness.find(manifests, "ConfigMap", name)
    import yaml

    config: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return config


def routed_models(manifests: Sequence[Manifest]) -> list[str]:
    return [route["model_name"] for route in gateway_config(manifests)["model_list"]]


def model_servers(manifests: Sequence[Manifest]) -> list[tuple[Manifest, Manifest]]:
    """``(Service, Deployment)`` of every model server whose pod runs ``vllm serve`` directly
    (single-node models; a multi-node model's pods are a LeaderWorkerSet's, see
    test_multinode.py and test_multinode_vllm.py)."""
    out = []
    for svc in harness.of_kind(manifests, "Service"):
        selector = svc["spec"].get("selector", {})
        if selector.get("app.kubernetes.io/component") != MODEL_SERVER_COMPONENT:
            continue
        for dep in harness.of_kind(manifests, "Deployment"):
            labels = dep["spec"]["template"]["metadata"]["labels"]
            container = dep["spec"]["template"]["spec"]["containers"][0]
            if all(labels.get(k) == v for k, v in selector.items()) and container.get(
                "command", []
            )[:2] == ["vllm", "serve"]:
                out.append((svc, dep))
    return out


# --------------------------------------------------------------------------- sandbox


def closed_dirs(paths: Sequence[Path], uid: int) -> list[Path]:
    """Directories on the way to ``paths`` that ``uid`` (not their owner) cannot enter."""
    closed: set[Path] = set()
    for path in paths:
        for parent in [*reversed(path.parents), path]:
            if parent == Path("/") or not parent.is_dir():
                continue
            st = parent.stat()
            if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
                closed.add(parent)
    return sorted(closed, key=lambda p: len(p.parts))


def view_commands(closed: Sequence[Path], views: Path) -> list[str]:
    """Shell commands (for a private mount namespace) that put an 0711 view over each
    closed directory: the same entries, bind-mounted, so the pod user can pass through."""
    commands: list[str] = []
    for i, directory in enumerate(closed):
        view = views / f"view{i}"
        view.mkdir(parents=True, exist_ok=True)
        view.chmod(0o711)
        for child in directory.iterdir():
            target = view / child.name
            if child.is_dir() and not child.is_symlink():
                target.mkdir(exist_ok=True)
            elif not child.is_symlink():
                target.touch(exist_ok=True)
            else:
                continue
            commands.append(f"mount --bind {shlex.quote(str(child))} {shlex.quote(str(target))}")
        commands.append(f"mount --rbind {shlex.quote(str(view))} {shlex.quote(str(directory))}")
    return commands


def pod_argv(
    spec: ProcessSpec,
    *,
    hosts: Path,
    read_only: Sequence[Path],
    uid: int | None,
    reach: Sequence[Path],
    views: Path,
) -> list[str]:
    """``spec.argv`` wrapped: private mount namespace with the cluster's ``/etc/hosts``,
    ``read_only`` directories remounted read-only, then (as root only) the pod's user."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "the gateway conformance tests run LiteLLM in a private mount namespace (its "
            "/etc/hosts names the rendered Services) and need root with unshare and mount"
        )
    steps = [f"mount --bind {shlex.quote(str(hosts))} /etc/hosts"]
    for path in read_only:
        p = shlex.quote(str(path))
        steps += [f"mount --bind {p} {p}", f"mount -o remount,bind,ro {p}"]
    run = '"$@"'
    if uid is not None:
        steps += view_commands(closed_dirs(reach, uid), views)
        run = f'setpriv --reuid={uid} --regid={uid} --clear-groups "$@"'
    script = "set -e\n" + "\n".join(steps) + f"\nexec {run}\n"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *spec.argv]


# --------------------------------------------------------------------------- processes


@dataclass
class StandIn:
    service: str
    served_name: str
    address: str
    port: int
    running: Running

    def requests(self) -> list[dict[str, Any]]:
        code, body = harness.http(f"http://{self.address}:{self.port}/standin/requests")
        assert code == 200, body
        seen: list[dict[str, Any]] = json.loads(body)
        return seen


def start_standins(
    manifests: Sequence[Manifest], *, hosts: HostMap, workdir: Path, log_dir: Path
) -> dict[str, StandIn]:
    """A stand-in (standin.py, stdlib only) for each single-node model server, started with
    that server's rendered ``vllm serve`` args, on its Service's address. Keyed by the
    served model name."""
    out: dict[str, StandIn] = {}
    try:
        for svc, dep in model_servers(manifests):
            stand_in = start_standin(manifests, svc, dep, hosts=hosts, workdir=workdir,
                                     log_dir=log_dir)  # fmt: skip
            out[stand_in.served_name] = stand_in
    except BaseException:
        for s in out.values():
            s.running.stop()
        raise
    return out


def start_standin(
    manifests: Sequence[Manifest],
    svc: Manifest,
    dep: Manifest,
    *,
    hosts: HostMap,
    workdir: Path,
    log_dir: Path,
    wait: bool = True,
) -> StandIn:
    """The stand-in of one model server (its Service and Deployment), on the Service's
    address; ``wait``: until it answers /health."""
    python = str(envs.python(GATEWAY_ENV))
    name = svc["metadata"]["name"]
    address = hosts.add(name, svc["metadata"]["namespace"])
    spec = harness.container_process(
        manifests, dep["metadata"]["name"], workdir=workdir / name, field_refs={}
    )
    args = spec.argv[2:]  # after `vllm serve`
    parsed = _standin_args(args)
    running = harness.start(
        spec,
        name=f"standin-{name}",
        bin_dir=None,
        log_dir=log_dir,
        argv=[python, str(STANDIN), "serve", *args],
        extra_env={"STANDIN_BIND": address},
    )
    stand_in = StandIn(name, parsed["name"], address, parsed["port"], running)
    if wait:
        try:
            running.wait_http(f"http://{address}:{stand_in.port}/health", timeout=30)
        except BaseException:
            running.stop()
            raise
    return stand_in


def _standin_args(args: Sequence[str]) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import standin

    ns = standin.parse(list(args))
    return {"name": ns.served_model_name[0], "port": ns.port}


@dataclass
class Gateway:
    manifests: list[Manifest]
    deployment: str
    spec: ProcessSpec
    running: Running
    #: where the gateway answers (it listens on all addresses, like in its pod)
    url: str
    stand_ins: dict[str, StandIn] = field(default_factory=dict)
    key: str | None = None

    def port(self, name: str) -> int | None:
        """The rendered gateway container's port called ``name`` (None: not rendered)."""
        container = harness.container(self.manifests, self.deployment, GATEWAY_CONTAINER)
        ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports", [])}
        return ports.get(name)

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key if key is not None else self.key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        code, body = harness.http(self.url + path, headers=self.headers(key))
        return code, _json(body)

    def post(self, path: str, body: Any, key: str | None = None) -> tuple[int, Any]:
        code, out = harness.http(
            self.url + path, method="POST", body=body, headers=self.headers(key), timeout=60
        )
        return code, _json(out)

    def stop(self) -> None:
        self.running.stop()
        for s in self.stand_ins.values():
            s.running.stop()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def start_gateway(
    manifests: list[Manifest],
    *,
    hosts: HostMap,
    workdir: Path,
    log_dir: Path,
    secrets: Mapping[tuple[str, str], str] | None = None,
    key: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> Gateway:
    """Stand-ins for the model servers, then the rendered gateway; waits for its probes.
    ``extra_env``: test-side variables beyond the rendered env (none may shadow it)."""
    hosts.add_services(manifests)
    deployment = gateway_deployment(manifests)["metadata"]["name"]
    stand_ins = start_standins(manifests, hosts=hosts, workdir=workdir, log_dir=log_dir)
    try:
        env_dir = envs.ensure_env(GATEWAY_ENV)
        spec = harness.container_process(
            manifests, deployment, GATEWAY_CONTAINER, workdir=workdir / "gateway", secrets=secrets
        )
        container = harness.container(manifests, deployment, GATEWAY_CONTAINER)
        read_only = [
            spec.mounts[m["mountPath"]] for m in container["volumeMounts"] if m.get("readOnly")
        ]
        uid = spec.run_as_user
        (spec.workdir / "home").mkdir(parents=True, exist_ok=True)  # harness.start's cwd
        if uid is not None:
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(spec.workdir)], check=True)
        argv = pod_argv(
            spec,
            hosts=hosts.etc_hosts(workdir / "etc-hosts"),
            read_only=read_only,
            uid=uid,
            reach=[env_dir, Path(os.path.realpath(env_dir / "bin" / "python")), workdir],
            views=workdir / "views",
        )
        pod_tmp = spec.mounts.get("/tmp")
        test_env = dict(extra_env or {})
        shadowed = sorted(set(test_env) & set(spec.env))
        if shadowed:
            raise AssertionError(f"test-side env would replace the rendered {shadowed}")
        if pod_tmp is not None:
            test_env["TMPDIR"] = str(pod_tmp)
        running = harness.start(
            spec,
            name=deployment,
            bin_dir=env_dir / "bin",
            log_dir=log_dir,
            argv=argv,
            extra_env=test_env or None,
        )
        gateway = Gateway(
            manifests=manifests,
            deployment=deployment,
            spec=spec,
            running=running,
            url=f"http://127.0.0.1:{_port(container)}",
            stand_ins=stand_ins,
            key=key,
        )
        try:
            for _kind, url in harness.probe_urls(manifests, deployment, "127.0.0.1"):
                running.wait_http(url, timeout=timeout)
        except BaseException:
            gateway.stop()
            raise
        return gateway
    except BaseException:
        for s in stand_ins.values():
            s.running.stop()
        raise


def _port(container: Mapping[str, Any]) -> int:
    port: int = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    return port


def stopping(gateway: Gateway) -> Iterator[Gateway]:
    try:
        yield gateway
    finally:
        gateway.stop()
