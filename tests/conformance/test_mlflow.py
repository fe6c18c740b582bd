"""MLflow conformance: the rendered tracking server, run by the real MLflow of its image.

- the rendered probes pass (as a kubelet sends them: the pod IP in the Host header);
- the rendered container has ``readOnlyRootFilesystem: true``, and every server here runs
  with a read-only root: only its rendered volumes (``/tmp``, the data volume) are writable;
- a client on the rendered MLFLOW_TRACKING_URI (the Ray head's and the gateway's) logs a
  run, a metric and an artifact, which the server proxies to its data volume;
- an OTLP/HTTP protobuf export to the rendered endpoint, with the rendered experiment header,
  is a trace that ``mlflow.search_traces`` finds;
- the Host allow-list: every rendered form is admitted, port-forwarded loopback is, and a
  name below the Service's (``<svc>.<ns>.attacker.example``) is refused;
- examples/external-stores.yaml on a real PostgreSQL and a real S3 server (versitygw): the
  run's row is in the database and its artifact is in the bucket; the plain image (no
  psycopg2, no boto3) cannot serve these stores, the -full image the example names can.
"""

from __future__ import annotations

import fnmatch
import http.client
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from fixtures_mlflow import (
    FULL_ENV,
    PLAIN_ENV,
    MLflowServer,
    ObjectStore,
    Postgres,
    env_values,
    rendered_env,
    run_python,
    start_mlflow,
    trace_experiment_id,
)
from harness import HostMap, Manifest

from aistack import names

ALLOWED_HOSTS = "MLFLOW_SERVER_ALLOWED_HOSTS"
#: a request that the Host check guards (health endpoints are exempt from it)
GUARDED_PATH = "/api/2.0/mlflow/experiments/get?experiment_id=0"
#: the Host header a kubelet's httpGet probe sends: the pod's IP and port
KUBELET_HOST = "10.244.1.7:5000"


def allowed_hosts(manifests: Sequence[Manifest]) -> list[str]:
    (value,) = env_values(manifests, ALLOWED_HOSTS).values()
    return value.split(",")


def admits(patterns: Sequence[str], host: str) -> bool:
    """MLflow's rule (mlflow/server/security_utils.py, is_allowed_host_header): ``*`` alone
    admits all; an entry with ``*`` is an fnmatch pattern; any other entry matches exactly.
    (MLflow 3.18 narrows IP-shaped patterns such as ``10.*`` to IP addresses; the rendered
    list has none.)"""
    if "*" in patterns:
        return True
    return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)


def host_forms(service: str, namespace: str, port: int) -> list[str]:
    forms = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{harness.CLUSTER_DOMAIN}",
        f"{service}.{namespace}.svc.{harness.CLUSTER_DOMAIN}.",
    ]
    return [h for f in forms for h in (f, f"{f}:{port}")]


def attacker_hosts(service: str, namespace: str) -> list[str]:
    return [
        f"{service}.{namespace}.attacker.example",
        f"{service}.{namespace}.attacker.example:5000",
        f"{service}.{namespace}.svc.{harness.CLUSTER_DOMAIN}.attacker.example",
        f"{service}.attacker.example:5000",
        "attacker.example",
        "attacker.example:5000",
        "10.244.1.7:5000",
    ]


