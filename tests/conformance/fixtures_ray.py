"""The stack's Ray cluster, started from the render: the head Deployment and one pod of a CPU
worker group, each its own ``ray start`` with the rendered args and env.

Two Ray nodes cannot share one network namespace: every Ray node's dashboard agent also
listens on ``127.0.0.1:<agent port>`` (52365 for both the head's default and the rendered
worker flag), as it may, since in the cluster each pod has its own network. So the worker
pod gets a network of its own here too: a network namespace joined to this host by a veth
pair (its "pod IP" is the namespace's address), with its own ``/etc/hosts`` (a private mount
namespace) in which the head Service's in-cluster names resolve to the head's address.
The head runs in this host's network, so its pod IP is the address Ray itself picks for the
node (the host's primary address): the head Service resolves to it everywhere, as a
ClusterIP forwards to the pod (Ray's client server listens on the node IP and 127.0.0.1
only, not on every address). ``/etc/hosts`` is needed besides ``HostMap``'s Python hook
because Ray hands the GCS address to its C++ raylet and gRPC clients, which resolve names
themselves (with ``GRPC_DNS_RESOLVER=native``, i.e. through ``/etc/hosts``, as cluster DNS
would answer). This needs root (``ip netns``, ``mount``); without it the fixture fails and
says so.

Test-side settings that the cluster does not need, named where they are set: ``RAY_TMPDIR``
(the pod's ``/tmp`` emptyDir, short enough for Ray's Unix sockets), a small object-store
proportion (this machine is shared with the rest of the suite), ``GRPC_DNS_RESOLVER`` and no
drain on SIGTERM (the teardown's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import envs
import harness
import pytest
from harness import HostMap, Manifest, Running, etc_hosts, run_quiet

RAY_EXAMPLE = "multi-model.yaml"
STACK = "multi"
HEAD = f"{STACK}-ray-head"
CPU_WORKER = f"{STACK}-ray-worker-cpu"
NAMESPACE = "default"

#: Test-side env for every Ray node (see the module docstring).
SMALL_OBJECT_STORE = {"RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "0.05"}
#: gRPC (C++) resolves through getaddrinfo, i.e. the pod's /etc/hosts (see above).
NATIVE_DNS = {"GRPC_DNS_RESOLVER": "native"}
#: Ray 2.60 drains a node for up to 30 s on SIGTERM (ray/_private/ray_constants.py); the
#: suite's teardown needs no drain ("0 disables draining").
NO_DRAIN = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}

#: each Ray node's ``RAY_TMPDIR`` (name -> directory), removed after its logs are kept
_TMP_DIRS: dict[str, Path] = {}


def session_logs(name: str) -> Path:
    """The logs directory of the Ray session of node ``name``."""
    return _TMP_DIRS[name] / "ray" / "session_latest" / "logs"


@dataclass
class PodNetwork:
    """A network namespace with one veth pair to this host: a pod's own network."""

    name: str
    host_ip: str
    pod_ip: str
    _up: bool = False

    @classmethod
    def create(cls, index: int) -> PodNetwork:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
            raise RuntimeError(
                "the Ray conformance tests start each Ray pod in its own network namespace "
                "and need root with `ip` and `unshare` (util-linux, iproute2)"
            )
        tag = f"{os.getpid() % 100000}{index}"
        subnet = 16 + (os.getpid() * 7 + index) % 200  # 10.233.<subnet>.0/30
        net = cls(
            name=f"aistack-ray-{tag}", host_ip=f"10.233.{subnet}.1", pod_ip=f"10.233.{subnet}.2"
        )
        outside, inside = f"arh{tag}"[:15], f"arp{tag}"[:15]
        run_quiet("ip", "netns", "add", net.name)
        net._up = True
        run_quiet("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run_quiet("ip", "link", "set", inside, "netns", net.name)
        run_quiet("ip", "addr", "add", f"{net.host_ip}/30", "dev", outside)
        run_quiet("ip", "link", "set", outside, "up")
        inns = ["ip", "netns", "exec", net.name]
        run_quiet(*inns, "ip", "addr", "add", f"{net.pod_ip}/30", "dev", inside)
        run_quiet(*inns, "ip", "link", "set", inside, "up")
        run_quiet(*inns, "ip", "link", "set", "lo", "up")
        run_quiet(*inns, "ip", "route", "add", "default", "via", net.host_ip)
        return net

    def delete(self) -> None:
        if self._up:
            subprocess.run(["ip", "netns", "delete", self.name], check=False)
            self._up = False


def with_hosts(prefix: list[str], argv: list[str], hosts_file: Path) -> list[str]:
    """``prefix`` + ``argv`` run in a private mount namespace whose ``/etc/hosts`` is
    ``hosts_file`` (for the C++ and gRPC parts of Ray, which do not use Python's resolver)."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return [
        *prefix,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(hosts_file),
        *argv,
    ]


def node_ip() -> str:
    """The address Ray picks for a node in this network (its route to the outside)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 53))  # UDP: nothing is sent
        except OSError as err:
            raise RuntimeError(
                "the Ray head needs a routable address (a default route) for its pod IP"
            ) from err
        address: str = s.getsockname()[0]
        return address


