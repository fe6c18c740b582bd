"""The stack's Ray cluster, started from the render (the ``multi`` example's head and one pod
of its ``cpu`` worker group), is wired the way the render and the stack's status say."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from fixtures_ray import CPU_WORKER, HEAD, RAY_EXAMPLE, RayCluster, session_logs
from harness import HostMap, Sample

from aistack.cli import load_stacks
from aistack.components import VERSIONS, endpoints


def stack_endpoints() -> dict[str, str]:
    """``status.endpoints`` of the example stack, as the operator reports them."""
    stacks, errors = load_stacks([str(harness.example(RAY_EXAMPLE))])
    assert not errors and len(stacks) == 1, errors
    return endpoints(stacks[0])


#: What Ray's client proxy answers when the process it forks for a new client (the
#: "specific server", ray/util/client/server/proxier.py: start_specific_server) dies at once.
#: In Ray 2.60 that fork races gRPC's fork handlers in the multi-threaded proxy (its log says
#: "Other threads are currently calling into gRPC, skipping fork() handlers", then at times
#: "ev_epoll1_linux.cc ... Check failed"): the child dies before it runs, mostly on a client's
#: first connection, more often on a busy machine. A new connection forks a new server.
SPECIFIC_SERVER_FAILED = "Starting Ray client server failed"
#: Connections tried before ``client_view`` fails (each one that fails is reported).
CLIENT_TRIES = 3


def run_ray_python(
    cluster: RayCluster,
    hosts: HostMap,
    code: str,
    *,
    timeout: float = 240,
    retry_on: str | None = None,
    tries: int = 1,
) -> Any:
    """``code`` run by the image's Python on this host; it prints one JSON value last.

    A run that fails with ``retry_on`` in its stderr is run again, ``tries`` times in all."""
    argv = cluster.client_argv([str(cluster.bin_dir / "python"), "-c", textwrap.dedent(code)])
    failures: list[str] = []
    for _ in range(tries):
        proc = subprocess.run(
            argv, env=cluster.env(hosts), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode == 0:
            if failures:
                print(f"ray client: ran after {len(failures)} failed connection(s)")
            return json.loads([ln for ln in proc.stdout.splitlines() if ln.strip()][-1])
        failures.append(f"client failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        if retry_on is None or retry_on not in proc.stderr:
            break
    proxy_log = session_logs("ray-head") / "ray_client_server.err"
    proxy = proxy_log.read_text(errors="replace")[-3000:] if proxy_log.exists() else ""
    raise AssertionError(
        f"{len(failures)} tries failed; the last:\n{failures[-1]}\n"
        f"head's ray_client_server.err:\n{proxy}"
    )


# --------------------------------------------------------------------------- the cluster


def test_rendered_probes_pass(ray_cluster: RayCluster) -> None:
    head = harness.probe_urls(ray_cluster.manifests, HEAD, ray_cluster.head_ip)
    worker = harness.probe_urls(ray_cluster.manifests, CPU_WORKER, ray_cluster.worker_ips[0])
    assert {url.rsplit("/", 1)[1] for _, url in head} == {"gcs_healthz"}
    assert {url.rsplit("/", 1)[1] for _, url in worker} == {"local_raylet_healthz"}
    for kind, url in [*head, *worker]:
        code, body = harness.http(url)
        assert code == 200, (kind, url, body)


@pytest.fixture(scope="module")
def client_view(ray_cluster: RayCluster, hosts: HostMap) -> Any:
    """What a ``ray://`` client on the rendered rayClient endpoint sees."""
    url = stack_endpoints()["rayClient"]
    return run_ray_python(
        ray_cluster,
        hosts,
        f"""
        import json, ray
        ray.init({url!r}, logging_level="ERROR")

        @ray.remote
        def where():
            return ray.get_runtime_context().get_node_id()

        nodes = [n for n in ray.nodes() if n["Alive"]]
        ran_on = sorted(set(ray.get([where.remote() for _ in range(8)])))
        print(json.dumps({{"alive": [n["NodeManagerAddress"] for n in nodes],
                          "ids": [n["NodeID"] for n in nodes], "ran_on": ran_on}}))
        """,
        retry_on=SPECIFIC_SERVER_FAILED,
        tries=CLIENT_TRIES,
    )


def test_worker_joins_the_head(ray_cluster: RayCluster, client_view: Any) -> None:
    assert sorted(client_view["alive"]) == sorted([ray_cluster.head_ip, *ray_cluster.worker_ips])


def test_client_port_runs_tasks(client_view: Any) -> None:
    assert client_view["ran_on"] and set(client_view["ran_on"]) <= set(client_view["ids"])


def test_metrics_port_serves_prometheus(ray_cluster: RayCluster) -> None:
    service = harness.find(ray_cluster.manifests, "Service", HEAD)
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "metrics")
    code, body = harness.http(f"http://{ray_cluster.head_ip}:{port}/metrics")
    assert code == 200
    assert b"# TYPE ray_" in body or b"\nray_" in body, body[:400]


