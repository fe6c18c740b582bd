"""The decision for a whole stack: its models, adapters, drafts, providers and images
against every policy; and the record on a Deployment, judged again while a stack's spec
cannot be read."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from aistack.api.v1alpha1 import (
    AdapterStatus,
    AIStack,
    DraftStatus,
    ModelSpec,
    ModelStatus,
    ProviderSpec,
    is_storage,
)
from aistack.hub import HubClient, HubUnavailable
from aistack.images import covered, parse_image
from aistack.licenses.catalog import (
    CatalogEntry,
    Licensed,
    canonical_repo,
    catalog,
    draft_of,
)
from aistack.licenses.policy import (
    CompiledPolicy,
    PolicyVerdict,
    combine,
    evaluate_one,
    policies_from,
)
from aistack.licenses.providers import SecretLabels, decide_provider, prefetched
from aistack.licenses.resolution import resolve
from aistack.names import image_key, speculative_key
from aistack.verdicts import LicenseVerdict


def decide(
    model: Licensed,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
    *,
    namespace: str | None = None,
) -> LicenseVerdict:
    """One model against every policy: a violation of any policy counts; it blocks the
    model when that policy enforces (``Deny``), else the model runs and the status says.
    ``last``: the license the hub gave before (see ``resolve``); ``namespace``: the stack's
    (exceptions may be limited to one)."""
    resolved = resolve(model, known, hub, last)
    verdict = combine(
        policies,
        lambda p: evaluate_one(model, resolved, p, namespace),
        resolved.license,
        resolved.source,
    )
    return replace(verdict, stale=resolved.stale) if resolved.stale else verdict


def evaluate_image(
    image: str, what: str, policy: CompiledPolicy, defaults: Iterable[str]
) -> PolicyVerdict:
    """Whether one policy lets a stack run ``image`` (named by ``what``): the operator's
    default images' repositories always, else what ``images.allow`` lists."""
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"image {image} of {what}, denied: this operator cannot "
            f"read LicensePolicy {policy.name} ({policy.invalid})",
        )  # fmt: skip
    ref = parse_image(image)
    if image in defaults:
        return PolicyVerdict(True, "ImageAllowed", f"image {image} of {what} is a default image")
    if policy.images_require_digest and ref.digest is None:
        return PolicyVerdict(
            False, "ImageNotAllowed", f"image {image} of {what} is not pinned by digest, and "
            f"policy {policy.name} requires it (images.requireDigest): name it "
            "<repository>@sha256:<digest>",
        )  # fmt: skip
    repositories = [parse_image(d).repository for d in defaults]
    pattern = covered(image, [*repositories, *policy.images_allow])
    if pattern is None:
        return PolicyVerdict(
            False, "ImageNotAllowed", f"image {image} of {what} is not one policy "
            f"{policy.name} allows: only the operator's default images' repositories and "
            "what images.allow lists may run",
        )  # fmt: skip
    return PolicyVerdict(True, "ImageAllowed", f"image {image} of {what} is allowed ({pattern})")


def decide_image(
    image: str, what: str, policies: Sequence[CompiledPolicy], defaults: Iterable[str]
) -> LicenseVerdict:
    """An image a stack names against every policy."""
    known = tuple(defaults)
    return combine(policies, lambda p: evaluate_image(image, what, p, known), None, None)


#: license-expression builds its SPDX tables lazily and not thread-safely: stacks
#: reconciled in parallel right after start-up saw "mit" as an unknown id. One evaluation
#: at a time (each takes well under a millisecond once warm).
_LOCK = threading.Lock()


def decide_derivative(
    label: str,
    model: ModelSpec,
    subject: Licensed,
    base: LicenseVerdict,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
    *,
    namespace: str | None = None,
) -> LicenseVerdict:
    """What runs on top of a model (an adapter, a draft model) against every policy: it
    is used only under its own license AND its model's. Its own license is resolved and
    judged like a model's (an exception may name its source); when the model is not
    permitted, neither is it. ``label``: how messages name it ("adapter x")."""
    verdict = decide(subject, policies, known, hub, last, namespace=namespace)
    prefix = f"{label} of model {model.name}: "
    if base.permitted:
        return replace(verdict, message=prefix + verdict.message)
    why = f"its base model is not permitted ({base.message})"
    if verdict.permitted:
        message = f"{prefix}not served, because {why}"
    else:
        message = f"{prefix}{verdict.message}; and {why}"
    return replace(
        verdict,
        permitted=False,
        reason=verdict.reason if not verdict.permitted else "BaseModelBlocked",
        message=message,
        enforcement=verdict.enforcement or base.enforcement,
    )


