"""kopf wiring: settings, the caches (indexes) and the events that queue reconciles.

No handler here does work of its own. Indexes keep in memory what the watches show of
stacks, their children, their pods and the license policies; every event on one of them
queues a reconcile of the stack it belongs to. kopf is used without its per-object state
(no progress or diff-base annotations, no finalizers): the reconcile is level-based, so
nothing needs remembering between runs, a converged stack is never written to, and a
stack can always be deleted, operator running or not.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from aistack import metrics, names
from aistack.api.v1alpha1 import AIStack
from aistack.certs import self_signed
from aistack.codec import pack, unpack
from aistack.controller import (
    Reconciler,
    StackKey,
    StackView,
    licensing_for,
    write_policy_status,
)
from aistack.errors import format_validation_error
from aistack.kinds import BY_KIND, CHILD_KINDS, crd_established
from aistack.kube import Kube, KubeError, RateLimit, load_client
from aistack.licenses import update_verdicts
from aistack.queue import StackQueue
from aistack.settings import OperatorSettings

log = logging.getLogger(__name__)

STACKS = BY_KIND["AIStack"].resource
POLICIES = BY_KIND["LicensePolicy"].resource
#: plural -> kopf resource, for every kind a stack's children have (``aistack.kinds``).
CHILD_RESOURCES = {k.plural: k.resource for k in CHILD_KINDS}
#: Those watched only when the installation renders them (``watch_optional``).
OPTIONAL_RESOURCES = {k.plural: k.resource for k in CHILD_KINDS if k.optional}
#: An optional kind -> the ``RenderConfig`` setting that says whether its CRD is served.
CRD_SETTINGS = {
    "PodMonitor": "monitoring_crds",
    "LeaderWorkerSet": "leaderworkersets",
    "ScaledObject": "keda",
}
OWNED = {names.STACK_LABEL: kopf.PRESENT}


class Runtime:
    """What the handlers share: operator settings, the caches, the queue."""

    def __init__(self, settings: OperatorSettings | None = None) -> None:
        self.settings = OperatorSettings() if settings is None else settings
        self.indexes: dict[str, Any] = {}
        self.reconciler: Reconciler | None = None
        self.queue: StackQueue | None = None
        #: Per stack and per policy, the generation of its spec last seen (``_generation``).
        self._stack_specs: dict[StackKey, tuple[str, int]] = {}
        self._policy_specs: dict[str, tuple[str, int]] = {}

    def start(self) -> None:
        s = self.settings
        kube = Kube(load_client(s.kubeconfig, s.workers), RateLimit(s.api_qps, s.api_burst))
        licensing, judge = licensing_for(kube, s.hub, tuple(s.config.images.values()))
        self.reconciler = Reconciler(
            kube=kube, licensing=licensing, config=s.config, judge_record=judge
        )
        # Before any stack is reconciled, so that a restart does not drop (and then make
        # again) the monitors or the LeaderWorkerSets of every stack; the CRD watches keep
        # it true from then on.
        self.set_crd_served("PodMonitor", s.config.stack_monitoring and _served(kube, "PodMonitor"))
        self.set_crd_served(
            "LeaderWorkerSet",
            s.config.manage_leaderworkersets and _served(kube, "LeaderWorkerSet"),
        )
        self.set_crd_served("ScaledObject", s.config.manage_keda and _served(kube, "ScaledObject"))
        self.queue = StackQueue(
            self.reconciler.reconcile_once,
            self.snapshot,
            workers=s.workers,
            resync=s.resync,
        )
        metrics.QUEUE_DEPTH.set_function(self.queue.depth)

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Remember the index objects kopf passes to every handler."""
        for name in INDEX_NAMES:
            if name in kwargs:
                self.indexes[name] = kwargs[name]

    def _values(self, index: str, key: object) -> list[Any]:
        store = self.indexes.get(index, {}).get(key)
        return [unpack(v) for v in store] if store else []

    def snapshot(self, key: StackKey) -> StackView:
        stacks = self._values("stack_index", key)
        children: list[Any] = []
        for kind in CHILD_RESOURCES:
            children += self._values(f"{kind}_index", key)
        policies = [
            unpack(v) for store in self.indexes.get("policy_index", {}).values() for v in store
        ]
        return StackView(
            stack=stacks[0] if stacks else None,
            children=children,
            pods=self._values("pods_index", key),
            policies=policies,
        )

    def request(self, key: StackKey, *, spec_changed: bool = False) -> None:
        if self.queue is not None:
            self.queue.request(key, spec_changed=spec_changed)

    def stack_spec_changed(self, key: StackKey, event_type: str | None, body: Any) -> bool:
        """Whether a stack's watch event carries a spec this operator has not seen (a new
        stack, an edit, a deletion): its reconcile skips a pending backoff. Its status
        writes and the echo of our own writes do not change the generation."""
        if event_type == "DELETED":
            return self._stack_specs.pop(key, None) is not None
        return _remember(self._stack_specs, key, _generation(body))

    def policy_changed(self, event_type: str | None, name: str, body: Any) -> bool:
        """Whether a policy's watch event can change a verdict: a new or deleted policy,
        or one whose spec changed. The operator's own write of its status cannot."""
        if event_type == "DELETED":
            self._policy_specs.pop(name, None)
            return True
        return _remember(self._policy_specs, name, _generation(body))

    def request_all(self) -> None:
        stacks = self.indexes.get("stack_index", {})
        for key in list(stacks.keys()):
            self.request(key)

    def set_crd_served(self, kind: str, present: bool) -> bool:
        """Record whether the cluster serves an optional kind (its CRD established:
        ``CRD_SETTINGS``); whether that changed. Every stack renders with it from its next
        reconcile on."""
        reconciler = self.reconciler
        setting = CRD_SETTINGS[kind]
        if reconciler is None or getattr(reconciler.config, setting) == present:
            return False
        reconciler.config = reconciler.config.model_copy(update={setting: present})
        return True


