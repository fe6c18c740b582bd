"""MLflow: the tracking server, its data PVC and its Service."""

from __future__ import annotations

from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AIStack, ModelSpec
from aistack.components import MLFLOW_PORT, RenderConfig, namespace_of
from aistack.render.common import (
    Manifest,
    container_resources,
    container_security,
    fill_template,
    pod_security,
    secret_env,
)


def mlflow_allowed_hosts(stack: AIStack, config: RenderConfig) -> list[str]:
    """The Host headers MLflow accepts (its DNS-rebinding protection).

    MLFLOW_SERVER_ALLOWED_HOSTS replaces MLflow's defaults (loopback names on any port,
    private IP ranges), and an entry matches exactly unless it holds ``*`` (then it is an
    fnmatch pattern, where ``*`` also spans dots). So the list names every in-cluster
    spelling of the Service, without a port and with the Service's port (the fully qualified
    name also with its root dot, ``<svc>.<ns>.svc.<domain>.``, the same name), and loopback
    on any port (``kubectl port-forward``); no pattern covers names below the Service's,
    such as ``<svc>.<ns>.attacker.example``. Upper-case spellings are refused: MLflow
    compares exactly, and the only case-insensitive entries MLflow can match are patterns
    whose ``*`` would admit those names too (clients send the lower-case host of their URL).
    The user's ``allowedHosts`` come last.
    """
    service = names.mlflow(stack.metadata.name)
    namespace = namespace_of(stack)
    allowed: list[str] = []
    fqdn = f"{service}.{namespace}.svc.{config.cluster_domain}"
    for host in (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        fqdn,
        f"{fqdn}.",
    ):
        allowed += [host, f"{host}:{MLFLOW_PORT}"]
    for host in ("localhost", "127.0.0.1"):
        allowed += [host, f"{host}:*"]
    return allowed + list(stack.spec.mlflow.allowed_hosts)


#: The registry's part this module writes (``aistack.components``).
PART = "tracking"


def render_part(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    """The part's objects (``render.stack`` finds this function by ``PART``)."""
    return render_mlflow(stack, config)


def render_mlflow(stack: AIStack, config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    namespace = namespace_of(stack)
    mlflow = stack.spec.mlflow
    service = names.mlflow(stack_name)
    env: list[dict[str, Any]] = []
    if mlflow.backend_store is not None:
        env.append(secret_env("MLFLOW_BACKEND_STORE_URI", mlflow.backend_store.uri_secret_ref))
        backend = "$(MLFLOW_BACKEND_STORE_URI)"
    else:
        backend = "sqlite:////mlflow/mlflow.db"
    if mlflow.artifact_store is not None:
        destination = mlflow.artifact_store.destination_secret_ref
        env.append(secret_env("MLFLOW_ARTIFACTS_DESTINATION", destination))
        artifacts = "$(MLFLOW_ARTIFACTS_DESTINATION)"
        creds = mlflow.artifact_store.credentials_secret_ref
    else:
        artifacts = "/mlflow/artifacts"
        creds = None
    env.append(
        {
            "name": "MLFLOW_SERVER_ALLOWED_HOSTS",
            "value": ",".join(mlflow_allowed_hosts(stack, config)),
        }
    )
    env.append({"name": "HOME", "value": "/tmp"})
    return fill_template(
        "mlflow.yaml.j2",
        namespace=namespace,
        name=service,
        mlflow=mlflow,
        image=mlflow.image or config.images["mlflow"],
        labels=names.common_labels(stack_name, "tracking", "mlflow"),
        selector=names.selector_labels(stack_name, "tracking"),
        pvc=names.mlflow_data(stack_name) if mlflow.needs_pvc else None,
        retain_annotation=names.RETAIN_ANNOTATION,
        args=[
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(MLFLOW_PORT),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts,
            "--serve-artifacts",
        ],
        env=env,
        credentials=creds.name if creds else None,
        resources=container_resources(mlflow.resources),
        port=MLFLOW_PORT,
        pod_security=pod_security(),
        container_security=container_security(read_only_root=True),
    )
