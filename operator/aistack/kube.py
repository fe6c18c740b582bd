"""The one module (with the kopf handlers) that talks to the API server.

A thin REST layer over the official client's authenticated connection: server-side apply
with one field manager, delete, list by label, status patch, Events. Each call is retry-
safe: apply is idempotent, a 404 on delete is success, a 409 on create of an Event is
ignored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import kubernetes

from aistack import metrics
from aistack.kinds import BY_KIND, KINDS
from aistack.limits import DEFAULT_BURST, DEFAULT_QPS, DEFAULT_WORKERS
from aistack.plan import Key, Manifest

log = logging.getLogger(__name__)

FIELD_MANAGER = "aistack-operator"
#: Sets an autoscaled workload's replicas once, when the scaler takes it over: a manager of
#: its own, so that the operator's apply (``FIELD_MANAGER``) never owns the field, and no
#: later apply of the operator resets what the scaler chose.
STARTING_SIZE_FIELD_MANAGER = "aistack-operator-starting-size"
TIMEOUT = (5.0, 30.0)

#: kind -> (API prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    k.kind: (k.api_prefix, k.plural, k.namespaced) for k in KINDS
}


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural, namespaced = RESOURCES[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    return path


def load_client(
    kubeconfig: str | None = None, workers: int = DEFAULT_WORKERS
) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=config
        )
    # One connection per reconcile worker (and a few for the webhook and policy status),
    # so no request waits for a free connection.
    config.connection_pool_maxsize = workers + 8
    client = kubernetes.client.ApiClient(configuration=config)
    client.user_agent = f"{FIELD_MANAGER}/{__import__('aistack').__version__}"
    return client


class RateLimit:
    """A token bucket shared by every thread: at most ``qps`` requests a second on
    average, ``burst`` at once. It protects the API server from the operator (a thousand
    stacks created at once); client-go's controllers do the same. ``qps <= 0``: no limit."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.qps = qps
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def wait(self) -> None:
        pause = self.delay()
        if pause > 0:
            time.sleep(pause)


@dataclass
class Kube:
    client: kubernetes.client.ApiClient
    limit: RateLimit = field(default_factory=lambda: RateLimit(DEFAULT_QPS, DEFAULT_BURST))

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        self.limit.wait()
        verb = "apply" if content_type == "application/apply-patch+yaml" else method.lower()
        serialized = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*serialized, _request_timeout=TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
        except kubernetes.client.ApiException as exc:
            metrics.API_REQUESTS.labels(verb, str(exc.status or "error")).inc()
            raise KubeError(int(exc.status or 0), _message(exc.body) or str(exc)) from exc
        except Exception as exc:  # connection refused, timeouts: no answer at all
            metrics.API_REQUESTS.labels(verb, "error").inc()
            raise KubeError(0, f"{method} {path}: {exc}") from exc
        metrics.API_REQUESTS.labels(verb, str(response.status)).inc()
        text = response.data.decode() if response.data else ""
        if response.status >= 400:
            raise KubeError(
                response.status, _message(text) or f"{method} {path}: {response.status}"
            )
        return json.loads(text) if text else {}

    # ------------------------------------------------------------ objects

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply; our field manager wins conflicts (drift is corrected)."""
        meta = manifest["metadata"]
        return self.request(
            "PATCH",
            _path(manifest["kind"], meta.get("namespace"), meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def start_replicas(self, key: Key, replicas: int) -> dict[str, Any]:
        """Hand a workload's replicas to its scaler at ``replicas`` (server-side apply of
        that field alone, by ``STARTING_SIZE_FIELD_MANAGER``, which applies nothing else)."""
        kind, namespace, name = key
        k = BY_KIND[kind]
        return self.request(
            "PATCH",
            _path(kind, namespace, name),
            query={"fieldManager": STARTING_SIZE_FIELD_MANAGER, "force": "true"},
            body={
                "apiVersion": f"{k.group}/{k.version}" if k.group else k.version,
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas},
            },
            content_type="application/apply-patch+yaml",
        )

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in a namespace, or everywhere), straight from the server."""
        items: list[dict[str, Any]] = self.request("GET", _path(kind, namespace)).get("items", [])
        return items

    def serves(self, kind: str) -> bool:
        """Whether the API server serves ``kind`` (one of ``aistack.kinds``) now: API
        discovery of its group version, which every authenticated user may read."""
        k = BY_KIND[kind]
        try:
            found = self.request("GET", k.api_prefix)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == k.plural for r in found.get("resources") or [])

    def delete(self, key: Key) -> None:
        kind, namespace, name = key
        try:
            self.request(
                "DELETE",
                _path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    def scale_to_zero(
        self, kind: str, namespace: str, name: str, annotation: str
    ) -> dict[str, Any]:
        """Set a workload's replicas to 0 and mark it with ``annotation`` (merge patch:
        nothing else of it changes; the next server-side apply takes the fields back)."""
        return self.request(
            "PATCH",
            _path(kind, namespace, name),
            query={"fieldManager": FIELD_MANAGER},
            body={"metadata": {"annotations": {annotation: "true"}}, "spec": {"replicas": 0}},
            content_type="application/merge-patch+json",
        )

    def drop_annotation(
        self, kind: str, namespace: str, name: str, annotation: str
    ) -> dict[str, Any]:
        """Remove one annotation (merge patch), whoever set it."""
        return self.request(
            "PATCH",
            _path(kind, namespace, name),
            query={"fieldManager": FIELD_MANAGER},
            body={"metadata": {"annotations": {annotation: None}}},
            content_type="application/merge-patch+json",
        )

    def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's labels, None when there is no such Secret. Only its metadata is
        asked for (``PartialObjectMetadata``), and only its labels are kept: a Secret made
        with ``kubectl apply`` carries a copy of its data in the
        ``kubectl.kubernetes.io/last-applied-configuration`` annotation, which is dropped
        here, never logged or stored."""
        try:
            meta = self.request(
                "GET",
                _path("Secret", namespace, name),
                accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return dict((meta.get("metadata") or {}).get("labels") or {})

    # ------------------------------------------------------------ AIStack

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], kind: str = "AIStack"
    ) -> dict[str, Any]:
        """Patch an object's status (merge patch: null clears a removed field)."""
        return self.request(
            "PATCH",
            _path(kind, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def post_event(
        self,
        stack: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        now: str,
    ) -> None:
        meta = stack["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": stack["apiVersion"],
                "kind": stack["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("POST", _path("Event", meta["namespace"]), body=event)
        except KubeError as exc:  # an Event is never worth failing a reconcile for
            log.warning("could not post Event %s on %s: %s", reason, meta["name"], exc)


def _message(body: str | bytes | None) -> str:
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:500]
    return str(data.get("message", ""))[:2000] if isinstance(data, dict) else str(data)[:500]