def test_worker_metrics_port_serves_prometheus(ray_cluster: RayCluster) -> None:
    worker = harness.container(ray_cluster.manifests, CPU_WORKER)
    port = next(p["containerPort"] for p in worker["ports"] if p["name"] == "metrics")
    assert f"--metrics-export-port={port}" in worker["args"]
    # The worker pod's own address (its network namespace), not the head's.
    address = ray_cluster.worker_ips[0]
    url = f"http://{address}:{port}/metrics"
    # Each node's metrics agent exports what its processes reported in the last interval.
    deadline = time.monotonic() + 60
    while True:
        code, body = harness.http(url)
        samples = harness.prometheus_samples(body.decode()) if code == 200 else []
        if _ray_series(samples, address) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 200, (url, code, body[:400])
    assert _ray_series(samples, address), sorted({s.name for s in samples})[:40]


def _ray_series(samples: list[Sample], node: str) -> list[Sample]:
    """``ray_`` samples that this node reports about itself."""
    return [s for s in samples if s.name.startswith("ray_") and s.labels.get("NodeAddress") == node]


# --------------------------------------------------------------------------- jobs


def submit_job(
    cluster: RayCluster,
    hosts: HostMap,
    entrypoint: str,
    *,
    runtime_env: dict[str, Any] | None = None,
    timeout: float = 420,
) -> dict[str, Any]:
    """Submit to the rendered dashboard endpoint (status.endpoints.rayDashboard) and wait."""
    url = stack_endpoints()["rayDashboard"]
    return run_ray_python(
        cluster,
        hosts,
        f"""
        import json, time
        from ray.job_submission import JobSubmissionClient, JobStatus
        client = JobSubmissionClient({url!r})
        job = client.submit_job(entrypoint={entrypoint!r}, runtime_env={runtime_env!r},
                                submission_id={"aistack-" + uuid.uuid4().hex[:8]!r})
        deadline = time.monotonic() + {timeout - 30}
        while time.monotonic() < deadline:
            status = client.get_job_status(job)
            if status.is_terminal():
                break
            time.sleep(1)
        info = client.get_job_info(job)
        print(json.dumps({{"status": str(status.value), "logs": client.get_job_logs(job),
                          "message": info.message, "driver_node": info.driver_node_id}}))
        """,
        timeout=timeout,
    )


def test_job_submitted_to_rendered_dashboard_succeeds(
    ray_cluster: RayCluster, hosts: HostMap
) -> None:
    entry = (
        'python -c "import ray; ray.init(); '
        "print('sum', sum(ray.get([ray.remote(lambda i: i * i).remote(i) for i in range(5)])))\""
    )
    result = submit_job(ray_cluster, hosts, entry)
    assert result["status"] == "SUCCEEDED", result
    assert "sum 30" in result["logs"], result["logs"]


# --------------------------------------------------------------------------- MLflow (defect 4)


def test_image_has_no_mlflow() -> None:
    # The docs tell users to add MLflow to a job (runtime_env) because the default image
    # lacks it: MLFLOW_TRACKING_URI alone is not enough. Fails when an image adds it.
    proc = subprocess.run(
        [str(envs.python("ray")), "-c", "import mlflow"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "No module named 'mlflow'" in proc.stderr


@pytest.fixture(scope="module")
def ray_mlflow(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Any]:
    """The example stack's own MLflow (the one the Ray pods' MLFLOW_TRACKING_URI names)."""
    from fixtures_mlflow import PLAIN_ENV, start_mlflow

    manifests = harness.render_example(harness.example(RAY_EXAMPLE))
    hosts.add_services(manifests)
    server = start_mlflow(
        manifests,
        component=PLAIN_ENV,
        workdir=suite_dir / "mlflow-multi",
        log_dir=log_dir,
        hosts=hosts,
    )
    yield server
    server.running.stop()


def test_job_logs_to_rendered_mlflow_with_documented_runtime_env(
    ray_cluster: RayCluster, hosts: HostMap, ray_mlflow: Any
) -> None:
    head = harness.container(ray_cluster.manifests, HEAD)
    uri = next(e["value"] for e in head["env"] if e["name"] == "MLFLOW_TRACKING_URI")
    assert uri == ray_mlflow.url == stack_endpoints()["mlflow"]
    run_name = f"ray-job-{uuid.uuid4().hex[:8]}"
    entry = (
        "python -c \"import mlflow; mlflow.set_experiment('ray-jobs'); "
        f"r = mlflow.start_run(run_name='{run_name}'); mlflow.log_metric('loss', 0.25); "
        "mlflow.end_run(); print('run', r.info.run_id)\""
    )
    # What docs/ tell users: the image has no MLflow client; add it to the job.
    runtime_env = {"pip": [f"mlflow-skinny=={VERSIONS['mlflow']}"]}
    result = submit_job(ray_cluster, hosts, entry, runtime_env=runtime_env)
    assert result["status"] == "SUCCEEDED", result
    runs = ray_mlflow.run_client(
        f"""
import json, mlflow
exp = mlflow.get_experiment_by_name("ray-jobs")
runs = mlflow.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = '{run_name}'",
                          output_format="list")
print(json.dumps([{{"id": r.info.run_id, "loss": r.data.metrics.get("loss")}} for r in runs]))
"""
    )
    assert len(runs) == 1 and runs[0]["loss"] == 0.25, runs
    assert f"run {runs[0]['id']}" in result["logs"]
