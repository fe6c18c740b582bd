"""`make demo-elastic`: examples/autoscaling.yaml on the demo cluster, scaled by the real KEDA.

Run after `hack/demo.sh up` with AISTACK_KEDA=1 (the Makefile target does both): the demo
cluster then runs KEDA's operator and metrics API server beside its control plane. No
container runs on the simulated nodes, so nothing serves real metrics: this tour starts
the real Prometheus server scraping a stand-in for the model servers' and the gateway's
metrics (the series vLLM and the gateway's hold export, labelled as the stack's
PodMonitors label them), and moves their values. Everything else is real: the operator's
ScaledObjects, KEDA, the HPAs, the Deployments. The stack's delays are shortened to
15 seconds for the tour (the example's are minutes).

The tour: `coder` (0..4) falls asleep when idle; load on `chat` (1..8) takes it to 4
replicas and back to 1; a request the gateway holds for `coder` wakes it, and it sleeps
again. It prints the replicas and the models' status at each step, then stops Prometheus
(`make demo-down` stops the rest).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
NS = "demo"
STACK = "elastic"
DELAY_S = 15
KUBECONFIG = ROOT / ".demo" / "kubeconfig"


def bin_dir(*flags: str) -> Path:
    out = subprocess.run([str(ROOT / "hack" / "build-tools.sh"), *flags, "--print-bin-dir"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


KUBECTL = str(bin_dir() / "kubectl")


def kubectl(*args: str, input: str | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    out = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Metrics:
    """What the stack's pods would export, at values the tour sets."""

    def __init__(self) -> None:
        self.waiting: dict[str, float] = {"chat": 0, "coder": 0}
        self.running: dict[str, float] = {"chat": 0, "coder": 0}
        self.held: dict[str, float] = {"coder": 0}
        self.port = free_port()

    def text(self) -> str:
        lines = ["# TYPE vllm:num_requests_waiting gauge"]
        lines += [
            f'vllm:num_requests_waiting{{model_name="{m}"}} {v}' for m, v in self.waiting.items()
        ]
        lines += ["# TYPE vllm:num_requests_running gauge"]
        lines += [
            f'vllm:num_requests_running{{model_name="{m}"}} {v}' for m, v in self.running.items()
        ]
        lines += ["# TYPE aistack_gateway_held_requests gauge"]
        lines += [f'aistack_gateway_held_requests{{model="{m}"}} {v}' for m, v in self.held.items()]
        return "\n".join(lines) + "\n"

    def serve(self) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = metrics.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def start_prometheus(metrics: Metrics, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    labels = {"namespace": NS, "aistack_dev_stack": STACK, "pod": "simulated"}
    config = {
        "global": {"scrape_interval": "2s"},
        "scrape_configs": [{"job_name": "stack", "static_configs": [
            {"targets": [f"127.0.0.1:{metrics.port}"], "labels": labels}]}],
    }  # fmt: skip
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = bin_dir("--prometheus") / "prometheus"
    proc = subprocess.Popen(
        [str(prometheus), f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(workdir / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait(lambda: query(url, "up") == 1.0, 60, "Prometheus to scrape the stand-in")
    return proc, url


def query(url: str, promql: str) -> float | None:
    try:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as r:
            result = json.load(r)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def replicas(model: str) -> int:
    d = json.loads(kubectl("get", "deploy", f"{STACK}-vllm-{model}", "-n", NS, "-o", "json"))
    return int(d["spec"].get("replicas", 1))


def step(title: str, model: str, want: int, timeout: float = 120) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)
    t0 = time.monotonic()
    wait(lambda: replicas(model) == want, timeout, f"{model} at {want} replicas")
    print(f"{model}: {want} replica(s) after {time.monotonic() - t0:.0f} s")
    print(kubectl("get", "deploy,hpa", "-n", NS, "-l", f"aistack.dev/stack={STACK}"), end="")
    status = json.loads(kubectl("get", "ais", STACK, "-n", NS, "-o", "json"))["status"]
    for m in status.get("models", []):
        print(f"  status.models[{m['name']}]: replicas {m.get('replicas')}, ready "
              f"{m.get('readyReplicas')}, {m.get('reason')}: {m.get('message', '')}")  # fmt: skip


def main() -> int:
    if not KUBECONFIG.exists():
        print("no demo cluster: run `make demo-elastic` (or AISTACK_KEDA=1 hack/demo.sh up)")
        return 2
    crds = subprocess.run([str(ROOT / "hack" / "prometheus-crds.sh")], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    kubectl("apply", "--server-side", "-f", f"{crds}/monitoring.coreos.com_podmonitors.yaml")
    kubectl("wait", "--for=create", "crd/podmonitors.monitoring.coreos.com", "--timeout=30s")
    metrics = Metrics()
    server = metrics.serve()
    workdir = Path(tempfile.mkdtemp(prefix="aistack-demo-elastic-"))
    proc, url = start_prometheus(metrics, workdir)
    try:
        stack = yaml.safe_load((ROOT / "examples" / "autoscaling.yaml").read_text())
        stack["spec"]["monitoring"]["prometheusAddress"] = url
        for model in stack["spec"]["models"]:
            model["autoscaling"]["scaleDownDelaySeconds"] = DELAY_S
        print(f"\033[1m==> Applying examples/autoscaling.yaml to {NS} (Prometheus at {url}, "
              f"delays {DELAY_S} s)\033[0m")  # fmt: skip
        kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(stack))
        wait(lambda: bool(kubectl("get", "scaledobjects", "-n", NS, "-o", "name").strip()), 60,
             "the ScaledObjects (is KEDA running? AISTACK_KEDA=1 hack/demo.sh up)")  # fmt: skip
        print(kubectl("get", "scaledobjects", "-n", NS), end="")
        step("coder is idle: it falls asleep (Idle)", "coder", 0)
        metrics.waiting["chat"] = 20
        step("20 requests wait in chat's queue (target 5 per replica): 4 replicas", "chat", 4)
        metrics.waiting["chat"] = 0
        step(f"the load is gone: back to 1 after {DELAY_S} s", "chat", 1)
        metrics.held["coder"] = 1
        step("the gateway holds a request for coder: KEDA wakes it", "coder", 1)
        metrics.held["coder"] = 0
        step("nothing held or served: coder sleeps again", "coder", 0)
        print("\nThe tour is over (Prometheus stops now; make demo-down stops the rest).")
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