RUNTIME = Runtime()


def _generation(body: Any) -> tuple[str, int]:
    """An object's (uid, metadata.generation): the API server moves the generation at
    every change but those of metadata and status, so it names the spec a watch event
    carries (a deleted and recreated object has another uid)."""
    meta = body.get("metadata") or {}
    return str(meta.get("uid")), int(meta.get("generation") or 0)


def _remember(seen: dict[Any, tuple[str, int]], key: Any, now: tuple[str, int]) -> bool:
    """Record ``now`` for ``key``; whether it differs from what was recorded before."""
    before = seen.get(key)
    seen[key] = now
    return before != now


def use_settings(settings: OperatorSettings) -> Runtime:
    """Run with these settings (``aistack run``): called once, before kopf starts."""
    global RUNTIME
    RUNTIME = Runtime(settings)
    return RUNTIME


def _trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy without managedFields (large, and never needed here)."""
    plain = copy.deepcopy(dict(body))
    plain.get("metadata", {}).pop("managedFields", None)
    return plain


# What the caches hold: each object packed (``pack``: compact JSON without managedFields,
# compressed). With a thousand stacks they hold tens of thousands of objects; as nested
# dicts these would take many times their size on the wire, packed about a third of it.
# Every read unpacks a fresh copy, which the reconcile (in a worker thread) may keep or
# change. Of a pod, only what the status reads is kept.


def _trim_pod(body: Mapping[str, Any]) -> bytes:
    meta = body.get("metadata", {})
    status = body.get("status", {})
    return pack(
        {
            "metadata": {
                "name": meta.get("name"),
                "labels": dict(meta.get("labels") or {}),
                "deletionTimestamp": meta.get("deletionTimestamp"),
            },
            "spec": {"nodeName": body.get("spec", {}).get("nodeName")},
            "status": {
                "phase": status.get("phase"),
                "conditions": list(status.get("conditions") or []),
                "containerStatuses": list(status.get("containerStatuses") or []),
            },
        }
    )


# ---------------------------------------------------------------- settings


class RetriesAreWarnings(logging.Filter):
    """kopf logs every failed API request it is going to retry at ERROR, e.g. each watch
    while the API server restarts. A retry is a warning; a request kopf gives up on
    (``escalating``) stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and record.name.startswith("kopf.")
            and "; will retry: " in record.getMessage()
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: Objects per page when kopf lists a resource (client-go's informers use 500 too).
LIST_PAGE = 500


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled state": kopf works out what changed in an object at every watch
    event, for its change handlers (``on.create``/``on.update``/``on.resume``), by deep-
    copying the object. This operator has none (``test_handlers`` holds it to that): the
    reconcile compares desired and observed state itself. Without this, every event of
    every pod costs two deep copies of the pod that nothing reads."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Events are posted deliberately by the reconciler, not for every log line.
    settings.posting.enabled = False
    # Our own prefix for anything kopf might store; with only event handlers and
    # indexes it stores nothing on the objects, and keeps no "last handled state".
    settings.persistence.finalizer = f"{names.GROUP}/kopf-finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Ride out an outage of the API server of up to about five minutes (an upgrade of the
    # control plane, a restart of etcd) before kopf gives up on a request (its default
    # gives up within a minute), and retry every few seconds meanwhile, so that the
    # watches are back soon after the API server is (the default waits up to 21 s).
    settings.networking.error_backoffs = (1, 1, 2, 2, 3, 3, *[5] * 56)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RetriesAreWarnings())
    # kopf keeps a worker per object, holding the object's last watch event, until no
    # event came for ``idle_timeout`` (5 s by default). When a thousand stacks are created
    # at once, tens of thousands of objects each see a few events within seconds, and
    # their workers pile up (300 stacks: 5% less peak memory with 0.5 s). Our handlers are
    # cheap and stateless; a worker made again for a later event costs little.
    settings.queueing.idle_timeout = 0.5
    # kopf lists every watched resource when its watch starts, and again whenever the
    # API server has forgotten the watch's resource version (410 Gone). Unpaginated, the
    # whole list is held as bytes, as text and parsed at once: one such list was 81 MB
    # of the operator's peak at 300 stacks, and it grows with the cluster. In pages, one
    # page at a time.
    settings.watching.chunk_size = LIST_PAGE
    RUNTIME.start()


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    if RUNTIME.queue is not None:
        await RUNTIME.queue.close()


