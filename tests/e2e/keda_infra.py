"""Real KEDA scaling from real Prometheus metric values, for the e2e tests.

Three pieces, each the real program where one exists:

* a local cluster started with ``hack/local-cluster.sh up --keda``
  (:func:`keda_local_cluster`): the control plane, kwok's simulated nodes, and KEDA's
  keda-operator and keda-metrics-apiserver (built from KEDA's Go module by
  ``hack/build-tools.sh --keda``) serving ``external.metrics.k8s.io`` through the API
  server, so the HPAs that KEDA makes for ScaledObjects act on the Deployments;
* a stand-in for vLLM's metrics endpoint (:class:`StandInExporter`): a tiny HTTP server
  exporting the gauges ``vllm:num_requests_waiting`` and ``vllm:num_requests_running``
  with vLLM's own label ``model_name``, at values the test sets;
* the Prometheus server (built from Prometheus' Go module by
  ``hack/build-tools.sh --prometheus``) scraping the stand-ins every second on a free
  127.0.0.1 port (:func:`running_prometheus`), each stand-in a static target whose
  ``namespace`` and ``pod`` labels come from the scrape configuration, as a
  Kubernetes service discovery would attach them.

KEDA's operator runs on the host too, so a ScaledObject's Prometheus trigger reaches the
server at :attr:`Prometheus.url` directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from conftest import HACK_DIR, Cluster, free_port, local_cluster, wait_until

#: The gauges vLLM exports (``vllm serve``'s /metrics) that elastic serving scales on.
VLLM_GAUGES = {
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:num_requests_running": "Number of requests in model execution batches.",
}
#: How often Prometheus scrapes the stand-ins (and evaluates nothing else).
SCRAPE_INTERVAL_S = 1


def tool_bin_dir(tool_set: str) -> Path:
    """The bin dir of ``hack/build-tools.sh --<tool_set>``; fails when it is not built."""
    out = subprocess.run(
        [str(HACK_DIR / "build-tools.sh"), f"--{tool_set}", "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(
            f"{tool_set} is not built: run hack/build-tools.sh --{tool_set}\n{out.stderr}"
        )
    return Path(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- #
# The stand-in exporter
# --------------------------------------------------------------------------- #
@dataclass
class StandInExporter:
    """vLLM's /metrics for one pod, at values the test sets.

    ``namespace`` and ``pod`` are not exported: Prometheus attaches them to the scraped
    series (the static target's labels). Values are per ``model_name``; a model that was
    never set is not exported.
    """

    namespace: str
    pod: str
    #: More target labels, as a PodMonitor's ``podTargetLabels`` add them (e.g. the
    #: stack's label, ``aistack_dev_stack``).
    labels: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    _values: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The gateway's hold: ``aistack_gateway_held_requests`` per model (a gateway's pod).
    _held: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, model_name: str, *, waiting: float, running: float = 0) -> None:
        """Export ``waiting`` and ``running`` for ``model_name`` from now on."""
        with self._lock:
            self._values[model_name] = {
                "vllm:num_requests_waiting": float(waiting),
                "vllm:num_requests_running": float(running),
            }

    def hold(self, model: str, requests: float) -> None:
        """Export, as the gateway's hold does, ``requests`` held for ``model``."""
        with self._lock:
            self._held[model] = float(requests)

    def render(self) -> str:
        """The Prometheus text exposition of the current values."""
        with self._lock:
            values = {model: dict(v) for model, v in self._values.items()}
            held = dict(self._held)
        lines: list[str] = []
        if held:
            lines += ["# HELP aistack_gateway_held_requests Requests the gateway holds.",
                      "# TYPE aistack_gateway_held_requests gauge"]  # fmt: skip
            lines += [f'aistack_gateway_held_requests{{model="{m}"}} {v}' for m, v in held.items()]
        for name, help_text in VLLM_GAUGES.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for model, v in sorted(values.items()):
                label = model.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{name}{{model_name="{label}"}} {v[name]}')
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one scrape a second would flood the test's output

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --------------------------------------------------------------------------- #
# Prometheus
# --------------------------------------------------------------------------- #
def scrape_config(exporters: Sequence[StandInExporter], job: str = "vllm") -> dict[str, Any]:
    """Prometheus' configuration: one job scraping every stand-in each second, each a
    static target with its ``namespace`` and ``pod`` labels."""
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [
                    {
                        "targets": [e.address],
                        "labels": {**e.labels, "namespace": e.namespace, "pod": e.pod},
                    }
                    for e in exporters
                ],
            }
        ],
    }