def pin_service(hosts: HostMap, service: str, ip: str) -> dict[str, str]:
    """Make ``service`` resolve to ``ip`` in ``hosts`` (a Service pointing at its pod's
    address); returns its names. (``HostMap.add`` keeps a first address, so this sets it.)"""
    hosts.add(service, NAMESPACE, ip=ip)
    fqdn = f"{service}.{NAMESPACE}.svc.{harness.CLUSTER_DOMAIN}"
    names = (service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", fqdn)
    for name in names:
        hosts.names[name] = ip
    hosts._write()
    return dict.fromkeys(names, ip)


@dataclass
class RayCluster:
    manifests: list[Manifest]
    head: Running
    workers: list[Running]
    #: the head Service's loopback address (HostMap) and the worker pods' IPs
    head_ip: str
    worker_ips: list[str]
    #: ``/etc/hosts`` for host-side clients that resolve in C++ (``ray://``)
    client_hosts: Path
    bin_dir: Path
    workdir: Path
    networks: list[PodNetwork] = field(default_factory=list)

    def env(self, hosts: HostMap) -> dict[str, str]:
        """Env for a client process on this host (Ray CLI, drivers)."""
        home = self.workdir / "client-home"
        home.mkdir(exist_ok=True)
        env = harness.base_env(self.bin_dir, home)
        env.update(hosts.env())
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(NATIVE_DNS)
        return env

    def client_argv(self, argv: list[str]) -> list[str]:
        """``argv`` with ``client_hosts`` as ``/etc/hosts`` (gRPC resolves on its own)."""
        return with_hosts([], argv, self.client_hosts)


def _ray_node(
    manifests: list[Manifest],
    deployment: str,
    *,
    workdir: Path,
    bin_dir: Path,
    log_dir: Path,
    hosts: HostMap,
    name: str,
    network: PodNetwork | None,
    node_hosts: Path,
) -> Running:
    spec = harness.container_process(manifests, deployment, workdir=workdir)
    assert spec.argv[0] == "ray", spec.argv
    ray = str(bin_dir / "ray")
    # The pod's /tmp emptyDir, where Ray keeps its session (short: Unix socket paths).
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    _TMP_DIRS[name] = tmp
    extra = {"RAY_TMPDIR": str(tmp), **SMALL_OBJECT_STORE, **NATIVE_DNS, **NO_DRAIN}
    argv = [ray, *spec.argv[1:]]
    if network is not None:
        argv = with_hosts(["ip", "netns", "exec", network.name], argv, node_hosts)
    else:
        argv = with_hosts([], argv, node_hosts)
    return harness.start(
        spec,
        name=name,
        bin_dir=bin_dir,
        log_dir=log_dir,
        hosts=hosts,
        extra_env=extra,
        argv=argv,
    )


@pytest.fixture(scope="session")
def ray_cluster(suite_dir: Path, log_dir: Path, hosts: HostMap) -> Iterator[RayCluster]:
    """The rendered Ray head and one pod of the ``cpu`` worker group, running."""
    bin_dir = envs.bin_dir("ray")
    manifests = harness.render_example(harness.example(RAY_EXAMPLE))
    hosts.add_services(manifests)
    workdir = suite_dir / "ray"
    workdir.mkdir(exist_ok=True)
    head_ip = node_ip()
    client_hosts = etc_hosts(workdir / "hosts-host", pin_service(hosts, HEAD, head_ip))

    started: list[Running] = []
    networks: list[PodNetwork] = []
    try:
        t0 = time.monotonic()
        head = _ray_node(
            manifests,
            HEAD,
            workdir=workdir / "head",
            bin_dir=bin_dir,
            log_dir=log_dir,
            hosts=hosts,
            name="ray-head",
            network=None,
            node_hosts=client_hosts,
        )
        started.append(head)
        for _kind, url in harness.probe_urls(manifests, HEAD, head_ip):
            head.wait_http(url, timeout=180)
        print(f"ray: head ready in {time.monotonic() - t0:.0f} s")

        # One pod of the cpu group, in its own network (its default route is this host, so
        # the head's address is reachable from it).
        net = PodNetwork.create(0)
        networks.append(net)
        worker_map = HostMap(workdir / "worker-0-hosts")
        worker_map.add(HEAD, NAMESPACE, ip=head_ip)
        worker_hosts = etc_hosts(workdir / "hosts-worker-0", dict(worker_map.names))
        t1 = time.monotonic()
        worker = _ray_node(
            manifests,
            CPU_WORKER,
            workdir=workdir / "worker-0",
            bin_dir=bin_dir,
            log_dir=log_dir,
            hosts=worker_map,
            name="ray-worker-cpu-0",
            network=net,
            node_hosts=worker_hosts,
        )
        started.append(worker)
        for _kind, url in harness.probe_urls(manifests, CPU_WORKER, net.pod_ip):
            worker.wait_http(url, timeout=180)
        print(f"ray: worker ready in {time.monotonic() - t1:.0f} s")
        yield RayCluster(
            manifests=manifests,
            head=head,
            workers=[worker],
            head_ip=head_ip,
            worker_ips=[net.pod_ip],
            client_hosts=client_hosts,
            bin_dir=bin_dir,
            workdir=workdir,
            networks=networks,
        )
    finally:
        # Together: each Ray node drains for a while on SIGTERM.
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda running: running.stop(timeout=30), started))
        for net in networks:
            net.delete()
        for name, tmp in _TMP_DIRS.items():
            # Keep each node's Ray logs with the suite's logs (for a failure's diagnosis).
            logs = session_logs(name)
            if logs.is_dir():
                shutil.copytree(logs, log_dir / f"{name}-session-logs", dirs_exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        _TMP_DIRS.clear()