def _with_image(
    verdict: LicenseVerdict,
    model: ModelSpec,
    image: str | None,
    policies: Sequence[CompiledPolicy],
    defaults: Sequence[str],
) -> LicenseVerdict:
    """A model's verdict with the image it runs in judged too: a model whose image is not
    permitted does not run, whatever its license."""
    if image is None or not verdict.permitted:
        return verdict
    judged = decide_image(image, f"model {model.name}", policies, defaults)
    if judged.permitted and not judged.violation:
        return verdict
    if judged.permitted:  # a Warn or DryRun policy's violation: said, not enforced
        return replace(verdict, violation=True, reason=judged.reason, message=judged.message,
                       enforcement=judged.enforcement)  # fmt: skip
    return replace(
        judged, license=verdict.license, license_source=verdict.license_source,
        stale=verdict.stale,
    )  # fmt: skip


def decide_models(
    models: Sequence[ModelSpec],
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
    *,
    namespace: str | None = None,
    image_of: Callable[[ModelSpec], str | None] | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every model of ``models`` (with the image it runs in: ``image_of(model)``, the
    stack's ``AIStackSpec.image_of``; else its own), every adapter and every draft model, by
    name (adapter names are unique across the stack's models and adapters; drafts under
    ``speculative_key``). ``last``: by name, the license the hub gave before (see
    ``resolve``)."""
    last = last or {}
    out: dict[str, LicenseVerdict] = {}
    for m in models:
        base = decide(m, policies, hub=hub, last=last.get(m.name), namespace=namespace)
        image = image_of(m) if image_of is not None else m.image
        base = out[m.name] = _with_image(base, m, image, policies, default_images)
        for a in m.adapters:
            out[a.name] = decide_derivative(
                f"adapter {a.name}", m, a, base, policies, hub=hub, last=last.get(a.name),
                namespace=namespace,
            )  # fmt: skip
        if (draft := draft_of(m)) is not None:
            key = speculative_key(m.name)
            out[key] = decide_derivative(
                f"draft model {draft.source}", m, draft, base, policies,
                hub=hub, last=last.get(key), namespace=namespace,
            )  # fmt: skip
    return out


def _named_images(stack: AIStack) -> list[tuple[str, str | None]]:
    """The images a stack names for its parts other than the models: (part, image), part
    being the component's image key (the registry's ``named_image``, which this module may
    not import: tests/test_components.py holds the two equal)."""
    spec = stack.spec
    return [
        ("ray", spec.ray.image if spec.ray.enabled else None),
        ("mlflow", spec.mlflow.image if spec.mlflow.enabled else None),
        ("gateway", spec.gateway.image if spec.gateway.enabled else None),
    ]


def decide_routes(
    stack: AIStack,
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every route of the stack by name (names are unique across them): its models, their
    adapters and drafts and its hosted providers (when it has a gateway to send them
    prompts); and the images it names for its other parts (``image_key``)."""
    out = decide_models(
        stack.spec.models, policies, hub=hub, last=last,
        namespace=stack.metadata.namespace or "default",
        image_of=stack.spec.image_of, default_images=default_images,
    )  # fmt: skip
    for p in stack.spec.gateway.providers if stack.spec.gateway.enabled else []:
        out[p.name] = decide_provider(p, policies, secrets)
    for part, image in _named_images(stack):
        if image is not None:
            out[image_key(part)] = decide_image(image, part, policies, default_images)
    return out


def _licensed_by_key(stack: AIStack) -> dict[str, Licensed]:
    """Every model, adapter and draft of the stack, by its verdict key."""
    specs: dict[str, Licensed] = {}
    for m in stack.spec.models:
        specs[m.name] = m
        specs |= {a.name: a for a in m.adapters}
        if (draft := draft_of(m)) is not None:
            specs[speculative_key(m.name)] = draft
    return specs


def _hub_license(status: ModelStatus | AdapterStatus | DraftStatus, spec: Licensed | None) -> bool:
    """Whether ``status`` records the Hub's license for ``spec``'s source and revision."""
    return (
        spec is not None
        and status.license_source == "Hub"
        and bool(status.license)
        and status.source == spec.source
        and status.revision == spec.revision
    )


def last_hub_licenses(stack: AIStack) -> dict[str, str]:
    """Per model, adapter and draft, the license the hub gave for its current source and
    revision, as the stack's status recorded it: kept when the hub does not answer (an
    operator restarted during an outage of the hub does not stop the models that run)."""
    if stack.status is None:
        return {}
    specs = _licensed_by_key(stack)
    seen: list[tuple[str, ModelStatus | AdapterStatus | DraftStatus]] = [
        (s.name, s) for s in stack.status.models
    ]
    seen += [(a.name, a) for s in stack.status.models for a in s.adapters or []]
    seen += [(speculative_key(s.name), s.speculative) for s in stack.status.models if s.speculative]
    return {
        name: status.license
        for name, status in seen
        if status.license and _hub_license(status, specs.get(name))
    }


def _licensed_of(model: ModelSpec) -> list[Licensed]:
    """A model, its adapters and its draft model."""
    draft = draft_of(model)
    return [model, *model.adapters, *([draft] if draft is not None else [])]


def _ask_hub(hub: HubClient, licensed: Iterable[Licensed]) -> None:
    """The Hub's answers for what the catalog does not know, asked before the lock is
    taken (they may take a network timeout); the client keeps them for the decision."""
    for x in licensed:
        if canonical_repo(x.source) not in catalog() and not is_storage(x.source):
            with contextlib.suppress(HubUnavailable):
                hub.card_license(x.source, x.revision)


def decide_stack(
    stack: AIStack,
    policies: Sequence[Mapping[str, Any]],
    hub: HubClient | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every model, adapter, draft, hosted provider and named image of the stack against
    the cluster's policies (raw objects), by name; what the reconciler asks, with the
    operator's hub bound (``aistack run --hub``), the stack's Secrets' labels
    (``secrets``) and the operator's default images."""
    if hub is not None:
        _ask_hub(hub, [x for m in stack.spec.models for x in _licensed_of(m)])
    last = last_hub_licenses(stack) if hub is not None else {}
    if secrets is not None and stack.spec.gateway.enabled:
        keys = [p.credentials_secret_ref.name for p in stack.spec.gateway.providers]
        secrets = prefetched(secrets, keys)  # outside the lock, like the Hub's answers
    with _LOCK:
        return decide_routes(
            stack, policies_from(policies), hub=hub, last=last, secrets=secrets,
            default_images=default_images,
        )  # fmt: skip


def _not_judged(why: str) -> LicenseVerdict:
    return LicenseVerdict(False, True, "NotJudged", why, enforcement="Deny")


@dataclass(frozen=True)
class _Record:
    """What a Deployment's record names (``names.LICENSED_ANNOTATION``)."""

    model: ModelSpec | None
    providers: tuple[ProviderSpec, ...]
    image: str | None

    @classmethod
    def read(cls, text: str) -> _Record:
        data = json.loads(text)
        if not isinstance(data, Mapping):
            raise TypeError("not an object")
        model = ModelSpec.model_validate(data["model"]) if "model" in data else None
        providers = tuple(ProviderSpec.model_validate(p) for p in data.get("providers") or [])
        image = data.get("image")
        return cls(model, providers, None if image is None else str(image))

    def prefetch(self, hub: HubClient | None, secrets: SecretLabels | None) -> SecretLabels | None:
        """Ask the Hub and the API server now, outside the lock (``decide_stack``)."""
        if hub is not None and self.model is not None:
            _ask_hub(hub, _licensed_of(self.model))
        if secrets is None:
            return None
        return prefetched(secrets, [p.credentials_secret_ref.name for p in self.providers])

    def judge(
        self,
        policies: Sequence[CompiledPolicy],
        namespace: str,
        hub: HubClient | None,
        secrets: SecretLabels | None,
        default_images: Sequence[str],
    ) -> list[LicenseVerdict]:
        if self.model is not None:
            verdicts = decide_models(
                [self.model], policies, hub=hub, namespace=namespace,
                image_of=lambda _: self.image, default_images=default_images,
            )  # fmt: skip
            return list(verdicts.values())
        out = [decide_provider(p, policies, secrets) for p in self.providers]
        if self.image is not None:
            out.append(decide_image(self.image, "this part", policies, default_images))
        return out


def decide_record(
    record: str | None,
    policies: Sequence[Mapping[str, Any]],
    namespace: str,
    hub: HubClient | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> list[LicenseVerdict]:
    """What one Deployment runs, as its record says (``names.LICENSED_ANNOTATION``: the
    model with its adapters and draft, the providers, the image the stack named), judged
    under the cluster's policies now: what the reconciler asks while the stack's spec
    cannot be read. A record that is missing or cannot be read is not permitted: what
    cannot be judged does not run."""
    if record is None:
        return [_not_judged("it carries no record of what it runs (an older operator made it)")]
    try:
        read = _Record.read(record)
    except (ValueError, TypeError, KeyError, ValidationError) as exc:
        return [_not_judged(f"its record of what it runs cannot be read ({exc})")]
    secrets = read.prefetch(hub, secrets)
    with _LOCK:
        return read.judge(policies_from(policies), namespace, hub, secrets, default_images)