@dataclass
class Prometheus:
    """A running Prometheus server on 127.0.0.1."""

    url: str
    log: Path

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``), now or ``at`` (a Unix
        time)."""
        params = urllib.parse.urlencode({"query": promql, **({} if at is None else {"time": at})})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The value of a query whose result is one sample (None when it has none)."""
        result = self.query(promql, at)
        if not result:
            return None
        if len(result) != 1:
            raise ValueError(f"query {promql!r} has {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30) -> None:
        """Waits until ``promql`` evaluates to ``expected`` as KEDA reads it: a scrape took
        the new value, and it is the value at the current time truncated to the second.
        KEDA's Prometheus scaler asks for ``time=<now in RFC 3339>``, without fractions of
        a second, so up to a second after a scrape it still reads the value before."""
        wait_until(
            lambda: self.value(promql, at=int(time.time())) == expected,
            timeout=timeout, interval=0.5, message=f"Prometheus: {promql} == {expected}",
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, exporters: Sequence[StandInExporter], timeout: float = 60
) -> Iterator[Prometheus]:
    """The built Prometheus scraping ``exporters`` (started here, stopped after), ready
    once it serves queries and has scraped every stand-in."""
    binary = tool_bin_dir("prometheus") / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(exporters), sort_keys=False))
    port = free_port()
    log = workdir / "prometheus.log"
    with contextlib.ExitStack() as stack:
        for exporter in exporters:
            exporter.start()
            stack.callback(exporter.stop)
        proc = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
             "--log.level=info"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.callback(_stop, proc)
        prometheus = Prometheus(url=f"http://127.0.0.1:{port}", log=log)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited ({proc.returncode}); log {log}:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            try:
                up = prometheus.query('up{job="vllm"}')
            except (OSError, urllib.error.URLError):
                return False
            return len(up) == len(exporters) and all(s["value"][1] == "1" for s in up)

        wait_until(
            ready, timeout=timeout, interval=0.5, message="Prometheus to scrape the stand-ins"
        )
        yield prometheus


# --------------------------------------------------------------------------- #
# A local cluster with KEDA
# --------------------------------------------------------------------------- #
def keda_local_cluster(base: Path, name: str) -> Iterator[Cluster]:
    """``hack/local-cluster.sh up --keda`` in ``base`` (a generator for a fixture: the
    cluster, then ``down`` however the tests end, as conftest's local cluster)."""
    yield from local_cluster(base, name, "--keda")


def keda_cluster_fixture(request: Any, tmp_path_factory: Any, prefix: str) -> Iterator[Cluster]:
    """A module's own local cluster with KEDA (for a ``scope="module"`` fixture), named
    ``<prefix>-<random>``; skipped where the e2e cluster is not the local one."""
    import uuid

    import pytest

    from conftest import _selected_cluster_kind

    if _selected_cluster_kind(request.config) != "local":
        pytest.skip("KEDA runs as host processes beside the local cluster only (--keda)")
    yield from keda_local_cluster(
        tmp_path_factory.mktemp(f"{prefix}-cluster"), f"{prefix}-{uuid.uuid4().hex[:8]}"
    )


def component_log(cluster: Cluster, component: str, lines: int = 40) -> str:
    """The last lines of a local cluster component's log (keda-operator, ...)."""
    path = Path(cluster.workdir) / "clusters" / cluster.name / "logs" / f"{component}.log"
    try:
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"