def raw_get(address: str, port: int, path: str, host: str) -> int:
    """GET ``path`` from ``address:port`` with exactly this Host header."""
    conn = http.client.HTTPConnection(address, port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------- pure rule


@pytest.mark.parametrize("example", ["quickstart.yaml", "external-stores.yaml"])
def test_rendered_allow_list_is_exactly_the_service_names_and_loopback(
    example: str, tmp_path: Path
) -> None:
    # Rendered with an extra allowedHosts entry, which must come through as written.
    documents = harness.example_documents(example)
    doc = harness.example_stack(documents)
    doc["spec"].setdefault("mlflow", {})["allowedHosts"] = ["mlflow.example.com"]
    manifests = harness.render_example(harness.write_documents(tmp_path / example, documents))
    svc = names.mlflow(doc["metadata"]["name"])
    ns = doc["metadata"].get("namespace", "default")
    patterns = allowed_hosts(manifests)

    loopback = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    assert patterns == [*host_forms(svc, ns, 5000), *loopback, "mlflow.example.com"]
    for host in [*host_forms(svc, ns, 5000), "localhost:5000", "127.0.0.1:8080"]:
        assert admits(patterns, host), host
    for host in attacker_hosts(svc, ns):
        assert not admits(patterns, host), host
    # The only wildcards are loopback port wildcards.
    assert [p for p in patterns if "*" in p] == ["localhost:*", "127.0.0.1:*"]


# --------------------------------------------------------------------------- the server


def test_rendered_probes_pass(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    probes = harness.probe_urls(s.manifests, s.deployment, s.address, "mlflow")
    assert {"readinessProbe", "livenessProbe"} <= {kind for kind, _ in probes}
    for kind, url in probes:
        rest = url.removeprefix(f"http://{s.address}:")
        port, _, path = rest.partition("/")
        # A kubelet sends the pod's IP as Host, which the allow-list does not name.
        status = raw_get(s.address, int(port), "/" + path, KUBELET_HOST)
        assert status == 200, (kind, url, status)


def test_every_rendered_host_form_is_admitted(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    patterns = allowed_hosts(s.manifests)
    # Each entry as a client would send it (a port wildcard filled in with some port).
    hosts = [p.replace("*", "8080") for p in patterns]
    hosts += ["127.0.0.1:5000", "localhost:5000"]  # kubectl port-forward 5000
    statuses = {h: raw_get(s.address, s.port, GUARDED_PATH, h) for h in hosts}
    assert statuses == dict.fromkeys(hosts, 200)


def test_the_fully_qualified_name_with_its_root_dot_is_admitted_upper_case_is_not(
    mlflow_server: MLflowServer,
) -> None:
    """``<svc>.<ns>.svc.<domain>.`` is the same name as without its dot (clients that
    resolve absolute names send it so); an upper-case spelling is refused: MLflow compares
    exactly, and a case-insensitive entry would need a pattern whose ``*`` admits names
    below the Service's (render/mlflow.py, mlflow_allowed_hosts)."""
    s = mlflow_server
    fqdn = f"{s.deployment}.{s.namespace}.svc.{harness.CLUSTER_DOMAIN}"
    admitted = [f"{fqdn}.", f"{fqdn}.:{s.port}"]
    refused = [fqdn.upper(), f"{fqdn.upper()}:{s.port}", f"{s.deployment.upper()}:{s.port}",
               f"{s.deployment}.", f"{s.deployment}.{s.namespace}."]  # fmt: skip
    hosts = admitted + refused
    statuses = {h: raw_get(s.address, s.port, GUARDED_PATH, h) for h in hosts}
    assert statuses == {**dict.fromkeys(admitted, 200), **dict.fromkeys(refused, 403)}


def test_names_below_the_service_are_refused(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    hosts = attacker_hosts(s.deployment, s.namespace)
    statuses = {h: raw_get(s.address, s.port, GUARDED_PATH, h) for h in hosts}
    assert statuses == dict.fromkeys(hosts, 403)


def test_clients_log_a_run_with_metric_and_proxied_artifact(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    uris = env_values(s.manifests, "MLFLOW_TRACKING_URI")
    # The Ray head (the stack's jobs) is handed the server's URL; every client that is
    # handed one gets the same. The client below uses exactly that URL.
    assert f"{s.stack}-ray-head/ray-head" in uris, uris
    assert set(uris.values()) == {s.url}, uris
    out = s.run_client(CLIENT_RUN)
    assert out["artifact_uri"].startswith("mlflow-artifacts:/"), out  # --serve-artifacts
    assert out["metric"] == [[1, 0.5], [2, 0.25]]
    assert out["downloaded"] == "hello from the conformance suite\n"
    # The server wrote the artifact under --artifacts-destination, on its data volume.
    destination = s.spec.argv[s.spec.argv.index("--artifacts-destination") + 1]
    stored = list(Path(destination).rglob("notes/hello.txt"))
    assert len(stored) == 1, stored
    assert out["run_id"] in str(stored[0])
    assert stored[0].read_text() == "hello from the conformance suite\n"
    # ... and the run's row in the SQLite database of --backend-store-uri.
    assert (s.spec.host_path("/mlflow") / "mlflow.db").stat().st_size > 0


def test_server_runs_with_a_read_only_root(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    c = harness.container(s.manifests, s.deployment, "mlflow")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert s.read_only_root
    # The rendered volumes are /tmp (HOME too) and the data volume (SQLite, artifacts).
    assert set(s.writable) == {"/tmp", "/mlflow"}
    assert rendered_env(c, "HOME") == "/tmp"
    pid = s.running.process.pid
    assert s.running.alive()
    # Every process of the server (the CLI and its web server's workers) is in one mount
    # namespace, not this test's, in which the volumes are the only writable mounts (but
    # /proc, /sys and /dev, the runtime's).
    namespaces = {os.readlink(f"/proc/{p}/ns/mnt") for p in process_group(pid)}
    assert namespaces == {os.readlink(f"/proc/{pid}/ns/mnt")}
    assert namespaces != {os.readlink("/proc/self/ns/mnt")}
    volumes = sorted(str(path) for path in s.writable.values())
    assert sorted(harness.writable_mount_points(pid)) == volumes
    # In that namespace a file can be created on each volume, and nowhere else (EROFS): not
    # at the root, /etc, /var/tmp, in the MLflow environment (the image), nor in the
    # server's working directory.
    env = envs.env_path(s.component)
    (site_packages,) = env.glob("lib/python*/site-packages")
    cwd = os.readlink(f"/proc/{pid}/cwd")
    read_only: list[str | Path] = ["/", "/etc", "/var/tmp", env, site_packages / "mlflow", cwd]
    python = envs.python(s.component)
    attempts = harness.write_attempts(pid, [*read_only, *volumes], python)
    assert attempts == {**dict.fromkeys(map(str, read_only), "EROFS"),
                        **dict.fromkeys(volumes, "written")}  # fmt: skip


def process_group(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
            except ProcessLookupError:
                pass
    return out


CLIENT_RUN = r"""
import json, os, tempfile
import mlflow
from mlflow.tracking import MlflowClient
assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"]
mlflow.set_experiment("conformance-client")
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5, step=1)
    mlflow.log_metric("loss", 0.25, step=2)
    mlflow.log_text("hello from the conformance suite\n", "notes/hello.txt")
client = MlflowClient()
history = client.get_metric_history(run.info.run_id, "loss")
path = mlflow.artifacts.download_artifacts(
    run_id=run.info.run_id, artifact_path="notes/hello.txt", dst_path=tempfile.mkdtemp())
print(json.dumps({
    "run_id": run.info.run_id,
    "artifact_uri": run.info.artifact_uri,
    "metric": sorted([m.step, m.value] for m in history),
    "downloaded": open(path).read(),
}))
"""


def test_otlp_traces_reach_the_rendered_experiment(mlflow_server: MLflowServer) -> None:
    s = mlflow_server
    # The model server's exporter: its rendered endpoint, headers and service name.
    (c,) = [
        c
        for d in harness.of_kind(s.manifests, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if "--otlp-traces-endpoint" in c.get("args", [])
    ]
    args = c["args"]
    endpoint = args[args.index("--otlp-traces-endpoint") + 1]
    assert endpoint == f"{s.url}/v1/traces"
    assert rendered_env(c, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") == "http/protobuf"
    headers = rendered_env(c, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    assert trace_experiment_id(s.manifests) == s.experiment_id
    env = s.client_env(
        {
            "ENDPOINT": endpoint,
            "HEADERS": headers,
            "SERVICE": rendered_env(c, "OTEL_SERVICE_NAME"),
            "EXPERIMENT": s.experiment_id,
        }
    )
    out = s.run_client(OTLP_EXPORT, env=env)
    assert out["status"] == 200, out
    assert f"tr-{out['trace_id']}" in out["found"], out


OTLP_EXPORT = r"""
import json, os, time, urllib.request
import mlflow
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

trace_id, span_id = os.urandom(16), os.urandom(8)
now = time.time_ns()
span = Span(trace_id=trace_id, span_id=span_id, name="llm_request", kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=now - 5_000_000, end_time_unix_nano=now)
resource = Resource(attributes=[
    KeyValue(key="service.name", value=AnyValue(string_value=os.environ["SERVICE"]))])
body = ExportTraceServiceRequest(resource_spans=[
    ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[span])])
]).SerializeToString()
headers = {"Content-Type": "application/x-protobuf"}
for pair in os.environ["HEADERS"].split(","):  # OTEL_EXPORTER_OTLP_TRACES_HEADERS syntax
    key, _, value = pair.partition("=")
    headers[key.strip()] = value.strip()
req = urllib.request.Request(os.environ["ENDPOINT"], data=body, headers=headers, method="POST")
with urllib.request.urlopen(req, timeout=30) as resp:
    status = resp.status
found = []
for _ in range(40):
    traces = mlflow.search_traces(locations=[os.environ["EXPERIMENT"]], return_type="list")
    found = [t.info.trace_id for t in traces]
    if any(trace_id.hex() in f for f in found):
        break
    time.sleep(0.5)
print(json.dumps({"status": status, "trace_id": trace_id.hex(), "found": found}))
"""


# --------------------------------------------------------------------------- external stores


BUCKET = "ml-artifacts"


def external_secrets(
    pg: Postgres, store: ObjectStore
) -> tuple[dict[tuple[str, str], str], dict[str, dict[str, str]]]:
    """Test values for the Secrets examples/external-stores.yaml tells its user to create."""
    secrets = {
        ("mlflow-db", "uri"): pg.uri,
        ("mlflow-artifacts", "destination"): f"s3://{BUCKET}/mlflow",
    }
    env_from = {
        "mlflow-s3": {
            "AWS_ACCESS_KEY_ID": store.access_key,
            "AWS_SECRET_ACCESS_KEY": store.secret_key,
            "MLFLOW_S3_ENDPOINT_URL": store.endpoint,
        }
    }
    return secrets, env_from


@pytest.fixture(scope="module")
def external_manifests() -> list[Manifest]:
    return harness.render_example(harness.example("external-stores.yaml"))


def test_external_stores_example_names_the_full_image(external_manifests: list[Manifest]) -> None:
    c = harness.container(external_manifests, names.mlflow("tracked"), "mlflow")
    version = envs.pinned(FULL_ENV, "mlflow")
    assert c["image"] == f"ghcr.io/mlflow/mlflow:v{version}-full"
    # The Secrets reach the server exactly as the example's comment creates them.
    refs = {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
            for v in c["env"] if "valueFrom" in v}  # fmt: skip
    assert refs == {("mlflow-db", "uri"), ("mlflow-artifacts", "destination")}
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]


def start_and_stop(manifests: list[Manifest], **kwargs: Any) -> None:
    start_mlflow(manifests, **kwargs).running.stop()


def test_plain_image_cannot_serve_external_stores(
    external_manifests: list[Manifest],
    postgres: Postgres,
    object_store: ObjectStore,
    hosts: HostMap,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    secrets, env_from = external_secrets(postgres, object_store)
    with pytest.raises(harness.ProcessFailed) as failed:
        start_and_stop(
            external_manifests,
            component=PLAIN_ENV,
            workdir=suite_dir / "mlflow-external-plain",
            log_dir=log_dir,
            hosts=hosts,
            secrets=secrets,
            secret_env_from=env_from,
            timeout=120,
        )
    # No PostgreSQL driver: SQLAlchemy 2.1 takes psycopg (3) for postgresql://, older ones
    # psycopg2; the plain image has neither.
    assert "exited" in str(failed.value)
    assert re.search(r"No module named 'psycopg2?'", str(failed.value)), failed.value


def test_full_image_keeps_runs_in_postgres_and_artifacts_in_s3(
    external_manifests: list[Manifest],
    postgres: Postgres,
    object_store: ObjectStore,
    hosts: HostMap,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    secrets, env_from = external_secrets(postgres, object_store)
    admin_env = harness.base_env(envs.bin_dir(FULL_ENV), suite_dir)
    admin_env.update(hosts.env())
    admin_env.update(env_from["mlflow-s3"])
    # The bucket is the user's, made before the stack (like the Secrets).
    run_python(FULL_ENV, MAKE_BUCKET.replace("BUCKET", BUCKET), env=admin_env, timeout=120)

    server = start_mlflow(
        external_manifests,
        component=FULL_ENV,
        workdir=suite_dir / "mlflow-external-full",
        log_dir=log_dir,
        hosts=hosts,
        secrets=secrets,
        secret_env_from=env_from,
    )
    try:
        assert server.read_only_root  # its artifacts pass through /tmp on their way to S3
        # The run's client knows nothing of the stores: the server proxies artifacts.
        out = server.run_client(CLIENT_RUN)
    finally:
        server.running.stop()
    assert out["artifact_uri"].startswith("mlflow-artifacts:/"), out
    assert out["downloaded"] == "hello from the conformance suite\n"
    rows = postgres.psql(
        f"SELECT run_uuid, artifact_uri FROM runs WHERE run_uuid = '{out['run_id']}'"
    )
    run_uuid, artifact_uri = rows.strip().split("|")
    assert run_uuid == out["run_id"]
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    metrics = postgres.psql(
        f"SELECT step, value FROM metrics WHERE run_uuid = '{out['run_id']}' ORDER BY step"
    )
    assert metrics.split() == ["1|0.5", "2|0.25"]
    # The object, in the bucket, as the S3 API lists it and as the server stored it.
    listed = run_python(FULL_ENV, LIST_BUCKET.replace("BUCKET", BUCKET), env=admin_env, timeout=120)
    keys = [k for k in listed if k.endswith("notes/hello.txt") and out["run_id"] in k]
    assert len(keys) == 1 and keys[0].startswith("mlflow/"), listed
    assert object_store.object_path(BUCKET, keys[0]).read_text() == (
        "hello from the conformance suite\n"
    )


MAKE_BUCKET = r"""
import json, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
s3.create_bucket(Bucket="BUCKET")
print(json.dumps(True))
"""

LIST_BUCKET = r"""
import json, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
print(json.dumps([o["Key"] for o in s3.list_objects_v2(Bucket="BUCKET").get("Contents", [])]))
"""