# ---------------------------------------------------------------- caches


# The index functions are coroutines: kopf hands a plain function to a thread for every
# watch event, and these take microseconds.


@kopf.index(*STACKS)
async def stack_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace or "", name): pack(body)}


@kopf.index(*POLICIES)
async def policy_index(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: pack(body)}


async def _child_index(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace or "", labels[names.STACK_LABEL]): pack(body)}


for _kind, _resource in CHILD_RESOURCES.items():
    if _kind not in OPTIONAL_RESOURCES:
        kopf.index(*_resource, labels=OWNED, id=f"{_kind}_index")(_child_index)


@kopf.index("", "v1", "pods", labels=OWNED)
async def pods_index(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace or "", labels[names.STACK_LABEL]): _trim_pod(body)}


INDEX_NAMES = (
    "stack_index",
    "policy_index",
    *(f"{kind}_index" for kind in CHILD_RESOURCES),
    "pods_index",
)


# ---------------------------------------------------------------- triggers


@kopf.on.event(*STACKS)
async def stack_event(
    type: str | None, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
) -> None:
    RUNTIME.bind(kwargs)
    key = (namespace or "", name)
    RUNTIME.request(key, spec_changed=RUNTIME.stack_spec_changed(key, type, body))


@kopf.on.event(*POLICIES)
async def policy_event(type: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
    RUNTIME.bind(kwargs)
    # A policy change can permit or block models anywhere: re-evaluate every stack. The
    # echo of the status written below changes nothing and requeues nothing.
    if RUNTIME.policy_changed(type, name, body):
        RUNTIME.request_all()
    if type != "DELETED" and RUNTIME.reconciler is not None:
        await asyncio.to_thread(write_policy_status, RUNTIME.reconciler.kube, name, _trim(body))


async def _child_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    RUNTIME.bind(kwargs)
    RUNTIME.request((namespace or "", labels[names.STACK_LABEL]))


for _kind, _resource in CHILD_RESOURCES.items():
    if _kind not in OPTIONAL_RESOURCES:
        kopf.on.event(*_resource, labels=OWNED, id=f"child-{_kind}")(_child_event)
kopf.on.event("", "v1", "pods", labels=OWNED, id="child-pods")(_child_event)


def _served(kube: Kube, kind: str) -> bool:
    try:
        return kube.serves(kind)
    except Exception as exc:  # a probe: the CRD watch corrects it, whatever went wrong
        log.warning("cannot tell whether the cluster serves %ss (%s): assuming not until "
                    "the CRD watch says so", kind, exc)  # fmt: skip
        return False


def _crd_handler(kind: str) -> Any:
    async def crd_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        """An optional kind's CRD appearing (established) or going: every stack renders
        its objects of that kind, or drops them (PodMonitors: ``components.monitoring``;
        LeaderWorkerSets: ``components.lws_missing``). kopf starts and stops its watch on
        the kind by itself."""
        RUNTIME.bind(kwargs)
        present = type != "DELETED" and crd_established(body)
        if RUNTIME.set_crd_served(kind, present):
            crd = BY_KIND[kind].crd
            log.info("%s %s: stacks follow", crd, "found" if present else "gone")
            RUNTIME.request_all()

    return crd_event


def watch_optional(kind: str) -> None:
    """Watch the stacks' objects of an optional kind (PodMonitor: ``aistack run`` unless
    ``--no-stack-monitoring``; LeaderWorkerSet: unless ``--no-leaderworkersets``;
    ScaledObject: unless ``--no-keda``) and the
    CRD that serves them. Not otherwise: kopf retries a list it may not make forever, and
    serves nothing meanwhile. Without the CRD, kopf waits for it."""
    k = BY_KIND[kind]
    kopf.index(*k.resource, labels=OWNED, id=f"{k.plural}_index")(_child_index)
    kopf.on.event(*k.resource, labels=OWNED, id=f"child-{k.plural}")(_child_event)
    kopf.on.event(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions",
        when=lambda name, **_: name == k.crd, id=f"crd-{k.plural}",
    )(_crd_handler(kind))  # fmt: skip


# ---------------------------------------------------------------- admission


async def admit_stack(
    body: kopf.Body,
    warnings: list[str],
    dryrun: bool,
    operation: str | None = None,
    old: kopf.Body | None = None,
    **kwargs: Any,
) -> None:
    """Validating webhook: refuse a stack that would serve a model the policy denies. A
    CREATE is judged whole; an UPDATE by what it adds or alters (``update_verdicts``)."""
    RUNTIME.bind(kwargs)
    result = "error"
    try:
        try:
            stack = AIStack.model_validate(dict(body))
        except ValidationError as err:
            result = "denied"
            raise kopf.AdmissionError("; ".join(format_validation_error("AIStack", err))) from err
        before = _old_stack(old) if operation == "UPDATE" else None
        policies = await asyncio.to_thread(_current_policies)
        denied, warned = await asyncio.to_thread(_judge_admission, stack, policies, before)
        warnings.extend(warned)
        if denied:
            result = "denied"
            raise kopf.AdmissionError("; ".join(denied), code=403)
        result = "warned" if warned else "allowed"
    finally:
        metrics.ADMISSIONS.labels(result).inc()


def _old_stack(old: kopf.Body | None) -> AIStack | None:
    """The object an UPDATE replaces, or None where it does not read (stored before a
    stricter schema): then the update is judged whole."""
    if old is None:
        return None
    try:
        return AIStack.model_validate(dict(old))
    except ValidationError:
        return None


def _judge_admission(
    stack: AIStack, policies: list[dict[str, Any]], old: AIStack | None = None
) -> tuple[list[str], list[str]]:
    """The webhook's verdicts: as the reconcile judges (its Secrets' labels read from the
    API server), so that what is admitted is what runs; of an UPDATE (``old``), what it
    adds or alters."""
    reconciler = RUNTIME.reconciler
    if reconciler is None:  # _current_policies has refused by then
        raise kopf.AdmissionError("the aistack operator is starting; retry", code=503)
    licensing, _ = licensing_for(
        reconciler.kube, RUNTIME.settings.hub, tuple(reconciler.config.images.values())
    )
    return update_verdicts(licensing(stack, policies), stack, old)


def _current_policies() -> list[dict[str, Any]]:
    """The cluster's LicensePolicies as the API server has them now.

    Not the policy cache: a standby replica (paused by peering) does not watch, and a
    replica that has just started may not have listed yet; either would judge by the
    built-in default policy. One LIST per admission review keeps every replica right, so
    the webhook Service can send to any of them. When the list cannot be read, the stack
    is refused (fail closed) with a message that says to retry.
    """
    if RUNTIME.reconciler is None:
        raise kopf.AdmissionError(
            "the aistack operator is starting and cannot judge licenses yet; "
            "retry in a few seconds",
            code=503,
        )
    try:
        return [_trim(p) for p in RUNTIME.reconciler.kube.list("LicensePolicy")]
    except KubeError as exc:
        raise kopf.AdmissionError(
            f"the aistack operator cannot read the cluster's LicensePolicies ({exc.message}); "
            "licenses are not judged without them: retry in a few seconds",
            code=503,
        ) from exc


def enable_admission(
    *,
    port: int,
    addr: str = "0.0.0.0",
    host: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    managed: str | None = None,
) -> None:
    """Serve the license webhook (called before the operator starts, when asked to).

    With ``managed``, the operator creates and maintains the ValidatingWebhookConfiguration
    itself, pointing at ``https://HOST:PORT/license`` with its self-signed certificate (for
    control planes that run on the host, like the local e2e cluster). Otherwise the
    configuration comes from the Helm chart, with the certificate it mounts.
    """

    cadata = None
    if certfile is None:
        # No mounted certificate: make one (kopf's own generator needs packages that do
        # not work with current OpenSSL).
        hosts = [h for h in (host, "localhost", "127.0.0.1") if h]
        workdir = Path(tempfile.mkdtemp(prefix="aistack-webhook-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        cert_path, key_path, cadata = self_signed(hosts, workdir)
        certfile, keyfile = str(cert_path), str(key_path)

    @kopf.on.startup(id="admission-settings")
    def _settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr=addr, port=port, host=host, certfile=certfile, pkeyfile=keyfile, cadata=cadata
        )
        settings.admission.managed = managed

    kopf.on.validate(*STACKS, id="license", operations=["CREATE", "UPDATE"])(admit_stack)
